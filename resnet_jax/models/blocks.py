"""Residual blocks of He et al. 2015 (Fig. 2, Fig. 5) and their pre-activation form (He et al. 2016).

A block is a branch of convolutions F(x) plus a shortcut: y = relu(F(x) + shortcut(x)). The branch
is described by a list of `ConvSpec`s, so the basic and bottleneck blocks differ only in that list.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# He et al. 2015 ("Delving deep into rectifiers") normal init; fan-out as torchvision does it.
HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


@functools.cache
def one_by_one_as_matmul() -> bool:
  """Whether 1x1 convolutions run as matmuls here: everywhere but on a CPU with AVX-512.

  On an AVX2 EPYC (jaxlib 0.12, measured before XLA's own convolutions replaced YNNPACK's) XLA:CPU
  computed a 1x1 convolution's kernel gradient 4-8x slower than the equal matmul's, and ResNet-50
  trained 1.39x faster with them as matmuls; on an AVX-512 Xeon with XLA's own convolutions the
  convolution is the faster one (see the README's Performance section). Values agree to float32
  rounding.
  """
  from resnet_jax.tools import cpu

  return jax.default_backend() != "cpu" or "avx512f" not in cpu.features()


def matmul_1x1(inputs: jax.Array, kernel: jax.Array, strides, **options) -> jax.Array:
  """An unpadded 1x1 convolution as the matrix product it is (after striding), same numbers."""
  strided = inputs[:, ::strides[0], ::strides[1], :]
  return jax.lax.dot_general(strided, kernel[0, 0], (((3,), (0,)), ((), ())), precision=options.get("precision"),
                             preferred_element_type=options.get("preferred_element_type"))


class _Layer(NamedTuple):
  """A convolution's static settings, hashable (lists made tuples) so a custom_vjp can hold them."""
  as_matmul: bool
  strides: tuple
  padding: str | tuple
  options: tuple

  def apply(self, inputs: jax.Array, kernel: jax.Array) -> jax.Array:
    if self.as_matmul:
      return matmul_1x1(inputs, kernel, self.strides, **dict(self.options))
    return jax.lax.conv_general_dilated(inputs, kernel, self.strides, self.padding, **dict(self.options))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _materialized_backward(inputs: jax.Array, kernel: jax.Array, layer: _Layer) -> jax.Array:
  """`layer.apply` with its usual gradient, computed from an output gradient and a saved input that
  are first materialized (optimization barriers). XLA:CPU computes a kernel gradient over transposed
  copies of both; without the barriers it fuses the BN backward, the ReLU mask and the BN forward it
  recomputes into those transposes, which then run in strided order. With them ResNet-50's step runs
  1.35x and ResNet-18's 1.14x as fast on the AVX-512 Xeon, the same numbers."""
  return layer.apply(inputs, kernel)


def _forward(inputs: jax.Array, kernel: jax.Array, layer: _Layer):
  return layer.apply(inputs, kernel), (inputs, kernel)


def _backward(layer: _Layer, saved, output_gradient: jax.Array):
  inputs, kernel = saved
  inputs, output_gradient = jax.lax.optimization_barrier((inputs, output_gradient))
  return jax.vjp(layer.apply, inputs, kernel)[1](output_gradient)


_materialized_backward.defvjp(_forward, _backward)


def conv_or_matmul(inputs: jax.Array, kernel: jax.Array, strides, padding, **options) -> jax.Array:
  """`lax.conv_general_dilated`, with an unpadded 1x1 kernel taken as a matmul where that is faster
  (`one_by_one_as_matmul`) and, on the CPU, the gradient of `_materialized_backward`. Kernels stay
  (1, 1, in, out), so checkpoints and converted weights are the same either way."""
  unpadded = padding == "VALID" or all(tuple(pair) == (0, 0) for pair in padding)
  undilated = all(tuple(options.get(name) or (1, 1)) == (1, 1) for name in ("lhs_dilation", "rhs_dilation"))
  as_matmul = (kernel.shape[:2] == (1, 1) and unpadded and undilated and options.get("feature_group_count", 1) == 1
               and one_by_one_as_matmul())
  layer = _Layer(as_matmul, tuple(strides), padding if isinstance(padding, str) else tuple(map(tuple, padding)),
                 tuple((name, tuple(value) if isinstance(value, list) else value) for name, value in options.items()))
  if jax.default_backend() == "cpu":
    return _materialized_backward(inputs, kernel, layer)
  return layer.apply(inputs, kernel)


def blur(x: jax.Array) -> jax.Array:
  """The 3x3 binomial filter [1, 2, 1]^T [1, 2, 1] / 16 on each channel, zero-padded to the same size
  (Zhang 2019's anti-aliasing as FFCV applies it), as two separable passes of shifted sums."""
  def smooth(y, axis):
    padded = jnp.pad(y, [(1, 1) if a == axis else (0, 0) for a in range(y.ndim)])
    shifted = [jax.lax.slice_in_dim(padded, i, i + y.shape[axis], axis=axis) for i in range(3)]
    return (shifted[0] + 2 * shifted[1] + shifted[2]) / 4
  return smooth(smooth(x, 1), 2)


def blurred_conv_or_matmul(inputs: jax.Array, kernel: jax.Array, strides, padding, **options) -> jax.Array:
  """`conv_or_matmul` of the blurred input: BlurPool before a strided convolution, with no new
  parameters (the filter is fixed), so the network's weights and checkpoints keep their form."""
  return conv_or_matmul(blur(inputs), kernel, strides, padding, **options)


# FFCV blurs the input of every convolution with a stride and at least this many input channels (so
# not the 3-channel stem).
BLURPOOL_MIN_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class Layers:
  """Makes the convolutions and batch norms of one network, all with the same settings.

  Parameters are float32 (float64 with it); `dtype` is the computation dtype (bfloat16 for speed).
  `blurpool` blurs the input of the strided convolutions (see `blurred_conv_or_matmul`).
  """

  dtype: jnp.dtype
  bn_momentum: float
  bn_epsilon: float
  bn_group_size: int
  rngs: nnx.Rngs
  bn_unbiased_running_var: bool = True
  blurpool: bool = False

  @property
  def param_dtype(self) -> jnp.dtype:
    return jnp.promote_types(self.dtype, jnp.float32)

  def conv(
      self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, zero_init: bool = False
  ) -> nnx.Conv:
    # Symmetric padding k//2 (not 'SAME', which pads (0, 1) at stride 2) keeps the layers
    # identical to Caffe's and torchvision's, so their weights load unchanged.
    pad = kernel // 2
    blurs = self.blurpool and stride > 1 and in_channels >= BLURPOOL_MIN_CHANNELS
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,  # BN follows (or precedes) every convolution, so a bias is redundant.
        kernel_init=nnx.initializers.zeros_init() if zero_init else HE_NORMAL,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        conv_general_dilated=blurred_conv_or_matmul if blurs else conv_or_matmul,
        rngs=self.rngs,
    )

  def norm(self, channels: int, zero_init: bool = False) -> "BatchNorm":
    return BatchNorm(
        channels,
        group_size=self.bn_group_size,
        unbiased_running_var=self.bn_unbiased_running_var,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        scale_init=nnx.initializers.zeros_init() if zero_init else nnx.initializers.ones_init(),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        rngs=self.rngs,
    )

  def dense(self, in_features: int, out_features: int) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, dtype=self.dtype, param_dtype=self.param_dtype, rngs=self.rngs
    )


