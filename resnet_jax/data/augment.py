"""Train augmentations and eval views, as TensorFlow ops on one example.

Randomness is stateless: every random op takes a seed derived from (run seed, step, position in
the global batch), so an example is augmented the same way on every run, after a resume and
whatever the number of processes.

Images come out float32 in [0, 255], HWC, 3 channels; `quantize` rounds them to the uint8 that
crosses to the devices, which normalise them (`in_memory.Normalizer`). A train augmentation returns
the example's fields: its image and, for the paper's, the PCA lighting shift, added on the device.
"""

import io
from collections.abc import Callable

import numpy as np

from resnet_jax.data import autoaugment
from resnet_jax.data.tf_on_cpu import tf

# Krizhevsky et al. 2012's "standard color augmentation": PCA of ImageNet's RGB pixels (on a 0-1
# scale; the values fb.resnet.torch uses).
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def split_seed(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, count))


# TensorFlow's default JPEG decoding uses libjpeg's fast integer IDCT, up to 18 grey levels from the
# accurate one that PIL (so torchvision) uses; with the accurate one the pixels are PIL's exactly.
JPEG_DCT = "INTEGER_ACCURATE"


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
  return tf.cond(tf.io.is_jpeg(image_bytes),
                 lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=JPEG_DCT),
                 lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))


