"""TrivialAugment-Wide and RandAugment as torchvision's and timm's, and random erasing's box, as
TensorFlow ops on one train image.

Both references run PIL's operations on the uint8 image; each op here repeats PIL's arithmetic
(its luma weights, truncations, histogram rules and its bilinear sampler's coordinates and edge
rule), so that given the same op and magnitude the pixels match PIL's (tests/test_autoaugment.py
measures each op at each magnitude bin against torchvision and timm). Images are float32 HWC
holding integers in [0, 255], as after `augment.quantize`; every op returns the same.

Draws are stateless, from the example's seed, like the crop's. A policy is named by a string:
'ta_wide' (torchvision's TrivialAugmentWide), 'ra' / 'ra-m9-n2' (torchvision's RandAugment) or a
timm RandAugment string such as 'rand-m7-mstd0.5-inc1' (ResNet strikes back A1/A2).
"""

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from resnet_jax.data.tf_on_cpu import tf
from resnet_jax.errors import ConfigError

Image = tf.Tensor
Fill = Sequence[float]

# PIL's "L" conversion, ITU-R 601-2 luma in 16-bit fixed point: (R*19595 + G*38470 + B*7471 + 2^15) >> 16.
LUMA_WEIGHTS = (19595, 38470, 7471)
# ImageFilter.SMOOTH, the degenerate image of PIL's Sharpness.
SMOOTH_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))
SMOOTH_SCALE = 13


def _float64(value: float | tf.Tensor) -> tf.Tensor:
  """A Python float in double precision (tf.cast would round it through float32 first)."""
  return tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64), tf.float64)


def _clip(image: Image) -> Image:
  return tf.clip_by_value(image, 0.0, 255.0)


def luma(image: Image) -> Image:
  """PIL's convert('L'), as integers in float32, shape (H, W)."""
  pixels = tf.cast(image, tf.int32)
  weighted = tf.reduce_sum(pixels * tf.constant(LUMA_WEIGHTS, tf.int32), axis=-1) + (1 << 15)
  return tf.cast(tf.bitwise.right_shift(weighted, 16), tf.float32)


def blend(degenerate: Image, image: Image, factor: tf.Tensor) -> Image:
  """PIL's Image.blend(degenerate, image, factor): computed in float32, truncated, clipped."""
  factor = tf.cast(factor, tf.float32)
  return _clip(tf.floor(degenerate + factor * (image - degenerate)))


def brightness(image: Image, factor: tf.Tensor) -> Image:
  return blend(tf.zeros_like(image), image, factor)


def color(image: Image, factor: tf.Tensor) -> Image:
  """Saturation: a blend with the image's own grey."""
  return blend(tf.broadcast_to(luma(image)[..., None], tf.shape(image)), image, factor)


def contrast(image: Image, factor: tf.Tensor) -> Image:
  """A blend with the mean grey level, rounded half up (ImageStat's mean of the luma)."""
  mean = tf.floor(tf.reduce_mean(tf.cast(luma(image), tf.float64)) + 0.5)
  return blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image, factor)


def smooth(image: Image) -> Image:
  """ImageFilter.SMOOTH: the 3x3 kernel on the interior, rounded; the border pixels kept."""
  kernel = tf.constant(SMOOTH_KERNEL, tf.float32) / SMOOTH_SCALE
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  inner = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  inner = _clip(tf.floor(inner + 0.5))
  return tf.concat([image[:1], tf.concat([image[1:-1, :1], inner, image[1:-1, -1:]], axis=1), image[-1:]], axis=0)


def sharpness(image: Image, factor: tf.Tensor) -> Image:
  return blend(smooth(image), image, factor)


def posterize(image: Image, bits: tf.Tensor) -> Image:
  """Keeps the `bits` highest bits of each value (0 bits: black)."""
  mask = tf.bitwise.invert(tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32)) - 1)
  return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.float32)


