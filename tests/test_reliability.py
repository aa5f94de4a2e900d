"""Nothing lost, mislabelled or silently corrupted: the trainer and its readers under fault
injection (a concurrent evaluator, a second trainer, Ctrl-C, a diverging rate, a bad validation
image), and the one-line errors of the commands."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from runs import ROOT, evaluate_here, metrics, saved_steps, start, wait_until

from conftest import load_config
from resnet_jax import cli
from resnet_jax.checkpoint import DIVERGED_FIX
from resnet_jax.errors import ConfigError, DataError, TrainingDiverged, WorkdirInUse
from resnet_jax.lock import WorkdirLock

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves these out


def test_a_running_trainer_is_neither_harmed_by_readers_nor_joined_by_a_second_trainer(tmp_path):
  """One trainer saving every step. Meanwhile: the evaluate command's restore of the run's newest
  checkpoint, over and over, twice the whole evaluate command followed by the table of its records
  and the plot of the run's curves (files the trainer is writing); then a second trainer with another
  learning rate; then Ctrl-C. Before: opening the checkpoints cleaned up temporary directories, deleting the
  trainer's save in progress (the trainer died), and the second trainer joined in silently,
  interleaving its metrics and checkpoints with the first's."""
  from resnet_jax import main
  from resnet_jax.checkpoint import weights_from_run
  from resnet_jax.experiment import setup
  from resnet_jax.tools import plot, table
  config = load_config("mnist_demo", "depth=8,batch=32,steps=400")
  config.eval_batch_size = 96
  experiment = setup(config)
  first = start(tmp_path, 400, "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=400")
  wait_until(lambda: saved_steps(tmp_path), first, "a first checkpoint")
  restored, tabled = [], []
  while len(restored) < 8 and first.poll() is None:
    restored.append(weights_from_run(experiment, str(tmp_path), None)[0])
    if len(restored) in (1, 5):  # the whole evaluate command, then the table and plot of the run
      evaluate_here(tmp_path, 400)
      tabled.append(int(table.main([str(tmp_path)]).splitlines()[-1].split("|")[4].replace(",", "")))  # its steps
      plot.main([str(tmp_path), f"--output={tmp_path / 'curves.png'}"])
  with pytest.raises(WorkdirInUse) as second:  # a second trainer, here in this process
    main.main(["--config=configs/mnist_demo.py:depth=8,batch=32,steps=400", f"--workdir={tmp_path}",
               "--config.schedule.learning_rate=0.5"])
  first.send_signal(signal.SIGINT)  # Ctrl-C: saves at the next step boundary and exits 0
  output, _ = first.communicate(timeout=120)
  assert first.returncode == 0 and "preempted at step" in output, output[-3000:]
  assert "press Ctrl-C again to abort at once" in output
  assert len(restored) == 8 and restored == sorted(restored), restored
  assert len(tabled) == 2 and tabled == sorted(tabled) and (tmp_path / "curves.png").stat().st_size > 0, tabled
  assert str(second.value).startswith(
      f"{tmp_path} is in use by another trainer (host {socket.gethostname()}, pid {first.pid}, since ")
  steps = [r["step"] for r in metrics(tmp_path) if "train/loss" in r]
  assert steps == list(range(1, len(steps) + 1)) == saved_steps(tmp_path)  # one run's, every one saved
  assert not (tmp_path / "LOCK").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_a_live_one_refused(tmp_path, caplog):
  gone = subprocess.Popen(["true"])
  gone.wait()
  (tmp_path / "LOCK").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "start_time": "1",
                                             "since": "2026-01-01T00:00:00"}))
  lock = WorkdirLock(tmp_path)
  lock.acquire()
  assert "taking over the lock" in caplog.text and json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
  with pytest.raises(WorkdirInUse, match=f"pid {os.getpid()}"):
    WorkdirLock(tmp_path).acquire()  # this process is alive
  lock.release()
  (tmp_path / "LOCK").write_text(json.dumps({"host": "another-host", "pid": 1, "since": "2026-01-01T00:00:00"}))
  with pytest.raises(WorkdirInUse, match="host another-host, pid 1, since 2026-01-01T00:00:00.*delete .*LOCK"):
    WorkdirLock(tmp_path).acquire()


def test_a_second_ctrl_c_aborts_at_once_without_waiting_for_the_step():
  """The first Ctrl-C only asks for a save at the next step boundary (end to end in the test above);
  the second raises KeyboardInterrupt from the handler, wherever the loop is."""
  from resnet_jax.checkpoint import PreemptionWatch
  watch = PreemptionWatch()
  try:
    handler = signal.getsignal(signal.SIGINT)
    assert handler == watch._on_signal and not watch.requested(1)
    handler(signal.SIGINT, None)
    assert watch.requested(1)
    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
      handler(signal.SIGINT, None)
  finally:
    watch.restore_handler()
  assert signal.getsignal(signal.SIGINT) != watch._on_signal


