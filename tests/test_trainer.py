"""The trainer end to end, as a user runs it: `python -m resnet_jax.main` in a fresh process."""

import json
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from runs import ROOT, by_step, command, environment, leaves, losses, read_state, saved_steps, start, train

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves these out


def wait_for_checkpoint(process, workdir, at_least):
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if any(s >= at_least for s in saved_steps(workdir)):
      return
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint >= {at_least}: {process.communicate()[0][-3000:]}")


def test_one_device_and_eight_devices_give_the_same_losses_and_bn_statistics(tmp_path):
  runs = {}
  for devices in (1, 8):
    workdir = tmp_path / f"d{devices}"
    # A small learning rate keeps float32 reduction-order noise (~1e-7) from growing over the steps.
    result = train(workdir, 5, "--config.schedule.learning_rate=0.02", "--config.checkpoint_every_steps=1",
                   "--config.keep_checkpoints=5", devices=devices)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"on {devices} device(s)" in result.stderr
    runs[devices] = workdir
  one, eight = losses(runs[1]), losses(runs[8])
  assert sorted(one) == list(range(1, 6))
  np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=1e-5)
  # BN statistics of the same batch from the same weights: global over the 8 devices' shards. (Later
  # steps drift by more: near-cancelling gradient sums such as BN biases' amplify the noise.)
  for a, b in zip(leaves(read_state(runs[1], 1)["batch_stats"]), leaves(read_state(runs[8], 1)["batch_stats"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  record = json.loads((runs[8] / "eval" / "step_5_live_center.json").read_text())
  assert record["results"]["examples"] == 1000 and record["hardware"]["devices"] == 8  # 1000 = 10 x 96 + 40


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """24 uninterrupted steps, checkpoints every 4, evaluations every 5 steps."""
  workdir = tmp_path_factory.mktemp("straight")
  result = train(workdir, 24, "--config.checkpoint_every_steps=4", "--config.eval_every_epochs=0.04")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def assert_same_run(workdir, reference):
  np.testing.assert_array_equal(np.array(sorted(losses(workdir).items())),
                                np.array(sorted(losses(reference).items())))
  for a, b in zip(leaves(read_state(workdir, 24)), leaves(read_state(reference, 24))):
    np.testing.assert_array_equal(a, b)


def test_resume_after_sigkill_at_a_random_step_is_bit_identical(straight_run, tmp_path):
  reference, _ = straight_run
  process = start(tmp_path, 24, "--config.checkpoint_every_steps=4", "--config.eval_every_epochs=0.04")
  rng = random.Random(0)  # seeded: a failure names a kill point that a rerun reproduces
  wait_for_checkpoint(process, tmp_path, rng.choice([4, 8, 12]))
  time.sleep(rng.uniform(0.0, 0.5))
  process.kill()
  process.wait()
  interrupted_at = saved_steps(tmp_path)[-1]
  assert interrupted_at < 24
  result = train(tmp_path, 24, "--config.checkpoint_every_steps=4", "--config.eval_every_epochs=0.04")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint" in result.stderr
  assert_same_run(tmp_path, reference)


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
  result = train(tmp_path, 24, *settings)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_run(tmp_path, reference)


def test_keeps_the_last_checkpoints_and_the_best_by_eval_top1(straight_run):
  workdir, _ = straight_run
  evals = by_step(workdir, "eval/top1")
  assert sorted(evals) == [5, 10, 15, 20, 24]
  best = max(evals, key=lambda s: (evals[s], s))
  kept = saved_steps(workdir)
  # Saved at 4, 5, 8, 10, 12, 15, 16, 20, 24: the last three stay, and the best evaluated one.
  assert {16, 20, 24} <= set(kept) and best in kept and len(kept) <= 4, (kept, evals)


def test_evaluate_command_scores_the_checkpoint_and_writes_json(straight_run):
  workdir, result = straight_run
  evaluated = train(workdir, 24, module="resnet_jax.evaluate")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "step 24 (live weights)" in evaluated.stdout and "on 1,000 examples" in evaluated.stdout
  record = json.loads((workdir / "eval" / "step_24_live_center.json").read_text())
  assert record["results"]["top1"] == pytest.approx(by_step(workdir, "eval/top1")[24])
  assert record["results"]["top1"] + record["results"]["top1_error"] == pytest.approx(100)
  assert record["protocol"] == "center" and record["step"] == 24 and record["hardware"]["platform"] == "cpu"
  assert "top-1" in result.stdout and "top-5" in result.stdout
  # One checkpoint directory, scored on its own: the numbers the run logged at that step.
  by_path = train(workdir, 24, f"--checkpoint={workdir / 'checkpoints' / '20'}", module="resnet_jax.evaluate")
  assert by_path.returncode == 0, by_path.stderr[-3000:]
  at_20 = by_step(workdir, "eval/top1")[20]
  assert f"step 20 (live weights), mnist_bundled test, center protocol: top-1 {at_20:.2f}%" in by_path.stdout
  # Multi-view protocols need a streamed ImageNet-style set, and a wrong network is named as such.
  refused = train(workdir, 24, "--protocol=10crop", module="resnet_jax.evaluate")
  assert refused.returncode == 1 and "eval_view='10crop' needs a streamed" in refused.stderr
  wrong = subprocess.run(command("resnet_jax.evaluate", workdir, 24, f"--checkpoint={workdir / 'checkpoints' / '20'}")
                         [:3] + ["--config=configs/mnist_demo.py:depth=14", f"--checkpoint={workdir / 'checkpoints' / '20'}"],
                         cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=400)
  assert wrong.returncode == 1 and "do not fit the config's network" in wrong.stderr, wrong.stderr[-2000:]
  untrained = train(workdir / "nothing", 24, module="resnet_jax.evaluate")
  assert untrained.returncode == 1 and "no checkpoints in" in untrained.stderr and "train first" in untrained.stderr


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # lr 0.1 for 4 steps, then 1e11: the loss blows up a few steps later, or the weights do first and a
  # save refuses them (jax 0.12 reaches non-finite weights at a checkpoint step while the loss that
  # produced them was still finite).
  result = train(tmp_path, 30, "--config.checkpoint_every_steps=2", "--config.schedule.boundaries=(4,)",
                 "--config.schedule.decay_factor=1e12")
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()[-1]
  found = re.match(r"error: (loss is .* at step|the train state after step) (\d+)", message)
  assert found and "holds only finite values" in message, message
  bad_step = int(found[2])
  kept = saved_steps(tmp_path)
  assert kept and kept[-1] < bad_step
  assert all(np.isfinite(x).all() for x in leaves(read_state(tmp_path)["params"]))


def test_a_batch_that_does_not_split_over_the_devices_fails_before_compiling(tmp_path):
  result = train(tmp_path, 5, "--config.batch_size=36", devices=8)
  assert result.returncode == 1
  assert "batch_size=36 does not divide evenly over 8 devices" in result.stderr
  assert "use a multiple of 8, e.g. 32 or 40" in result.stderr
  assert not saved_steps(tmp_path)


def test_imagenet_config_trains_from_an_image_folder_and_scores_ten_crops(tmp_path):
  import tensorflow as tf
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("val", 3)):  # 3 classes: 18 train, 9 val images
    for k, synset in enumerate(["n01", "n02", "n03"]):
      (tmp_path / "data" / split / synset).mkdir(parents=True)
      for i in range(count):
        image = rng.integers(0, 255, (40 + 3 * i, 48, 3), dtype=np.uint8)
        (tmp_path / "data" / split / synset / f"{i}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
  command_line = imagenet_command("depth=18,batch=8", tmp_path / "run", tmp_path / "data", "--config.data.eval_view=10crop",
                                  "--config.model.num_classes=3", "--config.eval_batch_size=8")
  result = subprocess.run(command_line, cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 9 examples" in result.stdout  # 9 = 8 + 1: the second batch padded
  assert "training 4 steps (2 per epoch)" in result.stderr
  missing = subprocess.run(command_line[:4] + [f"--workdir={tmp_path / 'other'}"], cwd=ROOT,
                           env=environment(1), capture_output=True, text=True, timeout=400)
  assert missing.returncode == 1
  assert "set --config.data.data_dir to the folder that holds train/ and val/" in missing.stderr


def test_imagenet_config_trains_from_the_tfds_build_and_scores_multiscale(fake_imagenet, tmp_path):
  """The tfds reader runs Python callbacks in tf.data threads: the process must still exit 0."""
  command_line = imagenet_command("depth=18,batch=4,source=tfds", tmp_path / "run", fake_imagenet / "tfds",
                                  "--config.eval_batch_size=4", "--config.data.eval_view=multiscale",
                                  "--config.data.eval_scales=(32,40)")
  result = subprocess.run(command_line, cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "training 4 steps (3 per epoch)" in result.stderr
  assert "imagenet2012 validation:" in result.stdout and "on 5 examples" in result.stdout
  unprepared = subprocess.run(command_line[:4] + [f"--workdir={tmp_path / 'other'}", f"--config.data.data_dir={tmp_path}"], cwd=ROOT,
                              env=environment(1), capture_output=True, text=True, timeout=400)
  assert unprepared.returncode == 1 and "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in unprepared.stderr


def imagenet_command(arguments, workdir, data_dir, *overrides):
  """configs/imagenet.py shrunk to 32-pixel crops and 4 steps."""
  return [
      sys.executable, "-m", "resnet_jax.main", f"--config=configs/imagenet.py:{arguments}",
      f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.data.image_size=32",
      "--config.data.eval_resize=36", "--config.num_train_steps=4", *overrides,
  ]
