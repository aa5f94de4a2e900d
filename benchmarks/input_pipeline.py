"""Input-pipeline throughput: train and eval images/s per CPU core on ImageNet-sized JPEGs.

  .venv/bin/python benchmarks/input_pipeline.py [--images=256] [--batches=30] [--torch_python=.venv-3.11/bin/python]

Makes its own JPEG folder (500x375, ImageNet's median size, ~110 KB at quality 90 of smooth noise),
then times, in one run: a plain baseline (full decode, resize the shorter side to 256, center
crop 224), the paper's and the Inception train pipelines (bilinear resize of the crop, the default,
and antialiased), the fast (FFCV) recipe's at its two sizes, torchvision's and RSB's with their
TrivialAugment / RandAugment ops, and the center, 10-crop and multi-scale eval views. With
--torch_python (an interpreter with torch and torchvision), torchvision's DataLoader over the same
folder follows in the same run, as its references build it: PIL decode, RandomResizedCrop + flip
(and TrivialAugment-Wide + RandomErasing for its new recipe at 176), Resize + CenterCrop for eval,
with as many worker processes as cores, batch for batch the same sizes.
"""

import functools
import json
import os
import pathlib
import subprocess
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from resnet_jax import cli
from resnet_jax.data import augment, autoaugment, streamed
from resnet_jax.data.tf_on_cpu import tf


def make_folder(root: pathlib.Path, count: int) -> None:
  rng = np.random.default_rng(0)
  for i in range(count):
    folder = root / "train" / f"n{i % 10:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    coarse = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    image = tf.image.resize(coarse, (375, 500)) + rng.normal(0, 24, (375, 500, 3))
    image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    (folder / f"{i}.JPEG").write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())


def rate(batches, count: int, batch: int) -> float:
  next(batches)  # warm-up: graph building, thread pools
  start = time.perf_counter()
  for _ in range(count):
    next(batches)
  return count * batch / (time.perf_counter() - start)


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_integer("images", 256, "JPEGs to make", flag_values=values)
  flags.DEFINE_integer("batches", 30, "batches timed per pipeline", flag_values=values)
  flags.DEFINE_integer("batch", 64, "images a batch", flag_values=values)
  flags.DEFINE_string("torch_python", None, "an interpreter with torch and torchvision: time its DataLoader too",
                      flag_values=values)


# torchvision's side, run by --torch_python (which has nothing of ours): its reference transforms.
TORCHVISION_WORKER = """
import json, sys, time
import torch, torchvision
from torchvision import datasets, transforms as T
root, batch, batches, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tensor = [T.PILToTensor(), T.ConvertImageDtype(torch.float)]
pipelines = {
    "train: RandomResizedCrop 224 + flip": T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *tensor]),
    "train: torchvision recipe at 176 (+ TA-Wide, erasing)": T.Compose([
        T.RandomResizedCrop(176), T.RandomHorizontalFlip(), T.TrivialAugmentWide(), *tensor, T.RandomErasing(0.1)]),
    "eval: Resize 256 + CenterCrop 224": T.Compose([T.Resize(256), T.CenterCrop(224), *tensor]),
}
rates = {}
for name, transform in pipelines.items():
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(root, transform), batch_size=batch, shuffle=True,
                                         num_workers=workers, persistent_workers=True, drop_last=True)
    def endless():
        while True:
            yield from loader
    stream = endless()
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rates[name] = batches * batch / (time.perf_counter() - start)
print(json.dumps({"torchvision": torchvision.__version__, "images_per_s": rates}))
"""


