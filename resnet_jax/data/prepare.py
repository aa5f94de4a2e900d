"""Builds a tfds data set once, ahead of training, in the array_record format the streamed input
pipeline reads by index:

  python -m resnet_jax.data.prepare imagenet2012 --manual_dir=/data/ilsvrc_tars --data_dir=/data/tfds
  python -m resnet_jax.data.prepare cifar10 --data_dir=/data/tfds   # downloads: needs internet

ImageNet builds from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --manual_dir (nothing
is downloaded). Training reads the result with --config.data.source=tfds --config.data.data_dir=...
(`tfds build` does the same but needs apache_beam in tfds 4.9.10).
"""

import pathlib
import time
from collections.abc import Sequence

from absl import flags

import resnet_jax.data.tf_on_cpu  # noqa: F401  (tfds builds with TensorFlow: keep it off the GPUs)
from resnet_jax import cli
from resnet_jax.errors import DatasetNotPrepared

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def prepare(name: str, data_dir: str, manual_dir: str | None = None, file_format: str = "array_record") -> dict[str, int]:
  """Builds `name` into `data_dir`; returns the examples per split."""
  import tensorflow_datasets as tfds

  if manual_dir and not pathlib.Path(manual_dir).is_dir():
    raise FileNotFoundError(f"--manual_dir {manual_dir} is not a folder")
  if name.startswith("imagenet2012"):
    missing = [tar for tar in IMAGENET_TARS if not pathlib.Path(manual_dir or ".", tar).is_file()]
    if missing:
      raise FileNotFoundError(
          f"{' and '.join(missing)} not found in --manual_dir={manual_dir}; download them from "
          f"https://image-net.org/download-images and leave them unextracted"
      )
  builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return {str(split): info.num_examples for split, info in builder.info.splits.items()}


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("data_dir", None, "where the built data set goes", flag_values=values)
  flags.DEFINE_string("manual_dir", None, "the folder holding manually downloaded files (ImageNet's tars)",
                      flag_values=values)
  flags.DEFINE_enum("file_format", "array_record", ["array_record", "tfrecord"], "the files to build",
                    flag_values=values)
  flags.mark_flags_as_required(["data_dir"], flag_values=values)


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
  """Builds the data set the arguments name (the tfds name, then flags); returns its split sizes."""
  args, (name,) = cli.parse(argv, define_flags, __doc__, positional=(1, 1))
  start = time.perf_counter()
  try:
    splits = prepare(name, args.data_dir, args.manual_dir, args.file_format)
  except FileNotFoundError as error:
    raise DatasetNotPrepared(str(error)) from None
  counts = ", ".join(f"{split} {count:,}" for split, count in splits.items())
  print(f"prepared {name} in {args.data_dir} ({counts}) in {time.perf_counter() - start:.0f} s")
  return splits


def command() -> None:
  """The `resnet-jax-prepare` console script (also `python -m resnet_jax.data.prepare`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