def solarize(image: Image, threshold: tf.Tensor) -> Image:
  """Inverts the values at or above `threshold`."""
  return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image: Image, addition: tf.Tensor, threshold: float = 128) -> Image:
  """timm's: adds `addition` (saturating) to the values below `threshold`."""
  return tf.where(image < threshold, tf.minimum(image + tf.cast(addition, tf.float32), 255.0), image)


def invert(image: Image, _=None) -> Image:
  return 255.0 - image


def _per_channel_lut(image: Image, lut_of: Callable[[tf.Tensor], tf.Tensor]) -> Image:
  """Maps each channel through the 256-entry table `lut_of(its histogram)`."""
  pixels = tf.cast(image, tf.int32)
  channels = []
  for c in range(3):
    histogram = tf.math.bincount(pixels[..., c], minlength=256, maxlength=256, dtype=tf.int64)
    channels.append(tf.gather(lut_of(histogram), pixels[..., c]))
  return tf.cast(tf.stack(channels, axis=-1), tf.float32)


def autocontrast(image: Image, _=None) -> Image:
  """ImageOps.autocontrast: each channel's [lowest, highest] value stretched to [0, 255], the
  scaled values truncated (a constant channel is kept)."""
  def lut_of(histogram):
    present = tf.where(histogram > 0)[:, 0]
    low, high = tf.cast(tf.reduce_min(present), tf.float64), tf.cast(tf.reduce_max(present), tf.float64)
    scale = 255.0 / tf.maximum(high - low, 1.0)
    stretched = tf.clip_by_value(tf.cast(tf.range(256, dtype=tf.float64) * scale - low * scale, tf.int64), 0, 255)
    return tf.where(high > low, stretched, tf.range(256, dtype=tf.int64))
  return _per_channel_lut(image, lut_of)


def equalize(image: Image, _=None) -> Image:
  """ImageOps.equalize: each channel through its cumulative histogram, in PIL's integer steps
  (a channel with one value, or too few pixels for a step, is kept)."""
  def lut_of(histogram):
    last = tf.gather(histogram, tf.reduce_max(tf.where(histogram > 0)[:, 0]))
    step = (tf.reduce_sum(histogram) - last) // 255
    before = tf.cumsum(histogram, exclusive=True)
    mapped = tf.minimum((step // 2 + before) // tf.maximum(step, 1), 255)
    return tf.where(step > 0, mapped, tf.range(256, dtype=tf.int64))
  return _per_channel_lut(image, lut_of)


def affine(image: Image, matrix: Sequence[tf.Tensor], fill: Fill) -> Image:
  """PIL's Image.transform(AFFINE, matrix, BILINEAR, fillcolor=fill): output pixel (x, y) samples
  the input at (a(x+.5) + b(y+.5) + c, d(x+.5) + e(y+.5) + f) - .5 bilinearly, in float64, and
  truncates; a point outside the image takes `fill`, and neighbours beyond the edge repeat it.
  Pillow's C code computes a(x+.5) + b(y+.5) as a fused multiply-add, which TensorFlow has no op
  for: where a is inexact (rotations) a sample can land across a truncation, 1 grey level off."""
  a, b, c, d, e, f = (_float64(v) for v in matrix)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float64) + 0.5, tf.range(width, dtype=tf.float64) + 0.5,
                       indexing="ij")
  x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
  inside = (x_in >= 0) & (x_in < tf.cast(width, tf.float64)) & (y_in >= 0) & (y_in < tf.cast(height, tf.float64))
  x_in, y_in = x_in - 0.5, y_in - 0.5
  x0, y0 = tf.floor(x_in), tf.floor(y_in)
  dx, dy = (x_in - x0)[..., None], (y_in - y0)[..., None]

  def at(y, x):
    y = tf.clip_by_value(tf.cast(y, tf.int32), 0, height - 1)
    x = tf.clip_by_value(tf.cast(x, tf.int32), 0, width - 1)
    return tf.cast(tf.gather_nd(image, tf.stack([y, x], axis=-1)), tf.float64)

  top = at(y0, x0) + (at(y0, x0 + 1) - at(y0, x0)) * dx
  bottom = at(y0 + 1, x0) + (at(y0 + 1, x0 + 1) - at(y0 + 1, x0)) * dx
  value = _clip(tf.cast(tf.floor(top + (bottom - top) * dy), tf.float32))
  return tf.where(inside[..., None], value, tf.constant(fill, tf.float32))


