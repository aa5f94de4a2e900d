"""Batch augmentations on the devices: mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) with
soft targets, inside the jitted train step on the sharded global batch.

Each batch is mixed one way, drawn from a key folded from (seed, step): a resumed run mixes exactly
as the uninterrupted one, on any number of devices. Two conventions, as the recipes' own code has
them (they differ in which example is an image's partner and in how the cutmix box is rounded):
- 'torchvision' (transforms.v2 MixUp/CutMix in a RandomChoice): the partner is the previous example
  (a roll by one); the box's half sides are int(0.5 sqrt(1 - lam) x side), around a uniform centre.
- 'timm' (timm.data.Mixup, mode 'batch'): the partner is the example at the mirrored position (the
  batch reversed); the box's sides are int(sqrt(1 - lam) x side), split below/above a uniform centre.
Both clip the box to the image and mix the targets by the share of pixels each image keeps.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from resnet_jax import sections

STYLES = ("torchvision", "timm")


@dataclasses.dataclass(frozen=True)
class MixConfig:
  """`mixup_alpha`, `cutmix_alpha`: the Beta(a, a) each draws its mixing share from (0: off). With
  both on, a batch is cut-mixed with probability `cutmix_prob` (torchvision's RandomChoice: 0.5;
  timm's switch_prob), mixed up otherwise. `style`: whose pairing and box rounding (see above)."""

  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  cutmix_prob: float = 0.5
  style: str = "torchvision"

  def __post_init__(self):
    sections.check(self, "mix", (
        ("mixup_alpha", lambda v: v >= 0, "0 (off) or positive"),
        ("cutmix_alpha", lambda v: v >= 0, "0 (off) or positive"),
        ("cutmix_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("style", lambda v: v in STYLES, " or ".join(map(repr, STYLES))),
    ))

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "MixConfig":
    return sections.from_mapping(cls, fields, "mix")

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class MixDraw(NamedTuple):
  """One batch's mixing: cutmix or mixup, the Beta draw, and the box centre (row, column)."""

  cutmix: jax.Array
  lam: jax.Array
  center: jax.Array


def draw(config: MixConfig, key: jax.Array, height: int, width: int) -> MixDraw:
  choice_key, mixup_key, cutmix_key, row_key, column_key = jax.random.split(key, 5)
  if config.mixup_alpha and config.cutmix_alpha:
    cutmix = jax.random.uniform(choice_key) < config.cutmix_prob
  else:
    cutmix = jnp.asarray(config.cutmix_alpha > 0)
  # An alpha of 0 is never drawn from (jnp.where picks the other); 1 keeps its Beta well defined.
  mixup_lam = jax.random.beta(mixup_key, config.mixup_alpha or 1.0, config.mixup_alpha or 1.0)
  cutmix_lam = jax.random.beta(cutmix_key, config.cutmix_alpha or 1.0, config.cutmix_alpha or 1.0)
  center = jnp.stack([jax.random.randint(row_key, (), 0, height), jax.random.randint(column_key, (), 0, width)])
  return MixDraw(cutmix, jnp.where(cutmix, cutmix_lam, mixup_lam).astype(jnp.float32), center)


def box(lam: jax.Array, center: jax.Array, height: int, width: int, style: str) -> tuple[jax.Array, ...]:
  """(top, bottom, left, right) of the cutmix box, bottom and right exclusive."""
  sides = jnp.array([height, width])
  if style == "torchvision":
    half = (0.5 * jnp.sqrt(1.0 - lam) * sides).astype(jnp.int32)
    low, high = center - half, center + half
  else:
    cut = (jnp.sqrt(1.0 - lam) * sides).astype(jnp.int32)
    low, high = center - cut // 2, center + (cut + 1) // 2
  low, high = jnp.clip(low, 0, sides), jnp.clip(high, 0, sides)
  return low[0], high[0], low[1], high[1]


def partner(x: jax.Array, style: str) -> jax.Array:
  return jnp.roll(x, 1, axis=0) if style == "torchvision" else x[::-1]


def mix(images: jax.Array, targets: jax.Array, mixing: MixDraw, style: str) -> tuple[jax.Array, jax.Array]:
  """The mixed images (NHWC) and targets (one row of class probabilities an example)."""
  _, height, width, _ = images.shape
  others = partner(images, style)
  top, bottom, left, right = box(mixing.lam, mixing.center, height, width, style)
  rows, columns = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (columns >= left) & (columns < right)
  cut = jnp.where(inside[None, :, :, None], others, images)
  kept = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (height * width)
  lam = jnp.where(mixing.cutmix, kept, mixing.lam).astype(images.dtype)
  mixed = jnp.where(mixing.cutmix, cut, images * lam + others * (1 - lam))
  lam = lam.astype(targets.dtype)
  return mixed, targets * lam + partner(targets, style) * (1 - lam)


def erase(images: jax.Array, boxes: jax.Array) -> jax.Array:
  """Random erasing's second half: each image's box (top, left, height, width; drawn on the host,
  autoaugment.erasing_box) set to 0 in the normalised image, torchvision's value=0."""
  rows = jnp.arange(images.shape[1])[None, :, None]
  cols = jnp.arange(images.shape[2])[None, None, :]
  top, left, height, width = (boxes[:, i, None, None] for i in range(4))
  inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
  return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)
