"""Evaluation sets from other sources (resnet_jax/data/eval_sets.py): ImageNet-V2's folder layout,
ImageNet-ReaL's label sets and class-subset folders, each scored as computed directly from the
network's logits, on sets made here from the fake ImageNet's JPEGs; then the evaluate command's
records and table, one per set."""

import json
import shutil

import numpy as np
import pytest
from conftest import load_config
from runs import ROOT

from resnet_jax.config import eval_set, evaluations
from resnet_jax.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def other_sets(fake_imagenet, tmp_path_factory):
  """An ImageNet-V2-style folder (class folders 0, 1, 2 holding the training JPEGs of those classes,
  2 each) and an ImageNet-R-style subset folder (the synset folders of classes 0 and 2, 3 images
  each)."""
  root = tmp_path_factory.mktemp("other_sets")
  train = fake_imagenet / "folder" / "train"
  synsets = sorted(p.name for p in train.iterdir())
  for k in range(3):
    for i in range(2):
      (root / "v2" / str(k)).mkdir(parents=True, exist_ok=True)
      shutil.copy(train / synsets[k] / f"{synsets[k]}_{i}.JPEG", root / "v2" / str(k) / f"{i}.jpeg")
  for k in (0, 2):
    (root / "subset" / synsets[k]).mkdir(parents=True)
    for i in range(3):
      shutil.copy(train / synsets[k] / f"{synsets[k]}_{i + 1}.JPEG", root / "subset" / synsets[k] / f"r{i}.jpg")
  return root


def _config(fake_imagenet, argument=""):
  config = load_config("imagenet", f"depth=18,batch=4{',' if argument else ''}{argument}")
  config.data.update(dict(data_dir=str(fake_imagenet / "folder"), image_size=32, eval_resize=36,
                          eval_label_file=str(fake_imagenet / "folder" / "val_labels.txt")))
  config.eval_batch_size = 4
  return config


def _direct(experiment, params, batch_stats, key):
  """(logits, labels, label sets or None, mask) of every example of a set, from the network applied
  to each batch's images outside the evaluation code."""
  from flax import nnx
  model = nnx.merge(experiment.eval_graphdef, params, batch_stats)
  parts = [(np.asarray(model(experiment.data.normalize(b["image"][:, 0]))), b["label"], b.get("label_set"), b["mask"])
           for b in experiment.data.eval_batches(key)]
  logits, labels, sets, mask = (np.concatenate(x) if x[0] is not None else None for x in zip(*parts))
  real = mask > 0
  return logits[real], labels[real], None if sets is None else sets[real]


