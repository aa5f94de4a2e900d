"""A config turned into an experiment: every invalid setting refused, by name, before anything
compiles."""

import jax
import pytest

from conftest import load_config
from resnet_jax.errors import ConfigError


# Settings whose check needs the data's own description (its channels, classes, kind), which loading
# gives; every other setting is refused before the data is touched.
CHECKED_AGAINST_THE_DATA = {"model.input_channels", "model.num_classes", "data.eval_view", "data.augmentation",
                            "data.normalization", "data.exclude_file", "data.eval_resampler"}


@pytest.mark.slow
def test_config_errors_are_clear_and_come_before_compiling(monkeypatch):
  from resnet_jax import experiment
  from resnet_jax.experiment import setup
  config = load_config("mnist_demo", "depth=8")
  loaded = []
  load = experiment.make_inputs
  monkeypatch.setattr(experiment, "make_inputs", lambda config: loaded.append(True) or load(config))
  cases = [
      ("batch_size", 0, "batch_size must be a positive integer"),
      ("eval_batch_size", -4, "eval_batch_size must be a positive integer"),
      ("model.depth", 9, "6n\\+2"),
      ("model.input_channels", 3, "1 channel"),
      ("model.bn_group_size", 48, "BN groups"),
      ("model.dtype", "float16", "'float16' is refused: without loss scaling.*Use 'bfloat16'"),
      ("model.num_classes", 5, "the data has 10 classes but model.num_classes=5"),
      ("data.eval_view", "10crop", "data.eval_view='10crop' is not valid for mnist_bundled, which is held in "
       "memory, decoded already, and scored on its whole images \\('10crop' is for streamed data\\); valid: center"),
      ("data.augmentation", "paper", "data.augmentation='paper' is not valid .*; valid: none, crop, crop_flip"),
      ("data.normalization", "zca", "data.normalization='zca' is not valid .*; valid: pixel_mean, channel_mean_std"),
      ("data.exclude_file", "bad.txt", "data.exclude_file applies to .*streamed from disk"),
      ("data.eval_resampler", "pil", "data.eval_resampler='pil' is not valid"),
      ("schedule.learning_rate", -0.1, "schedule.learning_rate=-0.1 is invalid: it must be positive"),
      ("schedule.learning_rate", 0.0, "schedule.learning_rate=0.0 is invalid"),
      ("checkpoint_every_steps", 0, "checkpoint_every_steps=0 is invalid: it must be a positive integer"),
      ("log_every_steps", -1, "log_every_steps=-1 is invalid"),
      ("keep_checkpoints", 0, "keep_checkpoints=0 is invalid: it must be at least 1"),
      ("seed", -3, "seed=-3 is invalid: it must be a non-negative integer"),
      ("label_smoothing", 1.0, "label_smoothing=1.0 is invalid"),
  ]
  for field, value, message in cases:
    bad = config.copy_and_resolve_references()
    bad.update_from_flattened_dict({field: value})
    loaded.clear()
    with pytest.raises(ConfigError, match=message):
      setup(bad)
    assert bool(loaded) == (field in CHECKED_AGAINST_THE_DATA), f"{field}: the data was loaded first: {bool(loaded)}"
  for evals, message in (({"Val": "test"}, "evals.Val='test' is invalid"), ({"val": "nope"}, "nope")):
    bad = config.copy_and_resolve_references()
    bad.evals = evals
    with pytest.raises(ConfigError, match=message):  # before training, not at its first evaluation
      setup(bad)
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(ValueError, match=r"batch_size=100 does not divide evenly over 8 devices \(per-device "
                                       r"batch 12.5\); use a multiple of 8, e.g. 96 or 104"):
    bad = config.copy_and_resolve_references()
    bad.batch_size, bad.eval_batch_size = 100, 400
    setup(bad)