def rotation_matrix(degrees: float, height: int, width: int) -> list[float]:
  """Image.rotate's inverse matrix: counter-clockwise by `degrees` about the image's center, its
  sine and cosine rounded to 15 decimals as PIL rounds them (so 90 degrees is exact)."""
  angle = -math.radians(degrees)
  cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
  cx, cy = width / 2, height / 2
  return [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]


def rotate(image: Image, degrees: tf.Tensor, fill: Fill) -> Image:
  """The matrix is PIL's, computed in Python (its decimal rounding has no TensorFlow op)."""
  matrix = tf.numpy_function(lambda d, h, w: np.array(rotation_matrix(float(d), int(h), int(w))),
                             [_float64(degrees), tf.shape(image)[0], tf.shape(image)[1]], tf.float64, stateful=False)
  return affine(image, tf.unstack(tf.ensure_shape(matrix, [6])), fill)


def shear_x(image: Image, factor: tf.Tensor, fill: Fill) -> Image:
  """Input x = x + factor * y (about the top-left corner), as both references shear."""
  return affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image: Image, factor: tf.Tensor, fill: Fill) -> Image:
  return affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], fill)


def translate(image: Image, dx: tf.Tensor, dy: tf.Tensor, fill: Fill) -> Image:
  """Input = output + (dx, dy): the content moves by (-dx, -dy) pixels."""
  return affine(image, [1.0, 0.0, dx, 0.0, 1.0, dy], fill)


# --- torchvision: each op's magnitudes by bin and whether its sign is drawn ------------------------

def torchvision_ops(num_bins: int, wide: bool, height: int | None = None, width: int | None = None) -> dict:
  """name -> (magnitudes by bin (None: no argument), signed): TrivialAugmentWide's space (wide) or
  RandAugment's, whose translation is relative to the image size."""
  linspace = lambda end: np.linspace(0.0, end, num_bins, dtype=np.float32)  # noqa: E731 (torch.linspace's float32)
  bins = np.arange(num_bins, dtype=np.float32)
  strong = 0.99 if wide else 0.9
  return {
      "Identity": (None, False),
      "ShearX": (linspace(0.99 if wide else 0.3), True),
      "ShearY": (linspace(0.99 if wide else 0.3), True),
      "TranslateX": (linspace(32.0 if wide else 150.0 / 331.0 * width), True),
      "TranslateY": (linspace(32.0 if wide else 150.0 / 331.0 * height), True),
      "Rotate": (linspace(135.0 if wide else 30.0), True),
      "Brightness": (linspace(strong), True),
      "Color": (linspace(strong), True),
      "Contrast": (linspace(strong), True),
      "Sharpness": (linspace(strong), True),
      "Posterize": ((8 - np.round(bins / ((num_bins - 1) / (6 if wide else 4)))).astype(np.int32), False),
      "Solarize": (np.linspace(255.0, 0.0, num_bins, dtype=np.float32), False),
      "AutoContrast": (None, False),
      "Equalize": (None, False),
  }


