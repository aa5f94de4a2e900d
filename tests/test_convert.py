"""torchvision weights into our networks: the same logits as the torch model they come from.

The reference is `resnet_jax.tools.torch_resnet`, torchvision's architecture and state-dict names in
plain torch (runs beside the CPU torch build, where PyPI's torchvision does not import); the first
test shows it is torchvision's own ResNet, array for array and logit for logit (`make test-torch`
installs torchvision, and fails these tests where torch or torchvision does not import).
"""

import jax
import numpy as np
import pytest

from resnet_jax.errors import ConfigError
from resnet_jax.tools.convert import ARCHS, convert_state_dict, model_config, torchvision_name


def torch_resnet(arch: str):
  """A randomly initialised torchvision ResNet, with random BN statistics and affine parameters too
  (fresh BN layers are the identity, which would hide a mismatched mapping)."""
  torch = pytest.importorskip("torch")
  from resnet_jax.tools.torch_resnet import resnet
  torch.manual_seed(0)
  model = resnet(ARCHS[arch])
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
        module.running_mean.normal_(0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  return model.eval()


def our_logits(arch: str, weights: dict, images_nhwc: np.ndarray) -> np.ndarray:
  from flax import nnx

  from resnet_jax.models import build_model
  model = build_model(model_config(arch))
  graphdef, _, _ = nnx.split(nnx.view(model, use_running_average=True), nnx.Param, nnx.BatchStat)
  return np.asarray(nnx.merge(graphdef, weights["params"], weights["batch_stats"])(images_nhwc))


def torch_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def state_dict_arrays(model) -> dict:
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_plain_torch_reference_is_torchvisions_own_resnet(arch):
  """The same state dict (names and shapes, strictly) loaded into torchvision's model gives the same
  logits: basic and bottleneck blocks, v1.5 strides."""
  models = pytest.importorskip("torchvision.models")
  reference = torch_resnet(arch)
  torchvision_model = getattr(models, arch)()
  torchvision_model.load_state_dict(reference.state_dict(), strict=True)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  np.testing.assert_allclose(torch_logits(reference, images), torch_logits(torchvision_model.eval(), images),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_converted_weights_give_torchvisions_logits(arch):
  model = torch_resnet(arch)
  images = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
  expected = torch_logits(model, images)
  got = our_logits(arch, convert_state_dict(state_dict_arrays(model), arch), images)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  assert np.abs(expected).max() > 0.1  # the comparison is not between near-zero outputs


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_convert_command_writes_a_checkpoint_the_evaluator_reads(tmp_path, arch, capsys):
  torch = pytest.importorskip("torch")
  from resnet_jax.checkpoint import restore_weights
  from resnet_jax.tools import convert
  model = torch_resnet(arch)
  torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / f"{arch}.pth")
  arguments = ["torchvision", f"--arch={arch}", f"--input={tmp_path / f'{arch}.pth'}",
               f"--output={tmp_path / 'converted'}"]
  assert convert.main(arguments) == tmp_path / "converted"
  assert f"python -m resnet_jax.evaluate --config=configs/imagenet.py:depth={ARCHS[arch]}" in capsys.readouterr().out
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          convert_state_dict(state_dict_arrays(model), arch))
  weights = restore_weights(tmp_path / "converted", abstract)
  images = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
  expected = torch_logits(model, images)
  np.testing.assert_allclose(our_logits(arch, weights, images), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())
  with pytest.raises(ConfigError, match="exists; choose another --output"):
    convert.main(arguments)


def test_every_array_maps_to_a_distinct_torchvision_name():
  """No torch needed: the name mapping alone, over the deepest network."""
  from flax import nnx

  from resnet_jax.models import build_model
  model = nnx.eval_shape(lambda: build_model(model_config("resnet152")))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tree = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}
  names = [torchvision_name(tuple(k.key for k in path)) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert len(names) == len(set(names))
  assert {"conv1.weight", "bn1.running_var", "layer4.2.conv3.weight", "layer3.35.bn2.weight",
          "layer1.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "fc.weight", "fc.bias"} <= set(names)
  # 155 convolutions (1 stem, 3 x 50 blocks, 4 projections), as many BN layers of 4 arrays, the fc's 2.
  assert len(names) == 155 + 155 * 4 + 2


@pytest.mark.torch
def test_a_state_dict_of_another_network_is_refused_with_its_differences():
  pytest.importorskip("torch")
  wrong = state_dict_arrays(torch_resnet("resnet34"))
  with pytest.raises(ValueError, match=r"does not match torchvision's resnet18 \(\d+ problems\).*is not used"):
    convert_state_dict(wrong, "resnet18")
  with pytest.raises(ValueError, match="unknown torchvision architecture 'resnet42'"):
    model_config("resnet42")
