"""The networks against the paper (Tables 1 and 6) and torchvision, and the block semantics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resnet_jax import paper
from resnet_jax.models import ModelConfig, build_model, count_params, module_macs
from resnet_jax.models.blocks import (
    Layers,
    ParameterFreeShortcut,
    ProjectionShortcut,
    ResidualBlock,
    basic_branch,
    bottleneck_branch,
    conv_or_matmul,
    matmul_1x1,
)
from resnet_jax.models.resnet import max_pool_3x3_stride_2
from resnet_jax.models.summary import stage_rows

# torchvision's resnet18..152 (1000 classes, projection shortcuts where the shape changes = B).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# Table 1's FLOPs (multiply-adds, paper.TABLE1_GFLOPS) counted exactly, with the paper's (v1) and
# torchvision's (v1.5) stride placement (../shared/reference/paper.md).
EXACT_GMACS_V1 = {18: 1.814, 34: 3.664, 50: 3.858, 101: 7.570, 152: 11.282}
EXACT_GMACS_V15 = {18: 1.814, 34: 3.664, 50: 4.089, 101: 7.801, 152: 11.514}
# The exact option-A counts behind Table 6's (paper.TABLE6_MPARAMS); forward multiply-adds (M) on 32x32.
EXACT_CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
CIFAR_MMACS = {20: 40.6, 56: 125.5, 110: 252.9}


@functools.cache
def model(**fields) -> nnx.Module:
  # Built for real: nnx.eval_shape would skip drawing the weights, but Flax 0.12.8 (Python 3.11)
  # takes 335 s to shape ResNet-1202 that way, against seconds to build it.
  return build_model(fields)


def total_macs(net, size: int) -> int:
  return module_macs(net, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))[0]


def stage_shapes(net, size: int) -> list[tuple[int, ...]]:
  return [row.output_shape for row in stage_rows(net, size) if row.name.endswith("_x")]


def output_spec(module, x):
  return nnx.eval_shape(lambda m, x: m(x), module, x)


def modules_of(net, kind) -> list:
  return [m for _, m in nnx.iter_modules(net) if isinstance(m, kind)]


class GroupedConvThenJittedProduct(nnx.Module):
  def __init__(self):
    self.conv = nnx.Conv(4, 8, (3, 3), feature_group_count=2, padding="SAME", rngs=nnx.Rngs(0))
    self.weights = nnx.Param(jnp.ones((8, 5)))

  def __call__(self, x):
    return jax.jit(jnp.dot)(self.conv(x).mean(axis=(1, 2)), self.weights[...])


def test_multiply_adds_count_groups_and_follow_nested_jits():
  macs, output = module_macs(GroupedConvThenJittedProduct(), jax.ShapeDtypeStruct((2, 6, 6, 4), jnp.float32))
  # conv: 2 x 6 x 6 x 8 outputs, each 3 x 3 x (4 / 2 groups) multiply-adds; product: 2 x 5 x 8.
  assert macs == 2 * 6 * 6 * 8 * (3 * 3 * 2) + 2 * 5 * 8
  assert output.shape == (2, 5)


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_imagenet_parameters_equal_torchvision(depth):
  assert count_params(model(depth=depth)) == TORCHVISION_PARAMS[depth]


@pytest.mark.parametrize("depth", sorted(paper.TABLE1_GFLOPS))
def test_imagenet_multiply_adds_match_table_1(depth):
  gmacs = total_macs(model(depth=depth), 224) / 1e9
  assert abs(gmacs - paper.TABLE1_GFLOPS[depth]) / paper.TABLE1_GFLOPS[depth] < 0.05
  assert round(gmacs, 3) == EXACT_GMACS_V1[depth]


@pytest.mark.parametrize("depth", sorted(EXACT_GMACS_V15))
def test_v1_5_moves_the_stride_to_the_3x3_at_equal_parameters(depth):
  v15 = model(depth=depth, variant="v1.5")
  assert count_params(v15) == TORCHVISION_PARAMS[depth]
  assert round(total_macs(v15, 224) / 1e9, 3) == EXACT_GMACS_V15[depth]


@pytest.mark.parametrize("depth", sorted(paper.TABLE6_MPARAMS))
def test_cifar_parameters_match_table_6(depth):
  params = count_params(model(depth=depth, dataset="cifar"))
  assert params == EXACT_CIFAR_PARAMS[depth]
  assert round(params / 1e6, 2 if params < 1e6 else 1) == paper.TABLE6_MPARAMS[depth]


@pytest.mark.parametrize("depth", sorted(CIFAR_MMACS))
def test_cifar_multiply_adds(depth):
  assert round(total_macs(model(depth=depth, dataset="cifar"), 32) / 1e6, 1) == CIFAR_MMACS[depth]


@pytest.mark.parametrize("depth, channels", [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))])
def test_imagenet_stage_shapes(depth, channels):
  sizes = (56, 28, 14, 7)
  assert stage_shapes(model(depth=depth), 224) == [(s, s, c) for s, c in zip(sizes, channels)]


def test_cifar_stage_shapes():
  assert stage_shapes(model(depth=20, dataset="cifar"), 32) == [(32, 32, 16), (16, 16, 32), (8, 8, 64)]


@pytest.mark.parametrize("height, width", [(97, 97), (160, 128), (480, 640)])
def test_any_input_size_gives_one_score_per_class(height, width):
  logits = output_spec(model(depth=18), jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32))
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


def test_shortcut_options_a_b_c_and_plain():
  a, b, c = (model(depth=34, shortcut=s) for s in "ABC")
  plain = model(depth=34, plain=True)
  blocks = sum(ModelConfig(depth=34).stage_blocks)
  # A: all shortcuts parameter-free, so the net has exactly the parameters of its plain twin.
  assert modules_of(a, ProjectionShortcut) == []
  assert count_params(a) == count_params(plain)
  # B: a projection exactly where the shape changes (conv3_1, conv4_1, conv5_1); C: in every block.
  assert len(modules_of(b, ProjectionShortcut)) == 3
  assert len(modules_of(c, ProjectionShortcut)) == blocks
  assert count_params(a) < count_params(b) < count_params(c)
  # Plain: no shortcut at all.
  assert all(block.shortcut is None for block in modules_of(plain, ResidualBlock))
  assert len(modules_of(plain, ResidualBlock)) == blocks


def test_bottleneck_option_b_projects_where_channels_grow_without_stride():
  # conv2_1 of ResNet-50 goes 64 -> 256 channels at stride 1: B projects there too.
  first_block = model(depth=50).stages[0].layers[0]
  assert isinstance(first_block.shortcut, ProjectionShortcut)
  assert isinstance(model(depth=50, shortcut="A").stages[0].layers[0].shortcut, ParameterFreeShortcut)


def make_block(kind: str, stride: int, option: str, preact: bool) -> ResidualBlock:
  layers = Layers(jnp.float32, 0.9, 1e-5, 0, nnx.Rngs(0))
  in_channels, branch = {
      "basic": (16, basic_branch(32 if stride == 2 else 16, stride)),
      "bottleneck": (64, bottleneck_branch(16, stride, stride_on_3x3=False)),
  }[kind]
  return ResidualBlock(in_channels, branch, option, preact=preact, zero_init_last=True, layers=layers)


@pytest.mark.parametrize("preact", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("option", ["A", "B", "C"])
@pytest.mark.parametrize("kind, stride", [("basic", 1), ("basic", 2), ("bottleneck", 1), ("bottleneck", 2)])
def test_zeroed_residual_branch_passes_the_shortcut_through(kind, stride, option, preact):
  block = nnx.view(make_block(kind, stride, option, preact), use_running_average=True)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, block.convs[0].in_features))
  y = block(x)
  if preact:
    shortcut_input = nnx.relu(block.norms[0](x)) if isinstance(block.shortcut, ProjectionShortcut) else x
    expected = block.shortcut(shortcut_input)
  else:
    expected = nnx.relu(block.shortcut(x))
  np.testing.assert_allclose(y, expected, atol=1e-6)
  if isinstance(block.shortcut, ParameterFreeShortcut):
    # relu of the identity (subsampled and zero-padded where the shape changes).
    padded = jnp.pad(x[:, ::stride, ::stride], ((0, 0),) * 3 + ((0, y.shape[-1] - x.shape[-1]),))
    np.testing.assert_allclose(y, padded if preact else nnx.relu(padded), atol=1e-6)
  assert y.shape == (2, 8 // stride, 8 // stride, block.convs[-1].out_features)


def test_zero_init_residual_zeroes_only_the_last_bn_scale_of_each_block():
  net = build_model({"depth": 20, "dataset": "cifar", "zero_init_residual": True})
  for block in modules_of(net, ResidualBlock):
    *others, last = block.norms
    assert float(jnp.abs(last.scale[...]).max()) == 0.0
    assert all(float(jnp.min(n.scale[...])) == 1.0 for n in others)


def test_he_initialisation_has_fan_out_variance():
  # 3x3, 256 -> 512: fan-out (4,608) is twice fan-in, whose std would be 1.41x this one.
  kernel = build_model({"depth": 18}).stages[3].layers[0].convs[0].kernel[...]
  expected_std = np.sqrt(2.0 / (3 * 3 * 512))
  assert kernel.dtype == jnp.float32 and kernel.shape == (3, 3, 256, 512)
  assert abs(float(jnp.std(kernel)) / expected_std - 1) < 0.02
  assert abs(float(jnp.mean(kernel))) < 0.01 * expected_std


@pytest.mark.parametrize("stride", [1, 2])
def test_one_by_one_convolutions_as_matmuls_give_the_convolutions_values_and_gradients(stride):
  rng = np.random.default_rng(0)
  x, kernel = rng.standard_normal((2, 9, 7, 5), np.float32), rng.standard_normal((1, 1, 5, 6), np.float32)
  as_conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (stride, stride), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  as_matmul = lambda x, k: matmul_1x1(x, k, (stride, stride))
  np.testing.assert_allclose(as_matmul(x, kernel), as_conv(x, kernel), rtol=1e-5, atol=1e-5)
  weights = rng.standard_normal(as_conv(x, kernel).shape, np.float32)
  gradients = [jax.grad(lambda x, k: (f(x, k) * weights).sum(), (0, 1))(x, kernel) for f in (as_conv, as_matmul)]
  for a, b in zip(*gradients):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (3, 2, 1), (7, 2, 3), (1, 2, 0), (1, 1, 0)])
def test_the_cpu_gradient_with_materialized_operands_is_the_plain_gradient(kernel_size, stride, padding):
  """conv_or_matmul's custom gradient (optimization barriers before XLA:CPU's kernel-gradient
  transposes) gives lax.conv's values and gradients, for 3x3, 7x7 and 1x1 layers, strided or not."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 8, 5), np.float32)
  kernel = rng.standard_normal((kernel_size, kernel_size, 5, 6), np.float32)
  options = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
  pads = ((padding, padding), (padding, padding))
  plain = lambda x, k: jax.lax.conv_general_dilated(x, k, (stride, stride), pads, **options)
  ours = lambda x, k: conv_or_matmul(x, k, [stride, stride], [list(p) for p in pads], **options)
  weights = rng.standard_normal(plain(x, kernel).shape, np.float32)
  assert "optimization_barrier" in str(jax.make_jaxpr(jax.grad(lambda x, k: (ours(x, k) * weights).sum()))(x, kernel))
  np.testing.assert_allclose(ours(x, kernel), plain(x, kernel), rtol=1e-5, atol=1e-5)
  gradients = [jax.grad(lambda x, k: (jax.nn.relu(f(x, k)) * weights).sum(), (0, 1))(x, kernel) for f in (plain, ours)]
  for a, b in zip(*gradients):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flags, matmul", [({"avx2", "fma"}, True), ({"avx2", "avx512f"}, False)])
