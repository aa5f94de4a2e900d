"""Host augmentations of the torchvision and RSB recipes (resnet_jax/data/autoaugment.py): every op
of TrivialAugmentWide and RandAugment against the reference on real photographs (scikit-learn's and
matplotlib's), at every magnitude bin and sign: torchvision's _apply_op and timm's op functions in
the torch-marked tests, PIL's operations (which both call) in `make test`. Then the policies' draws,
random erasing, and the ops inside the train pipeline."""

import pathlib

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from test_eval_parity import shipped_photos

from resnet_jax.data import augment, autoaugment
from resnet_jax.data.tf_on_cpu import tf
from resnet_jax.errors import ConfigError

TIMM_FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean, min(255, round(255 x mean))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
  """The three photographs, shrunk to 96 x 72 / 72 x 96 / 80 x 80 views (landscape, portrait, square)."""
  sizes = [(96, 72), (72, 96), (80, 80)]
  return [Image.open(path).convert("RGB").resize(size, Image.BILINEAR) for path, size in zip(shipped_photos(), sizes)]


def ours(image: Image.Image, op) -> np.ndarray:
  return op(tf.constant(np.asarray(image), tf.float32)).numpy()


def difference(reference: Image.Image, mine: np.ndarray) -> np.ndarray:
  return np.abs(np.asarray(reference).astype(np.float32) - mine)


# (our op, PIL's, arguments): PIL's operations as torchvision's and timm's ops call them.
PIL_CASES = [
    (autoaugment.brightness, lambda im, f: ImageEnhance.Brightness(im).enhance(f), [0.01, 0.55, 1.0, 1.45, 1.99]),
    (autoaugment.color, lambda im, f: ImageEnhance.Color(im).enhance(f), [0.01, 0.55, 1.45, 1.99]),
    (autoaugment.contrast, lambda im, f: ImageEnhance.Contrast(im).enhance(f), [0.01, 0.55, 1.45, 1.99]),
    (autoaugment.sharpness, lambda im, f: ImageEnhance.Sharpness(im).enhance(f), [0.01, 0.55, 1.45, 1.99]),
    (autoaugment.posterize, ImageOps.posterize, [1, 2, 4, 6, 8]),
    (autoaugment.solarize, ImageOps.solarize, [0.0, 8.5, 128.0, 246.5, 255.0]),
    (autoaugment.solarize_add, lambda im, a: im.point([min(255, i + a) if i < 128 else i for i in range(256)] * 3),
     [0, 33, 110]),
    (lambda image, _: autoaugment.autocontrast(image), lambda im, _: ImageOps.autocontrast(im), [None]),
    (lambda image, _: autoaugment.equalize(image), lambda im, _: ImageOps.equalize(im), [None]),
    (lambda image, _: autoaugment.invert(image), lambda im, _: ImageOps.invert(im), [None]),
    (lambda image, m: autoaugment.shear_x(image, m, (0, 0, 0)),
     lambda im, m: im.transform(im.size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.BILINEAR), [-0.99, -0.3, 0.12, 0.99]),
    (lambda image, m: autoaugment.shear_y(image, m, TIMM_FILL),
     lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.BILINEAR, fillcolor=TIMM_FILL),
     [-0.5, 0.3]),
    (lambda image, d: autoaugment.translate(image, d, 0.0, (0, 0, 0)),
     lambda im, d: im.transform(im.size, Image.AFFINE, (1, 0, d, 0, 1, 0), Image.BILINEAR), [-32, -7.3, 5, 30.6]),
    (lambda image, d: autoaugment.rotate(image, d, (0, 0, 0)),
     lambda im, d: im.rotate(d, Image.BILINEAR), [-135, -90, -30, 4.5, 90, 121.5]),
]


@pytest.mark.parametrize("op,reference,arguments", PIL_CASES, ids=lambda case: getattr(case, "__name__", None))
def test_each_op_gives_pils_pixels(photos, op, reference, arguments):
  """Exact, but rotations (autoaugment.affine: Pillow's fused multiply-add): measured 1 grey level
  on at most 0.02% of the pixels."""
  for photo in photos:
    for argument in arguments:
      off = difference(reference(photo, argument), ours(photo, lambda image: op(image, argument)))
      if op is PIL_CASES[-1][0]:
        assert off.max() <= 1 and (off > 0).mean() < 1e-3, (argument, off.max(), (off > 0).mean())
      else:
        assert off.max() == 0, (argument, off.max(), (off > 0).mean())


