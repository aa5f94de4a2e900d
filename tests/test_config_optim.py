"""Configs, learning-rate schedules and optimizers against the paper's recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import CONFIGS, load_config
from resnet_jax import optim
from resnet_jax.config import parse_arguments
from resnet_jax.errors import ConfigError


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
  schedule = optim.learning_rate_schedule(optim.ScheduleConfig.from_mapping(c.schedule), 351, c.num_train_steps)
  for step, lr in [(0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001)]:
    assert float(schedule(step)) == pytest.approx(lr), step
  deep = load_config("cifar10", "depth=110")
  schedule = optim.learning_rate_schedule(optim.ScheduleConfig.from_mapping(deep.schedule), 351,
                                          deep.num_train_steps)
  for step, lr in [(0, 0.01), (399, 0.01), (400, 0.1), (32_000, 0.01)]:
    assert float(schedule(step)) == pytest.approx(lr), step


def schedule_config(**fields):
  return optim.ScheduleConfig(**{"learning_rate": 0.4, **fields})


def test_epoch_boundaries_linear_warmup_and_cosine():
  steps_per_epoch = 100
  s = optim.learning_rate_schedule(
      schedule_config(unit="epochs", boundaries=(30.0, 60.0), warmup=5.0), steps_per_epoch, 9000)
  assert float(s(0)) == 0.0 and float(s(250)) == pytest.approx(0.2) and float(s(500)) == pytest.approx(0.4)
  assert float(s(2999)) == pytest.approx(0.4) and float(s(3000)) == pytest.approx(0.04)
  assert float(s(6000)) == pytest.approx(0.004)
  cosine = optim.learning_rate_schedule(schedule_config(decay="cosine", warmup=100.0), 1, 1100)
  assert float(cosine(100)) == pytest.approx(0.4) and float(cosine(600)) == pytest.approx(0.2)
  assert float(cosine(1100)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ConfigError, match=r"schedule.boundaries=\(60, 30\) is invalid: it must be positive and increasing"):
    schedule_config(boundaries=(60, 30))
  with pytest.raises(ConfigError, match="schedule.decay='plateau' is invalid: it must be 'step', 'cosine' or 'linear'"):
    schedule_config(decay="plateau")
  with pytest.raises(ConfigError, match=r"unknown schedule option\(s\) \['decay_rate'\]"):
    optim.ScheduleConfig.from_mapping({"decay_rate": 0.1})


def test_sgd_is_the_caffe_torch_update_with_decay_before_momentum():
  params = {"kernel": jnp.array([[1.0, -2.0]]), "scale": jnp.array([3.0])}
  grads = [{"kernel": jnp.array([[0.5, 0.25]]), "scale": jnp.array([-1.0])} for _ in range(3)]
  lr, m, wd = 0.1, 0.9, 1e-4
  for decay_all in (True, False):
    tx = optim.make_optimizer(optim.OptimizerConfig(no_decay="none" if decay_all else "norms_and_biases"), lambda s: lr, params)
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


def test_lars_scales_kernels_by_their_trust_ratio_and_leaves_bn_and_biases_to_the_plain_rate():
  """The first update, by hand: kernel 2s (norm 6) with gradient 1s (norm 3) and decay 1e-4 moves by
  lr x 0.001 x |w| / |g + wd w| x (g + wd w); the bias (BN and biases are left out of the trust
  ratio, and of the decay with no_decay='norms_and_biases') by lr x its gradient."""
  params = {"kernel": jnp.full((3, 3), 2.0), "bias": jnp.ones((3,))}
  grads = jax.tree.map(jnp.ones_like, params)
  lr, wd = 0.1, 1e-4
  for decay_all in (False, True):
    config = optim.OptimizerConfig(name="lars", weight_decay=wd, no_decay="none" if decay_all else "norms_and_biases")
    tx = optim.make_optimizer(config, lambda step: lr, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    decayed = 1.0 + wd * 2.0
    trust_ratio = 0.001 * 6.0 / (3.0 * decayed)
    np.testing.assert_allclose(updates["kernel"], -lr * trust_ratio * decayed, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], -lr * (1.0 + (wd if decay_all else 0.0)), rtol=1e-6)


def test_nesterov_momentum_looks_ahead_and_unknown_optimizers_are_refused():
  params = {"kernel": jnp.ones((2, 2))}
  tx = optim.make_optimizer(optim.OptimizerConfig(nesterov=True, weight_decay=0.0), lambda step: 0.1, params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  # velocity v = 0.9 v + g; nesterov steps by g + 0.9 v: 1.9 then 1 + 0.9 x 1.9.
  np.testing.assert_allclose(first["kernel"], -0.1 * 1.9, rtol=1e-6)
  np.testing.assert_allclose(second["kernel"], -0.1 * (1 + 0.9 * 1.9), rtol=1e-6)
  with pytest.raises(ConfigError, match="optimizer.name='adagrad' is invalid: it must be one of 'sgd', 'lars', 'lamb', 'adamw'"):
    optim.OptimizerConfig(name="adagrad")

def adaptive_case(seed: int = 0):
  """Parameters (a kernel, a norm's scale and bias), five steps of gradients and a falling rate."""
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": rng.normal(0, 0.5, (3, 3, 4, 8))},
            "norm": {"scale": 1 + rng.normal(0, 0.1, 8), "bias": rng.normal(0, 0.1, 8)}}
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  grads = [jax.tree.map(lambda x: rng.normal(0, 2.0, x.shape).astype(np.float32), params) for _ in range(5)]
  return params, grads, lambda step: 0.01 * (1 - step / 10)