def resize_shorter_side(image: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
  """Scales so that the shorter side is `size`, the longer one truncated as torchvision's Resize."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  size = tf.cast(size, tf.int32)
  new_shape = tf.where(height <= width, tf.stack([size, size * width // height]),
                       tf.stack([size * height // width, size]))
  return tf.image.resize(tf.cast(image, tf.float32), new_shape, antialias=True)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.image.stateless_random_flip_left_right(image, seed)


def lighting_shift(seed: tf.Tensor, std: float) -> tf.Tensor:
  """eigvec @ (alpha * eigval), alpha ~ N(0, std): the RGB shift (0-255 scale) that PCA lighting adds
  to every pixel of one image."""
  alpha = tf.random.stateless_normal([3], seed, stddev=std)
  eigenvectors = tf.constant(IMAGENET_EIGENVECTORS, tf.float32)
  return tf.linalg.matvec(eigenvectors, alpha * tf.constant(IMAGENET_EIGENVALUES)) * 255.0


def quantize(images: tf.Tensor | tuple[tf.Tensor, ...]) -> tf.Tensor | tuple[tf.Tensor, ...]:
  """Rounds resized images to uint8, as torchvision's PIL resize does: a quarter of float32's bytes
  to move to the devices (38.5 instead of 154 MB for 256 images of 224 px)."""
  return tf.nest.map_structure(lambda image: tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), images)


def random_scale(seed: tf.Tensor, scale: tuple[int, int]) -> tf.Tensor:
  """A shorter-side length drawn uniformly from the integers in [scale[0], scale[1]]."""
  return tf.random.stateless_uniform([], seed, scale[0], scale[1] + 1, dtype=tf.int32)


def covered_side(shape: tf.Tensor, crop: tf.Tensor | int, shorter_side: tf.Tensor | int) -> tf.Tensor:
  """The side, in original pixels, of the square that scaling the image to `shorter_side` maps
  onto a crop x crop view."""
  shorter = tf.minimum(shape[0], shape[1])
  side = tf.round(tf.cast(crop, tf.float32) * tf.cast(shorter, tf.float32) / tf.cast(shorter_side, tf.float32))
  return tf.clip_by_value(tf.cast(side, tf.int32), 1, shorter)


def scale_crop_window(shape: tf.Tensor, seed: tf.Tensor, crop: tf.Tensor | int, shorter_side: tf.Tensor) -> tf.Tensor:
  """(top, left, side, side) in original pixels of a random crop x crop window of the image scaled
  to `shorter_side`."""
  height, width = shape[0], shape[1]
  side = covered_side(shape, crop, shorter_side)
  top_seed, left_seed = split_seed(seed, 2)
  top = tf.random.stateless_uniform([], top_seed, 0, height - side + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], left_seed, 0, width - side + 1, dtype=tf.int32)
  return tf.stack([top, left, side, side])


def decode_window(image_bytes: tf.Tensor, window: tf.Tensor, size: tf.Tensor | int, antialias: bool = True) -> tf.Tensor:
  """The window (top, left, height, width) resized to size x size; a JPEG decodes only its part.

  antialias=False (plain bilinear) is 2x faster; it aliases a little when shrinking by over ~1.5x.
  """
  def jpeg():
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method=JPEG_DCT)

  def other():
    return tf.image.crop_to_bounding_box(decode(image_bytes), window[0], window[1], window[2], window[3])

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  return tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=antialias)


def image_shape(image_bytes: tf.Tensor) -> tf.Tensor:
  """(height, width, channels) read from the header for a JPEG, by decoding otherwise."""
  return tf.cond(tf.io.is_jpeg(image_bytes), lambda: tf.image.extract_jpeg_shape(image_bytes),
                 lambda: tf.shape(decode(image_bytes)))


def paper_train(
    image_bytes: tf.Tensor, seed: tf.Tensor, *, crop: tf.Tensor | int = 224, scale: tuple[int, int] = (256, 480),
    lighting_std: float = 0.1, antialias: bool = True,
) -> dict[str, tf.Tensor]:
  """Sec. 3.4: shorter side resized to a random length in [256, 480], a random crop, a flip, and
  PCA lighting noise (as the shift `lighting`, when lighting_std > 0).

  The crop's window is found in the original image and only it is decoded and resized, which gives
  the same views as rescaling the whole image and cropping it, at twice the speed.
  """
  size_seed, crop_seed, flip_seed, light_seed = split_seed(seed, 4)
  window = scale_crop_window(image_shape(image_bytes), crop_seed, crop, random_scale(size_seed, scale))
  image = quantize(random_flip(decode_window(image_bytes, window, crop, antialias), flip_seed))
  return {"image": image, "lighting": lighting_shift(light_seed, lighting_std)} if lighting_std else {"image": image}


def inception_window(
    shape: tf.Tensor, seed: tf.Tensor, area: tuple[float, float], aspect: tuple[float, float]
) -> tf.Tensor:
  """(top, left, height, width) of a crop covering `area` of the image at an aspect in `aspect`;
  the whole image when 10 tries find none."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([1, 0, 4]), seed, min_object_covered=0.0, aspect_ratio_range=aspect,
      area_range=area, max_attempts=10, use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def inception_train(
    image_bytes: tf.Tensor, seed: tf.Tensor, *, crop: tf.Tensor | int = 224, area: tuple[float, float] = (0.08, 1.0),
    aspect: tuple[float, float] = (3 / 4, 4 / 3), antialias: bool = True,
    auto_augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None, random_erasing: float = 0.0,
) -> dict[str, tf.Tensor]:
  """Random-resized crop (Szegedy et al. 2015), decoding only the crop's part of the JPEG, and a flip;
  `crop` may be a tensor (progressive resizing sets it per epoch).

  Then, as torchvision's and timm's pipelines order them: an `auto_augment` policy on the uint8 view
  (autoaugment.py), and with probability `random_erasing` a box (`erase`: top, left, height, width)
  that the devices erase after normalising.
  """
  box_seed, flip_seed = split_seed(seed, 2)
  window = inception_window(image_shape(image_bytes), box_seed, area, aspect)
  image = quantize(random_flip(decode_window(image_bytes, window, crop, antialias), flip_seed))
  if auto_augment:
    image = tf.cast(auto_augment(tf.cast(image, tf.float32), tf.random.experimental.stateless_fold_in(seed, 1)),
                    tf.uint8)
  example = {"image": image}
  if random_erasing:
    example["erase"] = autoaugment.erasing_box(tf.random.experimental.stateless_fold_in(seed, 2), crop, crop,
                                               random_erasing)
  return example


def center_offsets(height: tf.Tensor, width: tf.Tensor, crop: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(top, left) of the central crop: half the margin, rounded half to even as torchvision's."""
  return tuple(tf.cast(tf.round((side - crop) / 2), tf.int32) for side in (height, width))


def center_view(image_bytes: tf.Tensor, *, resize: int = 256, crop: int = 224) -> tf.Tensor:
  """Shorter side to `resize`, the central crop x crop: one view, shape (1, crop, crop, 3).

  The whole image is resized, as torchvision's Resize + CenterCrop do: decoding and resizing only
  the crop's window (the Flax and TPU reference pipelines) is faster, but its corner falls on a
  whole pixel of the original, half an output pixel from torchvision's, which moved the views by
  0.045 std on average (0.005 this way; the rest is the resampling filter).
  """
  image = resize_shorter_side(decode(image_bytes), resize)
  top, left = center_offsets(tf.shape(image)[0], tf.shape(image)[1], crop)
  return image[None, top:top + crop, left:left + crop]


def ten_crop_views(image_bytes: tf.Tensor, *, resize: int = 256, crop: int = 224) -> tf.Tensor:
  """The 4 corner crops, the center crop and their mirror images: shape (10, crop, crop, 3)."""
  image = resize_shorter_side(decode(image_bytes), resize)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  center_top, center_left = center_offsets(height, width, crop)
  tops = [0, 0, height - crop, height - crop, center_top]
  lefts = [0, width - crop, 0, width - crop, center_left]
  crops = tf.stack([image[t:t + crop, l:l + crop] for t, l in zip(tops, lefts)])
  return tf.concat([crops, crops[:, :, ::-1]], axis=0)


def torchvision_views(image_bytes: tf.Tensor, *, resize: int = 256, crop: int = 224, ten_crop: bool = False) -> tf.Tensor:
  """torchvision's eval transforms to the pixel, run in PIL: Resize(resize) (bilinear, antialiased;
  the longer side truncated), then CenterCrop(crop) or TenCrop(crop) in its order; shape
  (1 or 10, crop, crop, 3). For scoring torchvision-trained weights as their authors did."""
  def views(data: bytes | np.ndarray) -> np.ndarray:  # bytes in tf.data, a 0-d array holding them eagerly
    from PIL import Image

    image = Image.open(io.BytesIO(data.item() if isinstance(data, np.ndarray) else data)).convert("RGB")
    width, height = image.size
    if width <= height:
      size = (resize, int(resize * height / width))
    else:
      size = (int(resize * width / height), resize)
    image = image.resize(size, Image.BILINEAR)
    images = (image, image.transpose(Image.FLIP_LEFT_RIGHT)) if ten_crop else (image,)
    crops = []
    for view in images:
      center = (round((size[1] - crop) / 2), round((size[0] - crop) / 2))
      corners = ((0, 0), (0, size[0] - crop), (size[1] - crop, 0), (size[1] - crop, size[0] - crop))
      for top, left in (*corners, center) if ten_crop else (center,):
        crops.append(np.asarray(view.crop((left, top, left + crop, top + crop))))
    return np.stack(crops).astype(np.float32)

  out = tf.numpy_function(views, [image_bytes], tf.float32, stateful=False)
  out.set_shape([10 if ten_crop else 1, crop, crop, 3])
  return out


# Width / height of the shape buckets for whole-image (multi-scale) evaluation: portrait, square and
# landscape forms of ImageNet's common 4:3, 3:2 and 16:9, and 8:7 between 1 and 4:3. An image is
# stretched to its nearest one (in log ratio; its aspect changes by at most 9% between 9:16 and
# 16:9), so that a batch shares one shape and the network compiles once a bucket, not an image.
BUCKET_ASPECTS = (9 / 16, 2 / 3, 3 / 4, 7 / 8, 1.0, 8 / 7, 4 / 3, 3 / 2, 16 / 9)


def aspect_bucket(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """The index in BUCKET_ASPECTS nearest to width / height (elementwise)."""
  ratio = tf.math.log(tf.cast(width, tf.float32) / tf.cast(height, tf.float32))
  distance = tf.abs(ratio[..., None] - tf.math.log(tf.constant(BUCKET_ASPECTS, tf.float32)))
  return tf.argmin(distance, axis=-1, output_type=tf.int32)


def bucket_shape(bucket: tf.Tensor, shorter_side: int) -> tf.Tensor:
  """(height, width) of the bucket's aspect with the given shorter side."""
  aspect = tf.gather(tf.constant(BUCKET_ASPECTS, tf.float32), bucket)
  longer = tf.cast(tf.round(shorter_side * tf.maximum(aspect, 1 / aspect)), tf.int32)
  return tf.where(aspect >= 1, tf.stack([shorter_side, longer]), tf.stack([longer, shorter_side]))


def multiscale_views(image_bytes: tf.Tensor, *, scales: tuple[int, ...]) -> tuple[tf.Tensor, ...]:
  """Sec. 3.4's fully-convolutional testing: the whole image at each shorter side in `scales`
  (its aspect rounded to its bucket) and its mirror image; one (2, H_s, W_s, 3) tensor a scale."""
  image = tf.cast(decode(image_bytes), tf.float32)
  bucket = aspect_bucket(tf.shape(image)[0], tf.shape(image)[1])
  views = []
  for scale in scales:
    resized = tf.image.resize(image, bucket_shape(bucket, scale), antialias=True)
    views.append(tf.stack([resized, resized[:, ::-1]]))
  return tuple(views)