def torchvision_rates(python: str, root: pathlib.Path, batch: int, batches: int, workers: int) -> dict:
  """torchvision's DataLoader images/s per pipeline, in a process of `python`."""
  finished = subprocess.run([python, "-c", TORCHVISION_WORKER, str(root), str(batch), str(batches), str(workers)],
                            capture_output=True, text=True)
  if finished.returncode:
    raise SystemExit(f"error: the torchvision worker failed: {finished.stderr.strip().splitlines()[-1:]}")
  return json.loads(finished.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> dict:
  """Prints the table, then a JSON line of the same rates (for scripts); returns that dict."""
  args, _ = cli.parse(argv, define_flags, __doc__)
  cores = len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    make_folder(root, args.images)
    source = streamed.FolderSource(str(root), "train")
    size_kb = np.mean([pathlib.Path(p).stat().st_size for p in source.paths]) / 1024
    baseline = lambda b, s: {"image": augment.quantize(tf.image.resize_with_crop_or_pad(
        augment.resize_shorter_side(augment.decode(b), 256), 224, 224))}
    train = lambda function: streamed.train_stream(source, args.batch, function, seed=0)
    # Eval views ride the endless train stream (same reading, no per-pass rebuild of the dataset).
    evaluate = lambda views: train(lambda b, s: {"image": augment.quantize(views(b))})
    pipelines = {
        "baseline: decode, resize 256, center 224": (train, baseline),
        "train: paper (scale 256-480, crop, flip, PCA)": (train, functools.partial(augment.paper_train, antialias=False)),
        "train: inception (random-resized crop, flip)": (train, functools.partial(augment.inception_train, antialias=False)),
        "train: paper, antialiased resize": (train, augment.paper_train),
        "train: inception, antialiased resize": (train, augment.inception_train),
        "train: fast (FFCV) recipe at 160 px": (train, functools.partial(augment.inception_train, crop=160)),
        "train: fast (FFCV) recipe at 192 px": (train, functools.partial(augment.inception_train, crop=192)),
        "train: torchvision recipe at 176 px (+ TA-Wide, erasing)": (train, functools.partial(
            augment.inception_train, crop=176, auto_augment=autoaugment.policy("ta_wide"), random_erasing=0.1)),
        "train: RSB A3 at 160 px (+ rand-m6-mstd0.5-inc1)": (train, functools.partial(
            augment.inception_train, crop=160, auto_augment=autoaugment.policy("rand-m6-mstd0.5-inc1"))),
        "train: RSB A1/A2 at 224 px (+ rand-m7-mstd0.5-inc1)": (train, functools.partial(
            augment.inception_train, crop=224, auto_augment=autoaugment.policy("rand-m7-mstd0.5-inc1"))),
        "eval: center crop": (evaluate, streamed.views_function("center", 256, 224)),
        "eval: fast (FFCV) recipe, resize 293, center 256": (evaluate, streamed.views_function("center", 293, 256)),
        "eval: 10-crop (10 views an image)": (evaluate, streamed.views_function("10crop", 256, 224)),
        "eval: multi-scale (5 scales x 2 flips)": (
            evaluate, streamed.views_function("multiscale", 0, 0, (224, 256, 384, 480, 640))),
    }
    print(f"{len(source)} JPEGs of 500x375, mean {size_kb:.0f} KB; {cores} CPU cores; batch {args.batch}")
    width = max(map(len, pipelines))
    print(f"{'pipeline':{width}s} {'images/s':>10s} {'per core':>10s} {'vs baseline':>12s}")
    base, rates = None, {}
    for name, (make, function) in pipelines.items():
      images_per_s = rates[name] = rate(make(function), args.batches, args.batch)
      base = base or images_per_s
      print(f"{name:{width}s} {images_per_s:10.0f} {images_per_s / cores:10.0f} {images_per_s / base:11.2f}x")
    torch_side = torchvision_rates(args.torch_python, root / "train", args.batch, args.batches, cores) if (
        args.torch_python) else None
  result = {"cores": cores, "batch": args.batch, "images_per_s": rates}
  if torch_side:
    print(f"torchvision {torch_side['torchvision']} DataLoader, {cores} worker processes:")
    for name, images_per_s in torch_side["images_per_s"].items():
      print(f"{name:{width}s} {images_per_s:10.0f} {images_per_s / cores:10.0f} {images_per_s / base:11.2f}x")
    ours = {"train: RandomResizedCrop 224 + flip": rates["train: inception (random-resized crop, flip)"],
            "train: torchvision recipe at 176 (+ TA-Wide, erasing)":
                rates["train: torchvision recipe at 176 px (+ TA-Wide, erasing)"],
            "eval: Resize 256 + CenterCrop 224": rates["eval: center crop"]}
    ratios = {name: ours[name] / rate_ for name, rate_ in torch_side["images_per_s"].items()}
    crop = "train: RandomResizedCrop 224 + flip"  # torchvision's resize is antialiased; ours is by default not
    ratios[f"{crop}, ours antialiased too"] = rates["train: inception, antialiased resize"] / torch_side["images_per_s"][crop]
    result["torchvision"] = {**torch_side, "ours_over_torchvision": ratios}
    for name, ratio in result["torchvision"]["ours_over_torchvision"].items():
      print(f"ours / torchvision, {name}: {ratio:.2f}x")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  cli.run(main)