def torchvision_op(name: str, image: Image, magnitude: tf.Tensor, fill: Fill) -> Image:
  """torchvision's _apply_op on a PIL image, `magnitude` signed already."""
  magnitude = _float64(magnitude)
  if name == "Identity":
    return image
  if name == "ShearX":
    return shear_x(image, magnitude, fill)  # its shear angle is atan(m), whose tangent is m again
  if name == "ShearY":
    return shear_y(image, magnitude, fill)
  if name == "TranslateX":  # translate=[int(m), 0]: the content moves right by int(m)
    return translate(image, -tf.cast(tf.cast(magnitude, tf.int32), tf.float64), 0.0, fill)
  if name == "TranslateY":
    return translate(image, 0.0, -tf.cast(tf.cast(magnitude, tf.int32), tf.float64), fill)
  if name == "Rotate":
    return rotate(image, magnitude, fill)
  enhance = {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness}
  if name in enhance:
    return enhance[name](image, 1.0 + magnitude)
  if name == "Posterize":
    return posterize(image, magnitude)
  if name == "Solarize":
    return solarize(image, magnitude)
  return {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert}[name](image)


def _uniform_int(seed: tf.Tensor, high: int | tf.Tensor) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, 0, high, dtype=tf.int32)


def _switch(index: tf.Tensor, branches: list[Callable[[], Image]]) -> Image:
  return tf.switch_case(index, branches)


def trivial_augment_draw(seed: tf.Tensor, num_ops: int, num_bins: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """TrivialAugmentWide's draws: (op index, magnitude bin, negate), each uniform."""
  op_seed, bin_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  return _uniform_int(op_seed, num_ops), _uniform_int(bin_seed, num_bins), _uniform_int(sign_seed, 2) == 1


def trivial_augment_wide(image: Image, seed: tf.Tensor, num_bins: int = 31, fill: Fill = (0, 0, 0)) -> Image:
  """One op drawn uniformly, at a magnitude bin drawn uniformly, its sign drawn (TrivialAugmentWide)."""
  ops = torchvision_ops(num_bins, wide=True)
  op, level, negate = trivial_augment_draw(seed, len(ops), num_bins)

  def branch(name, magnitudes, signed):
    def run():
      magnitude = tf.gather(tf.constant(magnitudes, tf.float32), level) if magnitudes is not None else 0.0
      return torchvision_op(name, image, tf.where(negate, -magnitude, magnitude) if signed else magnitude, fill)
    return run

  return _switch(op, [branch(name, *meta) for name, meta in ops.items()])


def rand_augment(image: Image, seed: tf.Tensor, *, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31,
                 fill: Fill = (0, 0, 0)) -> Image:
  """torchvision's RandAugment: `num_ops` ops drawn uniformly (with repeats), each at bin
  `magnitude`, their signs drawn."""
  height, width = image.shape[0], image.shape[1]
  if height is None or width is None:
    raise ConfigError("torchvision's RandAugment translates by a share of the image's size, which must be fixed: "
                      "it does not combine with data.progressive (use 'ta_wide' or a timm 'rand-' policy)")
  ops = torchvision_ops(num_bins, wide=False, height=height, width=width)
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)):
    op_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))

    def branch(name, magnitudes, signed, image=image, sign_seed=sign_seed):
      def run():
        value = float(magnitudes[magnitude]) if magnitudes is not None else 0.0
        negate = _uniform_int(sign_seed, 2) == 1
        return torchvision_op(name, image, tf.where(negate, -value, value) if signed else value, fill)
      return run

    image = _switch(_uniform_int(op_seed, len(ops)), [branch(name, *meta) for name, meta in ops.items()])
  return image


# --- timm: RandAugment's 'increasing' op set, its level -> argument rules ----------------------------

TIMM_LEVEL_DENOM = 10.0
TIMM_TRANSLATE_PCT = 0.45
# timm's increasing op set, in its order (Cutout is timm's random erasing, a separate transform).
TIMM_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def timm_argument(name: str, level: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
  """timm's LEVEL_TO_ARG for the increasing ops: `level` in [0, 10] to the op's argument, negated
  (the signed ops) when `negate`."""
  level = _float64(level) / TIMM_LEVEL_DENOM
  sign = tf.where(negate, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64))
  to_int = lambda x: tf.cast(tf.cast(x, tf.int32), tf.float64)  # noqa: E731 (Python's int(), toward zero)
  if name == "Rotate":
    return sign * level * 30.0
  if name == "PosterizeIncreasing":
    return 4.0 - to_int(level * 4)
  if name == "SolarizeIncreasing":
    return 256.0 - tf.minimum(to_int(level * 256), 256.0)
  if name == "SolarizeAdd":
    return tf.minimum(to_int(level * 110), 128.0)
  if name.endswith("Increasing"):  # the enhancements: a factor in [0.1, 1.9]
    return tf.maximum(1.0 + sign * level * 0.9, 0.1)
  if name in ("ShearX", "ShearY"):
    return sign * level * 0.3
  if name in ("TranslateXRel", "TranslateYRel"):
    return sign * level * TIMM_TRANSLATE_PCT
  return tf.constant(0.0, tf.float64)


