"""The augmentations and eval views: sizes, crops inside the image, flip rate, PCA noise scale."""


import numpy as np
import tensorflow as tf

from resnet_jax.data import augment
from resnet_jax.data.in_memory import IMAGENET_MEAN, IMAGENET_STD, Normalizer


def seed(i):
  return tf.constant([7, i], tf.int64)


def encoded(image: np.ndarray, kind="png") -> tf.Tensor:
  return tf.io.encode_png(image) if kind == "png" else tf.io.encode_jpeg(image, quality=95)


def gradient_image(height, width):
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows * 7 % 256, cols * 11 % 256, (rows * cols) % 256], -1).astype(np.uint8)


def find_window(big: np.ndarray, small: np.ndarray):
  """(top, left, flipped) where `small` equals a window of `big` (or its mirror), else None."""
  h, w = small.shape[:2]
  for flipped in (False, True):
    target = small[:, ::-1] if flipped else small
    for top in range(big.shape[0] - h + 1):
      for left in range(big.shape[1] - w + 1):
        if np.allclose(big[top:top + h, left:left + w], target, atol=1e-3):
          return top, left, flipped
  return None


def test_scale_augmentation_covers_256_to_480():
  sizes = np.array([int(augment.random_scale(seed(i), (256, 480))) for i in range(3000)])
  assert sizes.min() == 256 and sizes.max() == 480
  assert 350 < sizes.mean() < 385  # uniform: 368


def test_paper_crop_is_the_window_that_scaling_maps_onto_it_inside_the_image_and_flips_about_half():
  """The crop is a crop/S-of-the-shorter-side square of the original, resized: what cropping the
  image rescaled to shorter side S gives. Flips: 40 fair coins land in [10, 30] with p > 0.998."""
  image = gradient_image(60, 80)
  flips, corners = 0, set()
  for i in range(40):
    out = augment.paper_train(encoded(image), seed(i), crop=8, scale=(10, 14), lighting_std=0.0)["image"].numpy()
    assert out.shape == (8, 8, 3)
    size_seed, crop_seed = augment.split_seed(seed(i), 4)[:2]
    shorter_side = int(augment.random_scale(size_seed, (10, 14)))
    top, left, height, width = augment.scale_crop_window(tf.constant([60, 80, 3]), crop_seed, 8, shorter_side).numpy()
    assert height == width == round(8 * 60 / shorter_side)
    assert 0 <= top <= 60 - height and 0 <= left <= 80 - width
    resized = tf.image.resize(image[top:top + height, left:left + width].astype(np.float32), [8, 8], antialias=True)
    expected = augment.quantize(resized).numpy()  # rounded to uint8, as torchvision's PIL resize
    assert out.dtype == np.uint8 and np.abs(expected - resized.numpy()).max() <= 0.5
    flipped = not np.array_equal(out, expected)
    np.testing.assert_array_equal(out, expected[:, ::-1] if flipped else expected)
    flips += flipped
    corners.add((top, left))
  assert 10 <= flips <= 30
  assert len(corners) > 20  # the position is random too


def test_paper_crop_of_a_jpeg_decodes_only_the_window(monkeypatch):
  """The whole-image decoders are made to fail and the windowed one is watched: the crop must come
  from decoding just its window (pixels alone could not tell: a full decode then a crop gives the same)."""
  image = gradient_image(375, 500)
  jpeg = encoded(image, "jpeg")
  decoded_windows = []
  decode_and_crop = tf.image.decode_and_crop_jpeg

  def watched_decode_and_crop(contents, crop_window, **kwargs):
    decoded_windows.append(crop_window.numpy().tolist())
    return decode_and_crop(contents, crop_window, **kwargs)

  def whole_image_decoder(*args, **kwargs):
    raise AssertionError("the whole image was decoded")
  monkeypatch.setattr(tf.image, "decode_and_crop_jpeg", watched_decode_and_crop)
  monkeypatch.setattr(tf.io, "decode_jpeg", whole_image_decoder)
  monkeypatch.setattr(tf.io, "decode_image", whole_image_decoder)
  out = augment.paper_train(jpeg, seed(3), lighting_std=0.0)["image"].numpy()
  monkeypatch.undo()
  assert out.shape == (224, 224, 3)
  size_seed, crop_seed = augment.split_seed(seed(3), 4)[:2]
  window = augment.scale_crop_window(tf.constant([375, 500, 3]), crop_seed, 224, augment.random_scale(size_seed, (256, 480)))
  top, left, height, width = window.numpy()
  assert decoded_windows == [[top, left, height, width]] and height < 375
  # The same window cut from the fully decoded JPEG gives the same pixels.
  full = augment.decode(jpeg).numpy()[top:top + height, left:left + width].astype(np.float32)
  expected = tf.image.resize(full, [224, 224], antialias=True).numpy()
  assert np.abs(out - expected).mean() < 1.0 or np.abs(out - expected[:, ::-1]).mean() < 1.0


