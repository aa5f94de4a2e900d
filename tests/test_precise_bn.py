"""Precise BN (resnet_jax/precise_bn.py, tools/precise_bn.py): the recomputed statistics equal a
numpy computation over the same batches; the batches are the training images under the eval
transform, shuffled; the result does not depend on the device count; the command writes a new
checkpoint beside the original (never in place, never over another, whole or not at all), and
evaluate scores it under its own name."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
from conftest import load_config
from runs import ROOT, arguments, environment, leaves, read_item, read_state, train_here

from resnet_jax.errors import ConfigError


def _states_by_layer(model, captured: dict) -> dict:
  """{path of a BN layer: [its inputs, one array a call]} from inputs recorded by module id."""
  from resnet_jax.models.blocks import BatchNorm
  from flax import nnx
  return {tuple(path): captured[id(module)] for path, module in nnx.iter_graph(model)
          if isinstance(module, BatchNorm)}


def test_precise_statistics_equal_a_numpy_computation_over_the_same_batches(tiny_experiment, monkeypatch):
  """ResNet-8 (with its initial weights: running statistics 0 and 1, far from the data's): every BN
  layer's result is the mean over 3 batches of numpy's mean and unbiased variance of what that
  layer received in a training-mode forward pass of each batch."""
  from flax import nnx

  from resnet_jax.models.blocks import BatchNorm
  from resnet_jax.precise_bn import precise_statistics

  experiment = tiny_experiment
  state = experiment.initial_state()
  result = precise_statistics(experiment, experiment.model_config, state.params, state.batch_stats, batches=3,
                              batch_size=32, seed=7)

  captured = {}
  original = BatchNorm.__call__

  def recording(self, x):
    captured.setdefault(id(self), []).append(np.asarray(x, np.float64))
    return original(self, x)

  monkeypatch.setattr(BatchNorm, "__call__", recording)
  model = nnx.merge(experiment.graphdef, state.params, state.batch_stats)
  stream = experiment.data.train_eval_view(32, 7)
  for _ in range(3):
    model(experiment.data.normalize(next(stream)["image"]))
  inputs = _states_by_layer(model, captured)
  assert len(inputs) == 7  # the stem's and two in each of 3 blocks
  for path, calls in inputs.items():
    means = [x.mean((0, 1, 2)) for x in calls]
    variances = [x.var((0, 1, 2), ddof=1) for x in calls]
    layer = result
    for key in path:
      layer = layer[key]
    np.testing.assert_allclose(layer["mean"], np.mean(means, 0), rtol=1e-5, atol=1e-6, err_msg=str(path))
    np.testing.assert_allclose(layer["var"], np.mean(variances, 0), rtol=1e-5, atol=1e-6, err_msg=str(path))
    assert not np.allclose(layer["var"], 1.0)  # moved from the initial statistics


def test_the_batches_are_the_training_images_in_a_shuffled_order(tiny_experiment):
  """In memory: 4 batches of 32 are 128 distinct training images, whole (no augmentation), not
  in stored order, and another seed draws another order."""
  split = tiny_experiment.data.train_eval_view(32, 3).split
  seen = np.concatenate([b["image"] for b, _ in zip(tiny_experiment.data.train_eval_view(32, 3), range(4))])
  stored = {image.tobytes(): i for i, image in enumerate(split.images)}
  positions = [stored[image.tobytes()] for image in seen]  # each is a training image exactly
  assert len(set(positions)) == 128 and positions != sorted(positions)
  other = next(tiny_experiment.data.train_eval_view(32, 4))["image"]
  assert not np.array_equal(other, seen[:32])


def test_streamed_batches_are_center_views_of_every_training_image_once_per_pass(fake_imagenet):
  """An image folder of 12 training images: 3 batches of 4 are the 12 images' center views (the eval
  transform), each once, shuffled."""
  from resnet_jax.data import augment
  from resnet_jax.data.inputs import make_inputs
  from resnet_jax.data.streamed import FolderSource

  config = load_config("imagenet", "depth=18,batch=4")
  config.data.update(dict(data_dir=str(fake_imagenet / "folder"), image_size=32, eval_resize=36,
                          eval_label_file=str(fake_imagenet / "folder" / "val_labels.txt")))
  config.eval_batch_size = 4
  inputs = make_inputs(config)
  source = FolderSource(str(fake_imagenet / "folder"), "train")
  views = [augment.quantize(augment.center_view(open(path, "rb").read(), resize=36, crop=32))[0].numpy()
           for path in source.paths]
  stream = inputs.train_eval_view(4, 0)
  seen = [image for _ in range(3) for image in next(stream)["image"]]
  order = [next(i for i, view in enumerate(views) if np.array_equal(view, image)) for image in seen]
  assert sorted(order) == list(range(12)) and order != sorted(order)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """ResNet-8 trained 20 steps, and its precise-BN checkpoint over 5 batches of 32 (the command's
  printed output alongside)."""
  import contextlib
  import io

  run = tmp_path_factory.mktemp("precise") / "run"
  train_here(run, 20)
  original = _digests(run / "checkpoints" / "20")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    output = _precise(run, "--batches=5")
  return run, original, output, printed.getvalue()


def _precise(workdir, *overrides):
  from resnet_jax.tools import precise_bn
  return precise_bn.main(arguments(workdir, 20, *overrides))


def _weights(directory):
  return read_item(pathlib.Path(directory) / "state")


def _digests(directory):
  return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_command_writes_a_new_checkpoint_beside_the_original_that_evaluate_scores(trained):
  """The original checkpoint is unchanged to the byte; the new one holds the same parameters with
  new statistics and says what made it; evaluate scores it as `precise_bn` weights of step 20; the
  same recomputation again is refused, naming the existing one."""
  from resnet_jax import evaluate

  run, original, output, printed = trained
  assert output == run / "precise_bn" / "step_20_live_5x32" and "ETA" in printed
  assert _digests(run / "checkpoints" / "20") == original
  assert sorted(p.name for p in output.iterdir()) == ["manifest.sha256", "precise_bn.json", "state"]
  record = json.loads((output / "precise_bn.json").read_text())
  assert (record["step"], record["weights"], record["batches"], record["batch_size"], record["examples"]) == (
      20, "live", 5, 32, 160)
  assert record["source"] == str(run / "checkpoints" / "20") and record["data"]["split"] == "train"
  assert record["data"]["fingerprint"]["examples"] == 4000
  written, trained_state = _weights(output), read_state(run)
  assert all(map(np.array_equal, leaves(written["params"]), leaves(trained_state["params"])))
  assert not any(map(np.allclose, leaves(written["batch_stats"]), leaves(trained_state["batch_stats"])))
  with pytest.raises(ConfigError, match="step_20_live_5x32 exists .the same recomputation"):
    _precise(run, "--batches=5")
  (scored,) = evaluate.main(arguments(run, 20)[:1] + [f"--checkpoint={output}"])
  assert (scored["step"], scored["weights"], scored["checkpoint"]) == (20, "precise_bn", str(output))
  assert (run / "eval" / "evaluate_step_20_precise_bn_center_test.json").exists()


@pytest.mark.slow
def test_a_save_that_fails_half_way_leaves_no_checkpoint_and_the_rerun_writes_it(trained, monkeypatch):
  import orbax.checkpoint as ocp

  run = trained[0]
  def failing_save(self, directory, *args, **kwargs):
    (pathlib.Path(directory) / "half_written").mkdir(parents=True)
    raise OSError("injected: the disk went away")
  with monkeypatch.context() as patched:
    patched.setattr(ocp.StandardCheckpointer, "save", failing_save)
    with pytest.raises(OSError, match="injected"):
      _precise(run, "--batches=2")
  assert not (run / "precise_bn" / "step_20_live_2x32").exists()
  output = _precise(run, "--batches=2")
  assert sorted(p.name for p in output.parent.iterdir()) == ["step_20_live_2x32", "step_20_live_5x32"]


@pytest.mark.slow
def test_eight_devices_compute_the_statistics_one_device_does(trained, tmp_path):
  """The same recomputation on 8 (forced host) devices as on 1: a batch's statistics are over the
  whole global batch either way, so the results agree to float32 rounding."""
  import subprocess
  import sys

  run, _, on_one, _ = trained
  on_eight = tmp_path / "on_8"
  finished = subprocess.run(
      [sys.executable, "-m", "resnet_jax.tools.precise_bn", *arguments(run, 20), "--batches=5",
       f"--output={on_eight}"], cwd=ROOT, env=environment(8), capture_output=True, text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert json.loads((on_eight / "precise_bn.json").read_text())["hardware"]["devices"] == 8
  one, eight = (_weights(path)["batch_stats"] for path in (on_one, on_eight))
  for a, b in zip(leaves(one), leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
