"""The networks of He et al. 2015: ImageNet ResNet-18/34/50/101/152 (Table 1), CIFAR ResNet-(6n+2)
(Sec. 4.2), their plain counterparts, shortcut options A/B/C, and the common variants.

`build_model(config)` is the one entry point; `ModelConfig` lists and checks every option.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resnet_jax import paper, sections
from resnet_jax.errors import ConfigError
from resnet_jax.models.blocks import (
    SHORTCUT_OPTIONS,
    Layers,
    ResidualBlock,
    basic_branch,
    bottleneck_branch,
)

# Table 1: (block, blocks per stage) for conv2_x .. conv5_x.
IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)  # on 32x32, 16x16 and 8x8 maps

DATASETS = ("imagenet", "cifar")
VARIANTS = ("v1", "v1.5", "v2")
# float64 (with JAX_ENABLE_X64=1) is for numerical checks: it keeps the torch parity test's 20 steps free
# of float32 rounding, which alone moves a batch-8 run's loss by 1e-3 within 5 steps.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every option of the networks; the defaults are the paper's.

  depth: 18/34/50/101/152 for `dataset='imagenet'`; 6n+2 (20, 32, 44, 56, 110, 1202, ...) for 'cifar'.
  shortcut: 'A' (zero-padding), 'B' (projection where the shape changes) or 'C' (projection
    everywhere); None takes the paper's choice for the family: B for ImageNet, A for CIFAR.
  plain: drop every shortcut (the degradation ablation of Table 2 and Fig. 6).
  variant: 'v1' (the paper: bottleneck stride on the first 1x1), 'v1.5' (stride on the 3x3, as
    torchvision and NVIDIA), 'v2' (pre-activation blocks of He et al. 2016, stride on the 3x3).
  zero_init_residual: start each block's last BN scale (v2: its last kernel) at zero, so every
    block starts as its shortcut (Goyal et al. 2017).
  num_classes: None takes 1000 for ImageNet, 10 for CIFAR.
  dtype: computation dtype; parameters and BN statistics are float32 (float64 for 'float64').
  bn_momentum: running averages are m * old + (1 - m) * batch (torchvision's 0.1 is m = 0.9).
  bn_group_size: 0 computes training BN statistics over the whole global batch (cross-replica BN);
    k computes them over groups of k consecutive examples (the paper's 32 per GPU).
  bn_unbiased_running_var: the running variance averages the batch variance x n / (n - 1), as torch
    does (converted weights and torchvision's recipe assume it); False: the biased one, as Flax.
  blurpool: blur the input of every strided convolution of 16 or more input channels with a fixed
    3x3 binomial filter (anti-aliased downsampling, Zhang 2019, as FFCV's recipe uses it); adds no
    parameters.
  drop_path_rate: stochastic depth as timm's ResNets: block i of the N drops its residual branch with
    probability drop_path_rate x i / (N - 1), in training only (train steps pass a key).
  """

  depth: int = 50
  dataset: str = "imagenet"
  shortcut: str | None = None
  plain: bool = False
  variant: str = "v1"
  zero_init_residual: bool = False
  num_classes: int | None = None
  input_channels: int = 3
  dtype: str = "float32"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_group_size: int = 0
  bn_unbiased_running_var: bool = True
  blurpool: bool = False
  drop_path_rate: float = 0.0

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ConfigError(f"unknown dataset family {self.dataset!r}; valid: {_listing(DATASETS)}")
    if self.dataset == "imagenet" and self.depth not in IMAGENET_STAGES:
      raise ConfigError(
          f"there is no ImageNet ResNet of depth {self.depth!r}; valid depths: "
          f"{_listing(IMAGENET_STAGES)} (Table 1)"
      )
    if self.dataset == "cifar" and not (
        isinstance(self.depth, int) and self.depth >= 8 and (self.depth - 2) % 6 == 0
    ):
      raise ConfigError(
          f"a CIFAR ResNet has depth 6n+2 with n >= 1 (the paper's: {_listing(paper.CIFAR_DEPTHS)});"
          f" {self.depth!r} is not of that form"
      )
    if self.shortcut is None:
      object.__setattr__(self, "shortcut", "B" if self.dataset == "imagenet" else "A")
    if self.shortcut not in SHORTCUT_OPTIONS:
      raise ConfigError(f"unknown shortcut option {self.shortcut!r}; valid: {_listing(SHORTCUT_OPTIONS)}")
    if self.variant not in VARIANTS:
      raise ConfigError(f"unknown variant {self.variant!r}; valid: {_listing(VARIANTS)}")
    if self.dtype == "float16":
      raise ConfigError(
          "model.dtype='float16' is refused: without loss scaling, small gradients underflow to zero and the "
          "loss turns NaN. Use 'bfloat16' (float32's range, as fast on every current GPU and TPU)")
    if self.dtype not in DTYPES:
      raise ConfigError(f"unknown dtype {self.dtype!r}; valid: {_listing(DTYPES)}")
    if self.dtype == "float64" and not jax.config.jax_enable_x64:
      raise ConfigError("model.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 (or use jax.enable_x64)")
    if self.num_classes is None:
      object.__setattr__(self, "num_classes", 1000 if self.dataset == "imagenet" else 10)
    for name in ("num_classes", "input_channels"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    if not 0.0 <= self.bn_momentum < 1.0:
      raise ConfigError(f"bn_momentum must be in [0, 1); got {self.bn_momentum!r}")
    if not self.bn_epsilon > 0.0:
      raise ConfigError(f"bn_epsilon must be positive; got {self.bn_epsilon!r}")
    if not 0.0 <= self.drop_path_rate < 1.0 or (self.drop_path_rate and self.plain):
      raise ConfigError(f"drop_path_rate must be in [0, 1), and 0 for a plain net (it drops residual branches); "
                        f"got {self.drop_path_rate!r}" + (" with plain=True" if self.plain else ""))
    if not isinstance(self.bn_group_size, int) or self.bn_group_size < 0:
      raise ConfigError(
          f"bn_group_size must be 0 (whole batch) or a positive group size; got {self.bn_group_size!r}"
      )
    for name in ("bn_unbiased_running_var", "blurpool"):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f"{name} must be True or False; got {getattr(self, name)!r}")

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "ModelConfig":
    """From a dict or an ml_collections ConfigDict; an unknown field is an error, not ignored."""
    return sections.from_mapping(cls, fields, "model")

  @property
  def name(self) -> str:
    """The paper's name of the network: 'ResNet-50', 'plain-34'."""
    return f"{'plain' if self.plain else 'ResNet'}-{self.depth}"

  @property
  def family(self) -> str:
    return "ImageNet" if self.dataset == "imagenet" else "CIFAR"

  def describe(self) -> str:
    """The name with everything that sets it apart from the paper's network of that name."""
    shortcut = "" if self.plain else f"shortcut {self.shortcut}, "
    blurpool = (", BlurPool" if self.blurpool else "") + (f", drop path {self.drop_path_rate:g}" if self.drop_path_rate else "")
    return f"{self.family} {self.name} ({shortcut}{self.variant}{blurpool}, {self.num_classes} classes, {self.dtype})"

  @property
  def block(self) -> str:
    return IMAGENET_STAGES[self.depth][0] if self.dataset == "imagenet" else "basic"

  @property
  def stage_blocks(self) -> tuple[int, ...]:
    if self.dataset == "imagenet":
      return IMAGENET_STAGES[self.depth][1]
    return ((self.depth - 2) // 6,) * 3

  @property
  def stage_widths(self) -> tuple[int, ...]:
    return IMAGENET_WIDTHS if self.dataset == "imagenet" else CIFAR_WIDTHS

  @property
  def preact(self) -> bool:
    return self.variant == "v2"


def _listing(values) -> str:
  return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values)


