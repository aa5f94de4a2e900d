"""Nothing mislabelled: a run is pinned to the settings and data it trained on (run.json); a resume
that changes them is refused before anything compiles unless amended, and an amendment is recorded
where the results are read; records are written once; the data is named by what it is; and the
faults of a full disk, a read-only run and a malformed label file end in one line."""

import hashlib
import io
import logging
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from runs import ROOT, by_step, command, evaluate_here, losses, saved_steps, train_here

from conftest import load_config
from resnet_jax import provenance, rundir
from resnet_jax.data import streamed
from resnet_jax.data.inputs import make_inputs
from resnet_jax.errors import ConfigError, DataError
from resnet_jax.tools import table


# --- the comparison itself -------------------------------------------------------------------------

def test_a_changed_setting_is_refused_unless_amended_and_free_ones_pass():
  old = load_config("mnist_demo").to_dict()
  new = load_config("mnist_demo", "batch=64,steps=600").to_dict()  # batch (and the rate it scales) and length
  data = {"source": "x", "splits": {"train": {"examples": 4}}}
  with pytest.raises(ConfigError) as refused:
    provenance.compare({"config": old, "data": data}, new, data, [], "W", resuming=True)
  message = str(refused.value)
  assert "changed: batch_size 128 -> 64; schedule.boundaries [150, 225] -> [300, 450]; schedule.learning_rate 0.1 -> 0.05" in message
  assert "--amend=batch_size,schedule.boundaries,schedule.learning_rate" in message and "num_train_steps" not in message
  amend = ["batch_size", "schedule.boundaries", "schedule.learning_rate"]
  found = provenance.compare({"config": old, "data": data}, new, data, amend, "W", resuming=True)
  assert [(c.field, c.free) for c in found] == [("batch_size", False), ("num_train_steps", True),
                                               ("schedule.boundaries", False), ("schedule.learning_rate", False)]
  with pytest.raises(ConfigError, match="--amend names seed, which did not change"):
    provenance.compare({"config": old, "data": data}, new, data, [*amend, "seed"], "W", resuming=True)
  # Before any checkpoint nothing trained is kept: the new settings start the run afresh, recorded.
  assert provenance.compare({"config": old, "data": data}, new, data, [], "W", resuming=False) == found
  with pytest.raises(ConfigError, match="log_every_steps, which can change freely"):
    provenance.check_amend_names(["log_every_steps"])


def test_a_setting_added_since_the_run_was_recorded_passes_at_its_default_only():
  """A run recorded before model.blurpool and mix existed resumes under code that has them, at the
  defaults that train as before; set otherwise, they are changes like any other."""
  recorded = load_config("mnist_demo").to_dict()
  del recorded["model"]["blurpool"], recorded["mix"]
  data = {"source": "x", "splits": {}}
  assert provenance.compare({"config": recorded, "data": data}, load_config("mnist_demo").to_dict(), data, [], "W",
                            resuming=True) == []
  changed = load_config("mnist_demo")
  changed.model.blurpool, changed.mix.mixup_alpha = True, 0.2
  with pytest.raises(ConfigError, match=r"changed: mix.mixup_alpha \(absent\) -> 0.2; model.blurpool \(absent\) -> true"):
    provenance.compare({"config": recorded, "data": data}, changed.to_dict(), data, [], "W", resuming=True)


def test_the_data_is_compared_split_by_split_and_a_named_evaluation_may_come_and_go():
  old = {"source": "folder", "location": "/d", "classes": ["a", "b"], "splits": {"train": {"examples": 8}, "val": {"examples": 4}}}
  assert provenance.data_changes(old, {**old, "splits": {"train": {"examples": 8}, "test": {"examples": 9}}}) == []
  changed = provenance.data_changes(old, {**old, "classes": ["a"], "splits": {"train": {"examples": 7}}})
  assert [str(c) for c in changed] == ['dataset.classes ["a", "b"] -> ["a"]', "dataset.splits.train.examples 8 -> 7"]
  assert not any(c.free for c in changed)