class BatchNorm(nnx.BatchNorm):
  """Batch norm whose training statistics come from groups of `group_size` consecutive examples,
  and whose running variance is, by default, torch's.

  group_size 0 normalises over the whole (global, cross-device) batch. A group size k reproduces
  per-worker BN of a given size (the paper's 32 per GPU; Goyal et al.'s BN-size study) on any
  number of devices. Running averages take the mean of the groups' statistics.

  A batch is normalised by its biased variance in either convention; `unbiased_running_var`
  averages the unbiased one (x n / (n - 1), n values per channel) into the running variance, as
  torch.nn.BatchNorm2d does, so that training matches torchvision's recipe and its checkpoints
  step for step. Flax's own BatchNorm averages the biased one: 3% lower at n = 32 (a batch of 8
  at 2x2), immaterial at ImageNet's n >= 256 x 7 x 7.
  """

  def __init__(self, num_features: int, *, group_size: int = 0, unbiased_running_var: bool = True, **kwargs):
    super().__init__(num_features, **kwargs)
    self.group_size = group_size
    self.unbiased_running_var = unbiased_running_var

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_running_average:
      return super().__call__(x)
    size = self.group_size or x.shape[0]
    if x.shape[0] % size:
      raise ValueError(f"batch of {x.shape[0]} does not split into BN groups of {size}")
    groups = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(-1, size, *x.shape[1:])
    axes = tuple(range(1, groups.ndim - 1))
    mean = groups.mean(axes, keepdims=True)
    var = jnp.maximum((groups * groups).mean(axes, keepdims=True) - mean * mean, 0.0)
    count = math.prod(groups.shape[1:-1])
    running_var = var * (count / (count - 1)) if self.unbiased_running_var and count > 1 else var
    m = self.momentum
    all_groups = (0,) + axes
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean.mean(all_groups).ravel())
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * running_var.mean(all_groups).ravel())
    y = (groups - mean) * (jax.lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]
    return y.reshape(x.shape).astype(self.dtype or x.dtype)


class ConvSpec(NamedTuple):
  kernel: int
  channels: int
  stride: int


