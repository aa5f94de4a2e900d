"""Batches for the trainer: a deterministic, resumable train stream and an exact eval pass.

Order is index-based: the batch drawn at step s is a pure function of (seed, s), namely a slice of
epoch s // steps_per_epoch's permutation, augmented with randomness seeded by (seed, s). So the
data position saved in a checkpoint is just the step, a restore skips ahead without reading any
image, and the global batch is the same whatever the number of processes (each takes its slice).
"""

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data.sources import ArraySplit
from resnet_jax.errors import ConfigError

# Per-channel mean and std of ImageNet's training pixels, 0-255 scale.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
  """(images / divisor - mean) / std, run on the devices inside the jitted steps: batches cross to
  them as uint8, a quarter of float32's bytes. Hashed by identity (eq=False): a static argument.

  In-memory sets are normalised by their training split's statistics on a 0-1 scale (`pixel_mean`,
  `channel_mean_std`); streamed ImageNet by its channel statistics on the 0-255 scale (`imagenet`).
  """

  mean: np.ndarray
  std: np.ndarray
  divisor: float = 1.0

  @classmethod
  def pixel_mean(cls, images: np.ndarray) -> "Normalizer":
    """Subtracts the training images' per-pixel mean, on a 0-1 scale (the paper's CIFAR recipe)."""
    return cls((images.astype(np.float64) / 255.0).mean(0).astype(np.float32), np.ones((1,), np.float32), 255.0)

  @classmethod
  def channel_mean_std(cls, images: np.ndarray) -> "Normalizer":
    """Standardises each channel by the training images' statistics, on a 0-1 scale."""
    pixels = images.astype(np.float64) / 255.0
    return cls(pixels.mean((0, 1, 2)).astype(np.float32), pixels.std((0, 1, 2)).astype(np.float32), 255.0)

  @classmethod
  def imagenet(cls, divide_by_std: bool = True) -> "Normalizer":
    std = IMAGENET_STD if divide_by_std else (1.0, 1.0, 1.0)
    return cls(np.array(IMAGENET_MEAN, np.float32), np.array(std, np.float32))

  def __call__(self, images: jax.Array, lighting: jax.Array | None = None) -> jax.Array:
    """Float32 network inputs (float64 under JAX_ENABLE_X64) from uint8 images (..., H, W, C);
    `lighting` is a per-image RGB shift."""
    x = jnp.asarray(images).astype(float)
    if lighting is not None:
      x = x + lighting[:, None, None, :]
    if self.divisor != 1.0:
      x = x / self.divisor
    return (x - self.mean) / self.std


@dataclasses.dataclass(frozen=True)
class PadCropFlip:
  """Sec. 4.2: pad `pad` pixels each side, take a random crop of the original size, flip half.

  `draw` samples offsets and flips for a whole global batch, so that every process applies the
  same ones to its slice, whatever the process count.
  """

  pad: int
  flip: bool

  def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
    offsets = rng.integers(0, 2 * self.pad + 1, (n, 2))
    flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
    return np.concatenate([offsets, flips[:, None]], axis=1)

  def apply(self, images: np.ndarray, draws: np.ndarray) -> np.ndarray:
    _, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)))
    out = np.empty_like(images)
    for i, (top, left, flip) in enumerate(draws):
      crop = padded[i, top:top + height, left:left + width]
      out[i] = crop[:, ::-1] if flip else crop
    return out


def process_slice(
    global_size: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
  """A process's contiguous share of a global batch (by default, this process's)."""
  index = jax.process_index() if process_index is None else process_index
  local = global_size // (jax.process_count() if process_count is None else process_count)
  return slice(index * local, (index + 1) * local)


class TrainBatches(Iterator[dict[str, np.ndarray]]):
  """An endless stream of this process's slices of the global training batches, from `step` on, as
  the split stores them (uint8: `Normalizer` runs on the devices)."""

  def __init__(
      self,
      split: ArraySplit,
      global_batch: int,
      *,
      seed: int,
      augment: PadCropFlip | None = None,
      step: int = 0,
  ):
    if global_batch > len(split):
      raise ConfigError(f"batch of {global_batch} is larger than the {len(split)} training examples")
    self.split = split
    self.global_batch = global_batch
    self.seed = seed
    self.augment = augment
    self.step = step
    self.steps_per_epoch = len(split) // global_batch  # each epoch drops its remainder
    self._epoch, self._order = -1, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._epoch = epoch
      self._order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.split))
    return self._order

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, index = divmod(self.step, self.steps_per_epoch)
    start = index * self.global_batch
    local = process_slice(self.global_batch)
    chosen = self._permutation(epoch)[start:start + self.global_batch][local]
    images = self.split.images[chosen]
    if self.augment is not None:
      draws = self.augment.draw(np.random.default_rng([self.seed, 1, self.step]), self.global_batch)
      images = self.augment.apply(images, draws[local])
    self.step += 1
    return {"image": images, "label": self.split.labels[chosen]}


def eval_batches(split: ArraySplit, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example exactly once: the last global batch is padded and `mask` marks real examples.

  Images come as (batch, 1 view, H, W, C), the layout of multi-view evaluation."""
  local = process_slice(global_batch)
  for start in range(0, len(split), global_batch):
    positions = np.arange(start, start + global_batch)[local]
    real = positions < len(split)
    index = np.where(real, positions, 0)
    yield {
        "image": split.images[index][:, None],
        "label": split.labels[index],
        "mask": real.astype(np.float32),
    }