def test_inception_window_lies_inside_with_the_configured_area_and_aspect():
  shape = tf.constant([375, 500, 3])
  areas, aspects = [], []
  for i in range(300):
    top, left, height, width = augment.inception_window(shape, seed(i), (0.08, 1.0), (3 / 4, 4 / 3)).numpy()
    assert top >= 0 and left >= 0 and top + height <= 375 and left + width <= 500
    areas.append(height * width / (375 * 500))
    aspects.append(width / height)
  assert min(areas) >= 0.075 and max(areas) <= 1.0 and np.median(areas) > 0.3
  assert min(aspects) > 0.72 and max(aspects) < 1.39
  out = augment.inception_train(encoded(gradient_image(375, 500), "jpeg"), seed(1))["image"]
  assert out.shape == (224, 224, 3) and out.dtype == tf.uint8


def test_pca_lighting_noise_has_mean_zero_and_the_configured_scale_along_each_eigenvector():
  shifts = np.array([augment.lighting_shift(seed(i), 0.1).numpy() for i in range(4000)])
  eigenvectors = np.array(augment.IMAGENET_EIGENVECTORS)
  coefficients = np.linalg.solve(eigenvectors, shifts.T).T / (np.array(augment.IMAGENET_EIGENVALUES) * 255)
  np.testing.assert_allclose(coefficients.mean(0), 0, atol=0.01)
  np.testing.assert_allclose(coefficients.std(0), 0.1, rtol=0.06)
  # The paper augmentation carries its image's shift; the device adds it to every pixel, then normalises.
  fields = augment.paper_train(encoded(gradient_image(60, 80)), seed(3), crop=8, scale=(10, 14), lighting_std=0.1)
  np.testing.assert_array_equal(fields["lighting"], augment.lighting_shift(augment.split_seed(seed(3), 4)[3], 0.1))
  images, shift = fields["image"].numpy()[None], fields["lighting"].numpy()[None]
  normalized = np.asarray(Normalizer.imagenet()(images, shift))
  expected = (images + shift[:, None, None, :] - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
  np.testing.assert_allclose(normalized, expected, rtol=1e-6, atol=1e-5)


def test_ten_views_are_the_four_corners_the_center_and_their_mirrors():
  image = gradient_image(20, 30)
  views = augment.ten_crop_views(encoded(image), resize=20, crop=16).numpy()
  assert views.shape == (10, 16, 16, 3)
  full = image.astype(np.float32)  # shorter side already 20: no resampling
  expected = [full[:16, :16], full[:16, -16:], full[-16:, :16], full[-16:, -16:], full[2:18, 7:23]]
  for k, crop in enumerate(expected):
    np.testing.assert_allclose(views[k], crop, atol=1e-3)
    np.testing.assert_allclose(views[k + 5], crop[:, ::-1], atol=1e-3)
  center = augment.center_view(encoded(image), resize=20, crop=16).numpy()
  np.testing.assert_allclose(center[0], expected[4], atol=1e-3)


def test_resize_keeps_the_aspect_and_sets_the_shorter_side():
  out = augment.resize_shorter_side(tf.zeros((375, 500, 3), tf.uint8), 256)
  assert tuple(out.shape) == (256, 341, 3)
  out = augment.resize_shorter_side(tf.zeros((500, 375, 3), tf.uint8), 480)
  assert tuple(out.shape) == (640, 480, 3)


def test_multiscale_views_are_the_whole_image_at_each_scale_and_its_mirror():
  image = gradient_image(30, 40)  # 4:3 landscape: bucket 4/3 exactly
  views = augment.multiscale_views(encoded(image), scales=(15, 30))
  assert [tuple(v.shape) for v in views] == [(2, 15, 20, 3), (2, 30, 40, 3)]
  np.testing.assert_allclose(views[1][0], image, atol=1e-3)  # scale 30 is the image itself
  np.testing.assert_allclose(views[1][1], image[:, ::-1], atol=1e-3)
  expected = tf.image.resize(image.astype(np.float32), [15, 20], antialias=True).numpy()
  np.testing.assert_allclose(views[0][0], expected, atol=1e-3)
  portrait = augment.multiscale_views(encoded(gradient_image(50, 33)), scales=(224,))  # 2:3 portrait
  assert tuple(portrait[0].shape) == (2, 336, 224, 3)


def test_aspect_buckets_are_the_nearest_ratio_and_stretch_at_most_9_percent():
  heights, widths = np.meshgrid(np.arange(100, 600, 7), np.arange(100, 600, 7), indexing="ij")
  buckets = augment.aspect_bucket(heights.ravel(), widths.ravel()).numpy()
  aspects = np.array(augment.BUCKET_ASPECTS)[buckets]
  ratios = widths.ravel() / heights.ravel()
  inside = (ratios >= 9 / 16) & (ratios <= 16 / 9)
  assert np.abs(np.log(aspects / ratios))[inside].max() < np.log(1.09)
  assert np.all(np.abs(np.log(aspects / ratios)) <= np.abs(np.log(np.array(augment.BUCKET_ASPECTS)[:, None] / ratios)).min(0) + 1e-9)
