"""Precise BN: a network's BN statistics recomputed after training as plain averages over N batches
of training images, instead of the moving averages training leaves (which weight the last few
hundred steps' networks, not the final one). The paper's released Caffe models were made this way.

Each batch goes through the network in training mode, so every BN layer normalises by that batch's
own statistics, exactly as during training; the layer's mean and variance of the batch (its
unbiased variance, as the running averages take it; per group with `bn_group_size`) are read and
the N batches' values averaged with equal weights: Caffe's and fvcore's definition. The batches are
global: over several devices and processes one batch's statistics are over all of it (cross-replica
BN), so the result does not depend on how many devices computed it.
"""

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from resnet_jax import sharding
from resnet_jax.models import ModelConfig, build_model
from resnet_jax.reporting import host_sum


def statistics_graphdef(model_config: ModelConfig) -> nnx.GraphDef:
  """The network in training mode with BN momentum 0: after one call, each BN layer's running
  mean and variance hold that batch's statistics exactly."""
  config = dataclasses.replace(model_config, bn_momentum=0.0)
  return nnx.graphdef(nnx.eval_shape(lambda: build_model(config)))


def batch_statistics(params: Any, batch_stats: Any, images: Any, *, graphdef: nnx.GraphDef,
                     normalize: Callable) -> Any:
  """Every BN layer's mean and (unbiased) variance of one global batch of uint8 images, as a tree
  shaped like `batch_stats`."""
  model = nnx.merge(graphdef, params, batch_stats)
  model(normalize(images))
  return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


_compiled_batch_statistics = jax.jit(batch_statistics, static_argnames=("graphdef", "normalize"))


def precise_statistics(experiment: Any, model_config: ModelConfig, params: Any, batch_stats: Any, *, batches: int,
                       batch_size: int, seed: int, progress: Callable[[int, float], None] | None = None) -> Any:
  """The BN statistics of network `model_config` (a tree like `batch_stats`, float32 numpy)
  averaged over `batches` global batches of `batch_size` training images of the experiment's data
  under the eval transform, in the order `seed` shuffles them (`Inputs.train_eval_view`);
  `progress(done, seconds)` after each read-back."""
  step = functools.partial(_compiled_batch_statistics, graphdef=statistics_graphdef(model_config),
                           normalize=experiment.data.normalize)
  stream = itertools.islice(experiment.data.train_eval_view(batch_size, seed), batches)
  start = time.monotonic()
  total = host_sum((step(params, batch_stats, batch["image"])
                    for batch in sharding.prefetch_to_devices(stream, experiment.mesh)),
                   progress=progress and (lambda done: progress(done, time.monotonic() - start)))
  return jax.tree.map(lambda value: (value / batches).astype(np.float32), total)
