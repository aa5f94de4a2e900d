"""Layer responses (the paper's Figure 7): the standard deviation of each 3x3 layer's output after
its BN and before the ReLU or the addition, over an eval split, with the network as it scores it
(BN running statistics).

A layer's figure is the standard deviation of all its response values (every example, position
and channel); each channel's own standard deviation, averaged over the layer's channels, is
reported beside it. In a ResNet these responses are the residual functions' last layers, so
small values say the functions are close to zero, the paper's point against plain nets.
"""

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resnet_jax import sharding
from resnet_jax.errors import ConfigError
from resnet_jax.models import ModelConfig
from resnet_jax.reporting import host_sum

Path = tuple[str | int, ...]


def response_layers(model: nnx.Module, model_config: ModelConfig) -> list[Path]:
  """The paths of the BN layers that follow a 3x3 convolution, in the order the network runs them:
  the stem's (a CIFAR net's 3x3 conv1), then each block's in turn."""
  if model_config.preact:
    raise ConfigError("layer responses are the paper's, after the BN of post-activation layers; a "
                      "pre-activation net (variant='v2') normalises before its convolutions")
  paths = [("stem", "norm")] if model.stem.conv.kernel_size == (3, 3) else []
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage.layers):
      paths += [("stages", s, "layers", b, "norms", i) for i, conv in enumerate(block.convs)
                if conv.kernel_size == (3, 3)]
  return paths


def response_sums(params: Any, batch_stats: Any, batch: dict, *, graphdef: nnx.GraphDef, normalize: Any,
                  paths: tuple[Path, ...]) -> list[dict[str, jax.Array]]:
  """For each layer of `paths`: the count of real (mask = 1) values per channel and the per-channel
  sums of the responses and of their squares, over one global eval batch (every view of an
  example counts)."""
  model = nnx.merge(graphdef, params, batch_stats)
  images = batch["image"]
  views = images.reshape(-1, *images.shape[2:])
  _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(normalize(views))
  outputs = dict(nnx.to_flat_state(captured))
  weight = jnp.repeat(batch["mask"], images.shape[1])[:, None, None, None]
  sums = []
  for path in paths:
    (y,) = outputs[(*path, "__call__")].get_value()
    y = y.astype(jnp.float32)
    sums.append({"count": (weight * jnp.ones_like(y)).sum((0, 1, 2)), "sum": (weight * y).sum((0, 1, 2)),
                 "squares": (weight * y * y).sum((0, 1, 2))})
  return sums


_compiled_response_sums = jax.jit(response_sums, static_argnames=("graphdef", "normalize", "paths"))


def layer_responses(experiment: Any, graphdef: nnx.GraphDef, params: Any, batch_stats: Any,
                    model_config: ModelConfig, batches: Iterator[dict]) -> list[dict[str, Any]]:
  """Each 3x3 layer's response statistics over `batches` (an eval split's), in network order:
  {index (1-based), layer (its path), channels, std (of all its values), channel_std}."""
  model = nnx.merge(graphdef, params, batch_stats)
  paths = tuple(response_layers(model, model_config))
  step = functools.partial(_compiled_response_sums, graphdef=graphdef, normalize=experiment.data.normalize,
                           paths=paths)
  totals = host_sum(step(params, batch_stats, batch)
                    for batch in sharding.prefetch_to_devices(batches, experiment.mesh))
  layers = []
  for index, (path, sums) in enumerate(zip(paths, totals, strict=True), start=1):
    count = sums["count"]
    channel_mean = sums["sum"] / count
    channel_var = np.maximum(sums["squares"] / count - channel_mean ** 2, 0.0)
    mean = sums["sum"].sum() / count.sum()
    var = max(sums["squares"].sum() / count.sum() - mean ** 2, 0.0)
    layers.append({"index": index, "layer": "/".join(map(str, path)), "channels": len(count),
                   "std": float(np.sqrt(var)), "channel_std": float(np.sqrt(channel_var).mean())})
  return layers
