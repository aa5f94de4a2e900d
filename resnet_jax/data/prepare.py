"""Builds a tfds data set once, ahead of training, in the array_record format the streamed input
pipeline reads by index:

  python -m resnet_jax.data.prepare imagenet2012 --manual_dir=/data/ilsvrc_tars --data_dir=/data/tfds
  python -m resnet_jax.data.prepare cifar10 --data_dir=/data/tfds   # downloads: needs internet

ImageNet builds from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --manual_dir (nothing
is downloaded). Training reads the result with --config.data.source=tfds --config.data.data_dir=...
(`tfds build` does the same but needs apache_beam in tfds 4.9.10).
"""

import argparse
import pathlib
import sys
import time

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="tfds name, e.g. imagenet2012 or cifar10")
  parser.add_argument("--data_dir", required=True, help="where the built data set goes")
  parser.add_argument("--manual_dir", help="the folder holding manually downloaded files (ImageNet's tars)")
  parser.add_argument("--file_format", default="array_record", choices=["array_record", "tfrecord"])
  args = parser.parse_args()
  start = time.perf_counter()
  try:
    splits = prepare(args.name, args.data_dir, args.manual_dir, args.file_format)
  except FileNotFoundError as error:
    sys.exit(f"error: {error}")
  counts = ", ".join(f"{split} {count:,}" for split, count in splits.items())
  print(f"prepared {args.name} in {args.data_dir} ({counts}) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
