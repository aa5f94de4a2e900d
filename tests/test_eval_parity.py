"""Our eval views beside torchvision's Resize(256) + CenterCrop(224) and TenCrop(224), on real
photographs that installed packages ship (scikit-learn's two, matplotlib's Grace Hopper) and crops of
them at other sizes and aspects (issue 15, item 3).

Two references: torchvision's transforms themselves, in the torch-marked tests (`make test-torch`
installs torchvision and fails them if it does not import), and for `make test` their arithmetic
written out (PIL decoding, a bilinear antialiased resize with the longer side truncated, crops at
round((size - crop) / 2)); `make test-torch` checks our PIL views equal torchvision's own.
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from resnet_jax.data import augment
from resnet_jax.data.in_memory import IMAGENET_STD

RESIZE, CROP = 256, 224


def shipped_photos() -> list[pathlib.Path]:
  import matplotlib
  import sklearn
  return [pathlib.Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
          pathlib.Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
          pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[pathlib.Path]:
  """The three photographs and 9 crops of them (portrait, landscape, square; 280-500 px), as JPEG and PNG."""
  folder = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  originals = shipped_photos()
  paths = list(originals)
  for i, path in enumerate(originals):
    image = Image.open(path).convert("RGB")
    for j, (width, height) in enumerate([(280, 420), (500, 300), (333, 333)]):
      left, top = rng.integers(0, image.width - width + 1), rng.integers(0, image.height - height + 1)
      crop = image.crop((left, top, left + width, top + height))
      paths.append(folder / f"{i}_{j}.{'png' if j == 2 else 'jpg'}")
      crop.save(paths[-1], quality=90)
  return paths


def written_out_reference(path: pathlib.Path, ten_crop: bool) -> np.ndarray:
  """torchvision's Resize(256) + CenterCrop/TenCrop(224) as arithmetic, for `make test` without torchvision."""
  image = Image.open(path).convert("RGB")
  width, height = image.size
  new_long = int(RESIZE * max(width, height) / min(width, height))
  image = image.resize((RESIZE, new_long) if width <= height else (new_long, RESIZE), Image.BILINEAR)
  width, height = image.size

  def five(im):
    boxes = [(0, 0), (width - CROP, 0), (0, height - CROP), (width - CROP, height - CROP),
             (int(round((width - CROP) / 2.0)), int(round((height - CROP) / 2.0)))]
    return [np.asarray(im.crop((x, y, x + CROP, y + CROP))) for x, y in boxes]
  if not ten_crop:
    return np.stack(five(image)[4:])
  return np.stack(five(image) + five(image.transpose(Image.FLIP_LEFT_RIGHT)))


def torchvision_reference(path: pathlib.Path, ten_crop: bool) -> np.ndarray:
  """torchvision's transforms themselves (torch-marked tests: `make test-torch` installs torchvision)."""
  transforms = pytest.importorskip("torchvision.transforms")
  image = Image.open(path).convert("RGB")
  if ten_crop:
    return np.stack([np.asarray(v) for v in transforms.Compose([transforms.Resize(RESIZE),
                                                                transforms.TenCrop(CROP)])(image)])
  return np.asarray(transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP)])(image))[None]


def ours(path: pathlib.Path, ten_crop: bool, resampler: str) -> np.ndarray:
  from resnet_jax.data.streamed import views_function
  views = views_function("10crop" if ten_crop else "center", RESIZE, CROP, resampler=resampler)
  return augment.quantize(views(tf.constant(path.read_bytes()))).numpy()


# torchvision's TenCrop mirrors the image before cropping, so its 6th view (the mirrored image's top
# left) is the mirror of our 2nd (the top right), and so on; the mean over the views is the same.
TORCHVISION_ORDER = [0, 1, 2, 3, 4, 6, 5, 8, 7, 9]


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """|a - b| after the ImageNet normalisation (in units of each channel's std)."""
  return np.abs(a.astype(np.float64) - b.astype(np.float64)) / np.array(IMAGENET_STD)