class Stem(nnx.Module):
  """conv1: a 7x7/2 convolution and a 3x3/2 max pool for ImageNet, one 3x3 convolution for CIFAR.

  Pre-activation nets leave out the stem's BN-ReLU: the first block starts with its own.
  """

  def __init__(self, config: ModelConfig, layers: Layers):
    imagenet = config.dataset == "imagenet"
    width = config.stage_widths[0]
    self.conv = layers.conv(config.input_channels, width, 7 if imagenet else 3, 2 if imagenet else 1)
    self.norm = None if config.preact else layers.norm(width)
    self.max_pool = imagenet

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.norm is not None:
      x = nnx.relu(self.norm(x))
    if self.max_pool:
      x = max_pool_3x3_stride_2(x)
    return x


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """The stem's 3x3/2 max pool (padding 1) as the maximum of its 9 strided shifts: the same values
  as `nnx.max_pool`, whose gradient (XLA's select-and-scatter) takes 10x longer on the CPU. The
  gradients differ only at ties within a window (this one splits it, XLA's gives it to one input);
  after the stem's ReLU those are at 0, where no gradient flows back anyway."""
  batch, height, width, channels = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out_height, out_width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
  shifts = [jax.lax.slice(padded, (0, i, j, 0), (batch, i + 2 * out_height - 1, j + 2 * out_width - 1, channels),
                          (1, 2, 2, 1)) for i in range(3) for j in range(3)]
  return functools.reduce(jnp.maximum, shifts)


