"""The train step's device-side regularizers against the reference implementations: mixup and
cutmix as torchvision's transforms and timm's Mixup (given the same draws), timm's binary
cross-entropy with its target threshold, and stochastic depth as timm's DropPath."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from resnet_jax import mixing
from resnet_jax.errors import ConfigError
from resnet_jax.models import build_model
from resnet_jax.train_step import loss_of, targets_for

BATCH, HEIGHT, WIDTH, CLASSES = 6, 12, 10, 5


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.normal(size=(BATCH, HEIGHT, WIDTH, 3)).astype(np.float32), rng.integers(0, CLASSES, BATCH)


def ours(images, labels, cutmix: bool, lam: float, center: tuple[int, int], style: str):
  drawn = mixing.MixDraw(jnp.asarray(cutmix), jnp.float32(lam), jnp.asarray(center))
  mixed, targets = mixing.mix(jnp.asarray(images), jax.nn.one_hot(labels, CLASSES), drawn, style)
  return np.asarray(mixed), np.asarray(targets)


def test_mixup_and_cutmix_by_hand():
  """Mixup: lam x + (1 - lam) x's partner; cutmix: the partner's pixels inside the box, targets by
  the share kept. torchvision pairs each example with the previous one, timm with the mirrored one."""
  images, labels = batch()
  mixed, targets = ours(images, labels, False, 0.7, (0, 0), "torchvision")
  np.testing.assert_allclose(mixed[2], 0.7 * images[2] + 0.3 * images[1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(targets[0], 0.7 * np.eye(CLASSES)[labels[0]] + 0.3 * np.eye(CLASSES)[labels[5]], atol=1e-7)
  # timm, lam 0.75 on 12x10: cut sides int(0.5 x 12) = 6 and int(0.5 x 10) = 5, centre (1, 8): rows
  # 1 - 3 (clipped to 0) to 1 + 3, columns 8 - 2 to 8 + 3 (clipped to 10): 4 x 4 pixels kept from the
  # partner, so the targets keep 1 - 16/120.
  mixed, targets = ours(images, labels, True, 0.75, (1, 8), "timm")
  inside = np.zeros((HEIGHT, WIDTH), bool)
  inside[0:4, 6:10] = True
  np.testing.assert_array_equal(mixed[1][inside], images[4][inside])
  np.testing.assert_array_equal(mixed[1][~inside], images[1][~inside])
  kept = 1 - 16 / 120
  np.testing.assert_allclose(targets[1], kept * np.eye(CLASSES)[labels[1]] + (1 - kept) * np.eye(CLASSES)[labels[4]],
                             atol=1e-6)


def test_draws_depend_on_the_step_and_follow_the_switch_probability():
  config = mixing.MixConfig(mixup_alpha=0.2, cutmix_alpha=1.0, cutmix_prob=0.3)
  draws = [mixing.draw(config, jax.random.fold_in(jax.random.key(0), step), HEIGHT, WIDTH) for step in range(400)]
  assert 0.22 < np.mean([bool(d.cutmix) for d in draws]) < 0.38
  again = mixing.draw(config, jax.random.fold_in(jax.random.key(0), 7), HEIGHT, WIDTH)
  assert float(again.lam) == float(draws[7].lam) and float(draws[7].lam) != float(draws[8].lam)
  mixup_lams = np.array([float(d.lam) for d in draws if not d.cutmix])
  assert abs(mixup_lams.mean() - 0.5) < 0.08 and np.mean((mixup_lams < 0.1) | (mixup_lams > 0.9)) > 0.5  # Beta(0.2, 0.2)
  with pytest.raises(ConfigError, match="mix.style='fastai' is invalid"):
    mixing.MixConfig(style="fastai")


SHARDED_MIXING = """
import resnet_jax, jax, jax.numpy as jnp, numpy as np
from resnet_jax import mixing, sharding
mesh = sharding.make_mesh()
rng = np.random.default_rng(0)
images, labels = rng.normal(size=(16, 8, 8, 3)).astype(np.float32), rng.integers(0, 5, 16)
config = mixing.MixConfig(mixup_alpha=0.2, cutmix_alpha=1.0, style=STYLE)
def step(images, labels, step):
  drawn = mixing.draw(config, jax.random.fold_in(jax.random.key(0), step), 8, 8)
  return mixing.mix(images, jax.nn.one_hot(labels, 5), drawn, config.style)
