"""One interface over the two kinds of input: splits held in memory (`in_memory`: the bundled
digits, tfds sets of fixed-size images such as CIFAR-10) and streams read from disk (`streamed`:
ImageNet as an image folder or an array_record tfds build). The trainer and the evaluator see only
`Inputs`: train batches from a step, eval batches of a split, the normalisation their steps apply
on the devices (batches are uint8), and the facts the config is checked against.

Which `data` settings each kind accepts is written once, in `SETTINGS`, which both the check of a
config and the building of its inputs read.
"""

import dataclasses
import functools
import hashlib
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax.data.in_memory import Normalizer, PadCropFlip, TrainBatches, eval_batches
from resnet_jax.data.sources import ArraySplit, load_split, tfds_builder, tfds_has_fixed_shape
from resnet_jax.errors import ConfigError

if TYPE_CHECKING:  # imported when streaming: it imports TensorFlow
  from resnet_jax.data import streamed


@dataclasses.dataclass
class Inputs:
  num_train: int
  channels: int
  num_classes: int  # the classes the labels index, to check against the model
  # The train batches from a step on: a pure function of (seed, step), so the step is the data position.
  train: Callable[[int], Iterator[dict[str, np.ndarray]]]
  # Every example of an eval split once, padded and masked (None: the config's data.eval_split).
  eval_batches: Callable[[str | None], Iterator[dict[str, np.ndarray]]]
  normalize: Normalizer  # uint8 images to the network's inputs, inside the jitted steps
  # The training split under the eval transform (one center view, no augmentation), shuffled by a
  # seed, in global batches of a given size, endlessly: what precise BN averages its statistics over.
  train_eval_view: Callable[[int, int], Iterator[dict[str, np.ndarray]]] | None = None
  # The named evaluations on sets from other sources, by their description: data/eval_sets.EvalSet.
  eval_sets: dict[str, Any] = dataclasses.field(default_factory=dict)
  # What the data is, for the run's identity (provenance.py): source, resolved location, classes, and
  # per split its size and a hash of its examples (empty for stand-ins, e.g. the benchmark's).
  fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)


def paper_scale_range(image_size: int) -> tuple[int, int]:
  """Sec. 3.4's shorter-side range, [256, 480] for 224-pixel crops, scaled to `image_size` so that a
  crop covers the same share of the image at any resolution."""
  return round(256 * image_size / 224), round(480 * image_size / 224)


PROGRESSIVE_STEP = 32  # FFCV rounds each epoch's size to a multiple of this


def progressive_sizes(low: int, high: int, start_epoch: int, end_epoch: int) -> tuple[int, ...]:
  """The train crop of each epoch 0..end_epoch (the last holds after it), as FFCV's get_resolution:
  `low` up to start_epoch, `high` from end_epoch, between them the linear ramp rounded (half to
  even) to a multiple of 32."""
  def size(epoch: int) -> int:
    if epoch <= start_epoch:
      return low
    if epoch >= end_epoch:
      return high
    return int(np.round(np.interp(epoch, [start_epoch, end_epoch], [low, high]) / PROGRESSIVE_STEP)) * PROGRESSIVE_STEP
  return tuple(size(epoch) for epoch in range(end_epoch + 1))


def train_crops(d: Any) -> tuple[int, ...]:
  """The train crop by epoch under progressive resizing; () for the fixed data.image_size."""
  p = d.progressive
  return progressive_sizes(p.low, d.image_size, p.start_epoch, p.end_epoch) if p.low else ()


def eval_crop(d: Any) -> int:
  return d.eval_crop or d.image_size


def _paper_train(d: Any) -> Callable:
  from resnet_jax.data import augment

  scale = tuple(d.scale_range) or paper_scale_range(d.image_size)
  return functools.partial(augment.paper_train, crop=d.image_size, scale=scale, lighting_std=d.lighting_std,
                           antialias=d.train_antialias)


def _inception_train(d: Any) -> Callable:
  from resnet_jax.data import augment

  from resnet_jax.data import autoaugment

  return functools.partial(augment.inception_train, crop=d.image_size, area=tuple(d.crop_area),
                           aspect=tuple(d.crop_aspect), antialias=d.train_antialias,
                           auto_augment=autoaugment.policy(d.auto_augment), random_erasing=d.random_erasing)


