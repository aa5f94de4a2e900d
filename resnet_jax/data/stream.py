"""Streaming input for data sets too large for memory (ImageNet): tf.data over random-access sources.

The order is index-based, as for the in-memory batches: position j of global batch s is example
`index_shuffle(s * B + j within its epoch, key(seed, epoch))`, an O(1) stateless permutation, and
its augmentation seed is (seed, s * B + j). So the data position in a checkpoint is the step alone:
a restore starts at step s without reading or buffering anything, and every process computes its
own slice of the same global batch, whatever the process count. Each process reads only the
examples of its slices.
"""

import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from resnet_jax.data import augment
from resnet_jax.data.pipeline import process_slice
from resnet_jax.data.sources import DatasetNotPrepared, tfds_builder

# TensorFlow only feeds the input pipeline: keep it off the accelerators JAX uses.
tf.config.set_visible_devices([], "GPU")

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class FolderSource:
  """Images in `root/<split>/<class>/*.JPEG`: class k is the k-th folder name in sorted order (the
  order tfds and torchvision use, so labels and converted weights agree).

  A flat split folder takes its labels from `label_file`: lines of `<file name> <class name>`.
  """

  def __init__(self, root: str, split: str, *, label_file: str | None = None):
    if not root:
      raise ValueError("set --config.data.data_dir to the folder that holds train/ and val/")
    base = pathlib.Path(root)
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir()) if (base / "train").is_dir() else []
    folder = base / split
    if not folder.is_dir():
      raise FileNotFoundError(
          f"no folder {folder}; expected {base}/<split>/<class>/*.JPEG (e.g. ImageNet's train/ and val/)"
      )
    if label_file:
      names = dict(line.split()[:2] for line in pathlib.Path(label_file).read_text().splitlines() if line.strip())
      paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
      missing = [p.name for p in paths if p.name not in names]
      if missing:
        raise ValueError(f"{len(missing)} images of {folder} are not in {label_file}, e.g. {missing[0]}")
      labels = [classes.index(names[p.name]) for p in paths]
    else:
      classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
      paths, labels = [], []
      for index, name in enumerate(classes):
        found = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += found
        labels += [index] * len(found)
    if not paths:
      raise FileNotFoundError(f"no images in {folder}")
    self.classes = classes
    self.num_classes = len(classes)
    self.paths = np.array([str(p) for p in paths])
    self.labels = np.array(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def reader(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    paths, labels = tf.constant(self.paths), tf.constant(self.labels)
    return lambda i: (tf.io.read_file(tf.gather(paths, i)), tf.gather(labels, i))


class TfdsSource:
  """A tfds data set built as array_record files (`python -m resnet_jax.data.prepare`), read by
  index: random access is what lets the index-based order skip to any step. Images stay encoded.

  Records are read by a Python callback (~0.1 ms each, 3% of an image's augmentation time).
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir)
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise DatasetNotPrepared(
          f"{name!r} in {builder.data_dir} was built as {builder.info.file_format.value}, which can only be "
          f"read in sequence; the input pipeline needs random access. Rebuild it as array_record: "
          f"python -m resnet_jax.data.prepare {name} --data_dir=NEW_DIR [--manual_dir=...]"
      )
    splits = list(builder.info.splits)
    if split.split("[")[0] not in splits:
      raise ValueError(f"{name!r} has splits {', '.join(splits)}; got {split!r}")
    self.image_key, self.label_key = builder.info.supervised_keys
    self.classes = builder.info.features[self.label_key].names
    self.num_classes = len(self.classes)
    self.records = builder.as_data_source(split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})

  def __len__(self) -> int:
    return len(self.records)

  def read(self, index: int) -> tuple[bytes, np.int32]:
    record = self.records[int(index)]
    return record[self.image_key], np.int32(record[self.label_key])

  def reader(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    def read(index):
      image_bytes, label = tf.numpy_function(self.read, [index], (tf.string, tf.int32), stateful=False)
      return tf.ensure_shape(image_bytes, []), tf.ensure_shape(label, [])
    return read


def train_stream(
    source,
    global_batch: int,
    augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    *,
    seed: int,
    step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's slices of the global training batches, from `step` on, endlessly.

  `augment(image_bytes, seed)` returns one float32 image; every epoch drops its remainder.
  """
  n = len(source)
  steps_per_epoch = n // global_batch
  if steps_per_epoch == 0:
    raise ValueError(f"batch of {global_batch} is larger than the {n} training examples")
  share = process_slice(global_batch, process_index, process_count)
  first, local = share.start, share.stop - share.start
  read = source.reader()

  def example(position):
    s, j = position // local, position % local + first
    epoch = s // steps_per_epoch
    within = (s % steps_per_epoch) * global_batch + j
    index = tf.random.experimental.index_shuffle(
        within, tf.stack([tf.constant(seed, tf.int64), epoch]), n - 1
    )
    image_bytes, label = read(index)
    image = augment(image_bytes, tf.stack([tf.constant(seed, tf.int64), s * global_batch + j]))
    return {"image": image, "label": label}

  dataset = tf.data.Dataset.range(step * local, np.iinfo(np.int64).max)
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return iter(tf.data.Dataset.batch(dataset, local, drop_remainder=True).prefetch(prefetch).as_numpy_iterator())


def eval_stream(
    source,
    global_batch: int,
    views: Callable[[tf.Tensor], tf.Tensor | tuple[tf.Tensor, ...]],
    *,
    groups: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example once across all processes: each group's last global batch is padded (with a
  repeat of its last example), `mask` marks the real examples. `views(image_bytes)` returns
  (V, H, W, C), e.g. 1 center crop or 10 crops, or a tuple of such (one per scale).

  `groups` (an int per example, e.g. from `shape_groups`) puts examples whose views differ in
  shape in separate batches.
  """
  share = process_slice(global_batch, process_index, process_count)
  indices, mask = _eval_plan(np.zeros(len(source), np.int64) if groups is None else groups, global_batch)
  indices, mask = indices[:, share].ravel(), mask[:, share].ravel()
  read = source.reader()

  def example(index, real):
    image_bytes, label = read(index)
    return {"image": views(image_bytes), "label": label, "mask": real}

  dataset = tf.data.Dataset.from_tensor_slices((indices, mask))
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return iter(dataset.batch(share.stop - share.start).prefetch(2).as_numpy_iterator())


def _eval_plan(groups: np.ndarray, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(batches, global_batch) example indices and masks: the examples of each group in order, each
  group's last batch padded with its last example."""
  rows = []
  for group in np.unique(groups):
    members = np.flatnonzero(groups == group)
    padded = -(-len(members) // global_batch) * global_batch
    rows.append(np.stack([np.pad(members, (0, padded - len(members)), mode="edge"),
                          np.arange(padded) < len(members)]).reshape(2, -1, global_batch))
  plan = np.concatenate(rows, axis=1)
  return plan[0], plan[1].astype(np.float32)


def shape_groups(source) -> np.ndarray:
  """Each example's multi-scale shape bucket, from its image header; one pass over the split, the
  same on every process."""
  read = source.reader()

  def bucket(index):
    shape = augment.image_shape(read(index)[0])
    return tf.cast(augment.aspect_bucket(shape[0], shape[1]), tf.int64)

  scan = tf.data.Dataset.range(len(source)).map(bucket, num_parallel_calls=tf.data.AUTOTUNE)
  return np.fromiter(scan.as_numpy_iterator(), np.int64, count=len(source))


def views_function(kind: str, resize: int, crop: int, scales: tuple[int, ...] = ()) -> Callable[[tf.Tensor], Any]:
  """The eval views of one example, by name: 'center', '10crop' or 'multiscale'."""
  if kind == "center":
    return lambda image_bytes: augment.center_view(image_bytes, resize=resize, crop=crop)
  if kind == "10crop":
    return lambda image_bytes: augment.ten_crop_views(image_bytes, resize=resize, crop=crop)
  if kind == "multiscale":
    return lambda image_bytes: augment.multiscale_views(image_bytes, scales=tuple(scales))
  raise ValueError(f"unknown eval view {kind!r}; valid: center, 10crop, multiscale")