spread = jax.jit(step)(jax.device_put(images, sharding.batch_sharded(mesh)), jax.device_put(labels, sharding.batch_sharded(mesh)), 3)
whole = jax.jit(step)(images, labels, 3)  # uncommitted inputs: one device
assert len(mesh.devices.ravel()) == 8 and len(spread[0].sharding.device_set) == 8
for a, b in zip(spread, whole):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("same")
"""


@pytest.mark.parametrize("style", mixing.STYLES)
def test_a_batch_sharded_over_eight_devices_mixes_as_on_one(style):
  """Partners come from the whole global batch: the roll (or reversal) crosses the devices."""
  from conftest import run_python
  result = run_python(SHARDED_MIXING.replace("STYLE", repr(style)),
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]


@pytest.mark.torch
@pytest.mark.parametrize("kind,alpha", [("MixUp", 0.2), ("CutMix", 1.0)])
@pytest.mark.parametrize("seed", range(4))
def test_mixup_and_cutmix_equal_torchvisions_given_its_draws(kind, alpha, seed):
  torch = pytest.importorskip("torch")
  v2 = pytest.importorskip("torchvision.transforms.v2")
  images, labels = batch(seed)
  transform = getattr(v2, kind)(alpha=alpha, num_classes=CLASSES)
  torch.manual_seed(seed)
  theirs, their_targets = transform(torch.from_numpy(images.transpose(0, 3, 1, 2)).clone(), torch.from_numpy(labels))
  torch.manual_seed(seed)  # the same draws again, in the order its make_params takes them
  lam = float(transform._dist.sample(()))
  center = (0, 0)
  if kind == "CutMix":
    column, row = int(torch.randint(WIDTH, size=(1,))), int(torch.randint(HEIGHT, size=(1,)))
    center = (row, column)
  mixed, targets = ours(images, labels, kind == "CutMix", lam, center, "torchvision")
  np.testing.assert_allclose(mixed, theirs.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(targets, their_targets.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(6))
def test_mixup_and_cutmix_with_smoothing_equal_timms_given_its_draws(seed):
  """timm's Mixup in 'batch' mode switching between mixup 0.1 and cutmix 1.0 (RSB's A2/A3) with label
  smoothing 0.1 applied in its targets; ours smooths the mixed targets, the same numbers."""
  torch = pytest.importorskip("torch")
  Mixup = pytest.importorskip("timm.data").Mixup
  images, labels = batch(seed)
  transform = Mixup(mixup_alpha=0.1, cutmix_alpha=1.0, switch_prob=0.5, mode="batch", label_smoothing=0.1,
                    num_classes=CLASSES)
  np.random.seed(seed)
  theirs, their_targets = transform(torch.from_numpy(images.transpose(0, 3, 1, 2)).clone(), torch.from_numpy(labels))
  np.random.seed(seed)  # replay _params_per_batch and rand_bbox
  assert np.random.rand() < 1.0  # mix_prob 1
  cutmix = bool(np.random.rand() < 0.5)
  lam = float(np.random.beta(1.0, 1.0) if cutmix else np.random.beta(0.1, 0.1))
  center = (int(np.random.randint(0, HEIGHT)), int(np.random.randint(0, WIDTH))) if cutmix else (0, 0)
  mixed, targets = ours(images, labels, cutmix, lam, center, "timm")
  np.testing.assert_allclose(mixed, theirs.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(optax.smooth_labels(targets, 0.1), their_targets.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_binary_cross_entropy_equals_timms(threshold):
  torch = pytest.importorskip("torch")
  BinaryCrossEntropy = pytest.importorskip("timm.loss").BinaryCrossEntropy
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (BATCH, CLASSES)).astype(np.float32)
  images, labels = batch(1)
  drawn = mixing.MixDraw(jnp.asarray(False), jnp.float32(0.6), jnp.zeros(2, jnp.int32))
  _, soft = mixing.mix(jnp.asarray(images), jax.nn.one_hot(labels, CLASSES), drawn, "timm")
  soft = optax.smooth_labels(soft, 0.1)
  reference = BinaryCrossEntropy(smoothing=0.0, target_threshold=threshold or None)
  expected = float(reference(torch.from_numpy(logits), torch.from_numpy(np.array(soft))))
  assert float(loss_of(jnp.asarray(logits), soft, "binary_cross_entropy", threshold)) == pytest.approx(expected, rel=1e-6)
  # Index targets: timm smooths them itself (on 1 - s + s/K, off s/K), as our smoothing does.
  hard = BinaryCrossEntropy(smoothing=0.1, target_threshold=threshold or None)
  expected = float(hard(torch.from_numpy(logits), torch.from_numpy(labels)))
  smoothed = optax.smooth_labels(jax.nn.one_hot(labels, CLASSES), 0.1)
  assert float(loss_of(jnp.asarray(logits), smoothed, "binary_cross_entropy", threshold)) == pytest.approx(expected, rel=1e-6)


def test_a_target_threshold_makes_the_targets_binary():
  logits = jnp.zeros((1, 4))
  targets = jnp.array([[0.55, 0.3, 0.1, 0.05]])
  # At logit 0 every class costs log 2 whatever its target; the thresholded targets (1, 1, 0, 0) give
  # the same, so compare the gradients: sigmoid(0) - target.
  gradient = jax.grad(lambda x: loss_of(x, targets, "binary_cross_entropy", 0.2))(logits)
  np.testing.assert_allclose(gradient, (0.5 - np.array([[1.0, 1.0, 0.0, 0.0]])) / 4, atol=1e-7)


def test_targets_for_mixes_only_when_asked():
  images, labels = batch()
  off = targets_for(jnp.asarray(labels), jnp.asarray(images), jnp.int32(3), num_classes=CLASSES,
                    mix=mixing.MixConfig(), seed=0, label_smoothing=0.0)
  np.testing.assert_array_equal(off[0], images)
  np.testing.assert_array_equal(off[1], np.eye(CLASSES)[labels])
  on = functools.partial(targets_for, jnp.asarray(labels), jnp.asarray(images), num_classes=CLASSES,
                         mix=mixing.MixConfig(mixup_alpha=1.0), seed=0, label_smoothing=0.0)
  assert not np.array_equal(on(jnp.int32(3))[0], images)
  np.testing.assert_array_equal(on(jnp.int32(3))[0], on(jnp.int32(3))[0])
  assert not np.array_equal(on(jnp.int32(3))[0], on(jnp.int32(4))[0])


def test_drop_path_drops_whole_branches_per_example_and_keeps_the_expectation():
  """timm's DropPath: an example's branch is 0 with probability p, else scaled by 1 / (1 - p)."""
  from resnet_jax.models.blocks import Layers, ResidualBlock, basic_branch
  layers = Layers(jnp.float32, 0.9, 1e-5, 0, nnx.Rngs(0))
  block = ResidualBlock(8, basic_branch(8, 1), "B", preact=True, zero_init_last=False, layers=layers, drop_rate=0.25)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4000, 4, 4, 8)).astype(np.float32))
  branch = block(x) - x  # pre-activation: the output is branch + shortcut (identity here)
  dropped = block(x, jax.random.key(1)) - x
  ratio = np.asarray((dropped * branch).sum((1, 2, 3)) / (branch * branch).sum((1, 2, 3)))
  kept = ratio > 0.5
  np.testing.assert_allclose(ratio[kept], 1 / 0.75, rtol=1e-4)
  np.testing.assert_allclose(ratio[~kept], 0.0, atol=1e-6)
  assert abs((~kept).mean() - 0.25) < 0.03


def test_drop_rates_rise_linearly_over_the_blocks_as_timms():
  model = build_model(dict(depth=50, drop_path_rate=0.1))
  rates = [block.drop_rate for stage in model.stages for block in stage.layers]
  np.testing.assert_allclose(rates, 0.1 * np.arange(16) / 15)
  with pytest.raises(ConfigError, match="0 for a plain net"):
    build_model(dict(depth=18, plain=True, drop_path_rate=0.1))
