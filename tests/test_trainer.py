"""The trainer end to end, as a user runs it: the train and evaluate commands in this process, and
`python -m resnet_jax.main` in a fresh one where the process is the point (a kill, a signal, eight
devices, tf.data's threads at exit)."""

import json
import logging
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from runs import ROOT, by_step, environment, evaluate_here, leaves, losses, metrics, read_state, saved_steps, start, \
    train, train_here, wait_until

from conftest import load_config
from resnet_jax import main, rundir
from resnet_jax.checkpoint import MANIFEST
from resnet_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged

pytestmark = pytest.mark.slow  # whole training runs: `make test-fast` leaves these out


def wait_for_checkpoint(process, workdir, at_least):
  wait_until(lambda: any(s >= at_least for s in saved_steps(workdir)), process, f"a checkpoint >= {at_least}")


def test_one_device_and_eight_devices_give_the_same_losses_and_bn_statistics(tmp_path):
  # A small learning rate keeps float32 reduction-order noise (~1e-7) from growing over the steps.
  settings = ["--config.schedule.learning_rate=0.02", "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=5"]
  runs = {1: tmp_path / "d1", 8: tmp_path / "d8"}
  train_here(runs[1], 5, *settings)  # this process has one CPU device
  result = train(runs[8], 5, *settings, devices=8)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 8 device(s)" in result.stderr
  one, eight = losses(runs[1]), losses(runs[8])
  assert sorted(one) == list(range(1, 6))
  np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=1e-5)
  # BN statistics of the same batch from the same weights: global over the 8 devices' shards. (Later
  # steps drift by more: near-cancelling gradient sums such as BN biases' amplify the noise.)
  for a, b in zip(leaves(read_state(runs[1], 1)["batch_stats"]), leaves(read_state(runs[8], 1)["batch_stats"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  record = json.loads((runs[8] / "eval" / "step_5_live_center.json").read_text())
  assert record["results"]["examples"] == 1000 and record["hardware"]["devices"] == 8  # 1000 = 10 x 96 + 40
  in_process = json.loads((runs[1] / "eval" / "step_5_live_center.json").read_text())
  assert in_process["hardware"]["devices"] == 1 and in_process["command"].startswith(
      f"python -m resnet_jax.main --config={ROOT}/configs/mnist_demo.py:depth=8")  # as a user would type it


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """24 uninterrupted steps, checkpoints every 4, evaluations every 5 steps."""
  workdir = tmp_path_factory.mktemp("straight")
  outcome = train_here(workdir, 24, "--config.checkpoint_every_steps=4", "--config.eval_every_epochs=0.04")
  return workdir, outcome


def assert_same_run(workdir, reference):
  np.testing.assert_array_equal(np.array(sorted(losses(workdir).items())),
                                np.array(sorted(losses(reference).items())))
  for a, b in zip(leaves(read_state(workdir, 24)), leaves(read_state(reference, 24))):
    np.testing.assert_array_equal(a, b)


# Kills inside saves, in order on one run: (the step whose save is held open, where it is held).
KILLS_INSIDE_SAVES = [(8, "commit"), (12, "seal"), (16, "commit")]
HOLD_SECONDS = 2.5


def save_in_flight(workdir, step) -> dict[str, bool]:
  """What is on disk of step's save: Orbax's temporary directory, the step, its manifest."""
  directory = workdir / "checkpoints"
  return {"temporary": any(directory.glob(f"{step}.orbax-checkpoint-tmp*")),
          "in_place": (directory / str(step)).is_dir(),
          "manifest": (directory / str(step) / MANIFEST).exists()}


def test_sigkills_inside_saves_leave_a_run_that_resumes_bit_identical(straight_run, tmp_path, caplog):
  """Each kill lands while a save is in flight, at a seeded moment of a window held open
  (tests/held_save.py), and the process is frozen (SIGSTOP) to record what was on disk at that
  instant: `commit`, the step still in Orbax's temporary directory; `seal`, in place without its
  manifest. The next start resumes from the newest checkpoint in place (a sealless one restored
  unverified, with a warning) and the run ends bit-identical to one never interrupted."""
  reference, _ = straight_run
  settings = ["--config.checkpoint_every_steps=4", "--config.eval_every_epochs=0.04"]
  expected_in_flight = {"commit": {"temporary": True, "in_place": False, "manifest": False},
                        "seal": {"temporary": False, "in_place": True, "manifest": False}}
  rng = random.Random(0)  # seeded: a failure names kill moments that a rerun reproduces
  resumed_from = None
  for step, phase in KILLS_INSIDE_SAVES:
    process = start(tmp_path, 24, *settings, held_save=(step, phase, HOLD_SECONDS))
    wait_until(lambda: save_in_flight(tmp_path, step) == expected_in_flight[phase], process, f"{phase} of save {step}")
    time.sleep(rng.uniform(0.0, HOLD_SECONDS - 1.0))
    process.send_signal(signal.SIGSTOP)
    on_disk = save_in_flight(tmp_path, step)
    newest_in_place = saved_steps(tmp_path)[-1]
    process.kill()
    output, _ = process.communicate()
    assert on_disk == expected_in_flight[phase], (step, phase, on_disk)
    if resumed_from is not None:
      assert f"resumed from checkpoint {resumed_from}" in output, output[-3000:]
    resumed_from = newest_in_place
  assert (resumed_from, phase) == (15, "commit")  # 16's save was cut short; 15 is the eval step's
  with caplog.at_level(logging.INFO):
    train_here(tmp_path, 24, *settings)
  assert f"resumed from checkpoint {resumed_from}" in caplog.text
  assert_same_run(tmp_path, reference)
  assert not list((tmp_path / "checkpoints").glob("*orbax-checkpoint-tmp*"))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resumes_identically(straight_run, tmp_path):
  reference, _ = straight_run
  # Checkpoints only at the end, so the one found after SIGTERM is the preemption's.
  settings = ["--config.checkpoint_every_steps=1000", "--config.eval_every_epochs=0.04"]
  process = start(tmp_path, 24, *settings)
  wait_for_checkpoint(process, tmp_path, 5)  # the first eval checkpoint: training is under way
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output[-3000:]
  # The step the run reports as preempted is the newest checkpoint. (When SIGTERM lands on an eval
  # step, 10 or 15, that step's save is the preemption's too: a step-number test alone was racy.)
  preempted_at = int(re.search(r"preempted at step (\d+); checkpoint saved", output)[1])
  assert saved_steps(tmp_path)[-1] == preempted_at and 5 <= preempted_at < 24, (saved_steps(tmp_path), output[-2000:])
  train_here(tmp_path, 24, *settings)
  assert_same_run(tmp_path, reference)


def test_keeps_the_last_checkpoints_and_the_best_by_eval_top1(straight_run):
  workdir, _ = straight_run
  evals = by_step(workdir, "eval/top1")
  assert sorted(evals) == [5, 10, 15, 20, 24]
  best = max(evals, key=lambda s: (evals[s], s))
  kept = saved_steps(workdir)
  # Saved at 4, 5, 8, 10, 12, 15, 16, 20, 24: the last three stay, and the best evaluated one.
  assert {16, 20, 24} <= set(kept) and best in kept and len(kept) <= 4, (kept, evals)


def test_evaluate_command_scores_the_checkpoint_and_writes_json(straight_run, capsys):
  workdir, outcome = straight_run
  (record,) = evaluate_here(workdir, 24)
  assert "step 24 (live weights)" in capsys.readouterr().out
  assert record == json.loads((workdir / "eval" / "evaluate_step_24_live_center_test.json").read_text())
  assert record["results"]["top1"] == pytest.approx(by_step(workdir, "eval/top1")[24]) == pytest.approx(outcome["top1"])
  assert record["results"]["top1"] + record["results"]["top1_error"] == pytest.approx(100)
  assert record["results"]["examples"] == 1000
  assert (record["protocol"], record["step"], record["hardware"]["platform"]) == ("center", 24, "cpu")
  # Run in this process, the records name the commands as a user would type them, not pytest's.
  assert record["command"].startswith("python -m resnet_jax.evaluate --config=") and "--workdir=" in record["command"]
  # One checkpoint directory, scored on its own: the numbers the run logged at that step.
  (at_20,) = evaluate_here(workdir, 24, f"--checkpoint={workdir / 'checkpoints' / '20'}")
  assert at_20["step"] == 20 and at_20["results"]["top1"] == pytest.approx(by_step(workdir, "eval/top1")[20])
  eval_losses = by_step(workdir, "eval/loss")  # the loss tells step 20's weights from step 24's
  assert at_20["results"]["loss"] == pytest.approx(eval_losses[20], rel=1e-6) != pytest.approx(eval_losses[24], rel=1e-6)
  # Multi-view protocols need a streamed ImageNet-style set; a wrong network is named as such.
  with pytest.raises(ConfigError, match="data.eval_view='10crop' is not valid for mnist_bundled"):
    evaluate_here(workdir, 24, "--protocol=10crop")
  # Another depth on the command line is not the run's: its checkpoint is scored as it was trained.
  (as_trained,) = evaluate_here(workdir, 24, f"--checkpoint={workdir / 'checkpoints' / '20'}", "--config.model.depth=14")
  assert as_trained["config"]["model"]["depth"] == 8 and as_trained["results"] == at_20["results"]
  with pytest.raises(CheckpointError, match="no checkpoints in .*train first"):
    evaluate_here(workdir / "nothing", 24)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # lr 0.025 for 4 steps, then 2.5e10: the loss blows up a few steps later, or the weights do first and
  # a save refuses them (jax 0.12 reaches non-finite weights at a checkpoint step while the loss that
  # produced them was still finite).
  with pytest.raises(TrainingDiverged) as error:
    train_here(tmp_path, 30, "--config.checkpoint_every_steps=2", "--config.schedule.boundaries=(4,)",
               "--config.schedule.decay_factor=1e12")
  found = re.match(r"(loss is .* at step|the train state after step) (\d+)", str(error.value))
  assert found and "holds only finite values" in str(error.value), error.value
  bad_step = int(found[2])
  kept = saved_steps(tmp_path)
  assert kept and kept[-1] < bad_step
  assert all(np.isfinite(x).all() for x in leaves(read_state(tmp_path)["params"]))


def test_a_non_finite_loss_is_caught_when_read_back_before_any_save_sees_the_state(tmp_path):
  """The same blow-up with no save until the end: only the loss check, reading each step's loss
  back (log_every_steps=1), can stop the run, and it names the step."""
  with pytest.raises(TrainingDiverged, match=r"^loss is (nan|inf|-inf) at step ([5-9]|1\d|2\d); training stopped "
                                             r"and no checkpoint was written"):
    train_here(tmp_path, 30, "--config.checkpoint_every_steps=1000", "--config.schedule.boundaries=(4,)",
               "--config.schedule.decay_factor=1e12")
  assert saved_steps(tmp_path) == []


def test_ema_weights_and_named_evaluations_are_logged_saved_recorded_and_rescored(tmp_path):
  """A run with an EMA of its weights and a second, named evaluation (the training split): each
  (evaluation, weights) pair is logged under its own name and recorded at the end; the EMA is saved
  and restored with the state, so the evaluate command scores both weights to the logged numbers."""
  from resnet_jax.train import train_and_evaluate
  config = load_config("mnist_demo", "depth=8,batch=32,steps=6")
  config.eval_batch_size, config.ema_decay, config.evals = 500, 0.5, {"train": "train"}
  outcome = train_and_evaluate(config, str(tmp_path))
  final = {name: value for record in metrics(tmp_path) if record["step"] == 6 for name, value in record.items()}
  scored = {("", "live"): 1000, ("", "ema"): 1000, ("train", "live"): 4000, ("train", "ema"): 4000}
  for (evaluation, weights), examples in scored.items():
    prefix = rundir.metric_prefix(evaluation or None, weights)
    assert final["step"] == 6 and final[f"{prefix}examples"] == examples, (prefix, final)
    name = f"step_6_{weights}_center{'_' + evaluation if evaluation else ''}.json"
    record = json.loads((tmp_path / "eval" / name).read_text())
    assert record["final"] and record["results"]["top1"] == pytest.approx(final[f"{prefix}top1"])
  assert outcome["loss"] == final["eval/loss"] != final["eval_ema/loss"]  # an EMA of 6 steps scores otherwise
  state = read_state(tmp_path, 6)
  assert any(not np.array_equal(e, p) for e, p in zip(leaves(state["ema_params"]), leaves(state["params"])))
  rescored = evaluate_here(tmp_path, 6, "--config.ema_decay=0.5", "--config.eval_batch_size=500")
  assert [(r["weights"], r["split"]) for r in rescored] == [("live", "test"), ("ema", "test")]
  assert [r["results"]["loss"] for r in rescored] == pytest.approx([final["eval/loss"], final["eval_ema/loss"]])


def test_imagenet_config_trains_from_an_image_folder_and_scores_ten_crops(tmp_path):
  import tensorflow as tf
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("val", 3)):  # 3 classes: 18 train, 9 val images
    for k, synset in enumerate(["n01", "n02", "n03"]):
      (tmp_path / "data" / split / synset).mkdir(parents=True)
      for i in range(count):
        image = rng.integers(0, 255, (40 + 3 * i, 48, 3), dtype=np.uint8)
        (tmp_path / "data" / split / synset / f"{i}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
  arguments = imagenet_arguments("depth=18,batch=8", tmp_path / "run", tmp_path / "data",
                                 "--config.data.eval_view=10crop", "--config.model.num_classes=3",
                                 "--config.eval_batch_size=8")
  outcome = main.main(arguments)
  assert outcome["examples"] == 9  # 9 = 8 + 1: the second batch padded
  record = json.loads((tmp_path / "run" / "eval" / "step_4_live_10crop.json").read_text())
  assert record["split"] == "val" and record["results"] == {k: outcome[k] for k in record["results"]}
  assert [r["step"] for r in metrics(tmp_path / "run") if "eval/top1" in r] == [2, 4]  # 18 // 8 = 2 steps an epoch
  with pytest.raises(ConfigError, match="set --config.data.data_dir to the folder that holds train/ and the eval split's folder"):
    main.main(arguments[:1] + [f"--workdir={tmp_path / 'other'}"])


def test_imagenet_config_trains_from_the_tfds_build_and_scores_multiscale(fake_imagenet, tmp_path):
  """The tfds reader runs Python callbacks in tf.data threads: the process must still exit 0."""
  arguments = imagenet_arguments("depth=18,batch=4,source=tfds", tmp_path / "run", fake_imagenet / "tfds",
                                 "--config.eval_batch_size=4", "--config.data.eval_view=multiscale",
                                 "--config.data.eval_scales=(32,40)")
  result = subprocess.run([sys.executable, "-m", "resnet_jax.main", *arguments], cwd=ROOT, env=environment(1),
                          capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "training 4 steps (3 per epoch)" in result.stderr
  assert "imagenet2012 validation:" in result.stdout and "on 5 examples" in result.stdout
  with pytest.raises(DataError, match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"):
    main.main(arguments[:1] + [f"--workdir={tmp_path / 'other'}", f"--config.data.data_dir={tmp_path}"])


def imagenet_arguments(arguments, workdir, data_dir, *overrides):
  """configs/imagenet.py shrunk to 32-pixel crops and 4 steps."""
  return [
      f"--config={ROOT}/configs/imagenet.py:{arguments}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.data.image_size=32",
      "--config.data.eval_resize=36", "--config.num_train_steps=4", *overrides,
  ]