def run_ours(config, params, grads, rate):
  tx = optim.make_optimizer(config, rate, params)
  state, p, trajectory = tx.init(params), params, []
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    trajectory.append(jax.tree.map(np.asarray, p))
  return trajectory


@pytest.mark.torch
@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_lamb_and_adamw_follow_timms_lamb_and_torchs_adamw_step_by_step(name):
  """timm's Lamb (gradient clipping to norm 1, trust ratio on the decayed parameters only) and
  torch.optim.AdamW, with the norm's parameters in an undecayed group as each recipe puts them."""
  torch = pytest.importorskip("torch")
  Lamb = pytest.importorskip("timm.optim").Lamb
  params, grads, rate = adaptive_case()
  config = optim.OptimizerConfig(name=name, weight_decay=0.05, no_decay="norms", eps=1e-6,
                                 clip_grad_norm=1.0 if name == "lamb" else 0.0)
  ours = run_ours(config, params, grads, rate)
  tensors = {path: torch.tensor(np.asarray(x), requires_grad=True)
             for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  decayed = [t for path, t in tensors.items() if path[0].key == "conv"]
  others = [t for path, t in tensors.items() if path[0].key == "norm"]
  groups = [{"params": decayed}, {"params": others, "weight_decay": 0.0}]
  reference = (Lamb(groups, lr=rate(0), weight_decay=0.05, eps=1e-6) if name == "lamb"
               else torch.optim.AdamW(groups, lr=rate(0), weight_decay=0.05, eps=1e-6))
  for step, g in enumerate(grads):
    for group in reference.param_groups:
      group["lr"] = rate(step)
    for (path, tensor), gradient in zip(tensors.items(), jax.tree.leaves(g)):
      tensor.grad = torch.from_numpy(np.asarray(gradient).copy())
    reference.step()
    for (path, tensor), mine in zip(tensors.items(), jax.tree.leaves(ours[step])):
      # Within 1e-4 of a step (lr 0.01): float32 rounding; torch decays w as w x (1 - lr wd), ours adds -lr wd w.
      np.testing.assert_allclose(mine, tensor.detach().numpy(), rtol=2e-6, atol=1e-6, err_msg=f"{name} step {step} {path}")
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(ours[-1]), jax.tree.leaves(params))]
  assert min(moved) > 1e-3  # every parameter moved, by far more than the tolerance


def test_lamb_adapts_only_the_decayed_parameters():
  """One step from zero moments: Adam's step is g / (|g| + eps), about sign(g); LAMB scales the
  kernel's (plus its decay) to |w| / |step| and leaves the undecayed norm's as it is."""
  params, grads, _ = adaptive_case()
  config = optim.OptimizerConfig(name="lamb", weight_decay=0.05, no_decay="norms", eps=1e-6)
  tx = optim.make_optimizer(config, lambda step: 1.0, params)
  updates, _ = tx.update(grads[0], tx.init(params), params)
  adam = jax.tree.map(lambda g: g / (np.abs(g) + 1e-6), grads[0])
  step = adam["conv"]["kernel"] + 0.05 * params["conv"]["kernel"]
  ratio = np.linalg.norm(params["conv"]["kernel"]) / np.linalg.norm(step)
  np.testing.assert_allclose(updates["conv"]["kernel"], -ratio * step, rtol=1e-5)
  np.testing.assert_allclose(updates["norm"]["scale"], -adam["norm"]["scale"], rtol=1e-5)