class Head(nnx.Module):
  """Global average pooling and the fully connected classifier; float32 (or float64) logits.

  Pooling over whatever map arrives lets any input size through (the fully-convolutional
  multi-scale test). Pre-activation nets first apply the final BN-ReLU.
  """

  def __init__(self, in_channels: int, config: ModelConfig, layers: Layers):
    self.norm = layers.norm(in_channels) if config.preact else None
    self.fc = layers.dense(in_channels, config.num_classes)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm is not None:
      x = nnx.relu(self.norm(x))
    logits = self.fc(jnp.mean(x, axis=(1, 2)))
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class ResNet(nnx.Module):
  """stem -> stages (conv2_x, conv3_x, ...) -> head. Inputs are NHWC images."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    layers = Layers(
        DTYPES[config.dtype], config.bn_momentum, config.bn_epsilon, config.bn_group_size, rngs,
        config.bn_unbiased_running_var, config.blurpool,
    )
    self.stem = Stem(config, layers)
    shortcut = None if config.plain else config.shortcut
    stages = []
    in_channels = config.stage_widths[0]
    total_blocks, block_number = sum(config.stage_blocks), 0
    for index, (width, num_blocks) in enumerate(zip(config.stage_widths, config.stage_blocks)):
      blocks = []
      for block_index in range(num_blocks):
        # The first block of every stage but the first halves the map (conv3_1, conv4_1, ...).
        stride = 2 if index > 0 and block_index == 0 else 1
        if config.block == "basic":
          branch = basic_branch(width, stride)
        else:
          branch = bottleneck_branch(width, stride, stride_on_3x3=config.variant != "v1")
        blocks.append(ResidualBlock(
            in_channels, branch, shortcut, preact=config.preact,
            zero_init_last=config.zero_init_residual, layers=layers,
            drop_rate=config.drop_path_rate * block_number / max(total_blocks - 1, 1),
        ))
        in_channels = branch[-1].channels
        block_number += 1
      stages.append(nnx.Sequential(*blocks))
    self.stages = nnx.List(stages)
    self.head = Head(in_channels, config, layers)

  def __call__(self, images: jax.Array, drop_key: jax.Array | None = None) -> jax.Array:
    """`drop_key`: the randomness of stochastic depth (model.drop_path_rate), in training only."""
    x = self.stem(images)
    blocks = [block for stage in self.stages for block in stage.layers]
    keys = jax.random.split(drop_key, len(blocks)) if drop_key is not None else [None] * len(blocks)
    for block, key in zip(blocks, keys):
      x = block(x, key)
    return self.head(x)


def build_model(config: ModelConfig | Mapping[str, Any], *, seed: int = 0) -> ResNet:
  """Builds any network of the paper from a `ModelConfig`, a dict or an ml_collections ConfigDict."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_mapping(config)
  return ResNet(config, rngs=nnx.Rngs(params=seed))
