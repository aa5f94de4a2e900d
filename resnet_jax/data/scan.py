"""Finds every image of a streamed data set that cannot be decoded, once, before a long run:

  python -m resnet_jax.data.scan --config=configs/imagenet.py --config.data.data_dir=/data/imagenet \
      --output=bad_images.txt

Decodes every image of the config's train and eval splits in parallel (tf.data over all cores),
printing progress and an ETA, and writes the ids of those that fail, one a line under a comment
giving the reason: the file to pass as --config.data.exclude_file. Odd but valid files (CMYK or
grayscale JPEGs, a PNG named .JPEG) decode and are not listed.
"""

import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from resnet_jax import cli
from resnet_jax.data import augment
from resnet_jax.data.inputs import kind_of, stream_sources
from resnet_jax.data.streamed import Source, load_failure
from resnet_jax.data.tf_on_cpu import tf
from resnet_jax.errors import ConfigError


def find_bad_images(source: Source, progress: Callable[[int, int], None] = lambda done, total: None) -> list[tuple[int, str]]:
  """(index, reason) of every example of `source` whose image does not decode."""
  read = source.reader()

  def decoded_shape(index):  # the shape is returned so that the decode is not pruned away
    return index, tf.shape(augment.decode(read(index)[0]))

  scan = tf.data.Dataset.range(len(source)).map(decoded_shape, num_parallel_calls=tf.data.AUTOTUNE)
  good = np.zeros(len(source), bool)
  for done, (index, _) in enumerate(scan.ignore_errors().as_numpy_iterator(), start=1):
    good[index] = True
    if done < len(source):
      progress(done, len(source))
  progress(len(source), len(source))  # every image was tried, the bad ones too
  decode = lambda index: augment.decode(read(tf.constant(index, tf.int64))[0])
  return [(int(index), load_failure(decode, index) or "failed in the parallel scan only")
          for index in np.flatnonzero(~good)]


class Progress:
  """A line every `every` seconds: images done, rate and time left."""

  def __init__(self, split: str, every: float = 10.0):
    self.split, self.every = split, every
    self.start = self.last = time.monotonic()

  def __call__(self, done: int, total: int) -> None:
    now = time.monotonic()
    if now - self.last >= self.every or done == total:
      self.last = now
      rate = done / max(now - self.start, 1e-9)
      print(f"  {self.split}: {done:,} / {total:,} images ({rate:,.0f}/s, {(total - done) / rate / 60:.1f} min left)",
            flush=True)


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("output", "bad_images.txt", "where the ids of the bad images go", flag_values=values)


def main(argv: Sequence[str] | None = None) -> list[str]:
  """Scans every split the config reads; returns the ids of the images that do not decode."""
  args, _ = cli.parse(argv, define_flags, __doc__, config=True)
  config = args.config
  if kind_of(config.data) != "streamed":
    raise ConfigError(f"{config.data.name} is held in memory, decoded already; the scan is for streamed sets "
                      f"(data.source folder, or tfds with images of varying size)")
  lines, ids, total = [], [], 0
  for source in stream_sources(config):
    print(f"scanning the {source.split} split: {len(source):,} images", flush=True)
    bad = find_bad_images(source, Progress(source.split))
    total += len(source)
    for index, reason in bad:
      print(f"  bad: {source.describe(index)}: {reason}")
      lines += [f"# {source.describe(index)}: {reason}", source.example_id(index)]
      ids.append(source.example_id(index))
  output = pathlib.Path(args.output)
  output.write_text("".join(f"{line}\n" for line in lines))
  print(f"{len(ids)} of {total:,} images cannot be decoded; wrote their ids to {output}. Train and evaluate "
        f"with --config.data.exclude_file={output}")
  return ids


def command() -> None:
  """The `resnet-jax-scan` console script (also `python -m resnet_jax.data.scan`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
