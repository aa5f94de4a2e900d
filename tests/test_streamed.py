"""The streamed pipeline over an image folder and a tfds array_record build: labels, order, resume,
process split, eval coverage, and the errors for data that is not prepared."""


import numpy as np
import pytest
import tensorflow as tf

from resnet_jax.data import augment
from resnet_jax.data.prepare import prepare
from resnet_jax.data.streamed import FolderSource, TfdsSource, eval_stream, shape_groups, train_stream, views_function
from resnet_jax.errors import ConfigError, DatasetNotPrepared

CLASSES = ["n01440764", "n01443537", "n01484850"]  # sorted synset folder names


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """root/train/<class>/*.JPEG with 4 images a class, and a flat val/ with a label file."""
  root = tmp_path_factory.mktemp("imagenet_folder")
  rng = np.random.default_rng(0)
  lines = []
  for k, name in enumerate(CLASSES):
    (root / "train" / name).mkdir(parents=True)
    for i in range(4):
      # The class is readable off the pixel values: 80 x class, plus a little noise.
      image = (80 * k + rng.integers(0, 8, (30 + 5 * i, 40, 3))).astype(np.uint8)
      (root / "train" / name / f"{name}_{i}.JPEG").write_bytes(tf.io.encode_jpeg(image, quality=98).numpy())
  (root / "val").mkdir()
  for i in range(5):
    k = i % 3
    image = np.full((36, 48, 3), 80 * k, np.uint8)
    (root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
    lines.append(f"ILSVRC2012_val_{i + 1:08d}.JPEG {CLASSES[k]}")
  (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture(params=["folder", "tfds"])
def source(request, fake_imagenet):
  """The same 12 train images (3 classes, 4 each; pixel values near 80 x label) from either source."""
  if request.param == "folder":
    return FolderSource(str(fake_imagenet / "folder"), "train")
  return TfdsSource("imagenet2012", "train", str(fake_imagenet / "tfds"))


def crop16(image_bytes, seed):
  return augment.inception_train(image_bytes, seed, crop=16)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_labels_follow_sorted_class_folders_and_the_label_file(folder):
  train = FolderSource(str(folder), "train")
  assert train.classes == CLASSES and len(train) == 12
  assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
  val = FolderSource(str(folder), "val", label_file=str(folder / "val_labels.txt"))
  assert val.labels.tolist() == [0, 1, 2, 0, 1]
  with pytest.raises(DatasetNotPrepared, match="expected .*<class>"):
    FolderSource(str(folder), "test")


def test_same_seed_same_batches_resume_and_epochs_cover_every_example(source):
  first = take(train_stream(source, 4, crop16, seed=1), 6)
  again = take(train_stream(source, 4, crop16, seed=1), 6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  resumed = take(train_stream(source, 4, crop16, seed=1, step=4), 2)
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  identity = lambda image_bytes, seed: {"image": tf.cast(tf.image.resize(augment.decode(image_bytes), [8, 8]), tf.float32)}
  epochs = take(train_stream(source, 4, identity, seed=1), 6)
  for epoch in (epochs[:3], epochs[3:]):
    reds = np.concatenate([np.rint(b["image"][:, 0, 0, 0] / 80) for b in epoch])
    labels = np.concatenate([b["label"] for b in epoch])
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(reds, labels)  # the image read is the image labelled


def test_two_processes_read_the_halves_of_the_same_global_batches(source):
  whole = take(train_stream(source, 4, crop16, seed=2), 5)
  halves = [take(train_stream(source, 4, crop16, seed=2, process_index=p, process_count=2), 5) for p in (0, 1)]
  for s in range(5):
    np.testing.assert_array_equal(np.concatenate([halves[0][s]["image"], halves[1][s]["image"]]), whole[s]["image"])


@pytest.mark.parametrize("processes,resampler", [(1, "tensorflow"), (2, "tensorflow"), (2, "pil")])
def test_eval_scores_every_example_once_across_processes(source, processes, resampler):
  views = views_function("10crop", resize=24, crop=16, resampler=resampler)
  seen = []
  for p in range(processes):
    for batch in eval_stream(source, 4, views, process_index=p, process_count=processes):
      assert batch["image"].shape[1:] == (10, 16, 16, 3)
      seen += [(int(np.rint(img[0, 0, 0, 0] / 80)), int(l)) for img, l, m in
               zip(batch["image"], batch["label"], batch["mask"]) if m]
  assert sorted(seen) == [(k, k) for k in range(3) for _ in range(4)]  # each image once, with its label


def test_unknown_or_unsupported_eval_resamplers_are_refused():
  with pytest.raises(ConfigError, match="unknown eval_resampler 'cv2'; valid: tensorflow, pil"):
    views_function("center", 256, 224, resampler="cv2")
  with pytest.raises(ConfigError, match="eval_view='multiscale' has no torchvision counterpart"):
    views_function("multiscale", 256, 224, (224,), resampler="pil")


def test_folder_and_tfds_give_the_same_labels_for_the_same_images(fake_imagenet):
  for split, tfds_split, label_file in (("train", "train", None), ("val", "validation", "val_labels.txt")):
    folder = FolderSource(str(fake_imagenet / "folder"), split,
                          label_file=label_file and str(fake_imagenet / "folder" / label_file))
    by_name = {path.rsplit("/", 1)[1]: label for path, label in zip(folder.paths, folder.labels)}
    tfds_source = TfdsSource("imagenet2012", tfds_split, str(fake_imagenet / "tfds"))
    assert tfds_source.classes == folder.classes and len(tfds_source) == len(folder)
    for i in range(len(tfds_source)):
      record = tfds_source.records[i]
      assert by_name[record["file_name"].decode()] == tfds_source.read(i)[1]


def test_unprepared_imagenet_says_where_the_tars_go_and_how_to_build(tmp_path):
  from resnet_jax.data import prepare
  with pytest.raises(DatasetNotPrepared) as error:
    TfdsSource("imagenet2012", "train", str(tmp_path))
  message = str(error.value)
  assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
  assert f"python -m resnet_jax.data.prepare imagenet2012 --data_dir={tmp_path} --manual_dir=MANUAL" in message
  with pytest.raises(DatasetNotPrepared, match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar not found"):
    prepare.main(["imagenet2012", f"--data_dir={tmp_path}", f"--manual_dir={tmp_path}"])


def test_a_sequential_tfrecord_build_is_refused_with_the_rebuild_command(fake_imagenet, tmp_path):
  prepare("imagenet2012", str(tmp_path), str(fake_imagenet / "tars"), file_format="tfrecord")
  with pytest.raises(DatasetNotPrepared, match="random access. Rebuild it as array_record: python -m resnet_jax.data.prepare"):
    TfdsSource("imagenet2012", "train", str(tmp_path))
  with pytest.raises(ValueError, match="has splits train, validation; got 'val'"):
    TfdsSource("imagenet2012", "val", str(fake_imagenet / "tfds"))


@pytest.mark.parametrize("processes", [1, 2])
def test_multiscale_eval_batches_images_by_shape_and_scores_each_once(source, processes):
  """The 12 images have 4 aspects (heights 30-45, width 40): 4 groups of 3, each in 2 batches."""
  views = views_function("multiscale", resize=0, crop=0, scales=(8, 12))
  seen, shapes = [], set()
  for p in range(processes):
    batches = list(eval_stream(source, 2, views, groups=shape_groups(source), process_index=p, process_count=processes))
    assert len(batches) == 8
    for batch in batches:
      small, large = batch["image"]
      assert small.shape[:2] == large.shape[:2] == (2 // processes, 2) and min(small.shape[2:4]) == 8
      shapes.add(large.shape[2:4])
      seen += [(int(np.rint(img[0, 0, 0, 0] / 80)), int(l)) for img, l, m in
               zip(large, batch["label"], batch["mask"]) if m]
  assert shapes == {(12, 16), (12, 14), (12, 12), (14, 12)}  # 4:3, 8:7, 1:1, 7:8 at shorter side 12
  assert sorted(seen) == [(k, k) for k in range(3) for _ in range(4)]


def test_the_scale_range_follows_the_crop_size_and_bad_augmentation_settings_are_refused():
  """Sec. 3.4's [256, 480] is for 224-pixel crops; at 56 pixels the default range is [64, 120], so
  a crop covers the same share of the image (a fixed [256, 480] would crop 1/16 of its area)."""
  from conftest import load_config
  from resnet_jax.data import inputs
  config = load_config("imagenet", "depth=18,source=tfds")
  assert inputs.paper_scale_range(224) == (256, 480)
  config.data.image_size = 56
  assert inputs.SETTINGS["streamed"]["augmentation"]["paper"](config.data).keywords["scale"] == (64, 120)
  config.data.scale_range = (300, 400)
  assert inputs.SETTINGS["streamed"]["augmentation"]["paper"](config.data).keywords["scale"] == (300, 400)
  inputs.check_settings(config.data, "streamed")
  for field, value, message in (
      ("scale_range", (40, 120), r"data.scale_range=\(40, 120\) must be .* image_size=56 <= low <= high"),
      ("crop_area", (0.5, 1.5), r"data.crop_area=\(0.5, 1.5\) must be 0 < low <= high <= 1"),
      ("augmentation", "crop_flip", "data.augmentation='crop_flip' is not valid for imagenet2012, which is streamed "
                                    r"from disk .*\('crop_flip' is for in memory data\); valid: paper, inception"),
      ("normalization", "pixel_mean", "valid: channel_mean_std, channel_mean"),
  ):
    bad = config.copy_and_resolve_references()
    bad.data[field] = value
    with pytest.raises(ConfigError, match=message):
      inputs.check_settings(bad.data, "streamed")