def test_jpegs_decode_to_pils_pixels(photos):
  """The accurate IDCT: TensorFlow's default fast one is up to 18 grey levels off on china.jpg."""
  for path in photos:
    if path.suffix == ".jpg":
      np.testing.assert_array_equal(augment.decode(tf.constant(path.read_bytes())).numpy(),
                                    np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_pil_resampler_views_are_the_written_out_arithmetic(photos, ten_crop):
  for path in photos:
    np.testing.assert_array_equal(ours(path, ten_crop, "pil"), written_out_reference(path, ten_crop))


@pytest.mark.torch
@pytest.mark.parametrize("ten_crop", [False, True])
def test_pil_resampler_views_are_torchvisions_own(photos, ten_crop):
  for path in photos:
    np.testing.assert_array_equal(ours(path, ten_crop, "pil"), torchvision_reference(path, ten_crop))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_tensorflow_views_stay_near_torchvisions(photos, ten_crop):
  """The default views are torchvision's crops of the image resized with TensorFlow's antialiasing
  filter, not PIL's: close, not equal. The bounds hold the measured values with a margin."""
  order = TORCHVISION_ORDER if ten_crop else [0]
  differences = [normalised_difference(ours(p, ten_crop, "tensorflow")[order], written_out_reference(p, ten_crop))
                 for p in photos]
  means = [d.mean() for d in differences]
  print(f"\n{'10crop' if ten_crop else 'center'}: after normalisation, mean |ours - torchvision| "
        f"{np.mean(means):.3f} (per photo {min(means):.3f}-{max(means):.3f}), max {max(d.max() for d in differences):.2f}")
  assert np.mean(means) < 0.01 and max(means) < 0.03
  assert all(d.shape[0] == (10 if ten_crop else 1) for d in differences)


def imagenet_normalised(views: np.ndarray) -> np.ndarray:
  from resnet_jax.data.in_memory import Normalizer
  return np.asarray(Normalizer.imagenet()(views))


@pytest.fixture(scope="module")
def calibrated_resnet50(photos):
  """torchvision's ResNet-50 (its layout, random weights) with BN statistics measured on the photos'
  center views. With random statistics the activations are not normalised and every photo gets the
  same class (measured: 785 for all 12), so no comparison of outputs could tell views apart."""
  torch = pytest.importorskip("torch")
  from test_convert import torch_resnet
  model = torch_resnet("resnet50")
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.reset_running_stats()
      module.momentum = None  # a cumulative average: the statistics of this one batch
  views = imagenet_normalised(np.concatenate([torchvision_reference(p, ten_crop=False) for p in photos]))
  with torch.no_grad():
    model.train()(torch.from_numpy(views.transpose(0, 3, 1, 2).copy()))
  return model.eval()


@pytest.mark.torch
@pytest.mark.parametrize("ten_crop", [False, True])
def test_a_converted_network_gives_torchs_outputs_on_our_views(photos, calibrated_resnet50, ten_crop):
  """The network converted: its logits (averaged over the views) on our views against torch's on
  torchvision's. PIL views: equal to float precision. TensorFlow views: per photo, the distance from
  torch's logits relative to the distance between torch's logits for this photo and the nearest other
  photo. Measured here: center 0.45 on average (at most 0.58), 10crop 0.33 (0.45); with the image
  resized to 248 instead of 256, 0.92 (1.06) and 0.69 (0.87). Top-1 agreement could not tell: with
  the 248 resize 8 of 12 photos still agree."""
  from test_convert import our_logits, state_dict_arrays, torch_logits

  from resnet_jax.tools.convert import convert_state_dict
  weights = convert_state_dict(state_dict_arrays(calibrated_resnet50), "resnet50")
  reference = {p: torch_logits(calibrated_resnet50, imagenet_normalised(torchvision_reference(p, ten_crop))).mean(0)
               for p in photos}
  ratios = []
  for path in photos:
    pil, tensorflow = (our_logits("resnet50", weights, imagenet_normalised(ours(path, ten_crop, resampler))).mean(0)
                       for resampler in ("pil", "tensorflow"))
    np.testing.assert_allclose(pil, reference[path], rtol=1e-4, atol=1e-4 * np.abs(reference[path]).max())
    nearest_other = min(np.linalg.norm(reference[q] - reference[path]) for q in photos if q != path)
    ratios.append(np.linalg.norm(tensorflow - reference[path]) / nearest_other)
  print(f"\n{'10crop' if ten_crop else 'center'}: TensorFlow views' logits from torch's on torchvision's, relative "
        f"to the nearest other photo's: mean {np.mean(ratios):.2f}, max {max(ratios):.2f}")
  assert np.mean(ratios) < 0.6 and max(ratios) < 0.75