def test_a_record_is_written_once_and_a_taken_name_gets_a_number(tmp_path):
  config = load_config("mnist_demo")
  results = {"top1": 90.0, "top1_error": 10.0, "loss": 0.3, "examples": 10}
  first = rundir.write_record(tmp_path, 6, config, results, final=True)
  before = first.read_bytes()
  second = rundir.write_record(tmp_path, 6, config, dict(results, top1=50.0), final=True)
  assert (first.name, second.name) == ("step_6_live_center.json", "step_6_live_center_2.json")
  assert first.read_bytes() == before and not list((tmp_path / "eval").glob(".*"))
  evaluated = rundir.write_record(tmp_path, 6, config, results, by="evaluate", split="train[45000:]")
  assert evaluated.name == "evaluate_step_6_live_center_train_45000.json"


# --- the data ---------------------------------------------------------------------------------------

def _image(rng, kind="JPEG", size=(36, 40)) -> bytes:
  data = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(data, format=kind)
  return data.getvalue()


def make_folder(root: pathlib.Path, classes=("a", "b", "c"), counts=(("train", 4), ("val", 2))) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for split, count in counts:
    for name in classes:
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        (root / split / name / f"{i}.JPEG").write_bytes(_image(rng))
  return root


def folder_config(root, **data):
  """configs/imagenet.py on a folder of 32-pixel crops, with a CIFAR-style ResNet-8: seconds a step."""
  config = load_config("imagenet", "batch=4")
  config.model.update(dict(dataset="cifar", depth=8, shortcut="A", num_classes=3))
  config.data.update(dict(data_dir=str(root), image_size=32, eval_resize=36, **data))
  config.eval_batch_size, config.log_every_steps = 4, 1
  return config


def test_every_decodable_format_is_read_and_every_skipped_file_named(tmp_path, caplog):
  root = make_folder(tmp_path, classes=("a", "b"))
  rng = np.random.default_rng(1)
  for kind, suffix in (("BMP", ".bmp"), ("WEBP", ".webp"), ("GIF", ".gif"), ("PNG", ".png")):
    (root / "train" / "a" / f"x{suffix}").write_bytes(_image(rng, kind))
  (root / "train" / "b" / "scan.tiff").write_bytes(_image(rng, "TIFF"))
  (root / "train" / "b" / "notes.txt").write_text("not an image")
  train = streamed.FolderSource(str(root), "train")
  assert len(train) == 12 and {pathlib.Path(p).suffix for p in train.paths} >= {".bmp", ".webp", ".gif", ".png"}
  assert "2 file(s) of" in caplog.text and "1 .tiff" in caplog.text and "1 .txt" in caplog.text
  assert "Convert any that are images" in caplog.text
  batch = next(make_inputs(folder_config(root, eval_split="val")).train(0))  # they decode in the pipeline too
  assert batch["image"].shape == (4, 32, 32, 3)


def test_class_indices_come_from_the_train_split_whatever_the_splits_are_called(tmp_path, caplog):
  root = make_folder(tmp_path, counts=(("training", 2), ("validation", 1)))
  shutil.rmtree(root / "validation" / "b")  # an eval class with no images: reported, and c keeps index 2
  (root / "validation" / "c" / "0.JPEG").rename(root / "validation" / "c" / "kept.JPEG")
  val = streamed.FolderSource(str(root), "validation", classes_from="training")
  assert val.classes == ["a", "b", "c"] and list(val.labels) == [0, 2]
  assert "1 class(es) have no images in" in caplog.text and "are not scored: this split covers 2 of the 3 classes: b" in caplog.text


@pytest.mark.parametrize("lines, message", [
    ("0.JPEG a\n1.JPEG\n", "labels.txt line 2 is not '<file name> <class folder name>': '1.JPEG'"),
    ("0.JPEG a extra\n", "line 1 is not '<file name> <class folder name>'"),
    (None, "cannot read the label file data.eval_label_file=.*labels.txt"),
])
def test_a_malformed_or_missing_label_file_is_one_error_naming_the_line(tmp_path, lines, message):
  root = make_folder(tmp_path / "data", classes=("a",), counts=(("train", 1),))
  (root / "flat").mkdir()
  (root / "flat" / "0.JPEG").write_bytes((root / "train" / "a" / "0.JPEG").read_bytes())
  if lines is not None:
    (tmp_path / "labels.txt").write_text(lines)
  with pytest.raises(DataError, match=message):
    streamed.FolderSource(str(root), "flat", label_file=str(tmp_path / "labels.txt"))


