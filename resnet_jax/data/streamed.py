"""Streaming input for data sets too large for memory (ImageNet): tf.data over random-access sources.

The order is index-based, as for the in-memory batches: position j of global batch s is example
`index_shuffle(s * B + j within its epoch, key(seed, epoch))`, an O(1) stateless permutation, and
its augmentation seed is (seed, s * B + j). So the data position in a checkpoint is the step alone:
a restore starts at step s without reading or buffering anything, and every process computes its
own slice of the same global batch, whatever the process count. Each process reads only the
examples of its slices.
"""

import collections
import hashlib
import itertools
import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from resnet_jax.data import augment
from resnet_jax.data.in_memory import process_slice
from resnet_jax.data.sources import tfds_builder
from resnet_jax.data.tf_on_cpu import tf
from resnet_jax.errors import ConfigError, DataError, DatasetNotPrepared

# Every format tf.io.decode_image reads (TIFF, for one, it does not).
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".jxl")


def _visible(path: pathlib.Path) -> bool:
  """Hidden entries (.ipynb_checkpoints, macOS ._* files) are never classes or images."""
  return not path.name.startswith(".")


def _images_in(folder: pathlib.Path, skipped: list[pathlib.Path]) -> list[pathlib.Path]:
  """The images of a folder, sorted; the other visible files are added to `skipped`."""
  files = sorted(p for p in folder.iterdir() if _visible(p) and p.is_file())
  skipped += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
  return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]


def _warn_skipped(skipped: list[pathlib.Path], folder: pathlib.Path) -> None:
  if skipped:
    kinds = collections.Counter(p.suffix.lower() or "(no extension)" for p in skipped)
    logging.warning(
        "%d file(s) of %s are not read, being no image format this pipeline decodes (%s): %s, e.g. %s. Convert "
        "any that are images to JPEG or PNG, or move them out of the data folder", len(skipped), folder,
        ", ".join(IMAGE_SUFFIXES), ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()), skipped[0])


def read_label_file(path: str) -> dict[str, str]:
  """A flat eval folder's labels: lines of '<file name> <class folder name>'."""
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except (OSError, UnicodeDecodeError) as error:
    raise DataError(f"cannot read the label file data.eval_label_file={path!r} ({getattr(error, 'strerror', None) or error}); "
                    f"give a text file of '<file name> <class folder name>' lines") from None
  names = {}
  for number, line in enumerate(lines, start=1):
    fields = line.split()
    if len(fields) == 1 or len(fields) > 2:
      raise DataError(f"{path} line {number} is not '<file name> <class folder name>': {line[:100]!r}; fix or "
                      f"remove that line")
    if fields:
      names[fields[0]] = fields[1]
  return names


def read_exclusions(path: str) -> set[str]:
  """The example ids of an exclude file: one a line (as the scan command writes them); blank lines
  and lines starting with # are skipped."""
  if not path:
    return set()
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except OSError as error:
    raise ConfigError(f"cannot read data.exclude_file={path!r}: {error.strerror}") from None
  return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def split_fingerprint(ids: Iterable[str]) -> dict[str, Any]:
  """{'examples': N, 'ids_sha256': ...} of a split's example ids (with their labels), in order: an
  image added, removed, renamed or relabelled changes it. ImageNet's 1.28 M ids hash in under a
  second; listing them is the folder source's work anyway."""
  ids = list(ids)
  return {"examples": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]}