def timm_op(name: str, image: Image, argument: tf.Tensor, fill: Fill) -> Image:
  """timm's op functions (auto_augment.py) on a PIL image, given their argument."""
  if name == "Rotate":
    return rotate(image, argument, fill)
  if name == "ShearX":
    return shear_x(image, argument, fill)
  if name == "ShearY":
    return shear_y(image, argument, fill)
  if name == "TranslateXRel":
    return translate(image, argument * tf.cast(tf.shape(image)[1], tf.float64), 0.0, fill)
  if name == "TranslateYRel":
    return translate(image, 0.0, argument * tf.cast(tf.shape(image)[0], tf.float64), fill)
  if name == "PosterizeIncreasing":  # 8 or more bits keep the image; 4 - int(4 m / 10) is at most 4
    return posterize(image, argument)
  if name == "SolarizeIncreasing":
    return solarize(image, argument)
  if name == "SolarizeAdd":
    return solarize_add(image, argument)
  enhance = {"ColorIncreasing": color, "ContrastIncreasing": contrast, "BrightnessIncreasing": brightness,
             "SharpnessIncreasing": sharpness}
  if name in enhance:
    return enhance[name](image, argument)
  return {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert}[name](image)


def timm_rand_augment(image: Image, seed: tf.Tensor, *, magnitude: float, num_layers: int = 2, prob: float = 0.5,
                      magnitude_std: float = 0.0, magnitude_max: float = TIMM_LEVEL_DENOM,
                      fill: Fill = (124, 116, 104)) -> Image:
  """timm's RandAugment over its increasing ops: `num_layers` ops drawn uniformly (with repeats),
  each applied with probability `prob` at a level drawn from N(magnitude, magnitude_std) (uniform
  in [0, magnitude] when the std is inf) clipped to [0, magnitude_max]. The fill is timm's: the
  ImageNet mean, rounded."""
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    op_seed, apply_seed, level_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 4))
    if magnitude_std == float("inf"):
      level = tf.random.stateless_uniform([], level_seed, 0.0, magnitude, dtype=tf.float64)
    else:
      level = magnitude + magnitude_std * tf.random.stateless_normal([], level_seed, dtype=tf.float64)
    level = tf.clip_by_value(level, 0.0, magnitude_max)
    negate = tf.random.stateless_uniform([], sign_seed) > 0.5

    def branch(name, image=image, level=level, negate=negate):
      return lambda: timm_op(name, image, timm_argument(name, level, negate), fill)

    applied = _switch(_uniform_int(op_seed, len(TIMM_INCREASING_OPS)), [branch(name) for name in TIMM_INCREASING_OPS])
    image = tf.cond(tf.random.stateless_uniform([], apply_seed) < prob, lambda: applied, lambda image=image: image)
  return image


