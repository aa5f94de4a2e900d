"""The fields every run config has, and the `:key=value` arguments of the config files.

Config files (`configs/*.py`) start from `base_config()` and set the recipe; derived values use
ml_collections field references, so `--config.batch_size=1024` also rescales the learning rate.
"""

import ast
import dataclasses
import pathlib
import re

import ml_collections

from resnet_jax import sections
from resnet_jax.errors import ConfigError
from resnet_jax.mixing import MixConfig
from resnet_jax.models.resnet import ModelConfig
from resnet_jax.optim import OptimizerConfig, ScheduleConfig


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The typed sections' defaults (the paper's); the model is the network the base data fits, CIFAR
  # ResNet-20.
  c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig(depth=20, dataset="cifar")))
  c.data = ml_collections.ConfigDict(dict(
      # In memory: 'tfds' (a small prepared tfds set) or 'mnist_bundled'.
      # Streamed from disk: 'folder' (data_dir/<split>/<class>/*.JPEG).
      source="tfds",
      name="cifar10",
      data_dir="",  # tfds: '' = its default (TFDS_DATA_DIR or ~/tensorflow_datasets); folder: the root
      train_split="train",
      eval_split="test",
      eval_label_file="",  # folder: labels of a flat eval folder, lines '<file> <class folder name>'
      # streamed: a file of example ids to leave out (bad images), one a line, as written by
      # python -m resnet_jax.data.scan
      exclude_file="",
      # In memory: 'none', 'crop' or 'crop_flip' (pad-and-crop, Sec. 4.2).
      # Streamed: 'paper' (Sec. 3.4 scale augmentation + PCA lighting) or 'inception'.
      augmentation="crop_flip",
      pad=4,
      lighting_std=0.1,
      # streamed 'paper': the shorter side's range before the crop; () = Sec. 3.4's [256, 480] scaled
      # by image_size / 224, so that a crop covers the same share of the image at any resolution.
      scale_range=(),
      # streamed 'inception': the crop's share of the image area and its aspect ratio (Szegedy et al.)
      crop_area=(0.08, 1.0),
      crop_aspect=(3 / 4, 4 / 3),
      image_size=224,  # the side of a train image (streamed: the train crop)
      # streamed: progressive resizing as FFCV's. From `low` > 0 px (until start_epoch), rising linearly
      # to image_size (from end_epoch), each epoch's size rounded to a multiple of 32; the batch stays.
      progressive=ml_collections.ConfigDict(dict(low=0, start_epoch=0, end_epoch=0)),
      # streamed 'inception': a policy on each train crop (data/autoaugment.py): 'ta_wide' (torchvision's
      # TrivialAugmentWide), 'ra' / 'ra-m9-n2' (torchvision's RandAugment), a timm string such as
      # 'rand-m7-mstd0.5-inc1'; '' = none.
      auto_augment="",
      random_erasing=0.0,  # streamed 'inception': torchvision's RandomErasing probability (erased to the mean)
      # streamed: repeated augmentation (torchvision's RASampler, timm's aug_repeats): each epoch holds
      # 1/augment_repeats of the examples, each that many times under different augmentations.
      augment_repeats=1,
      # streamed: antialiased resizing of train crops; off (bilinear, as the Flax and TPU reference
      # pipelines) doubles the images/s a core makes. Eval views are always antialiased.
      train_antialias=False,
      eval_resize=256,  # streamed: shorter side before the eval crop(s)
      eval_crop=0,  # streamed: the side of the eval crops; 0 = image_size (FixRes: train 176, eval 224)
      eval_view="center",  # streamed: 'center', '10crop' or 'multiscale' (Table 4)
      # Also score each center view's mirror image (FFCV's test-time flip); 10crop and multiscale have it.
      eval_flip=False,
      # How an example's views are combined: the mean of their softmax ('probabilities', the paper's
      # 10-crop) or of their logits ('logits', FFCV's flip).
      eval_average="probabilities",
      eval_scales=(224, 256, 384, 480, 640),  # multiscale: the shorter sides, whole image + mirror
      # streamed: 'tensorflow' (torchvision's crops of TensorFlow's antialiased resize) or 'pil' (torchvision's
      # Resize + CenterCrop/TenCrop to the pixel, for scoring torchvision weights as their authors did)
      eval_resampler="tensorflow",
      # In memory: 'pixel_mean' or 'channel_mean_std' of the training split; streamed: ImageNet's
      # 'channel_mean_std' or 'channel_mean'.
      normalization="pixel_mean",
  ))
  # Named evaluations beyond data.eval_split, name -> split, scored whenever it is (e.g. CIFAR's
  # validation split and its test set); logged as eval_NAME/top1 etc.
  c.evals = ml_collections.ConfigDict()
  c.batch_size = 128
  # Linear scaling: the peak learning rate is base_learning_rate x batch_size / base_batch_size,
  # unless --config.schedule.learning_rate sets it outright.
  c.base_learning_rate = 0.1
  c.base_batch_size = 256
  c.eval_batch_size = 500
  c.num_train_steps = 0  # > 0 overrides num_epochs
  c.num_epochs = 0.0
  c.schedule = ml_collections.ConfigDict(dataclasses.asdict(ScheduleConfig()))
  c.schedule.learning_rate = (
      c.get_ref("base_learning_rate") * c.get_ref("batch_size") / c.get_ref("base_batch_size")
  )
  c.optimizer = ml_collections.ConfigDict(dataclasses.asdict(OptimizerConfig()))
  c.label_smoothing = 0.0
  # Batch augmentations on the devices (mixing.py): mixup / cutmix with soft targets.
  c.mix = ml_collections.ConfigDict(dataclasses.asdict(MixConfig()))
  # 'cross_entropy' (softmax) or 'binary_cross_entropy' (a sigmoid per class, averaged over classes
  # and examples, as timm's BinaryCrossEntropy); bce_target_threshold > 0 turns each (smoothed,
  # mixed) target into 1 above it and 0 below (timm's target_threshold; 0: off).
  c.loss = "cross_entropy"
  c.bce_target_threshold = 0.0
  c.ema_decay = 0.0  # > 0 keeps an exponential moving average of the weights and evaluates it too
  # torchvision's EMA (train_step.EmaRule): an update every k steps of an epoch, the BN statistics
  # averaged too, the weights copied in the first epochs (its learning-rate warmup).
  c.ema_every_steps = 1
  c.ema_buffers = False
  c.ema_copy_epochs = 0
  c.log_every_steps = 50
  c.eval_every_epochs = 1.0  # 0 = only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.keep_best = True  # also keep the checkpoint with the best eval top-1
  c.profile_steps = 0  # > 0 records a profile of that many steps (clu periodic_actions.Profile)
  return c


