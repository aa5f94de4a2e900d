"""One interface over the two kinds of input: splits held in memory (the bundled digits, tfds sets
of fixed-size images such as CIFAR-10) and streams read from disk (ImageNet as an image folder or an
array_record tfds build). The trainer and the evaluator see only `Inputs`: train batches from a
step, eval batches, the normalisation their steps apply on the devices (batches are uint8), and the
facts the config is checked against.
"""

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from resnet_jax.data.pipeline import Normalizer, TrainBatches, eval_batches
from resnet_jax.data.sources import load_split, tfds_has_fixed_shape
from resnet_jax.errors import ConfigError


@dataclasses.dataclass
class Inputs:
  num_train: int
  channels: int
  num_classes: int  # the classes the labels index, to check against the model
  # The train batches from a step on: a pure function of (seed, step), so the step is the data position.
  train: Callable[[int], Iterator[dict[str, np.ndarray]]]
  eval_batches: Callable[[], Iterator[dict[str, np.ndarray]]]
  normalize: Normalizer  # uint8 images to the network's inputs, inside the jitted steps


def make_inputs(config: Any) -> Inputs:
  """The inputs a run config describes (its `data` fields, batch sizes and seed)."""
  d = config.data
  if d.source == "folder" or d.source == "tfds" and not tfds_has_fixed_shape(d.name, d.data_dir or None):
    return _stream_inputs(config)
  if d.exclude_file:
    raise ConfigError(f"data.exclude_file applies to streamed data sets (folder, or tfds with images of varying "
                      f"size); {d.name} is held in memory, decoded already")
  if d.eval_resampler != "tensorflow":
    raise ConfigError(f"data.eval_resampler applies to streamed data sets (folder, or tfds with images of varying "
                      f"size); {d.name} is held in memory and scored on its whole images")
  if d.eval_view != "center":
    raise ConfigError(
        f"eval_view={d.eval_view!r} needs a streamed ImageNet-style source (folder, or tfds with images "
        f"of varying size); {d.name} is held in memory and scored on its whole images"
    )
  data_dir = d.data_dir or None
  train_split = load_split(d.source, d.name, d.train_split, data_dir)
  eval_split = load_split(d.source, d.name, d.eval_split, data_dir)
  return Inputs(
      num_train=len(train_split), channels=train_split.images.shape[-1],
      num_classes=int(train_split.labels.max()) + 1,
      train=lambda step: TrainBatches(
          train_split, config.batch_size, seed=config.seed, augmentation=d.augmentation, pad=d.pad, step=step),
      eval_batches=lambda: eval_batches(eval_split, config.eval_batch_size),
      normalize=Normalizer.fit(train_split.images, d.normalization),
  )


def stream_sources(config: Any, exclude: set[str] = frozenset()) -> tuple[Any, Any]:
  """The train and eval sources of a streamed data set (an image folder or a tfds build)."""
  from resnet_jax.data import stream

  d = config.data
  if d.source == "folder":
    return (stream.FolderSource(d.data_dir, d.train_split, exclude=exclude),
            stream.FolderSource(d.data_dir, d.eval_split, label_file=d.eval_label_file or None, exclude=exclude))
  return (stream.TfdsSource(d.name, d.train_split, d.data_dir or None, exclude=exclude),
          stream.TfdsSource(d.name, d.eval_split, d.data_dir or None, exclude=exclude))


def _stream_inputs(config: Any) -> Inputs:
  from resnet_jax.data import augment, stream

  d = config.data
  exclude = stream.read_exclusions(d.exclude_file)
  train_source, eval_source = stream_sources(config, exclude)
  unused = exclude - train_source.excluded - eval_source.excluded
  if unused:
    logging.warning("%d id(s) of data.exclude_file=%s match no example of the %s and %s splits, e.g. %s",
                    len(unused), d.exclude_file, d.train_split, d.eval_split, sorted(unused)[0])
  if d.normalization not in ("channel_mean_std", "channel_mean"):
    raise ConfigError(
        f"a streamed data set normalises by 'channel_mean_std' or 'channel_mean'; got {d.normalization!r}"
    )
  train_augmentations = {
      "paper": lambda b, s: augment.paper_train(b, s, crop=d.image_size, lighting_std=d.lighting_std,
                                                antialias=d.train_antialias),
      "inception": lambda b, s: augment.inception_train(b, s, crop=d.image_size, antialias=d.train_antialias),
  }
  if d.augmentation not in train_augmentations:
    raise ConfigError(f"unknown augmentation {d.augmentation!r} for a streamed data set; valid: paper, inception")
  train_augment = train_augmentations[d.augmentation]
  views = stream.views_function(d.eval_view, d.eval_resize, d.image_size, d.eval_scales, d.eval_resampler)
  # Multi-scale batches group images by shape: read every header once, at the first evaluation.
  eval_groups = functools.cache(lambda: stream.shape_groups(eval_source) if d.eval_view == "multiscale" else None)
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  return Inputs(
      num_train=len(train_source), channels=3, num_classes=train_source.num_classes,
      train=lambda step: stream.train_stream(
          train_source, config.batch_size, train_augment, seed=config.seed, step=step, **process),
      eval_batches=lambda: stream.eval_stream(
          eval_source, config.eval_batch_size, lambda b: augment.quantize(views(b)), groups=eval_groups(), **process),
      normalize=Normalizer.imagenet(divide_by_std=d.normalization == "channel_mean_std"),
  )