def test_each_set_scores_as_computed_directly_from_the_logits(fake_imagenet, other_sets, tmp_path):
  """A ResNet-18 at its initial weights. V2: labels are the folder numbers, top-1 is the argmax's;
  the subset: labels stay the 1000-class indices and the argmax is taken among classes 0 and 2
  only; ReaL: with label sets written to hold the network's own prediction for two images, not for
  one, and empty for the other two, top-1 is 2 of the 3 scored."""
  from resnet_jax.evaluation import evaluate
  from resnet_jax.experiment import setup

  base = setup(_config(fake_imagenet))
  state = base.initial_state()
  val_logits, _, _ = _direct(base, state.params, state.batch_stats, None)
  predicted = val_logits.argmax(-1)
  real = [[int(predicted[0])], [int(predicted[1]), 5], [], [(int(predicted[3]) + 1) % 1000], []]
  (tmp_path / "real.json").write_text(json.dumps(real))
  experiment = setup(_config(fake_imagenet, f"imagenet_v2={other_sets / 'v2'},real={tmp_path / 'real.json'},"
                                            f"imagenet_r={other_sets / 'subset'}"))
  keys = evaluations(experiment.config)
  assert keys["real"] == "val with ReaL labels" and keys["imagenet_r"].endswith("subset, among its own classes")

  logits, labels, _ = _direct(experiment, state.params, state.batch_stats, keys["imagenet_v2"])
  assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
  result = evaluate(experiment, state.params, state.batch_stats, keys["imagenet_v2"])
  assert result["examples"] == 6 and result["top1"] == pytest.approx(100 * np.mean(logits.argmax(-1) == labels))
  top5 = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)])
  assert result["top5"] == pytest.approx(100 * top5)

  logits, labels, _ = _direct(experiment, state.params, state.batch_stats, keys["imagenet_r"])
  assert sorted(labels.tolist()) == [0, 0, 0, 2, 2, 2]
  among = np.array([0, 2])[logits[:, [0, 2]].argmax(-1)]
  result = evaluate(experiment, state.params, state.batch_stats, keys["imagenet_r"])
  assert result["examples"] == 6 and result["top1"] == pytest.approx(100 * np.mean(among == labels))
  restricted = logits[:, [0, 2]] - logits[:, [0, 2]].max(-1, keepdims=True)
  log_softmax = restricted - np.log(np.exp(restricted).sum(-1, keepdims=True))
  assert result["loss"] == pytest.approx(-np.mean(log_softmax[np.arange(6), labels // 2]), rel=1e-4)
  assert "top5" not in result  # 2 classes

  _, _, sets = _direct(experiment, state.params, state.batch_stats, keys["real"])
  assert sets.tolist() == [[predicted[0], -1], [predicted[1], 5], [-1, -1], [(predicted[3] + 1) % 1000, -1], [-1, -1]]
  result = evaluate(experiment, state.params, state.batch_stats, keys["real"])
  assert result["examples"] == 3 and result["top1"] == pytest.approx(200 / 3) and "top5" not in result


def test_bad_sets_are_refused_with_what_to_fix(fake_imagenet, other_sets, tmp_path):
  from resnet_jax.experiment import setup

  (tmp_path / "short.json").write_text("[[1], [2]]")
  with pytest.raises(DataError, match="ILSVRC2012_val_00000003.JPEG is not an ILSVRC2012 validation file that"):
    setup(_config(fake_imagenet, f"real={tmp_path / 'short.json'}"))
  (tmp_path / "bad.json").write_text('{"a": 1}')
  with pytest.raises(DataError, match="is not ReaL's real.json"):
    setup(_config(fake_imagenet, f"real={tmp_path / 'bad.json'}"))
  with pytest.raises(DataError, match="class.es. of .*v2 are not class folders"):
    setup(_config(fake_imagenet, f"imagenet_r={other_sets / 'v2'}"))  # numbered folders read as synsets
  config = load_config("mnist_demo")
  config.evals.v2 = eval_set(source="folder", data_dir=str(other_sets))
  with pytest.raises(ConfigError, match="read as streamed images"):
    setup(config)


@pytest.mark.slow
def test_evaluate_records_each_set_and_the_table_shows_them(fake_imagenet, other_sets, tmp_path, capsys):
  """A ResNet-18 trained 2 steps, then scored by the evaluate command on its validation folder and
  the three sets: four records, each naming its evaluation and what its set is; the ReaL one counts
  only the images with labels and has no top-5; the results table has a row for each."""
  from resnet_jax import evaluate, main
  from resnet_jax.tools import table

  run = tmp_path / "run"
  common = [f"--config.data.data_dir={fake_imagenet / 'folder'}", "--config.data.image_size=32",
            "--config.data.eval_resize=36", "--config.eval_batch_size=4",
            f"--config.data.eval_label_file={fake_imagenet / 'folder' / 'val_labels.txt'}"]
  main.main([f"--config={ROOT}/configs/imagenet.py:depth=18,batch=4", f"--workdir={run}",
             "--config.num_train_steps=2", *common])
  (tmp_path / "real.json").write_text(json.dumps([[1], [2, 3], [], [4], [5]]))
  sets = f"imagenet_v2={other_sets / 'v2'},real={tmp_path / 'real.json'},imagenet_r={other_sets / 'subset'}"
  records = evaluate.main([f"--config={ROOT}/configs/imagenet.py:depth=18,batch=4,{sets}", f"--workdir={run}",
                           *common])
  by_name = {r["evaluation"]: r for r in records}
  assert set(by_name) == {None, "imagenet_v2", "real", "imagenet_r"}
  assert "source" not in by_name[None] and by_name[None]["results"]["examples"] == 5
  assert by_name["imagenet_v2"]["source"]["examples"] == 6 and by_name["imagenet_v2"]["split"] == str(other_sets / "v2")
  assert by_name["imagenet_r"]["source"]["classes"] == 2 and by_name["imagenet_r"]["results"]["examples"] == 6
  real = by_name["real"]
  assert real["split"] == "val with ReaL labels" and real["source"]["scored"] == 4
  assert real["results"]["examples"] == 4 and "top5" not in real["results"]
  capsys.readouterr()
  table.main([str(run)])
  printed = capsys.readouterr().out
  assert "(val with ReaL labels)" in printed and f"({other_sets / 'subset'}, among its own classes)" in printed


def test_a_tfds_set_and_real_labels_on_a_tfds_build_read_as_the_folder_does(fake_imagenet, tmp_path):
  """The fake ImageNet's tfds build as a set from another source (its validation split) holds the
  folder's labels; ReaL's sets are found by the records' file names as by the folder's."""
  from resnet_jax.data.eval_sets import load
  from resnet_jax.data.streamed import FolderSource

  config = _config(fake_imagenet)
  train = FolderSource(str(fake_imagenet / "folder"), "train")
  (tmp_path / "real.json").write_text(json.dumps([[1], [2, 3], [], [4], [5]]))
  tfds_set = eval_set(source="tfds", data_dir=str(fake_imagenet / "tfds"), name="imagenet2012", split="validation",
                      real_labels=str(tmp_path / "real.json"))
  source, how = load(tfds_set, config, train)
  folder, folder_how = load(eval_set(real_labels=str(tmp_path / "real.json")), config, train)
  by_name = {source.file_name(i): (source.read(i)[1], how.label_sets[i].tolist()) for i in range(len(source))}
  assert by_name == {folder.file_name(i): (folder.labels[i], folder_how.label_sets[i].tolist()) for i in range(5)}
  assert how.description["source"] == "tfds" and how.description["scored"] == 4