LOSSES = ("cross_entropy", "binary_cross_entropy")
# (field, test, what it must be): the run-level settings (the model, schedule and optimizer sections
# check themselves). A value that fails is refused before anything loads or compiles.
_RULES = (
    ("seed", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("loss", lambda v: v in LOSSES, " or ".join(map(repr, LOSSES))),
    ("bce_target_threshold", lambda v: 0 <= v < 1, "in [0, 1) (0: off)"),
    ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0: no EMA)"),
    ("ema_every_steps", lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    ("ema_buffers", lambda v: isinstance(v, bool), "True or False"),
    ("ema_copy_epochs", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    ("num_train_steps", lambda v: isinstance(v, int) and v >= 0, "0 (use num_epochs) or a positive integer"),
    ("num_epochs", lambda v: v >= 0, "non-negative"),
    ("log_every_steps", lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    ("checkpoint_every_steps", lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    ("keep_checkpoints", lambda v: isinstance(v, int) and v >= 1,
     "at least 1 (the newest checkpoint is what a rerun resumes from)"),
    ("eval_every_epochs", lambda v: v >= 0, "0 (only at the end) or positive"),
    ("profile_steps", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
)


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses the first invalid run setting with a ConfigError naming it (the sections, data and
  batch fields are checked by the components that use them)."""
  sections.check(config, "", _RULES)
  MixConfig.from_mapping(config.mix)
  if config.bce_target_threshold and config.loss != "binary_cross_entropy":
    raise ConfigError(f"bce_target_threshold={config.bce_target_threshold} applies to loss='binary_cross_entropy'; "
                      f"loss={config.loss!r}")
  for name, split in config.evals.items():
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or not (isinstance(split, str) and split
                                                          or isinstance(split, ml_collections.ConfigDict)):
      raise ConfigError(f"evals.{name}={split!r} is invalid: each named evaluation is a lower-case name "
                        f"(letters, digits, _) mapped to a split, e.g. c.evals.test = 'test', or to a set "
                        f"from another source (config.eval_set(...))")
    if isinstance(split, ml_collections.ConfigDict):
      _check_eval_set(name, split)


def evaluations(config: ml_collections.ConfigDict) -> dict[str | None, str]:
  """Each evaluation a run makes, name -> what it scores: the config's eval split (None), then
  `evals`: a split of the run's data, or for a set from another source its description
  (`eval_set_description`), which names it in the records."""
  return {None: config.data.eval_split, **{name: spec if isinstance(spec, str) else eval_set_description(spec, config)
                                           for name, spec in config.evals.items()}}


# A named evaluation on a set from another source than the training data (data/eval_sets.py reads it).
EVAL_SET_FIELDS = dict(
    source="",  # 'folder' or 'tfds'; '' = the run's own data (ReaL: its eval split, other labels)
    data_dir="",  # folder: the directory holding the split's folder; tfds: the data directory of its build
    name="",  # tfds: the data set, e.g. 'imagenet_v2'
    split="",  # folder: the folder of class folders under data_dir ('' = data_dir itself); tfds: its split
    classes="names",  # folder: 'names' (folders named as the training classes, e.g. synsets) or 'index' (0..K-1)
    subset=False,  # score among the set's own classes only, the other logits left out (ImageNet-A/R)
    real_labels="",  # ReaL's real.json: each validation image's set of correct labels, by file number
)


def eval_set(**fields) -> ml_collections.ConfigDict:
  """A named evaluation's settings for a set from another source: `EVAL_SET_FIELDS` with `fields`."""
  unknown = sorted(set(fields) - set(EVAL_SET_FIELDS))
  if unknown:
    raise ConfigError(f"unknown evaluation set field(s) {', '.join(unknown)}; valid: {', '.join(EVAL_SET_FIELDS)}")
  return ml_collections.ConfigDict({**EVAL_SET_FIELDS, **fields})


def _check_eval_set(name: str, spec: ml_collections.ConfigDict) -> None:
  problem = None
  if set(spec) != set(EVAL_SET_FIELDS):
    problem = f"its fields must be {', '.join(EVAL_SET_FIELDS)}"
  elif spec.source not in ("", "folder", "tfds"):
    problem = "source must be 'folder', 'tfds' or '' (the run's own data)"
  elif spec.source and not spec.data_dir:
    problem = f"a {spec.source} set needs its data_dir"
  elif spec.source == "tfds" and not (spec.name and spec.split):
    problem = "a tfds set needs its name and split"
  elif spec.classes not in ("names", "index"):
    problem = "classes must be 'names' (folders named as the training classes) or 'index' (0..K-1)"
  elif not spec.source and not spec.real_labels:
    problem = "a set of the run's own data scores it with other labels: give real_labels (ReaL's real.json)"
  elif spec.real_labels and spec.subset:
    problem = "ReaL label sets are over all classes: leave subset off"
  elif spec.subset and spec.source != "folder":
    problem = "a class subset is read from a folder of class folders named as the training classes (source='folder')"
  if problem:
    raise ConfigError(f"evals.{name} is invalid: {problem}")


def eval_set_description(spec: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> str:
  """How records and logs name a set from another source: what it is and where it was read."""
  if spec.real_labels:
    return f"{spec.split or config.data.eval_split} with ReaL labels"
  where = f"tfds {spec.name} {spec.split}" if spec.source == "tfds" else str(pathlib.Path(spec.data_dir, spec.split))
  return where + (", among its own classes" if spec.subset else "")


# The ImageNet configs' arguments that add the evaluation sets researchers report beside the
# validation set; each is off when empty.
EVAL_SET_ARGUMENTS = dict(imagenet_v2="", real="", imagenet_a="", imagenet_r="")


def eval_sets_of(args: dict) -> dict[str, ml_collections.ConfigDict]:
  """The named evaluations the `EVAL_SET_ARGUMENTS` given ask for:
  imagenet_v2=FOLDER (its class folders 0..999) or imagenet_v2=tfds:DATA_DIR (the tfds imagenet_v2
  build's test split); real=REAL_JSON (the eval split scored against the ReaL labels);
  imagenet_a=FOLDER, imagenet_r=FOLDER (their synset folders, scored among their 200 classes)."""
  sets = {}
  v2 = args["imagenet_v2"]
  if v2.startswith("tfds:"):
    sets["imagenet_v2"] = eval_set(source="tfds", data_dir=v2.removeprefix("tfds:"), name="imagenet_v2", split="test")
  elif v2:
    sets["imagenet_v2"] = eval_set(source="folder", data_dir=v2, classes="index")
  if args["real"]:
    sets["real"] = eval_set(real_labels=args["real"])
  for name in ("imagenet_a", "imagenet_r"):
    if args[name]:
      sets[name] = eval_set(source="folder", data_dir=args[name], subset=True)
  return sets


def resolve_data_name(config: ml_collections.ConfigDict) -> None:
  """An image folder's data is named by the folder unless `data.name` names it (e.g. 'imagenet2012',
  which the results table compares with the paper): a record never calls other data ImageNet."""
  if config.data.source == "folder" and not config.data.name and config.data.data_dir:
    config.data.name = pathlib.Path(config.data.data_dir).resolve().name


IMAGENET_SPLITS = {"folder": ("train", "val"), "tfds": ("train", "validation")}


def imagenet_data(source: str) -> dict:
  """The `data` fields that locate ImageNet for a config's `source` argument: an image folder
  (named by its directory in the records unless --config.data.name=imagenet2012 says what it
  holds, which puts the paper's numbers beside it in the results table) or the tfds build."""
  if source not in IMAGENET_SPLITS:
    raise ConfigError(f"source must be one of {', '.join(IMAGENET_SPLITS)}; got {source!r}")
  train, evaluation = IMAGENET_SPLITS[source]
  return dict(source=source, name="imagenet2012" if source == "tfds" else "", data_dir="", train_split=train,
              eval_split=evaluation, normalization="channel_mean_std")


def parse_arguments(argument: str | None, defaults: dict) -> dict:
  """'depth=56,plain=True' -> {'depth': 56, 'plain': True}, typed like `defaults`; unknown keys fail."""
  values = dict(defaults)
  for item in filter(None, (argument or "").split(",")):
    key, sep, text = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r} is not key=value with key in {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, str):
      values[key] = text
      continue
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    kind = type(default)
    if kind is float and type(value) is int:
      value = float(value)
    if type(value) is not kind:
      raise ConfigError(f"config argument {key}={text!r} should be a {kind.__name__}")
    values[key] = value
  return values