class Source(Protocol):
  """What the streams read: a split of encoded images by index. `FolderSource` and `TfdsSource` are
  the two; another format (e.g. webdataset shards with an index) needs only these."""

  split: str
  num_classes: int
  excluded: set[str]  # the ids of data.exclude_file found in this split

  def __len__(self) -> int: ...

  def fingerprint(self) -> dict[str, Any]:
    """The split's size and a hash of its examples' ids (`split_fingerprint`), for the run's identity."""

  def reader(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A tf.data function from an index to (encoded image bytes, label)."""

  def example_id(self, index: int) -> str:
    """The id data.exclude_file lists to leave the example out."""

  def describe(self, index: int) -> str:
    """The example as a user finds it (a path, a tfds record)."""

  def file_name(self, index: int) -> str:
    """The example's image file name (ImageNet-ReaL's labels are by validation file number)."""


class FolderSource:
  """Images in `root/<split>/<class>/*.JPEG`: class k is the k-th folder name of the train split's
  folder (`classes_from`) in sorted order (the order tfds and torchvision use, so labels and
  converted weights agree), whatever the split being read. Hidden files and folders are ignored;
  other files are counted and named in a warning; an empty class folder keeps its index (with a
  warning); an eval image of a class train/ does not have is an error, never a silent drop.

  A flat split folder takes its labels from `label_file`: lines of `<file name> <class name>`.
  Examples whose id (the path under `root`, e.g. `train/n01440764/x.JPEG`) is in `exclude` are
  left out, which keeps the index-based order deterministic and resumable.
  """

  def __init__(self, root: str, split: str, *, classes_from: str = "train", label_file: str | None = None,
               exclude: set[str] = frozenset(), classes: Sequence[str] | None = None):
    if not root:
      raise ConfigError(f"set --config.data.data_dir to the folder that holds {classes_from}/ and the eval split's "
                        f"folder (ImageNet: train/ and val/)")
    base = pathlib.Path(root)
    self.root, self.split = base, split
    train = base / classes_from
    if classes is None:  # (given: another set's classes, e.g. ImageNet-V2's or ImageNet-R's folders named as ours)
      classes = sorted(p.name for p in train.iterdir() if _visible(p) and p.is_dir()) if train.is_dir() else []
    classes = list(classes)
    folder = base / split
    if not folder.is_dir():
      raise DatasetNotPrepared(
          f"no folder {folder}; expected {base}/<split>/<class>/*.JPEG (e.g. ImageNet's train/ and val/)"
      )
    skipped = []
    if label_file:
      names = read_label_file(label_file)
      paths = _images_in(folder, skipped)
      missing = [p.name for p in paths if p.name not in names]
      if missing:
        raise DataError(f"{len(missing)} images of {folder} are not in {label_file}, e.g. {missing[0]}")
      self._check_known(classes, {names[p.name] for p in paths}, label_file)
      labels = [classes.index(names[p.name]) for p in paths]
      empty = sorted(set(classes) - {names[p.name] for p in paths})
    else:
      folders = sorted(p.name for p in folder.iterdir() if _visible(p) and p.is_dir())
      if classes:
        self._check_known(classes, set(folders), folder)
      classes = classes or folders
      paths, labels, empty = [], [], []
      for index, name in enumerate(classes):
        found = _images_in(folder / name, skipped) if (folder / name).is_dir() else []
        empty += [] if found else [name]
        paths += found
        labels += [index] * len(found)
    _warn_skipped(skipped, folder)
    if empty and paths:
      what = ("keep their label index" if split == classes_from else
              f"are not scored: this split covers {len(classes) - len(empty)} of the {len(classes)} classes")
      logging.warning("%d class(es) have no images in %s and %s: %s%s", len(empty), folder, what,
                      ", ".join(empty[:5]), ", ..." if len(empty) > 5 else "")
    if not paths:
      raise DatasetNotPrepared(f"no images in {folder}")
    ids = [p.relative_to(base).as_posix() for p in paths]
    kept = [i for i, name in enumerate(ids) if name not in exclude]
    self.excluded = {name for name in ids if name in exclude}
    self.classes = classes
    self.num_classes = len(classes)
    self.paths = np.array([str(paths[i]) for i in kept])
    self.ids = [ids[i] for i in kept]
    self.labels = np.array([labels[i] for i in kept], np.int32)

  @staticmethod
  def _check_known(classes: list[str], used: set[str], where) -> None:
    unknown = sorted(used - set(classes))
    if unknown:
      raise DataError(f"{len(unknown)} class(es) of {where} are not class folders of train/, e.g. {unknown[0]}; "
                      f"the labels would not match. Fix the folder names (or the label file)")

  def __len__(self) -> int:
    return len(self.labels)

  def fingerprint(self) -> dict[str, Any]:
    return split_fingerprint(f"{i}\t{label}" for i, label in zip(self.ids, self.labels.tolist()))

  def describe(self, index: int) -> str:
    """The example as a user finds it (a path) and its id for data.exclude_file."""
    return self.paths[index]

  def example_id(self, index: int) -> str:
    return self.ids[index]

  def file_name(self, index: int) -> str:
    return pathlib.Path(self.paths[index]).name

  def reader(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    paths, labels = tf.constant(self.paths), tf.constant(self.labels)
    return lambda i: (tf.io.read_file(tf.gather(paths, i)), tf.gather(labels, i))


class TfdsSource:
  """A tfds data set built as array_record files (`python -m resnet_jax.data.prepare`), read by
  index: random access is what lets the index-based order skip to any step. Images stay encoded.

  Records are read by a Python callback (~0.1 ms each, 3% of an image's augmentation time).
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None, *, exclude: set[str] = frozenset()):
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
      raise ConfigError(f"{name!r} has splits {', '.join(splits)}; got {split!r}")
    self.image_key, self.label_key = builder.info.supervised_keys
    self.classes = builder.info.features[self.label_key].names
    self.num_classes = len(self.classes)
    self.name, self.split = name, split
    self.records = builder.as_data_source(split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})
    ids = [f"{split}[{i}]" for i in range(len(self.records))]
    self.excluded = {i for i in ids if i in exclude}
    # Positions to record indices, without the excluded records.
    self.indices = np.array([i for i, name in enumerate(ids) if name not in exclude], np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def fingerprint(self) -> dict[str, Any]:
    return split_fingerprint(map(str, self.indices))

  def example_id(self, index: int) -> str:
    return f"{self.split}[{self.indices[index]}]"

  def file_name(self, index: int) -> str:
    """The record's original file name (ImageNet's builds keep it); '' without one."""
    name = self.records[int(self.indices[index])].get("file_name", b"")
    return name.decode() if isinstance(name, bytes) else str(name)

  def describe(self, index: int) -> str:
    file_name = self.file_name(index)
    return f"record {self.example_id(index)} of tfds {self.name}" + (f" ({file_name})" if file_name else "")

  def read(self, index: int) -> tuple[bytes, np.int32]:
    record = self.records[int(self.indices[index])]
    return record[self.image_key], np.int32(record[self.label_key])

  def reader(self) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    def read(index):
      image_bytes, label = tf.numpy_function(self.read, [index], (tf.string, tf.int32), stateful=False)
      return tf.ensure_shape(image_bytes, []), tf.ensure_shape(label, [])
    return read


def train_stream(
    source: Source,
    global_batch: int,
    augment: Callable[..., dict[str, tf.Tensor]],
    *,
    seed: int,
    step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
    crop_by_epoch: Sequence[int] = (),
    repeats: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's slices of the global training batches, from `step` on, endlessly.

  `augment(image_bytes, seed)` returns an example's fields (its image, and any others such as a
  lighting shift); every epoch drops its remainder. With `crop_by_epoch` (progressive resizing) it
  is called with `crop=` the size for the example's epoch, the last one holding for every later
  epoch: a pure function of the step, as the order is. With `repeats` > 1 (repeated augmentation)
  positions r*k .. r*k+r-1 of an epoch hold its k-th shuffled example, each position with its own
  augmentation seed. An image that cannot be decoded ends the stream with a DataError naming it.
  """
  n = len(source)
  steps_per_epoch = n // global_batch
  if steps_per_epoch == 0:
    raise ConfigError(f"batch of {global_batch} is larger than the {n} training examples")
  share = process_slice(global_batch, process_index, process_count)
  first, local = share.start, share.stop - share.start
  read = source.reader()
  crops = tf.constant(crop_by_epoch or [0], tf.int64)

  def augment_at(image_bytes, example_seed, epoch):
    if not crop_by_epoch:
      return augment(image_bytes, example_seed)
    return augment(image_bytes, example_seed, crop=tf.gather(crops, tf.minimum(epoch, len(crop_by_epoch) - 1)))

  def index_seed_and_epoch(position):
    s, j = position // local, position % local + first
    epoch = s // steps_per_epoch
    within = (s % steps_per_epoch) * global_batch + j
    index = tf.random.experimental.index_shuffle(
        within // repeats, tf.stack([tf.constant(seed, tf.int64), epoch]), n - 1
    )
    return index, tf.stack([tf.constant(seed, tf.int64), s * global_batch + j]), epoch

  def example(position):
    index, example_seed, epoch = index_seed_and_epoch(position)
    image_bytes, label = read(index)
    return {**augment_at(image_bytes, example_seed, epoch), "label": label}

  def batch_examples(batch_number):  # (index, seed, epoch) of a batch's examples, to find a bad one
    positions = range((step + batch_number) * local, (step + batch_number + 1) * local)
    return [index_seed_and_epoch(tf.constant(position, tf.int64)) for position in positions]

  dataset = tf.data.Dataset.range(step * local, np.iinfo(np.int64).max)
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  batches = tf.data.Dataset.batch(dataset, local, drop_remainder=True).prefetch(prefetch).as_numpy_iterator()
  return _naming_bad_examples(batches, source, lambda index, s, epoch: augment_at(read(index)[0], s, epoch),
                              batch_examples)


def _naming_bad_examples(batches, source: Source, load: Callable, batch_examples: Callable[[int], list]) -> Iterator[dict]:
  """Passes the batches on; when tf.data fails on one (an image that does not decode), loads that
  batch's examples one by one to name the bad one(s) in a DataError."""
  for number in itertools.count():
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as error:
      raise bad_examples_error(source, batch_examples(number), load, error) from None
    yield batch


def load_failure(load: Callable, *arguments) -> str | None:
  """The first line of TensorFlow's error when `load(*arguments)` (eagerly) fails; None when it works."""
  try:
    load(*arguments)
  except tf.errors.OpError as failure:
    return failure.message.splitlines()[0]
  return None


def bad_examples_error(source: Source, candidates: list[tuple], load: Callable, error: Exception) -> DataError:
  """A DataError naming which of `candidates` ((index, ...) argument tuples of `load`) fail to load."""
  bad = [(int(arguments[0]), reason) for arguments in candidates if (reason := load_failure(load, *arguments))]
  if not bad:
    return DataError(f"the {source.split} split failed to load a batch, but no single image of it fails alone: "
                     f"{str(error).splitlines()[0]}")
  named = "; ".join(f"{source.describe(index)} ({reason})" for index, reason in dict(bad).items())
  ids = ", ".join(sorted({source.example_id(index) for index, _ in bad}))
  return DataError(
      f"cannot decode {named}, in the {source.split} split. Exclude it by listing its id ({ids}) in a file "
      f"passed as --config.data.exclude_file=FILE; python -m resnet_jax.data.scan finds every bad file of a set")


def eval_stream(
    source: Source,
    global_batch: int,
    views: Callable[[tf.Tensor], tf.Tensor | tuple[tf.Tensor, ...]],
    *,
    groups: np.ndarray | None = None,
    label_sets: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example once across all processes: each group's last global batch is padded (with a
  repeat of its last example), `mask` marks the real examples. `views(image_bytes)` returns
  (V, H, W, C), e.g. 1 center crop or 10 crops, or a tuple of such (one per scale). `label_sets`
  (examples, K) adds each example's row as `label_set` (ImageNet-ReaL's correct labels).

  `groups` (an int per example, e.g. from `shape_groups`) puts examples whose views differ in
  shape in separate batches. An image that cannot be decoded ends the stream with a DataError
  naming it.
  """
  share = process_slice(global_batch, process_index, process_count)
  indices, mask = _eval_plan(np.zeros(len(source), np.int64) if groups is None else groups, global_batch)
  local = share.stop - share.start
  indices, mask = indices[:, share].ravel(), mask[:, share].ravel()
  read = source.reader()
  sets = None if label_sets is None else tf.constant(label_sets)

  def example(index, real):
    image_bytes, label = read(index)
    fields = {"image": views(image_bytes), "label": label, "mask": real}
    return fields if sets is None else {**fields, "label_set": tf.gather(sets, index)}

  dataset = tf.data.Dataset.from_tensor_slices((indices, mask))
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  batches = dataset.batch(local).prefetch(2).as_numpy_iterator()
  return _naming_bad_examples(batches, source, lambda index: views(read(index)[0]),
                              lambda number: [(i,) for i in indices[number * local:(number + 1) * local]])


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


def shape_groups(source: Source) -> np.ndarray:
  """Each example's multi-scale shape bucket, from its image header; one pass over the split, the
  same on every process."""
  read = source.reader()

  def bucket(index):
    shape = augment.image_shape(read(index)[0])
    return tf.cast(augment.aspect_bucket(shape[0], shape[1]), tf.int64)

  scan = tf.data.Dataset.range(len(source)).map(bucket, num_parallel_calls=tf.data.AUTOTUNE)
  return np.fromiter(scan.as_numpy_iterator(), np.int64, count=len(source))


EVAL_RESAMPLERS = ("tensorflow", "pil")


def views_function(kind: str, resize: int, crop: int, scales: tuple[int, ...] = (),
                   resampler: str = "tensorflow") -> Callable[[tf.Tensor], Any]:
  """The eval views of one example, by name: 'center', '10crop' or 'multiscale'; resampled by
  TensorFlow or, 'pil', by PIL exactly as torchvision's transforms."""
  if resampler not in EVAL_RESAMPLERS:
    raise ConfigError(f"unknown eval_resampler {resampler!r}; valid: {', '.join(EVAL_RESAMPLERS)}")
  if resampler == "pil":
    if kind not in ("center", "10crop"):
      raise ConfigError(f"eval_resampler='pil' makes torchvision's center and 10crop views; eval_view={kind!r} "
                        f"has no torchvision counterpart (use eval_resampler='tensorflow')")
    return lambda image_bytes: augment.torchvision_views(image_bytes, resize=resize, crop=crop,
                                                         ten_crop=kind == "10crop")
  if kind == "center":
    return lambda image_bytes: augment.center_view(image_bytes, resize=resize, crop=crop)
  if kind == "10crop":
    return lambda image_bytes: augment.ten_crop_views(image_bytes, resize=resize, crop=crop)
  if kind == "multiscale":
    return lambda image_bytes: augment.multiscale_views(image_bytes, scales=tuple(scales))
  raise ConfigError(f"unknown eval view {kind!r}; valid: center, 10crop, multiscale")