# For each kind of input, the values each setting may take and what each value builds: the train
# augmentation (from the data config), the normaliser (in memory: fitted to the training images).
SETTINGS = {
    "in memory": {
        "augmentation": {"none": lambda d: None, "crop": lambda d: PadCropFlip(d.pad, flip=False),
                         "crop_flip": lambda d: PadCropFlip(d.pad, flip=True)},
        "normalization": {"pixel_mean": Normalizer.pixel_mean, "channel_mean_std": Normalizer.channel_mean_std},
        "eval_view": {"center": None},
        "eval_resampler": {"tensorflow": None},
    },
    "streamed": {
        "augmentation": {"paper": _paper_train, "inception": _inception_train},
        "normalization": {"channel_mean_std": lambda: Normalizer.imagenet(divide_by_std=True),
                          "channel_mean": lambda: Normalizer.imagenet(divide_by_std=False)},
        "eval_view": {"center": None, "10crop": None, "multiscale": None},
        "eval_resampler": {"tensorflow": None, "pil": None},
    },
}
_KIND_DESCRIPTION = {
    "in memory": "held in memory, decoded already, and scored on its whole images",
    "streamed": "streamed from disk (an image folder, or tfds with images of varying size)",
}


def kind_of(data: Any) -> str:
  """'streamed' for an image folder or a tfds set of varying-size images, else 'in memory'."""
  if data.source == "folder" or data.source == "tfds" and not tfds_has_fixed_shape(data.name, data.data_dir or None):
    return "streamed"
  return "in memory"


def check_settings(data: Any, kind: str) -> None:
  """Refuses the first `data` setting that `kind` of input does not take, naming the valid values."""
  for field, values in SETTINGS[kind].items():
    if data[field] not in values:
      other = next(k for k in SETTINGS if k != kind)
      elsewhere = f" ({data[field]!r} is for {other} data)" if data[field] in SETTINGS[other][field] else ""
      raise ConfigError(f"data.{field}={data[field]!r} is not valid for {data.name or 'this data'}, which is "
                        f"{_KIND_DESCRIPTION[kind]}{elsewhere}; valid: {', '.join(values)}")
  if data.eval_average not in EVAL_AVERAGES:
    raise ConfigError(f"data.eval_average={data.eval_average!r} is not valid; valid: {', '.join(EVAL_AVERAGES)}")
  if data.eval_flip and data.eval_view != "center":
    raise ConfigError(f"data.eval_flip adds the mirror image to a center view; eval_view={data.eval_view!r} "
                      f"scores mirror images already: leave it off (--config.data.eval_flip=False)")
  for field, value in (("exclude_file", data.exclude_file), ("progressive.low", data.progressive.low),
                       ("eval_crop", data.eval_crop), ("auto_augment", data.auto_augment),
                       ("random_erasing", data.random_erasing), ("augment_repeats", data.augment_repeats != 1)):
    if kind == "in memory" and value:
      raise ConfigError(f"data.{field} applies to {_KIND_DESCRIPTION['streamed']}; {data.name} is "
                        f"{_KIND_DESCRIPTION[kind]}")
  p = data.progressive
  if p.low and not (data.augmentation == "inception" and 0 < p.low <= data.image_size
                    and 0 <= p.start_epoch <= p.end_epoch):
    raise ConfigError(f"data.progressive=(low={p.low}, start_epoch={p.start_epoch}, end_epoch={p.end_epoch}) with "
                      f"augmentation={data.augmentation!r}, image_size={data.image_size}: progressive resizing needs "
                      f"augmentation='inception' (a random-resized crop, as FFCV's), 0 < low <= image_size and "
                      f"0 <= start_epoch <= end_epoch")
  if (data.auto_augment or data.random_erasing) and data.augmentation != "inception":
    raise ConfigError(f"data.auto_augment={data.auto_augment!r} and data.random_erasing={data.random_erasing} follow "
                      f"a random-resized crop, as in torchvision's and timm's recipes: set augmentation='inception' "
                      f"(augmentation={data.augmentation!r})")
  if not (0 <= data.random_erasing <= 1 and isinstance(data.augment_repeats, int) and data.augment_repeats >= 1):
    raise ConfigError(f"data.random_erasing={data.random_erasing} must be a probability in [0, 1] and "
                      f"data.augment_repeats={data.augment_repeats} a positive integer (1: each example once an epoch)")
  if kind == "streamed":
    from resnet_jax.data import autoaugment

    autoaugment.policy(data.auto_augment)  # refuses an unknown policy before anything loads
    if data.eval_view != "multiscale" and not eval_crop(data) <= data.eval_resize:
      raise ConfigError(f"data.eval_crop={eval_crop(data)} (0: image_size) exceeds data.eval_resize={data.eval_resize}, "
                        f"the shorter side it is cropped from: raise eval_resize (FixRes-style: resize 232, crop 224)")
    low, high = tuple(data.scale_range) or paper_scale_range(data.image_size)
    if not data.image_size <= low <= high:
      raise ConfigError(f"data.scale_range=({low}, {high}) must be (low, high) with image_size={data.image_size} "
                        f"<= low <= high: the shorter side is resized into it before the crop")
    area, aspect = tuple(data.crop_area), tuple(data.crop_aspect)
    if not (len(area) == 2 and 0 < area[0] <= area[1] <= 1 and len(aspect) == 2 and 0 < aspect[0] <= aspect[1]):
      raise ConfigError(f"data.crop_area={area} must be 0 < low <= high <= 1 and data.crop_aspect={aspect} "
                        f"0 < low <= high")


