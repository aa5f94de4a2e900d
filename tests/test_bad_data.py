"""Bad data gets a clear error naming the file, never a silent mislabel: folder layouts, images that
do not decode, the scan command and data.exclude_file (in this process but for the scan command)."""

import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from runs import ROOT

from conftest import load_config
from resnet_jax.data import streamed
from resnet_jax.data.inputs import make_inputs
from resnet_jax.data.scan import find_bad_images
from resnet_jax.errors import DataError


def _jpeg(rng, height=36, width=44):
  return tf.io.encode_jpeg(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).numpy()


def _odd_but_valid(rng) -> dict[str, bytes]:
  """ImageNet's own oddities, which must keep working: a CMYK JPEG, a grayscale one, a PNG named .JPEG."""
  cmyk, png = io.BytesIO(), io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), mode="CMYK").save(cmyk, format="JPEG")
  Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(png, format="PNG")
  gray = tf.io.encode_jpeg(rng.integers(0, 255, (40, 40, 1), dtype=np.uint8)).numpy()
  return {"cmyk.JPEG": cmyk.getvalue(), "png_named.JPEG": png.getvalue(), "gray.JPEG": gray}


@pytest.fixture
def image_folder(tmp_path):
  """train/ and val/ of 2 classes (4 train, 2 val images each), ImageNet's odd files among the train
  images of class a, and a hidden folder and file that must be ignored."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 4), ("val", 2)):
    for synset in ("a", "b"):
      (tmp_path / split / synset).mkdir(parents=True)
      for i in range(count):
        (tmp_path / split / synset / f"{i}.JPEG").write_bytes(_jpeg(rng))
  for name, data in _odd_but_valid(rng).items():
    (tmp_path / "train" / "a" / name).write_bytes(data)
  (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
  (tmp_path / "train" / ".ipynb_checkpoints" / "x.JPEG").write_bytes(_jpeg(rng))
  (tmp_path / "train" / "b" / "._0.JPEG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
  return tmp_path


def _config(root, **data):
  config = load_config("imagenet", "depth=18,batch=4")
  config.data.update(dict(data_dir=str(root), eval_split="val", image_size=32, eval_resize=36, **data))
  config.eval_batch_size = 4
  return config


def test_hidden_entries_are_ignored_and_odd_images_decode(image_folder):
  train = streamed.FolderSource(str(image_folder), "train")
  assert train.classes == ["a", "b"] and len(train) == 11
  assert not any("/." in path for path in train.paths)
  assert find_bad_images(train) == []
  assert sorted(np.bincount(train.labels)) == [4, 7]


def test_an_eval_class_unknown_to_train_is_an_error_and_an_empty_class_a_warning(image_folder, caplog):
  (image_folder / "val" / "c").mkdir()
  (image_folder / "val" / "c" / "0.JPEG").write_bytes((image_folder / "val" / "a" / "0.JPEG").read_bytes())
  with pytest.raises(DataError, match="1 class\\(es\\) of .*val are not class folders of train/, e.g. c"):
    streamed.FolderSource(str(image_folder), "val")
  label_file = image_folder / "labels.txt"
  label_file.write_text("0.JPEG a\n1.JPEG zebra\n")
  (image_folder / "flat").mkdir()
  for name in ("0.JPEG", "1.JPEG"):
    (image_folder / "flat" / name).write_bytes((image_folder / "val" / "a" / "0.JPEG").read_bytes())
  with pytest.raises(DataError, match="not class folders of train/, e.g. zebra"):
    streamed.FolderSource(str(image_folder), "flat", label_file=str(label_file))
  (image_folder / "train" / "aa").mkdir()  # sorts between a and b: b keeps index 2, not 1
  with caplog.at_level(logging.WARNING):
    train = streamed.FolderSource(str(image_folder), "train")
  assert train.classes == ["a", "aa", "b"] and set(train.labels) == {0, 2}
  assert "1 class(es) have no images" in caplog.text and "keep their label index: aa" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_bad_train_image_is_named_with_its_split_and_the_way_to_exclude_it(image_folder, damage):
  bad = image_folder / "train" / "b" / "2.JPEG"
  data = bad.read_bytes()
  bad.write_bytes({"truncated": data[:len(data) // 2], "empty": b"", "garbage": b"not an image at all"}[damage])
  inputs = make_inputs(_config(image_folder))
  batches = inputs.train(0)
  with pytest.raises(DataError) as error:
    for _ in range(2 * 11 // 4 + 1):  # past one epoch: every image is drawn
      next(batches)
  message = str(error.value)
  assert str(bad) in message and "in the train split" in message and "train/b/2.JPEG" in message
  assert "--config.data.exclude_file=FILE" in message and "python -m resnet_jax.data.scan" in message


def test_the_scan_lists_exactly_the_bad_files_and_excluding_them_trains_and_evaluates(image_folder):
  (image_folder / "train" / "a" / "1.JPEG").write_bytes(b"")
  (image_folder / "val" / "b" / "0.JPEG").write_bytes((image_folder / "val" / "b" / "1.JPEG").read_bytes()[:300])
  config = _config(image_folder)
  with pytest.raises(DataError, match="val/b/0.JPEG .*in the val split"):
    list(make_inputs(config).eval_batches())
  exclude = []
  for split in ("train", "val"):
    source = streamed.FolderSource(str(image_folder), split)
    exclude += [source.example_id(index) for index, _ in find_bad_images(source)]
  assert exclude == ["train/a/1.JPEG", "val/b/0.JPEG"]
  (image_folder / "bad.txt").write_text("# found by the scan\n" + "\n".join(exclude) + "\n")
  inputs = make_inputs(_config(image_folder, exclude_file=str(image_folder / "bad.txt")))
  assert inputs.num_train == 10
  batches = inputs.train(0)
  for _ in range(6):  # more than two epochs
    next(batches)
  assert sum(int(b["mask"].sum()) for b in inputs.eval_batches()) == 3


def test_the_scan_command_writes_the_exclude_file_with_progress(image_folder, capsys):
  from resnet_jax.data import scan
  (image_folder / "train" / "b" / "1.JPEG").write_bytes(b"GIF89a broken")
  output = image_folder / "bad.txt"
  bad = scan.main([f"--config={ROOT}/configs/imagenet.py:depth=18", f"--config.data.data_dir={image_folder}",
                   "--config.data.eval_split=val", f"--output={output}"])
  out = capsys.readouterr().out
  assert "train: 11 / 11 images" in out and "val: 4 / 4 images" in out
  assert f"1 of 15 images cannot be decoded; wrote their ids to {output}" in out
  assert bad == ["train/b/1.JPEG"] and streamed.read_exclusions(str(output)) == set(bad)


def test_tfds_records_are_excluded_by_split_and_index(fake_imagenet):
  whole = streamed.TfdsSource("imagenet2012", "train", str(fake_imagenet / "tfds"))
  kept = streamed.TfdsSource("imagenet2012", "train", str(fake_imagenet / "tfds"), exclude={"train[0]", "train[5]"})
  assert len(kept) == len(whole) - 2 and kept.excluded == {"train[0]", "train[5]"}
  assert [kept.example_id(i) for i in range(len(kept))] == [f"train[{i}]" for i in range(len(whole)) if i not in (0, 5)]
  assert kept.read(0)[0] == whole.read(1)[0]  # position 0 now reads record 1
  assert kept.describe(0).startswith("record train[1] of tfds imagenet2012 (") and ".JPEG)" in kept.describe(0)