def test_a_diverging_rate_never_writes_a_non_finite_checkpoint(tmp_path):
  """lr 1e39: the state after step 1 is all NaN while its loss was finite. Before: it was saved as
  'the last good checkpoint' and every rerun, even at a sane rate, restored it and failed. (That
  a checkpoint holding NaNs is not restored is tested in test_checkpoint.py.)"""
  from resnet_jax.train import train_and_evaluate
  config = load_config("mnist_demo", "depth=8,batch=32,steps=6")
  config.eval_batch_size, config.checkpoint_every_steps, config.schedule.learning_rate = 96, 1, 1e39
  with pytest.raises(TrainingDiverged) as error:
    train_and_evaluate(config, str(tmp_path))
  assert str(error.value) == (
      "the train state after step 1 holds non-finite values (75,002 in params) and was not saved; no checkpoint "
      f"was written. {DIVERGED_FIX}")
  assert saved_steps(tmp_path) == []


def test_config_and_command_line_mistakes_are_one_error_line_each(tmp_path, capsys):
  from resnet_jax import main
  (tmp_path / "a_file").write_text("")
  tiny = ["--config=configs/mnist_demo.py:depth=8,batch=32,steps=10", f"--workdir={tmp_path / 'run'}"]
  with pytest.raises(SystemExit) as exit_:
    main.main([*tiny, "--config.batch_sise=3"])
  assert exit_.value.code == 2 and capsys.readouterr().err == (
      "error: the config has no field 'batch_sise'; did you mean 'batch_size'?\n")
  with pytest.raises(ConfigError, match=f"^cannot create the workdir {tmp_path / 'a_file' / 'run'}"):
    main.main([*tiny, f"--workdir={tmp_path / 'a_file' / 'run'}"])
  assert not (tmp_path / "run").exists()
  # From the shell, as a user sees it: one line, no traceback.
  missing = subprocess.run([sys.executable, "-m", "resnet_jax.main", "--config=configs/nope.py", "--workdir=x"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert missing.returncode == 2 and missing.stderr.strip() == (
      "error: cannot load the config file configs/nope.py: [Errno 2] No such file or directory: 'configs/nope.py'")


def test_a_user_error_is_one_line_but_a_bug_keeps_its_traceback(capsys):
  def user_mistake(argv):
    raise ConfigError("batch_size=3 is wrong")

  def bug(argv):
    raise ValueError("shapes (3, 4) and (5,) do not align")

  with pytest.raises(SystemExit) as exit_:
    cli.run(user_mistake)
  assert exit_.value.code == 1 and capsys.readouterr().err == "error: batch_size=3 is wrong\n"
  with pytest.raises(ValueError, match="do not align"):
    cli.run(bug)


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory):
  from resnet_jax.train import train_and_evaluate
  workdir = tmp_path_factory.mktemp("six")
  config = load_config("mnist_demo", "depth=8,batch=32,steps=6")
  config.eval_batch_size, config.log_every_steps, config.checkpoint_every_steps = 96, 1, 3
  train_and_evaluate(config, str(workdir))
  return config, workdir


def test_fewer_steps_than_the_checkpoint_or_another_network_is_an_error_not_a_mislabel(six_step_run):
  from resnet_jax.train import train_and_evaluate
  config, workdir = six_step_run
  records = sorted(p.name for p in (workdir / "eval").iterdir())
  for field, value, message in (
      ("num_train_steps", 3, "is step 6, past this config's end at step 3"),
      ("model.depth", 14, "trained with other settings or data; changed: model.depth 8 -> 14. "),
      ("ema_decay", 0.99, "changed: ema_decay 0.0 -> 0.99. .* --amend=ema_decay"),
  ):
    changed = config.copy_and_resolve_references()
    changed.update_from_flattened_dict({field: value})
    with pytest.raises(ConfigError, match=message):
      train_and_evaluate(changed, str(workdir))
  assert sorted(p.name for p in (workdir / "eval").iterdir()) == records  # no final record for step 3
  assert saved_steps(workdir) == [3, 6] and not (workdir / "unreadable_checkpoints").exists()


def test_a_bad_validation_image_is_named_after_the_steps_checkpoint_is_saved(tmp_path):
  import tensorflow as tf

  from resnet_jax.train import train_and_evaluate
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for synset in ("a", "b"):
      (tmp_path / split / synset).mkdir(parents=True)
      for i in range(4):
        image = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
        (tmp_path / split / synset / f"{i}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
  (tmp_path / "val" / "b" / "3.JPEG").write_bytes(b"\xff\xd8\xff truncated")
  config = load_config("imagenet", "depth=18,batch=4")
  config.data.update(dict(data_dir=str(tmp_path), eval_split="val", image_size=32, eval_resize=36))
  config.model.num_classes, config.eval_batch_size, config.num_train_steps = 2, 4, 2
  with pytest.raises(DataError, match="val/b/3.JPEG .*in the val split"):
    train_and_evaluate(config, str(tmp_path / "run"))
  assert saved_steps(tmp_path / "run") == [2]