EVAL_AVERAGES = ("probabilities", "logits")


def eval_splits(config: Any) -> list[str]:
  """The splits of its own data a run scores, each once: its eval split, then each named
  evaluation's (the sets from other sources are `other_sets`)."""
  return list(dict.fromkeys([config.data.eval_split, *(s for s in config.evals.values() if isinstance(s, str))]))


def other_sets(config: Any) -> dict[str, Any]:
  """The named evaluations on sets from other sources, by the description that names them."""
  return {config_lib.eval_set_description(spec, config): spec for spec in config.evals.values()
          if not isinstance(spec, str)}


def make_inputs(config: Any) -> Inputs:
  """The inputs a run config describes (its `data` fields, `evals`, batch sizes and seed)."""
  kind = kind_of(config.data)
  check_settings(config.data, kind)
  return (_streamed_inputs if kind == "streamed" else _in_memory_inputs)(config)


def _base_fingerprint(d: Any) -> dict[str, Any]:
  """Where the data comes from: the source, its resolved directory and, for tfds, the build."""
  fingerprint = {"source": d.source, "location": str(pathlib.Path(d.data_dir).resolve()) if d.data_dir else ""}
  if d.source == "tfds":
    fingerprint["tfds"] = f"{d.name} {tfds_builder(d.name, d.data_dir or None).info.version}"
  return fingerprint


def _array_fingerprint(split: ArraySplit) -> dict[str, Any]:
  """Size and a hash of the pixels and labels of a split held in memory (CIFAR-10's in 0.3 s)."""
  digest = hashlib.sha256(np.ascontiguousarray(split.images).data)
  digest.update(np.ascontiguousarray(split.labels).data)
  return {"examples": len(split), "sha256": digest.hexdigest()[:16]}


def _in_memory_inputs(config: Any) -> Inputs:
  d = config.data
  others = other_sets(config)
  if others:
    raise ConfigError(f"evaluation sets from other sources (config.evals: {', '.join(others)}) are read "
                      f"as streamed images; {d.name} is {_KIND_DESCRIPTION['in memory']}")
  settings = SETTINGS["in memory"]
  data_dir = d.data_dir or None
  train_split = load_split(d.source, d.name, d.train_split, data_dir)
  evals = {split: load_split(d.source, d.name, split, data_dir) for split in eval_splits(config)}
  fingerprint = {**_base_fingerprint(d), "classes": int(train_split.labels.max()) + 1,
                 "splits": {split: _array_fingerprint(data) for split, data in {d.train_split: train_split, **evals}.items()}}
  return Inputs(
      num_train=len(train_split), channels=train_split.images.shape[-1],
      num_classes=int(train_split.labels.max()) + 1,
      train=lambda step: TrainBatches(train_split, config.batch_size, seed=config.seed,
                                      augment=settings["augmentation"][d.augmentation](d), step=step),
      eval_batches=lambda split=None: eval_batches(evals[split or d.eval_split], config.eval_batch_size),
      normalize=settings["normalization"][d.normalization](train_split.images),
      train_eval_view=lambda batch, seed: TrainBatches(train_split, batch, seed=seed),
      fingerprint=fingerprint,
  )


