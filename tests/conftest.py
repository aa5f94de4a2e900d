"""Shared test set-up."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import resnet_jax  # noqa: F401  (first: applies the jaxlib CPU work-around before JAX starts)

# torchvision imports triton (torch's CUDA builds), whose native library crashes the process if loaded
# after TensorFlow's (torch 2.14.1, tensorflow 2.21): where torchvision is installed, it loads first.
if importlib.util.find_spec("torchvision"):
  import torchvision  # noqa: F401

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def pytest_terminal_summary(terminalreporter):
  """One line saying how many PyTorch comparisons did not run, and how to run them."""
  skipped = [report for report in terminalreporter.stats.get("skipped", [])
             if re.search("could not import '(torch|timm)", str(report.longrepr))]
  if skipped:
    terminalreporter.write_line(
        f"torch, torchvision or timm is not installed: {len(skipped)} tests comparing with them were skipped; "
        f"`make test-torch` installs them in the venv and runs them")


# `make test-torch` sets this: there a comparison that cannot import torch, torchvision or timm is a failure
# (a broken install), not a skip.
REQUIRE_TORCH = os.environ.get("RESNET_JAX_REQUIRE_TORCH") == "1"


@pytest.fixture(autouse=True)
def _torch_importable_where_required(request):
  """Under `make test-torch`, a torch-marked test fails at set-up when torch, torchvision or timm does not
  import."""
  if REQUIRE_TORCH and request.node.get_closest_marker("torch"):
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def load_config(name: str, argument: str | None = None):
  """configs/<name>.py's config, as `--config=configs/<name>.py:<argument>` gives it."""
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument)


def run_python(code: str, env_updates: dict[str, str | None] | None = None, timeout: float = 300):
  """Runs `code` in a fresh Python process (a clean JAX start) and returns the finished process."""
  env = dict(os.environ)
  for key, value in (env_updates or {}).items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  return subprocess.run(
      [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
  )


@pytest.fixture(scope="session")
def tiny_experiment():
  """ResNet-8 on the bundled digits (batch 32, eval batch 96), set up but not trained."""
  from resnet_jax.experiment import setup
  config = load_config("mnist_demo", "depth=8,batch=32,steps=10")
  config.eval_batch_size = 96
  return setup(config)


@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory):
  """A tiny ILSVRC2012 in both layouts users keep it in, from the same JPEGs:

  - `tars`: ILSVRC2012_img_train.tar (a <synset>.tar per class) and ILSVRC2012_img_val.tar;
  - `tfds`: the tfds imagenet2012 build of those tars (array_record), made offline by our prepare;
  - `folder`: folder/train/<synset>/*.JPEG for all 1,000 synsets (3 of them holding images) and a
    flat folder/val/ with `val_labels`, the ILSVRC2012 validation labels.
  Train images of class k (k = 0, 1, 2) have pixel values near 80 k.
  """
  import io
  import tarfile

  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from resnet_jax.data.prepare import prepare

  root = tmp_path_factory.mktemp("fake_imagenet")
  tfds_files = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
  synsets = (tfds_files / "labels.txt").read_text().split()
  val_synsets = (tfds_files / "validation_labels.txt").read_text().split()
  rng = np.random.default_rng(0)

  def jpeg(value, height, width):
    image = np.clip(value + rng.integers(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(image, quality=98).numpy()

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  (root / "tars").mkdir()
  for synset in synsets:
    (root / "folder" / "train" / synset).mkdir(parents=True)
  with tarfile.open(root / "tars" / "ILSVRC2012_img_train.tar", "w") as outer:
    for k, synset in enumerate(synsets[:3]):
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(4):
          data = jpeg(80 * k, 30 + 5 * i, 40)
          add(inner, f"{synset}_{i}.JPEG", data)
          (root / "folder" / "train" / synset / f"{synset}_{i}.JPEG").write_bytes(data)
      add(outer, f"{synset}.tar", inner_bytes.getvalue())
  (root / "folder" / "val").mkdir()
  lines = []
  with tarfile.open(root / "tars" / "ILSVRC2012_img_val.tar", "w") as tar:
    for i in range(5):
      name, data = f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg(40 * i, 36, 48)
      add(tar, name, data)
      (root / "folder" / "val" / name).write_bytes(data)
      lines.append(f"{name} {val_synsets[i]}")
  (root / "folder" / "val_labels.txt").write_text("\n".join(lines) + "\n")
  prepare("imagenet2012", str(root / "tfds"), str(root / "tars"))
  return root