@pytest.mark.parametrize("edit, field", [
    ("add an image", "dataset.splits.train.examples"),
    ("delete an image", "dataset.splits.train.examples"),
    ("rename an image", "dataset.splits.train.ids_sha256"),
    ("move an image to another class", "dataset.splits.train.ids_sha256"),
    ("delete a class", "dataset.classes"),
    ("rename a class", "dataset.classes"),
    ("add a validation image", "dataset.splits.val.examples"),
])
def test_every_edit_of_the_images_changes_the_fingerprint(tmp_path, edit, field):
  root = make_folder(tmp_path)
  before = make_inputs(folder_config(root, eval_split="val")).fingerprint
  a = root / "train" / "a"
  {"add an image": lambda: (a / "new.JPEG").write_bytes((a / "0.JPEG").read_bytes()),
   "delete an image": lambda: (a / "0.JPEG").unlink(),
   "rename an image": lambda: (a / "0.JPEG").rename(a / "9.JPEG"),
   "move an image to another class": lambda: (a / "0.JPEG").rename(root / "train" / "b" / "9.JPEG"),
   "delete a class": lambda: [shutil.rmtree(root / split / "b") for split in ("train", "val")],
   "rename a class": lambda: [(root / split / "c").rename(root / split / "d") for split in ("train", "val")],
   "add a validation image": lambda: (root / "val" / "a" / "9.JPEG").write_bytes((a / "1.JPEG").read_bytes()),
   }[edit]()
  after = make_inputs(folder_config(root, eval_split="val")).fingerprint
  assert field in [change.field for change in provenance.data_changes(before, after)]


# --- resumes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """ResNet-8 on the digits, stopped after 2 of its 6 steps (a checkpoint at step 2)."""
  workdir = tmp_path_factory.mktemp("stopped") / "run"
  train_here(workdir, 6, "--config.num_train_steps=2")
  return workdir