def basic_branch(width: int, stride: int) -> list[ConvSpec]:
  """Fig. 5 left: two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""
  return [ConvSpec(3, width, stride), ConvSpec(3, width, 1)]


def bottleneck_branch(width: int, stride: int, stride_on_3x3: bool) -> list[ConvSpec]:
  """Fig. 5 right: a 1x1 reduces to `width`, a 3x3, a 1x1 restores 4 x `width`.

  The paper subsamples with the first 1x1 (v1); torchvision and NVIDIA put the stride on the 3x3
  ("v1.5"), which costs ~6% more FLOPs and gains ~0.5% top-1.
  """
  first, middle = (1, stride) if stride_on_3x3 else (stride, 1)
  return [ConvSpec(1, width, first), ConvSpec(3, width, middle), ConvSpec(1, 4 * width, 1)]


class ParameterFreeShortcut(nnx.Module):
  """The identity; where the shape changes, subsampling by the stride and zero-padding the new
  channels (option A, Sec. 3.3). Adds no parameters."""

  def __init__(self, stride: int, extra_channels: int):
    self.stride = stride
    self.extra_channels = extra_channels

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x[:, :: self.stride, :: self.stride, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.extra_channels)))


class ProjectionShortcut(nnx.Module):
  """W_s x of Eq. 2: a strided 1x1 convolution and BN onto the block's output shape (options B, C)."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, layers: Layers):
    self.conv = layers.conv(in_channels, out_channels, 1, stride)
    self.norm = layers.norm(out_channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


SHORTCUT_OPTIONS = ("A", "B", "C")


def make_shortcut(
    option: str, in_channels: int, out_channels: int, stride: int, layers: Layers
) -> ParameterFreeShortcut | ProjectionShortcut:
  """Option A: parameter-free everywhere; B: projections only where the shape changes; C: always."""
  shape_changes = stride != 1 or in_channels != out_channels
  if option == "C" or (option == "B" and shape_changes):
    return ProjectionShortcut(in_channels, out_channels, stride, layers)
  return ParameterFreeShortcut(stride, out_channels - in_channels)


class ResidualBlock(nnx.Module):
  """One residual (or, with `shortcut=None`, plain) block.

  Post-activation (the 2015 paper): conv-BN-ReLU ... conv-BN, add the shortcut, then ReLU.
  Pre-activation (He et al. 2016, "v2"): BN-ReLU-conv ... BN-ReLU-conv, add the shortcut, no ReLU;
  a projection shortcut then sees the pre-activated input, as in the authors' code.
  `zero_init_last` zeroes the last BN scale (or, pre-activation, the last kernel) so that the
  block starts as its shortcut (Goyal et al. 2017). `drop_rate` > 0 is stochastic depth (Huang et al.
  2016) as timm's DropPath: given a key, each example's branch is dropped with that probability and
  kept ones are scaled by 1 / (1 - drop_rate); without one (evaluation) the branch is whole.
  """

  def __init__(
      self,
      in_channels: int,
      branch: Sequence[ConvSpec],
      shortcut: str | None,
      *,
      preact: bool,
      zero_init_last: bool,
      layers: Layers,
      drop_rate: float = 0.0,
  ):
    channels = [in_channels] + [spec.channels for spec in branch]
    self.drop_rate = drop_rate
    last = len(branch) - 1
    self.preact = preact
    self.convs = nnx.List([
        layers.conv(channels[i], spec.channels, spec.kernel, spec.stride,
                    zero_init=preact and zero_init_last and i == last)
        for i, spec in enumerate(branch)
    ])
    norm_channels = channels[:-1] if preact else channels[1:]
    self.norms = nnx.List([
        layers.norm(c, zero_init=not preact and zero_init_last and i == last)
        for i, c in enumerate(norm_channels)
    ])
    stride = math.prod(spec.stride for spec in branch)
    self.shortcut = (
        None if shortcut is None
        else make_shortcut(shortcut, in_channels, channels[-1], stride, layers)
    )

  def __call__(self, x: jax.Array, drop_key: jax.Array | None = None) -> jax.Array:
    if self.preact:
      return self._preact_call(x, drop_key)
    y = x
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      y = norm(conv(y))
      if i < len(self.convs) - 1:
        y = nnx.relu(y)
    if self.shortcut is not None:
      y = self._drop(y, drop_key) + self.shortcut(x)
    return nnx.relu(y)

  def _preact_call(self, x: jax.Array, drop_key: jax.Array | None) -> jax.Array:
    activated = nnx.relu(self.norms[0](x))
    y = self.convs[0](activated)
    for conv, norm in zip(self.convs[1:], self.norms[1:]):
      y = conv(nnx.relu(norm(y)))
    if self.shortcut is None:
      return y
    projects = isinstance(self.shortcut, ProjectionShortcut)
    return self._drop(y, drop_key) + self.shortcut(activated if projects else x)

  def _drop(self, branch: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is None or not self.drop_rate:
      return branch
    keep = 1.0 - self.drop_rate
    kept = jax.random.bernoulli(key, keep, (branch.shape[0],) + (1,) * (branch.ndim - 1))
    return branch * (kept.astype(branch.dtype) / jnp.asarray(keep, branch.dtype))