def test_one_by_one_convolutions_run_as_matmuls_except_on_avx512_cpus(monkeypatch, flags, matmul):
  from resnet_jax.models import blocks
  from resnet_jax.tools import cpu

  monkeypatch.setattr(cpu, "features", lambda: flags)
  blocks.one_by_one_as_matmul.cache_clear()
  try:
    x, kernel = jnp.ones((2, 4, 4, 3)), jnp.ones((1, 1, 3, 5))
    jaxpr = str(jax.make_jaxpr(lambda x, k: conv_or_matmul(x, k, (1, 1), ((0, 0), (0, 0)),
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, kernel))
    assert ("dot_general" in jaxpr, "conv_general_dilated" in jaxpr) == (matmul, not matmul)
  finally:
    blocks.one_by_one_as_matmul.cache_clear()


@pytest.mark.parametrize("size", [(8, 8), (9, 6)])
def test_stem_max_pool_gives_the_max_pool_values_and_gradients_after_a_relu(size):
  x = np.random.default_rng(1).standard_normal((2, *size, 4)).astype(np.float32)
  reference = lambda x: nnx.max_pool(jax.nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  ours = lambda x: max_pool_3x3_stride_2(jax.nn.relu(x))
  np.testing.assert_array_equal(ours(x), reference(x))
  weights = np.arange(np.prod(reference(x).shape), dtype=np.float32).reshape(reference(x).shape)
  gradients = [jax.grad(lambda x: (f(x) * weights).sum())(x) for f in (reference, ours)]
  np.testing.assert_array_equal(gradients[1], gradients[0])


def test_batch_norm_running_average_follows_the_momentum():
  net = build_model({"depth": 8, "dataset": "cifar", "bn_momentum": 0.9})
  x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3)) + 1.0
  conv_output = net.stem.conv(x)
  net(x)  # train mode: batch statistics, running averages updated
  batch_mean = jnp.mean(conv_output, axis=(0, 1, 2))
  np.testing.assert_allclose(net.stem.norm.mean[...], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
  # Eval mode uses the running averages, so one example's scores do not depend on the others.
  evaluating = nnx.view(net, use_running_average=True)
  np.testing.assert_allclose(evaluating(x[:4])[:2], evaluating(x[:2]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [{"depth": 18, "variant": "v2"}, {"depth": 50, "variant": "v2"},
                                    {"depth": 14, "dataset": "cifar", "variant": "v2"}])
def test_pre_activation_networks_keep_the_parameter_budget(config):
  # Pre-activation moves each BN before its convolution; the final BN-ReLU takes the place of the
  # stem's BN, so parameter counts stay those of the original network.
  v1 = model(**{**config, "variant": "v1"})
  v2 = model(**config)
  assert count_params(v2) == count_params(v1)
  assert v2.stem.norm is None and v2.head.norm is not None


def relative_error(reference: jax.Array, value: jax.Array) -> float:
  value = value.astype(jnp.float32)
  return float(jnp.linalg.norm(reference - value) / jnp.linalg.norm(reference))


@pytest.mark.slow
def test_resnet50_float32_and_bfloat16_forward_agree():
  f32 = build_model({"depth": 50}, seed=3)
  bf16 = build_model({"depth": 50, "dtype": "bfloat16"}, seed=3)
  # Same seed, float32 parameters in both: only the computation dtype differs.
  np.testing.assert_array_equal(f32.stem.conv.kernel[...], bf16.stem.conv.kernel[...])
  assert bf16.stem.conv.kernel.dtype == jnp.float32
  x = jax.random.normal(jax.random.key(0), (4, 128, 128, 3))
  assert output_spec(bf16.stem, x).dtype == jnp.bfloat16

  # Piece by piece in train mode (batch statistics), each fed the float32 network's activations:
  # every block must agree to a few bf16 roundings (unit roundoff 2^-8 = 0.4%). Comparing only
  # the end of a train-mode pass would not test precision: a randomly initialised deep BN net
  # amplifies any perturbation, ~4x a stage here.
  def pieces(net):
    return [net.stem] + [block for stage in net.stages for block in stage.layers] + [net.head]

  activations = x
  for reference_piece, bf16_piece in zip(pieces(f32), pieces(bf16)):
    reference, value = reference_piece(activations), bf16_piece(activations)
    assert relative_error(reference, value) < 2e-2
    activations = reference
  assert value.dtype == jnp.float32  # the logits

  # The whole eval-mode forward pass end to end.
  forward = nnx.jit(lambda net, x: nnx.view(net, use_running_average=True)(x))
  assert relative_error(forward(f32, x), forward(bf16, x)) < 5e-2


@pytest.mark.parametrize("fields, message", [
    ({"depth": 42}, "no ImageNet ResNet of depth 42; valid depths: 18, 34, 50, 101, 152"),
    ({"depth": 21, "dataset": "cifar"}, "6n+2"),
    ({"depth": 2, "dataset": "cifar"}, "6n+2"),
    ({"dataset": "mnist"}, "valid: 'imagenet', 'cifar'"),
    ({"shortcut": "D"}, "valid: 'A', 'B', 'C'"),
    ({"variant": "v3"}, "valid: 'v1', 'v1.5', 'v2'"),
    ({"dtype": "float8"}, "valid: 'float32', 'bfloat16', 'float64'"),
    ({"dtype": "float64"}, "'float64' needs 64-bit JAX: set JAX_ENABLE_X64=1"),
    ({"bn_unbiased_running_var": 1}, "bn_unbiased_running_var must be True or False"),
    ({"dtype": "float16"}, "'float16' is refused: without loss scaling"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"bn_momentum": 1.0}, "bn_momentum"),
    ({"widht": 2}, "unknown model option(s) ['widht']"),
])
def test_bad_options_get_one_clear_error(fields, message):
  with pytest.raises(ValueError) as error:
    build_model(fields)
  assert message in str(error.value)


def test_build_model_takes_an_ml_collections_config():
  import ml_collections

  config = ml_collections.ConfigDict({"depth": 56, "dataset": "cifar", "num_classes": 100})
  net = build_model(config)
  assert net.config.shortcut == "A" and net.head.fc.out_features == 100