def _hashes(directory: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_resume_with_changed_settings_is_refused_before_compiling_then_amended_truthfully(
    stopped_run, tmp_path, monkeypatch):
  from resnet_jax import train
  workdir = tmp_path / "run"
  shutil.copytree(stopped_run, workdir)
  kept = _hashes(workdir)

  def no_compiling(*_):
    raise AssertionError("the refusal must come before anything compiles")
  monkeypatch.setattr(train, "compile_train_step", no_compiling)
  for setting, shown in (
      ("--config.schedule.learning_rate=0.05", "schedule.learning_rate 0.025 -> 0.05"),
      ("--config.batch_size=16", "batch_size 32 -> 16"),
      ("--config.seed=7", "seed 0 -> 7"),
      ("--config.data.augmentation=none", 'data.augmentation "crop" -> "none"'),
      (f"--config.data.data_dir={tmp_path}", f'dataset.location "" -> "{tmp_path}"'),
  ):
    with pytest.raises(ConfigError, match="was trained with other settings or data") as refused:
      train_here(workdir, 6, setting)
    assert shown in str(refused.value) and "--amend=" in str(refused.value), refused.value
  assert _hashes(workdir) == kept  # nothing written: no metrics, no checkpoint, no identity
  monkeypatch.undo()

  train_here(workdir, 6, "--config.schedule.learning_rate=0.05", "--amend=schedule.learning_rate")
  rates = by_step(workdir, "train/learning_rate")
  assert rates[2] == pytest.approx(0.025) and rates[3] == pytest.approx(0.05)  # the history says so too
  history = [(h["step"], h["field"], h["old"], h["new"], h["free"]) for h in rundir.read_identity(workdir)["history"]]
  assert history == [(2, "num_train_steps", 2, 6, True), (2, "schedule.learning_rate", 0.025, 0.05, False)]
  assert [h["field"] for h in rundir.read_config(workdir)["history"]] == [field for _, field, *_ in history]
  final = rundir.final_record(workdir)
  assert [h["field"] for h in final["run"]["history"]] == [field for _, field, *_ in history]
  assert "amended: schedule.learning_rate 0.025 -> 0.05 at step 2" in table.main([str(workdir)])


@pytest.mark.slow
def test_data_edited_between_stop_and_resume_is_refused_and_moved_data_is_named(tmp_path):
  root = make_folder(tmp_path / "flowers")
  workdir = tmp_path / "run"
  arguments = [f"--config={ROOT}/configs/imagenet.py:batch=4", f"--workdir={workdir}", f"--config.data.data_dir={root}",
               "--config.model.dataset=cifar", "--config.model.depth=8", "--config.model.shortcut=A",
               "--config.model.num_classes=3", "--config.data.image_size=32", "--config.data.eval_resize=36",
               "--config.eval_batch_size=4"]
  from resnet_jax import main
  main.main([*arguments, "--config.num_train_steps=1"])
  record = rundir.final_record(workdir)
  # Named by its folder, not as ImageNet; 3 classes: top-5 is no result.
  assert record["data"] == "flowers" and "top5" not in record["results"] and "top1" in record["results"]
  cells = [cell.strip() for cell in table.main([str(workdir)]).splitlines()[2].split("|")[1:-1]]
  assert cells[1:6] == ["flowers (val)", "center", "1", f"{record['results']['top1_error']:.2f}", "-"]
  (root / "train" / "a" / "new.JPEG").write_bytes((root / "train" / "a" / "0.JPEG").read_bytes())
  with pytest.raises(ConfigError, match=r"changed: dataset.splits.train.examples 12 -> 13; dataset.splits.train.ids_sha256"):
    main.main([*arguments, "--config.num_train_steps=3"])
  (root / "train" / "a" / "new.JPEG").unlink()
  for split in ("train", "val"):  # class b deleted: c's label would become b's
    shutil.move(root / split / "b", tmp_path / split)
  with pytest.raises(ConfigError, match=r'changed: dataset.classes \["a", "b", "c"\] -> \["a", "c"\]'):
    main.main([*arguments, "--config.num_train_steps=3"])
  for split in ("train", "val"):
    shutil.move(tmp_path / split, root / split / "b")
  moved = tmp_path / "moved"
  shutil.copytree(root, moved)
  with pytest.raises(ConfigError, match=f'dataset.location "{root}" -> "{moved}"'):
    main.main([*arguments, "--config.num_train_steps=3", f"--config.data.data_dir={moved}"])
  main.main([*arguments, "--config.num_train_steps=3", f"--config.data.data_dir={moved}", "--amend=dataset.location"])
  history = rundir.final_record(workdir)["run"]["history"]
  assert saved_steps(workdir)[-1] == 3 and ("dataset.location", False) in [(h["field"], h["free"]) for h in history]


# --- records ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
  """Two finished 4-step runs, B (seed 1) and C (seed 0), each with its test-set record."""
  root = tmp_path_factory.mktemp("finished")
  for name, seed in (("B", 1), ("C", 0)):
    train_here(root / name, 4, f"--config.seed={seed}")
  return root


@pytest.mark.slow
def test_evaluating_a_finished_run_any_way_leaves_its_records_as_written(finished_runs, tmp_path, capsys):
  root = tmp_path / "runs"
  shutil.copytree(finished_runs, root)
  workdir, other = root / "C", root / "B"
  before = _hashes(workdir / "eval")
  final = rundir.final_record(workdir)
  # The evaluate command with the config file's defaults (300 steps, batch 128): it scores with the
  # run's own config and records that, under its own name.
  from resnet_jax import evaluate
  (default,) = evaluate.main([f"--config={ROOT}/configs/mnist_demo.py", f"--workdir={workdir}"])
  assert default["by"] == "evaluate" and not default["final"]
  trained = default["config"]
  assert (trained["model"]["depth"], trained["num_train_steps"], trained["batch_size"], trained["eval_batch_size"]) == (8, 4, 32, 500)
  assert default["results"]["top1"] == final["results"]["top1"] and default["run"]["id"] == rundir.read_identity(workdir)["id"]
  (on_train,) = evaluate_here(workdir, 4, "--config.data.eval_split=train")
  assert on_train["split"] == "train" and on_train["results"]["examples"] == 4000
  (of_b,) = evaluate_here(workdir, 4, f"--checkpoint={other / 'checkpoints' / '4'}", f"--workdir={workdir}")
  assert of_b["run"]["workdir"] == str(other) and of_b["results"]["top1"] == rundir.final_record(other)["results"]["top1"]
  assert of_b["results"]["loss"] != pytest.approx(final["results"]["loss"])
  capsys.readouterr()
  train_here(workdir, 4, "--config.data.eval_split=train")  # a rerun of the finished run, scoring another split
  assert "finished at step 4" in capsys.readouterr().out
  after = _hashes(workdir / "eval")
  assert {name: after[name] for name in before} == before and rundir.final_record(workdir) == final
  assert sorted(set(after) - set(before)) == ["evaluate_step_4_live_center_test.json",
                                              "evaluate_step_4_live_center_test_2.json",
                                              "evaluate_step_4_live_center_train.json"]
  rows = table.main([str(workdir)]).splitlines()[2:]
  assert sum(f"evaluate of {other}" in row for row in rows) == 1 and sum("| final |" in row for row in rows) == 1


# --- faults: one line each, nothing left behind -------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
  """A tmpfs of 2.5 MB mounted at tmp_path/disk; skipped where mounting is not allowed (not root)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(disk)], capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'}); run as root")
  yield disk
  subprocess.run(["umount", "-l", str(disk)], check=False)


def _run(module, workdir, steps, *overrides):
  return subprocess.run(command(module, workdir, steps, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=400)


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_full_disk_at_start_or_at_a_save_is_one_line_and_the_run_resumes_once_there_is_room(small_disk, caplog):
  from resnet_jax.errors import DiskFull
  workdir = small_disk / "run"
  filler = small_disk / "filler"
  with filler.open("wb") as f, pytest.raises(OSError, match="No space left on device"):
    while True:
      f.write(b"\0" * 65536)
      f.flush()
  with pytest.raises((DiskFull, ConfigError), match="No space left on device.*--workdir"):
    train_here(workdir, 5)
  assert not (workdir / rundir.LOCK).exists()  # the next start is not refused
  filler.unlink()
  # Room for three checkpoints (keep_checkpoints), not a fourth: refused before Orbax writes a byte,
  # so nothing logs an error but the command's one line.
  with caplog.at_level(logging.ERROR), pytest.raises(DiskFull) as refused:
    train_here(workdir, 5, "--config.checkpoint_every_steps=1")
  newest = saved_steps(workdir)[-1]
  assert f"no room for checkpoint {newest + 1}" in str(refused.value) and f"checkpoint {newest} is intact" in str(refused.value)
  assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
  assert not list((workdir / "checkpoints").glob("*tmp*"))
  subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
  train_here(workdir, 5, "--config.checkpoint_every_steps=1")
  assert saved_steps(workdir)[-1] == 5 and sorted(losses(workdir)) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_evaluate_on_a_read_only_run_prints_the_score_then_one_line(small_disk, finished_runs):
  subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
  shutil.copytree(finished_runs / "C", small_disk / "C")
  before = _hashes(small_disk / "C")
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  result = _run("resnet_jax.evaluate", small_disk / "C", 4)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "step 4 (live weights), mnist_bundled test, center protocol: top-1" in result.stdout
  (line,) = _error_lines(result.stderr)
  assert "the score above is not recorded" in line and "Read-only file system" in line
  assert _hashes(small_disk / "C") == before


def test_a_lock_whose_write_fails_is_not_left_behind(tmp_path, monkeypatch):
  from resnet_jax import lock
  def full(*_, **__):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(lock.json, "dump", full)
  with pytest.raises(OSError):
    lock.WorkdirLock(tmp_path).acquire()
  assert not (tmp_path / rundir.LOCK).exists() and lock.holder(tmp_path) is None
  monkeypatch.undo()
  held = lock.WorkdirLock(tmp_path)
  held.acquire()
  assert lock.holder(tmp_path).startswith("host ")
  held.release()


def test_a_folder_run_is_named_by_its_folder_unless_data_name_says_otherwise(tmp_path):
  from resnet_jax.config import resolve_data_name
  config = folder_config(f"{tmp_path}/ILSVRC2012/")
  resolve_data_name(config)
  assert config.data.name == "ILSVRC2012"
  claimed = folder_config(tmp_path, name="imagenet2012")
  resolve_data_name(claimed)
  assert claimed.data.name == "imagenet2012" and load_config("imagenet", "source=tfds").data.name == "imagenet2012"