@pytest.mark.torch
@pytest.mark.parametrize("wide", [True, False], ids=["trivial_augment_wide", "rand_augment"])
def test_every_torchvision_op_at_every_bin_and_sign_gives_torchvisions_pixels(photos, wide):
  """torchvision's own op table and _apply_op (bilinear, black fill, as its recipe sets them) on
  each photo: the magnitudes equal its table's (to float32's last place), and at its magnitudes the
  pixels are equal, but Rotate's (1 grey level on under 0.1%: see test_each_op_gives_pils_pixels)."""
  pytest.importorskip("torchvision")
  import torch
  from torchvision.transforms import InterpolationMode
  from torchvision.transforms import autoaugment as reference
  worst = {}
  for photo in photos:
    width, height = photo.size
    space = (reference.TrivialAugmentWide()._augmentation_space(31) if wide else
             reference.RandAugment()._augmentation_space(31, (height, width)))
    mine = autoaugment.torchvision_ops(31, wide, height, width)
    assert list(mine) == list(space)
    for name, (magnitudes, signed) in space.items():
      assert signed == mine[name][1]
      values = magnitudes.numpy() if magnitudes.ndim else None
      if values is not None:
        # torch.linspace's float32 steps differ from numpy's by one unit in the last place at some bins.
        np.testing.assert_allclose(mine[name][0], values.astype(mine[name][0].dtype), rtol=1.2e-7, atol=0,
                                   err_msg=name)
      for value in (values if values is not None else [0.0]):
        for sign in ((1.0, -1.0) if signed else (1.0,)):
          magnitude = float(torch.tensor(value).item()) * sign
          theirs = reference._apply_op(photo, name, magnitude, InterpolationMode.BILINEAR, None)
          off = difference(theirs, ours(photo, lambda image: autoaugment.torchvision_op(
              name, image, tf.constant(magnitude, tf.float64), (0, 0, 0))))
          worst[name] = max(worst.get(name, (0, 0)), (off.max(), (off > 0).mean()))
  assert {name for name, (largest, _) in worst.items() if largest} <= {"Rotate"}, worst
  assert worst["Rotate"][0] <= 1 and worst["Rotate"][1] < 1e-3, worst["Rotate"]


@pytest.mark.torch
def test_every_timm_increasing_op_at_every_level_and_sign_gives_timms_pixels(photos):
  """timm's LEVEL_TO_ARG and op functions (bilinear, timm's mean fill) at levels 0 to 10 in steps of
  0.5, both signs: the arguments equal timm's and the pixels are equal, but Rotate's (as above). Posterize at level 10 (0
  bits) is left out: Pillow 13 refuses it; ours keeps timm's older meaning, a black image."""
  import random
  reference = pytest.importorskip("timm.data.auto_augment")
  hparams = dict(img_mean=TIMM_FILL, translate_pct=0.45)
  original, worst = random.random, {}
  try:
    for photo in photos:
      for name in autoaugment.TIMM_INCREASING_OPS:
        for level in np.arange(0, 10.5, 0.5):
          for negate in (False, True):
            random.random = (lambda: 0.9) if negate else (lambda: 0.1)  # timm negates when random() > 0.5
            to_argument = reference.LEVEL_TO_ARG[name]
            arguments = to_argument(float(level), hparams) if to_argument else ()
            argument = autoaugment.timm_argument(name, tf.constant(level, tf.float64), tf.constant(negate))
            if arguments:
              assert float(argument) == arguments[0], (name, level, negate)
            if name == "PosterizeIncreasing" and level == 10:
              continue
            theirs = reference.NAME_TO_OP[name](photo, *arguments, fillcolor=TIMM_FILL, resample=Image.BILINEAR)
            off = difference(theirs, ours(photo, lambda image: autoaugment.timm_op(name, image, argument, TIMM_FILL)))
            worst[name] = max(worst.get(name, (0, 0)), (off.max(), (off > 0).mean()))
  finally:
    random.random = original
  assert {name for name, (largest, _) in worst.items() if largest} <= {"Rotate"}, worst
  assert worst["Rotate"][0] <= 1 and worst["Rotate"][1] < 1e-3, worst["Rotate"]


@pytest.mark.torch
def test_random_erasing_of_a_drawn_box_is_torchvisions():
  """Given the box, torchvision's erase (value 0 on the normalised image) and ours are equal."""
  pytest.importorskip("torchvision")
  import torch
  from torchvision.transforms import functional as F

  from resnet_jax import mixing
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 20, 24, 3)).astype(np.float32)
  boxes = np.array([[2, 3, 10, 6], [0, 0, 0, 0], [19, 20, 1, 4]], np.int32)
  erased = np.asarray(mixing.erase(images, boxes))
  for image, (top, left, height, width), mine in zip(images, boxes, erased):
    if height:
      theirs = F.erase(torch.from_numpy(image.transpose(2, 0, 1).copy()), int(top), int(left), int(height), int(width),
                       torch.tensor(0.0)).numpy().transpose(1, 2, 0)
    else:
      theirs = image
    np.testing.assert_array_equal(mine, theirs)


def each_seed(draw, seeds: tf.Tensor, dtype) -> np.ndarray:
  """draw(seed) for each seed, in one traced function (eagerly, 2,000 draws take a minute)."""
  return tf.function(lambda s: tf.map_fn(draw, s, fn_output_signature=dtype))(seeds).numpy()


