"""Figure 7's layer responses (resnet_jax/responses.py, tools/responses.py): which layers are the 3x3
layers' BNs, and the command's numbers against a direct computation from each model."""

import json

import numpy as np
import pytest
from flax import nnx
from runs import read_state, train_here

from resnet_jax.errors import ConfigError
from resnet_jax.models import ModelConfig, build_model
from resnet_jax.models.blocks import BatchNorm
from resnet_jax.responses import response_layers


@pytest.mark.parametrize("depth, dataset, expected", [
    (20, "cifar", 19),  # conv1 and the 18 convolutions of 9 basic blocks (6n + 1, as Figure 7's x axis)
    (18, "imagenet", 16),  # 8 basic blocks; conv1 is 7x7
    (50, "imagenet", 16),  # the middle convolution of each of 16 bottlenecks
])
def test_the_response_layers_are_the_bns_after_each_3x3_convolution(depth, dataset, expected):
  config = ModelConfig.from_mapping(dict(depth=depth, dataset=dataset))
  model = nnx.eval_shape(lambda: build_model(config))
  paths = response_layers(model, config)
  assert len(paths) == expected
  for path in paths:
    conv = model.stem.conv if path == ("stem", "norm") else model.stages[path[1]].layers[path[3]].convs[path[5]]
    assert conv.kernel_size == (3, 3)
  assert paths == sorted(paths, key=lambda p: (p[0] != "stem", p[1:] if len(p) > 2 else ()))  # network order


def test_a_pre_activation_net_is_refused():
  config = ModelConfig.from_mapping(dict(depth=18, dataset="imagenet", variant="v2"))
  with pytest.raises(ConfigError, match="pre-activation"):
    response_layers(nnx.eval_shape(lambda: build_model(config)), config)


def _direct_responses(run, monkeypatch, plain):
  """Each 3x3 layer's responses over the 1,000 test digits, from an eager forward pass of the
  run's checkpoint in float64 numpy: {path: (all values std, mean of the channels' std)}."""
  from resnet_jax.data.sources import bundled_mnist
  from resnet_jax.data.in_memory import Normalizer

  config = ModelConfig.from_mapping(dict(depth=8, dataset="cifar", plain=plain, num_classes=10, input_channels=1))
  state = read_state(run)
  model = nnx.view(build_model(config), use_running_average=True)
  graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
  model = nnx.merge(graphdef, state["params"], state["batch_stats"])
  outputs, original = {}, BatchNorm.__call__

  def recording(self, x):
    y = original(self, x)
    outputs[id(self)] = np.asarray(y, np.float64)
    return y

  monkeypatch.setattr(BatchNorm, "__call__", recording)
  normalize = Normalizer.pixel_mean(bundled_mnist("train").images)
  model(normalize(bundled_mnist("test").images))
  found = {}
  for path, module in nnx.iter_graph(model):
    if id(module) in outputs:
      y = outputs[id(module)]
      found["/".join(map(str, path))] = (y.std(), y.std((0, 1, 2)).mean())
  return found


@pytest.mark.slow
def test_the_command_gives_each_layers_std_as_computed_directly_from_the_model(tmp_path, monkeypatch, capsys):
  """A ResNet-8 and a plain-8 trained 10 steps, under one root: the JSON has 7 layers each (conv1
  and 6 block convolutions), whose std and mean channel std equal a direct computation over the
  whole eval split to 1e-4; the sorted panel's values are those, descending; the PNG is written."""
  from resnet_jax.tools import responses

  for plain in (False, True):
    train_here(tmp_path / "root" / f"plain-{plain}", 10, f"--config.model.plain={plain}")
  numbers = responses.main([str(tmp_path / "root"), f"--output={tmp_path / 'figure7.png'}"])
  assert json.loads((tmp_path / "figure7.json").read_text()) == numbers
  assert (tmp_path / "figure7.png").stat().st_size > 10_000
  assert [n["network"] for n in numbers["networks"]] == ["ResNet-8", "plain-8"]
  for network in numbers["networks"]:
    direct = _direct_responses(network["run"], monkeypatch, network["plain"])
    layers = network["layers"]
    assert [layer["index"] for layer in layers] == list(range(1, 8))
    assert [layer["layer"] for layer in layers] == ["stem/norm"] + [
        f"stages/{s}/layers/0/norms/{i}" for s in range(3) for i in range(2)]
    assert all(layer["layer"] in direct for layer in layers) and len(direct) == 7  # no projection BN here
    for layer in layers:
      np.testing.assert_allclose([layer["std"], layer["channel_std"]], direct[layer["layer"]], rtol=1e-4)
    assert network["sorted"] == sorted((layer["std"] for layer in layers), reverse=True)
  assert "ResNet-8: 7 layers" in capsys.readouterr().out