def parse_timm(text: str) -> dict:
  """'rand-m7-mstd0.5-inc1' -> timm_rand_augment's keyword arguments (m, n, p, mstd, mmax; inc1)."""
  options = {"magnitude": 10.0}
  increasing = False
  for part in text.split("-")[1:]:
    key, value = re.fullmatch(r"([a-z]+)(.*)", part).groups() if re.fullmatch(r"[a-z]+.*", part) else (part, "")
    try:
      number = float(value)
    except ValueError:
      raise ConfigError(f"data.auto_augment={text!r}: cannot read {part!r}; timm's keys are m, n, p, mstd, mmax "
                        f"and inc, e.g. 'rand-m7-mstd0.5-inc1'") from None
    if key == "inc":
      increasing = bool(number)
    elif key in ("m", "n", "p", "mstd", "mmax"):
      name = {"m": "magnitude", "n": "num_layers", "p": "prob", "mstd": "magnitude_std", "mmax": "magnitude_max"}[key]
      options[name] = float("inf") if key == "mstd" and number > 100 else int(number) if key == "n" else number
    else:
      raise ConfigError(f"data.auto_augment={text!r}: unknown key {key!r}; timm's keys are m, n, p, mstd, mmax, inc")
  if not increasing:
    raise ConfigError(f"data.auto_augment={text!r}: only timm's increasing op set (inc1) is built here, as 'ResNet "
                      f"strikes back' uses it; add -inc1")
  return options


def policy(name: str) -> Callable[[Image, tf.Tensor], Image] | None:
  """The augmentation a data.auto_augment string names ('' or 'none': none), as (image, seed) -> image."""
  if name in ("", "none"):
    return None
  if name == "ta_wide":
    return trivial_augment_wide
  torchvision = re.fullmatch(r"ra(?:-m(\d+))?(?:-n(\d+))?", name)
  if torchvision:
    magnitude, num_ops = int(torchvision.group(1) or 9), int(torchvision.group(2) or 2)
    if not 0 <= magnitude < 31:
      raise ConfigError(f"data.auto_augment={name!r}: torchvision's RandAugment magnitude is a bin in [0, 30]")
    return lambda image, seed: rand_augment(image, seed, num_ops=num_ops, magnitude=magnitude)
  if name.startswith("rand-") or name == "rand":
    options = parse_timm(name)
    return lambda image, seed: timm_rand_augment(image, seed, **options)
  raise ConfigError(f"unknown data.auto_augment {name!r}; valid: '' or 'none', 'ta_wide' (torchvision's "
                    f"TrivialAugmentWide), 'ra' or 'ra-m9-n2' (torchvision's RandAugment), or a timm string such as "
                    f"'rand-m7-mstd0.5-inc1'")


# --- random erasing: torchvision's box, drawn here, erased on the devices after normalisation ------

def erasing_box(seed: tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor, probability: float, scale: tuple[float, float] = (0.02, 0.33),
                ratio: tuple[float, float] = (0.3, 3.3), attempts: int = 10) -> tf.Tensor:
  """torchvision's RandomErasing.get_params: with `probability`, up to 10 tries at a box of
  `scale` of the area and an aspect (log-uniform) in `ratio` that fits; (top, left, height, width),
  all 0 when none is erased. Its pixels become 0 after normalisation (the mean colour)."""
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 1 + 4 * attempts))
  area = tf.cast(height * width, tf.float64)
  found = tf.zeros([4], tf.int32)
  for attempt in reversed(range(attempts)):  # the first fitting try wins
    area_seed, ratio_seed, top_seed, left_seed = seeds[1 + 4 * attempt:5 + 4 * attempt]
    erase_area = area * tf.random.stateless_uniform([], area_seed, scale[0], scale[1], dtype=tf.float64)
    aspect = tf.exp(tf.random.stateless_uniform([], ratio_seed, math.log(ratio[0]), math.log(ratio[1]),
                                                dtype=tf.float64))
    h = tf.cast(tf.round(tf.sqrt(erase_area * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(erase_area / aspect)), tf.int32)
    fits = (h < height) & (w < width)
    top = _uniform_int(top_seed, tf.maximum(height - h + 1, 1))
    left = _uniform_int(left_seed, tf.maximum(width - w + 1, 1))
    found = tf.where(fits, tf.stack([top, left, h, w]), found)
  return tf.where(tf.random.stateless_uniform([], seeds[0]) < probability, found, tf.zeros([4], tf.int32))