def test_erasing_boxes_follow_torchvisions_rule():
  """Over 2,000 draws at p = 0.5: about half erase; each box fits, covers 2-33% of the area at an
  aspect in [0.3, 3.3] (within rounding), and its corner is uniform over the places it fits."""
  height, width = 48, 64
  seeds = tf.random.experimental.stateless_split(tf.constant([7, 0], tf.int64), 2000)
  boxes = each_seed(lambda seed: autoaugment.erasing_box(seed, height, width, 0.5), seeds, tf.int32)
  erased = boxes[boxes[:, 2] > 0]
  assert 0.46 < len(erased) / len(boxes) < 0.54
  top, left, h, w = erased.T
  assert (top + h <= height).all() and (left + w <= width).all() and (h < height).all() and (w < width).all()
  area = h * w / (height * width)
  assert area.min() > 0.015 and area.max() < 0.36
  assert (h / w).min() > 0.3 * 0.7 and (h / w).max() < 3.3 / 0.7
  assert abs(np.mean(top / (height - h + 1)) - 0.5) < 0.05


def test_trivial_augment_draws_each_op_and_bin_uniformly_and_applies_what_it_drew(photos):
  """1,400 draws: each of the 14 ops 4-10% of the time (1/14 = 7.1%), bins uniform over 0-30 (mean
  15), half negated; and the policy's output is the drawn op at the drawn signed magnitude."""
  seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), 1400)
  draws = each_seed(lambda seed: tf.stack([tf.cast(v, tf.int32) for v in autoaugment.trivial_augment_draw(seed, 14, 31)]),
                    seeds, tf.int32)
  shares = np.bincount(draws[:, 0], minlength=14) / len(draws)
  assert shares.min() > 0.04 and shares.max() < 0.10, shares
  assert abs(draws[:, 1].mean() - 15) < 1 and draws[:, 1].max() == 30 and abs(draws[:, 2].mean() - 0.5) < 0.05
  ops = autoaugment.torchvision_ops(31, wide=True)
  image = tf.constant(np.asarray(photos[0]), tf.float32)
  for seed, (op, level, negate) in zip(seeds[:40], draws[:40]):
    name, (magnitudes, signed) = list(ops.items())[op]
    magnitude = float(magnitudes[level]) * (-1 if negate and signed else 1) if magnitudes is not None else 0.0
    expected = autoaugment.torchvision_op(name, image, tf.constant(magnitude, tf.float64), (0, 0, 0))
    np.testing.assert_array_equal(autoaugment.trivial_augment_wide(image, seed), expected, err_msg=name)


def test_timm_rand_augment_applies_about_half_its_layers(photos):
  """rand-m9-mstd0.5-inc1, one layer: about half the images change (p = 0.5; a few ops leave some
  images as they are, e.g. AutoContrast on a full-range one)."""
  image = tf.constant(np.asarray(photos[1]), tf.float32)
  policy = autoaugment.policy("rand-m9-n1-mstd0.5-inc1")
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 300)
  changed = np.mean([bool(tf.reduce_any(policy(image, seed) != image)) for seed in seeds])
  assert 0.35 < changed < 0.55, changed


@pytest.mark.parametrize("name,message", [
    ("autoaugment", "unknown data.auto_augment 'autoaugment'"),
    ("rand-m9-mstd0.5", "only timm's increasing op set"),
    ("rand-m9-x3-inc1", "unknown key 'x'"),
    ("ra-m40", "a bin in \\[0, 30\\]"),
])
def test_unknown_or_unbuilt_policies_are_refused_naming_the_valid_ones(name, message):
  with pytest.raises(ConfigError, match=message):
    autoaugment.policy(name)


def test_the_train_view_gets_the_policy_and_an_erasing_box_deterministically_from_its_seed():
  photo = pathlib.Path(shipped_photos()[0]).read_bytes()
  seed = tf.constant([5, 17], tf.int64)
  plain = augment.inception_train(photo, seed, crop=64)
  with_policy = augment.inception_train(photo, seed, crop=64, auto_augment=autoaugment.policy("ta_wide"),
                                        random_erasing=1.0)
  again = augment.inception_train(photo, seed, crop=64, auto_augment=autoaugment.policy("ta_wide"),
                                  random_erasing=1.0)
  assert set(plain) == {"image"} and set(with_policy) == {"image", "erase"}
  assert with_policy["image"].dtype == tf.uint8 and with_policy["image"].shape == (64, 64, 3)
  np.testing.assert_array_equal(with_policy["image"], again["image"])
  np.testing.assert_array_equal(with_policy["erase"], again["erase"])
  top, left, height, width = with_policy["erase"].numpy()
  assert 0.02 * 64 * 64 * 0.9 <= height * width <= 0.33 * 64 * 64 * 1.1 and top + height <= 64 and left + width <= 64
  # The policy runs on the crop (and flip) the plain pipeline makes, with the example's folded seed.
  policy_seed = tf.random.experimental.stateless_fold_in(seed, 1)
  expected = autoaugment.trivial_augment_wide(tf.cast(plain["image"], tf.float32), policy_seed)
  np.testing.assert_array_equal(with_policy["image"], tf.cast(expected, tf.uint8))
