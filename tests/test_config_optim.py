"""Configs, learning-rate schedules and optimizers against the paper's recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import CONFIGS, load_config
from resnet_jax import optim
from resnet_jax.config import parse_arguments


def test_config_files_open_with_the_command_that_runs_them():
  for path in CONFIGS.glob("*.py"):
    doc = path.read_text().split('"""')[1]
    if path.name == "sweeps.py":  # not a config: the named sweeps, run by the sweep command
      assert "python -m resnet_jax.tools.sweep --sweep=" in doc
    else:
      assert f"--config=configs/{path.name}" in doc or "make demo" in doc, path


def test_every_named_sweep_is_documented_and_its_runs_are_valid_configs():
  from resnet_jax.tools.sweep import grid_runs, load_sweep, named_sweeps
  doc = (CONFIGS / "sweeps.py").read_text().split('"""')[1]
  for name in named_sweeps(str(CONFIGS / "sweeps.py")):
    assert f"\n{name}:" in doc, name
    config_file, grid, _ = load_sweep(name, str(CONFIGS / "sweeps.py"))
    for arguments in grid_runs(grid):
      load_config(config_file.removeprefix("configs/").removesuffix(".py"), arguments)  # unknown ones raise


def test_arguments_are_typed_like_their_defaults_and_unknown_ones_fail():
  defaults = dict(depth=20, plain=False, shortcut="A", epochs=90.0)
  assert parse_arguments("depth=56,plain=True,shortcut=B,epochs=120", defaults) == dict(
      depth=56, plain=True, shortcut="B", epochs=120.0)
  with pytest.raises(ValueError, match="should be a int"):
    parse_arguments("depth=fifty", defaults)
  with pytest.raises(ValueError, match="should be a bool"):
    parse_arguments("plain=1", defaults)
  with pytest.raises(ValueError, match="not key=value with key in"):
    parse_arguments("width=2", defaults)


def test_imagenet_recipe_and_linear_scaling_with_batch():
  c = load_config("imagenet", "depth=34,shortcut=A")
  assert (c.model.depth, c.model.shortcut, c.batch_size) == (34, "A", 256)
  assert c.schedule.learning_rate == pytest.approx(0.1)
  assert (c.optimizer.momentum, c.optimizer.weight_decay, c.label_smoothing) == (0.9, 1e-4, 0.0)
  assert list(c.schedule.boundaries) == [30.0, 60.0] and c.num_epochs == 90.0
  c.batch_size = 1024  # what --config.batch_size=1024 does
  assert c.schedule.learning_rate == pytest.approx(0.4)


def test_cifar_recipe_and_resnet110_warmup():
  c = load_config("cifar10", "depth=56,plain=True")
  assert c.model.plain and c.model.shortcut == "A" and c.batch_size == 128
  assert (c.num_train_steps, list(c.schedule.boundaries)) == (64_000, [32_000, 48_000])
  assert c.data.train_split == "train[:45000]" and c.data.eval_split == "train[45000:]"
  schedule = optim.learning_rate_schedule(c.schedule, 351, c.num_train_steps)
  for step, lr in [(0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001)]:
    assert float(schedule(step)) == pytest.approx(lr), step
  deep = load_config("cifar10", "depth=110")
  schedule = optim.learning_rate_schedule(deep.schedule, 351, deep.num_train_steps)
  for step, lr in [(0, 0.01), (399, 0.01), (400, 0.1), (32_000, 0.01)]:
    assert float(schedule(step)) == pytest.approx(lr), step


def schedule_config(**fields):
  import ml_collections
  base = dict(learning_rate=0.4, decay="step", boundaries=[], decay_factor=0.1, unit="steps",
              warmup=0.0, warmup_kind="linear", warmup_lr=0.0)
  return ml_collections.ConfigDict({**base, **fields})


def test_epoch_boundaries_linear_warmup_and_cosine():
  steps_per_epoch = 100
  s = optim.learning_rate_schedule(
      schedule_config(unit="epochs", boundaries=[30.0, 60.0], warmup=5.0), steps_per_epoch, 9000)
  assert float(s(0)) == 0.0 and float(s(250)) == pytest.approx(0.2) and float(s(500)) == pytest.approx(0.4)
  assert float(s(2999)) == pytest.approx(0.4) and float(s(3000)) == pytest.approx(0.04)
  assert float(s(6000)) == pytest.approx(0.004)
  cosine = optim.learning_rate_schedule(schedule_config(decay="cosine", warmup=100.0), 1, 1100)
  assert float(cosine(100)) == pytest.approx(0.4) and float(cosine(600)) == pytest.approx(0.2)
  assert float(cosine(1100)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match="increasing"):
    optim.learning_rate_schedule(schedule_config(boundaries=[60, 30]), 1, 100)
  with pytest.raises(ValueError, match="unknown learning-rate decay"):
    optim.learning_rate_schedule(schedule_config(decay="plateau"), 1, 100)


def optimizer_config(**fields):
  import ml_collections
  base = dict(name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True)
  return ml_collections.ConfigDict({**base, **fields})


def test_sgd_is_the_caffe_torch_update_with_decay_before_momentum():
  params = {"kernel": jnp.array([[1.0, -2.0]]), "scale": jnp.array([3.0])}
  grads = [{"kernel": jnp.array([[0.5, 0.25]]), "scale": jnp.array([-1.0])} for _ in range(3)]
  lr, m, wd = 0.1, 0.9, 1e-4
  for decay_all in (True, False):
    tx = optim.make_optimizer(optimizer_config(decay_bn_and_bias=decay_all), lambda s: lr, params)
    state, p = tx.init(params), params
    ref = {k: np.asarray(v, np.float64) for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in ref.items()}
    for g in grads:
      updates, state = tx.update(g, state, p)
      p = optax.apply_updates(p, updates)
      for k in ref:
        decayed = wd if (decay_all or ref[k].ndim > 1) else 0.0
        velocity[k] = m * velocity[k] + np.asarray(g[k]) + decayed * ref[k]
        ref[k] = ref[k] - lr * velocity[k]
    for k in ref:
      np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-6)


def test_lars_and_nesterov_build_and_step():
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
  for fields in (dict(name="lars"), dict(nesterov=True)):
    tx = optim.make_optimizer(optimizer_config(**fields), lambda s: 0.1, params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.make_optimizer(optimizer_config(name="adamw"), lambda s: 0.1, params)
