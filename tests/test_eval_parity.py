"""Our eval views beside torchvision's Resize(256) + CenterCrop(224) and TenCrop(224), on real
photographs that installed packages ship (scikit-learn's two, matplotlib's Grace Hopper) and crops of
them at other sizes and aspects (issue 15, item 3).

The reference is torchvision's transforms when torchvision imports, else their arithmetic written out
below (checked equal to torchvision 0.29.1 on these photographs): PIL decoding, a bilinear
antialiased resize with the longer side truncated, crops at round((size - crop) / 2).
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


def torchvision_reference(path: pathlib.Path, ten_crop: bool) -> np.ndarray:
  image = Image.open(path).convert("RGB")
  try:
    from torchvision import transforms
  except ImportError:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(RESIZE * long / short)
    image = image.resize((RESIZE, new_long) if width <= height else (new_long, RESIZE), Image.BILINEAR)
    width, height = image.size

    def five(im):
      boxes = [(0, 0), (width - CROP, 0), (0, height - CROP), (width - CROP, height - CROP),
               (int(round((width - CROP) / 2.0)), int(round((height - CROP) / 2.0)))]
      return [np.asarray(im.crop((x, y, x + CROP, y + CROP))) for x, y in boxes]
    if not ten_crop:
      return np.stack(five(image)[4:])
    return np.stack(five(image) + five(image.transpose(Image.FLIP_LEFT_RIGHT)))
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
def test_pil_resampler_views_are_torchvisions(photos, ten_crop):
  for path in photos:
    np.testing.assert_array_equal(ours(path, ten_crop, "pil"), torchvision_reference(path, ten_crop))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_tensorflow_views_stay_near_torchvisions(photos, ten_crop):
  """The default views are torchvision's crops of the image resized with TensorFlow's antialiasing
  filter, not PIL's: close, not equal. The bounds hold the measured values with a margin."""
  order = TORCHVISION_ORDER if ten_crop else [0]
  differences = [normalised_difference(ours(p, ten_crop, "tensorflow")[order], torchvision_reference(p, ten_crop))
                 for p in photos]
  means = [d.mean() for d in differences]
  print(f"\n{'10crop' if ten_crop else 'center'}: after normalisation, mean |ours - torchvision| "
        f"{np.mean(means):.3f} (per photo {min(means):.3f}-{max(means):.3f}), max {max(d.max() for d in differences):.2f}")
  assert np.mean(means) < 0.01 and max(means) < 0.03
  assert all(d.shape[0] == (10 if ten_crop else 1) for d in differences)


@pytest.mark.torch
@pytest.mark.parametrize("ten_crop", [False, True])
def test_a_converted_network_scores_our_views_as_torch_scores_torchvisions(photos, ten_crop):
  """ResNet-50 with torchvision's layout, random weights and BN statistics, converted: its top-1 on
  our views against torch's on torchvision's (the mean of the softmax over the 10 crops)."""
  import jax
  from test_convert import our_logits, state_dict_arrays, torch_logits, torch_resnet

  from resnet_jax.data.in_memory import Normalizer
  from resnet_jax.tools.convert import convert_state_dict
  model = torch_resnet("resnet50")
  weights = convert_state_dict(state_dict_arrays(model), "resnet50")
  normalize = Normalizer.imagenet()

  def top1(logits_fn, views):
    probabilities = jax.nn.softmax(logits_fn(np.asarray(normalize(views))), axis=-1)
    return int(np.argmax(np.asarray(probabilities).mean(0)))

  agree = {"tensorflow": 0, "pil": 0}
  for path in photos:
    reference = top1(lambda x: torch_logits(model, x), torchvision_reference(path, ten_crop))
    for resampler in agree:
      agree[resampler] += top1(lambda x: our_logits("resnet50", weights, x), ours(path, ten_crop, resampler)) == reference
  print(f"\n{'10crop' if ten_crop else 'center'} top-1 agreement with torch on torchvision's views, of "
        f"{len(photos)} photos: {agree}")
  assert agree["pil"] == len(photos)
  assert agree["tensorflow"] >= len(photos) - 2
