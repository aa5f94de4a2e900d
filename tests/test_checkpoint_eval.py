"""Checkpoint recovery, exact evaluation, grouped BN and config errors, in this process."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import load_config
from resnet_jax.checkpoint import Checkpoints, CorruptCheckpoint, verify_manifest
from resnet_jax.data.sources import load_split
from resnet_jax.errors import CheckpointError, ConfigError, TrainingDiverged
from resnet_jax.models import build_model
from resnet_jax.models.blocks import BatchNorm


def test_a_corrupt_latest_checkpoint_is_moved_aside_the_one_before_restored_and_the_step_written_again(
    tmp_path, caplog):
  checkpoints = Checkpoints(str(tmp_path), keep=3, keep_best=False)
  for step in (2, 4):
    checkpoints.save(step, {"w": jnp.full((4,), float(step))}, {"step": step})
  checkpoints.wait()
  abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  for path in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  with caplog.at_level(logging.ERROR):
    step, state, data_state = checkpoints.restore(abstract)
  assert step == 2 and data_state == {"step": 2}
  np.testing.assert_array_equal(state["w"], np.full((4,), 2.0))
  assert "checkpoint 4" in caplog.text and "unreadable" in caplog.text
  # Kept for inspection, out of the run's checkpoints: the rerun writes step 4 again.
  (aside,) = (tmp_path / "unreadable_checkpoints").iterdir()
  assert aside.name.startswith("4_") and (aside / "state").is_dir()
  assert checkpoints.steps() == [2]
  checkpoints.save(4, {"w": jnp.full((4,), 40.0)}, {"step": 4})
  checkpoints.wait()
  assert checkpoints.restore(abstract)[0] == 4
  with pytest.raises(CheckpointError, match="no checkpoint for step 6"):
    checkpoints.restore(abstract, step=6)
  checkpoints.close()


@pytest.mark.slow
def test_every_flipped_byte_of_every_checkpoint_file_is_caught(tiny_experiment, tmp_path):
  """A real train state's checkpoint: one byte flipped at 12 random places in each file (manifest
  included) fails verification every time; the restored values would otherwise change silently."""
  checkpoints = Checkpoints(str(tmp_path), keep=1, keep_best=False)
  checkpoints.save(1, tiny_experiment.initial_state(), {"step": 1})
  checkpoints.close()
  step_dir = tmp_path / "checkpoints" / "1"
  assert verify_manifest(step_dir)
  files = [path for path in sorted(step_dir.rglob("*")) if path.is_file()]
  assert step_dir / "manifest.sha256" in files and len(files) > 10
  rng = np.random.default_rng(0)
  for path in files:
    original = path.read_bytes()
    for position in rng.integers(0, len(original), 12):
      damaged = bytearray(original)
      damaged[position] ^= 1 << int(rng.integers(0, 8))
      path.write_bytes(bytes(damaged))
      with pytest.raises(CorruptCheckpoint):
        verify_manifest(step_dir)
    path.write_bytes(original)
  assert verify_manifest(step_dir)


def test_a_non_finite_state_is_never_written_and_an_old_one_is_not_restored(tiny_experiment, tmp_path):
  state = tiny_experiment.initial_state()
  poisoned = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.params))
  checkpoints = Checkpoints(str(tmp_path), keep=3, keep_best=False)
  checkpoints.save(1, state, {"step": 1})
  with pytest.raises(TrainingDiverged, match=r"after step 2 holds non-finite values \([\d,]+ in params\) and was "
                                             r"not saved; the newest checkpoint, step 1, holds only finite values"):
    checkpoints.save(2, poisoned, {"step": 2})
  assert checkpoints.steps() == [1]
  # A checkpoint that holds NaNs all the same (as older versions wrote; here through Orbax directly)
  # is unreadable: moved aside, and the one before it restored.
  checkpoints.manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(poisoned),
                                                      data=ocp.args.JsonSave({"step": 3})))
  checkpoints.wait()
  step, _, _ = checkpoints.restore(tiny_experiment.abstract_state())
  assert step == 1 and checkpoints.steps() == [1]
  checkpoints.close()


def test_a_checkpoint_of_another_network_is_named_as_such_and_left_in_place(tiny_experiment, tmp_path):
  from resnet_jax.experiment import setup
  checkpoints = Checkpoints(str(tmp_path), keep=3, keep_best=False)
  checkpoints.save(1, tiny_experiment.initial_state(), {"step": 1})
  checkpoints.wait()
  for field, value, named in (("model.depth", 14, "params"), ("model.num_classes", 12, "params"),
                              ("ema_decay", 0.9, "ema_params")):
    other = tiny_experiment.config.copy_and_resolve_references()
    other.update_from_flattened_dict({field: value})
    with pytest.raises(ConfigError, match=f"checkpoint 1 was written by a different network .* in .*{named}"):
      checkpoints.restore(setup(other, inputs=tiny_experiment.data).abstract_state())
  assert checkpoints.steps() == [1] and not (tmp_path / "unreadable_checkpoints").exists()
  checkpoints.close()


def test_a_read_only_reader_leaves_the_trainers_save_in_progress_and_damaged_steps_alone(tmp_path):
  writer = Checkpoints(str(tmp_path), keep=3, keep_best=False)
  writer.save(2, {"w": jnp.ones((2,))}, {"step": 2})
  writer.close()
  in_progress = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp"
  in_progress.mkdir()
  (tmp_path / "checkpoints" / "2" / "data" / "metadata").write_text("{}")
  reader = Checkpoints(str(tmp_path), keep=3, keep_best=False, read_only=True)
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    reader.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  reader.close()
  assert in_progress.is_dir() and (tmp_path / "checkpoints" / "2").is_dir()


def test_a_half_written_checkpoint_is_ignored(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=3, keep_best=False)
  checkpoints.save(2, {"w": jnp.ones((2,))}, {"step": 2})
  checkpoints.close()
  (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir()  # a save killed half way
  again = Checkpoints(str(tmp_path), keep=3, keep_best=False)
  step, _, _ = again.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  assert step == 2
  again.close()


@pytest.fixture(scope="module")
def tiny_experiment():
  from resnet_jax.experiment import setup
  config = load_config("mnist_demo", "depth=8,batch=32,steps=10")
  config.eval_batch_size = 96
  return setup(config)


def test_evaluation_scores_each_example_once_and_matches_a_direct_count(tiny_experiment):
  from resnet_jax.evaluation import evaluate
  state = tiny_experiment.initial_state()
  # Give BN some statistics so that predictions differ between examples.
  stats = jax.tree.map(lambda x: x + 0.1, state.batch_stats)
  results = evaluate(tiny_experiment, state.params, stats)
  split = load_split("mnist_bundled", "mnist", "test")
  images = np.concatenate([b["image"][b["mask"] == 1, 0] for b in tiny_experiment.data.eval_batches()])
  normalized = tiny_experiment.data.normalize(images)
  forward = jax.jit(lambda p, s, x: nnx.merge(tiny_experiment.eval_graphdef, p, s)(x))
  logits = np.asarray(forward(state.params, stats, normalized))
  ranked = np.argsort(-logits, axis=1)
  assert results["examples"] == len(split) == len(normalized) == 1000
  assert results["top1"] == pytest.approx(100 * np.mean(ranked[:, 0] == split.labels), abs=1e-4)
  assert results["top5"] == pytest.approx(100 * np.mean((ranked[:, :5] == split.labels[:, None]).any(1)), abs=1e-4)
  assert results["top1_error"] == pytest.approx(100 - results["top1"])


def test_multiscale_scores_are_the_softmax_averaged_over_every_view_of_every_scale(tiny_experiment):
  from resnet_jax.data.in_memory import Normalizer
  from resnet_jax.evaluation import eval_step
  state = tiny_experiment.initial_state()
  stats = jax.tree.map(lambda x: x + 0.1, state.batch_stats)
  rng = np.random.default_rng(0)
  small, large = rng.integers(0, 256, (4, 2, 20, 24, 1), np.uint8), rng.integers(0, 256, (4, 2, 28, 28, 1), np.uint8)
  labels = np.array([0, 3, 5, 7])
  batch = {"image": (jnp.asarray(small), jnp.asarray(large)),
           "label": jnp.asarray(labels), "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
  normalize = Normalizer(np.full(1, 120, np.float32), np.full(1, 70, np.float32))  # any size: per channel
  sums = eval_step(state.params, stats, batch, graphdef=tiny_experiment.eval_graphdef, normalize=normalize)
  model = nnx.merge(tiny_experiment.eval_graphdef, state.params, stats)
  softmax = [np.asarray(jax.nn.softmax(model(normalize(x[:, v])))) for x in (small, large) for v in (0, 1)]
  scores = np.mean(softmax, axis=0)
  assert float(sums["count"]) == 3
  assert float(sums["top1"]) == np.sum((scores.argmax(1) == labels)[:3])
  expected_loss = -np.log(scores[np.arange(4), labels] + 1e-12)[:3].sum()
  assert float(sums["loss"]) == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.slow
def test_config_errors_are_clear_and_come_before_compiling(monkeypatch):
  from resnet_jax.experiment import setup
  config = load_config("mnist_demo", "depth=8")
  cases = [
      ("batch_size", 0, "batch_size must be a positive integer"),
      ("eval_batch_size", -4, "eval_batch_size must be a positive integer"),
      ("model.depth", 9, "6n\\+2"),
      ("model.input_channels", 3, "1 channel"),
      ("model.bn_group_size", 48, "BN groups"),
      ("model.dtype", "float16", "'float16' is refused: without loss scaling.*Use 'bfloat16'"),
      ("model.num_classes", 5, "the data has 10 classes but model.num_classes=5"),
      ("data.eval_view", "10crop", "data.eval_view='10crop' is not valid for mnist_bundled, which is held in "
       "memory, decoded already, and scored on its whole images \\('10crop' is for streamed data\\); valid: center"),
      ("data.augmentation", "paper", "data.augmentation='paper' is not valid .*; valid: none, crop, crop_flip"),
      ("data.normalization", "zca", "data.normalization='zca' is not valid .*; valid: pixel_mean, channel_mean_std"),
      ("data.exclude_file", "bad.txt", "data.exclude_file applies to .*streamed from disk"),
      ("data.eval_resampler", "pil", "data.eval_resampler='pil' is not valid"),
      ("schedule.learning_rate", -0.1, "schedule.learning_rate=-0.1 is invalid: it must be positive"),
      ("schedule.learning_rate", 0.0, "schedule.learning_rate=0.0 is invalid"),
      ("checkpoint_every_steps", 0, "checkpoint_every_steps=0 is invalid: it must be a positive integer"),
      ("log_every_steps", -1, "log_every_steps=-1 is invalid"),
      ("keep_checkpoints", 0, "keep_checkpoints=0 is invalid: it must be at least 1"),
      ("seed", -3, "seed=-3 is invalid: it must be a non-negative integer"),
      ("label_smoothing", 1.0, "label_smoothing=1.0 is invalid"),
  ]
  for field, value, message in cases:
    bad = config.copy_and_resolve_references()
    bad.update_from_flattened_dict({field: value})
    with pytest.raises(ConfigError, match=message):
      setup(bad)
  for evals, message in (({"Val": "test"}, "evals.Val='test' is invalid"), ({"val": "nope"}, "nope")):
    bad = config.copy_and_resolve_references()
    bad.evals = evals
    with pytest.raises(ConfigError, match=message):  # before training, not at its first evaluation
      setup(bad)
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(ValueError, match=r"batch_size=100 does not divide evenly over 8 devices \(per-device "
                                       r"batch 12.5\); use a multiple of 8, e.g. 96 or 104"):
    bad = config.copy_and_resolve_references()
    bad.batch_size, bad.eval_batch_size = 100, 400
    setup(bad)


def test_grouped_bn_normalises_each_group_by_its_own_statistics():
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 4)) * 2 + jnp.arange(8.0)[:, None, None, None]
  grouped = BatchNorm(4, group_size=4, rngs=nnx.Rngs(0), use_running_average=False)
  separate = [BatchNorm(4, rngs=nnx.Rngs(0), use_running_average=False) for _ in range(2)]
  whole = BatchNorm(4, rngs=nnx.Rngs(0), use_running_average=False)
  y = grouped(x)
  parts = jnp.concatenate([bn(x[4 * i:4 * i + 4]) for i, bn in enumerate(separate)])
  np.testing.assert_allclose(y, parts, atol=1e-5)
  assert not np.allclose(y, whole(x), atol=1e-2)  # the groups' means differ: so must the outputs
  for name in ("mean", "var"):
    expected = (getattr(separate[0], name)[...] + getattr(separate[1], name)[...]) / 2
    np.testing.assert_allclose(getattr(grouped, name)[...], expected, rtol=1e-5)
  with pytest.raises(ValueError, match="does not split into BN groups of 4"):
    grouped(x[:6])


@pytest.mark.parametrize("unbiased", [True, False])
def test_bn_running_variance_is_torchs_unbiased_one_or_flaxs_biased_one(unbiased):
  x = np.asarray(jax.random.normal(jax.random.key(1), (4, 2, 2, 3)) * 3 + 1)  # 16 values a channel
  bn = BatchNorm(3, unbiased_running_var=unbiased, momentum=0.9, rngs=nnx.Rngs(0), use_running_average=False)
  y = bn(jnp.asarray(x))
  batch_var = x.reshape(-1, 3).var(0, ddof=1 if unbiased else 0)
  np.testing.assert_allclose(bn.var[...], 0.9 * 1.0 + 0.1 * batch_var, rtol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * x.reshape(-1, 3).mean(0), rtol=1e-5, atol=1e-6)
  # Either way the batch itself is normalised by its biased variance.
  np.testing.assert_allclose(y, (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5), atol=1e-5)


@pytest.mark.slow
def test_bn_group_size_reaches_every_norm_of_the_model():
  model = build_model({"depth": 8, "dataset": "cifar", "bn_group_size": 16})
  norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, BatchNorm)]
  assert norms and all(n.group_size == 16 for n in norms)
  with pytest.raises(ValueError, match="bn_group_size must be 0"):
    build_model({"depth": 8, "dataset": "cifar", "bn_group_size": -1})


@pytest.mark.slow
def test_uint8_batches_normalised_on_the_device_give_the_losses_of_host_normalisation(tiny_experiment):
  """Batches cross to the devices as uint8, a quarter of float32's bytes, and the step normalises
  them. Against normalising in numpy on the host (the pipeline's old way) the inputs differ by float32
  rounding (XLA multiplies by 1/255 where numpy divides by 255; measured 6e-8 at most), and so do the
  loss, the gradient norm and the updated weights."""
  from resnet_jax.data.in_memory import Normalizer
  from resnet_jax.sharding import global_batch
  from resnet_jax.train_step import train_step
  normalize = tiny_experiment.data.normalize
  local = next(tiny_experiment.data.train(0))
  on_host = dict(local, image=(local["image"].astype(np.float32) / normalize.divisor - normalize.mean) / normalize.std)
  assert local["image"].dtype == np.uint8 and 4 * local["image"].nbytes == on_host["image"].nbytes
  np.testing.assert_allclose(jax.jit(normalize)(local["image"]), on_host["image"], rtol=0, atol=2.5e-7)
  identity = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
  common = dict(graphdef=tiny_experiment.graphdef, optimizer=tiny_experiment.optimizer,
                schedule=tiny_experiment.schedule, label_smoothing=0.0, ema_decay=0.0)
  state = tiny_experiment.initial_state()
  step = lambda batch, normalizer: jax.jit(functools.partial(train_step, normalize=normalizer, **common))(
      state, global_batch(batch, tiny_experiment.mesh))
  (on_device, device_metrics), (host, host_metrics) = step(local, normalize), step(on_host, identity)
  assert float(device_metrics["loss"]) == pytest.approx(float(host_metrics["loss"]), rel=1e-6)
  assert float(device_metrics["grad_norm"]) == pytest.approx(float(host_metrics["grad_norm"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(on_device.params), jax.tree.leaves(host.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_train_step_applies_label_smoothing_and_keeps_an_ema_of_the_weights(tiny_experiment):
  from resnet_jax.sharding import global_batch
  from resnet_jax.train_step import train_step

  batch = global_batch(next(tiny_experiment.data.train(0)), tiny_experiment.mesh)
  state = tiny_experiment.initial_state()
  state = state.replace(ema_params=jax.tree.map(jnp.zeros_like, state.params))
  common = dict(graphdef=tiny_experiment.graphdef, normalize=tiny_experiment.data.normalize,
                optimizer=tiny_experiment.optimizer, schedule=tiny_experiment.schedule)
  plain, metrics = train_step(state, batch, label_smoothing=0.0, ema_decay=0.75, **common)
  smoothed, smoothed_metrics = train_step(state, batch, label_smoothing=0.2, ema_decay=0.75, **common)
  # EMA: 0.75 * old (zeros) + 0.25 * new weights.
  for ema, new in zip(jax.tree.leaves(plain.ema_params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(ema, 0.25 * new, rtol=1e-6, atol=1e-8)
  # Smoothed cross-entropy = 0.8 * CE(label) + 0.2 * mean over classes of -log p.
  logits = nnx.merge(tiny_experiment.graphdef, state.params, state.batch_stats)(
      tiny_experiment.data.normalize(batch["image"]))
  log_p = jax.nn.log_softmax(logits)
  hard = -jnp.take_along_axis(log_p, batch["label"][:, None], 1).mean()
  expected = 0.8 * hard + 0.2 * (-log_p.mean(1)).mean()
  assert float(metrics["loss"]) == pytest.approx(float(hard), rel=1e-5)
  assert float(smoothed_metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["learning_rate"]) == pytest.approx(0.025)  # 0.1 x 32 / 128 at step 0
  assert int(plain.step) == 1 and float(metrics["grad_norm"]) > 0


@pytest.mark.slow
def test_bfloat16_training_follows_float32_over_the_first_steps():
  """The same run in both dtypes, on the same real digits: bf16 computation (float32 parameters and
  BN statistics) gives each step's loss within 0.5% of float32's (measured: 0.05%), and both learn."""
  from resnet_jax import sharding
  from resnet_jax.experiment import setup
  from resnet_jax.train_step import compile_train_step

  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = load_config("mnist_demo", "depth=8,batch=32,steps=10")
    config.model.dtype = dtype
    experiment = setup(config)
    step_fn, state, batches = compile_train_step(experiment), experiment.initial_state(), experiment.data.train(0)
    losses[dtype] = []
    for _ in range(8):
      state, metrics = step_fn(state, sharding.global_batch(next(batches), experiment.mesh))
      losses[dtype].append(float(metrics["loss"]))
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.005)
  assert losses["float32"][-1] < 0.9 * losses["float32"][0] and losses["bfloat16"][-1] < 0.9 * losses["bfloat16"][0]