def stream_sources(config: Any, exclude: set[str] = frozenset()) -> list["streamed.Source"]:
  """The train source of a streamed data set (an image folder or a tfds build), then one for each
  split it scores (`eval_splits`)."""
  from resnet_jax.data import streamed

  d = config.data
  if d.source == "folder":
    label_file = {d.eval_split: d.eval_label_file or None}  # a flat eval folder's labels
    return [streamed.FolderSource(d.data_dir, split, classes_from=d.train_split, label_file=label_file.get(split),
                                  exclude=exclude)
            for split in [d.train_split, *eval_splits(config)]]
  return [streamed.TfdsSource(d.name, split, d.data_dir or None, exclude=exclude)
          for split in [d.train_split, *eval_splits(config)]]


def _streamed_inputs(config: Any) -> Inputs:
  from resnet_jax.data import augment, streamed

  d = config.data
  settings = SETTINGS["streamed"]
  exclude = streamed.read_exclusions(d.exclude_file)
  from resnet_jax.data import eval_sets

  train_source, *scored = stream_sources(config, exclude)
  eval_sources = dict(zip(eval_splits(config), scored))
  sets = {key: eval_sets.load(spec, config, train_source) for key, spec in other_sets(config).items()}
  eval_sources.update({key: source for key, (source, _) in sets.items()})
  sets = {key: how for key, (_, how) in sets.items()}
  unused = exclude - train_source.excluded - set().union(*(s.excluded for s in scored))
  if unused:
    logging.warning("%d id(s) of data.exclude_file=%s match no example of the %s split(s), e.g. %s",
                    len(unused), d.exclude_file, ", ".join([d.train_split, *eval_splits(config)]), sorted(unused)[0])
  train_augment = settings["augmentation"][d.augmentation](d)
  views = streamed.views_function(d.eval_view, d.eval_resize, eval_crop(d), d.eval_scales, d.eval_resampler)
  # Multi-scale batches group images by shape: read every header once, at a split's first evaluation.
  shape_groups = functools.cache(lambda split: streamed.shape_groups(eval_sources[split]))
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())

  def eval_stream(split: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    split = split or d.eval_split
    groups = shape_groups(split) if d.eval_view == "multiscale" else None
    label_sets = sets[split].label_sets if split in sets else None
    return streamed.eval_stream(eval_sources[split], config.eval_batch_size, lambda b: augment.quantize(views(b)),
                                groups=groups, label_sets=label_sets, **process)

  center = streamed.views_function("center", d.eval_resize, eval_crop(d), resampler=d.eval_resampler)

  def train_eval_view(batch: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    one_view = lambda image_bytes, example_seed: {"image": augment.quantize(center(image_bytes))[0]}
    return streamed.train_stream(train_source, batch, one_view, seed=seed, **process)

  return Inputs(
      num_train=len(train_source), channels=3, num_classes=train_source.num_classes,
      train=lambda step: streamed.train_stream(
          train_source, config.batch_size, train_augment, seed=config.seed, step=step, crop_by_epoch=train_crops(d),
          repeats=d.augment_repeats, **process),
      eval_batches=eval_stream,
      normalize=settings["normalization"][d.normalization](),
      train_eval_view=train_eval_view,
      eval_sets=sets,
      fingerprint={**_base_fingerprint(d), "classes": list(train_source.classes),
                   "splits": {source.split: source.fingerprint() for source in [train_source, *scored]}},
  )
