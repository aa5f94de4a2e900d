"""Converts torchvision ResNet weights into a checkpoint the evaluate command scores, to check our eval
pipeline against torchvision's published accuracy (ResNet-50 IMAGENET1K_V1: 76.13% / 92.86%):

  python -m resnet_jax.tools.convert torchvision --arch resnet50 --input resnet50.pth --output DIR
  python -m resnet_jax.evaluate --config=configs/imagenet.py:depth=50,variant=v1.5 --checkpoint=DIR \\
      --config.data.data_dir=/data/imagenet

torchvision's ResNets are ours with option B shortcuts and, for 50/101/152, the v1.5 stride
placement; convolutions pad k//2 on both sides in both. Needs torch (`pip install torch`); the file
is read with `weights_only=True`, so it cannot run code.
"""

import pathlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import flags

from resnet_jax import cli
from resnet_jax.checkpoint import save_weights
from resnet_jax.errors import ConfigError, UserError

ARCHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def model_config(arch: str) -> dict:
  if arch not in ARCHS:
    raise ValueError(f"unknown torchvision architecture {arch!r}; valid: {', '.join(ARCHS)}")
  depth = ARCHS[arch]
  return dict(depth=depth, dataset="imagenet", shortcut="B", variant="v1" if depth < 50 else "v1.5")


def torchvision_name(path: tuple) -> str:
  """The torchvision state-dict key of one of our arrays, given its path in our weights."""
  _, *module, leaf = path  # the first key is "params" or "batch_stats"
  bn = _BN.get(leaf)
  match module:
    case ["stem", "conv"]:
      return "conv1.weight"
    case ["stem", "norm"]:
      return f"bn1.{bn}"
    case ["head", "fc"]:
      return f"fc.{'weight' if leaf == 'kernel' else leaf}"
    case ["stages", stage, "layers", block, "convs", i]:
      return f"layer{stage + 1}.{block}.conv{i + 1}.weight"
    case ["stages", stage, "layers", block, "norms", i]:
      return f"layer{stage + 1}.{block}.bn{i + 1}.{bn}"
    case ["stages", stage, "layers", block, "shortcut", "conv"]:
      return f"layer{stage + 1}.{block}.downsample.0.weight"
    case ["stages", stage, "layers", block, "shortcut", "norm"]:
      return f"layer{stage + 1}.{block}.downsample.1.{bn}"
  raise ValueError(f"no torchvision counterpart for {'/'.join(map(str, path))}")


def _to_ours(name: str, value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # convolution: (out, in, h, w) -> (h, w, in, out)
    return value.transpose(2, 3, 1, 0)
  if name == "fc.weight":  # (out, in) -> (in, out)
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str, dtype: type = np.float32,
                       **model_overrides) -> dict:
  """Our {"params", "batch_stats"} for torchvision's `arch` from its state dict (numpy arrays), as
  `dtype`; `model_overrides` change our network's config (e.g. num_classes, or variant='v1' for a
  torch model with the paper's stride placement).

  Every array of ours must be found with its shape, and every torchvision array used (BN's
  num_batches_tracked aside), else one error lists what does not match.
  """
  from flax import nnx

  from resnet_jax.models import build_model

  state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
  model = nnx.eval_shape(lambda: build_model(model_config(arch) | model_overrides))
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  target = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}
  used, problems = set(), []

  def fill(path, shape_dtype):
    keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
    name = torchvision_name(keys)
    if name not in state_dict:
      problems.append(f"{name} is missing")
      return None
    used.add(name)
    value = _to_ours(name, np.asarray(state_dict[name], dtype))
    if value.shape != shape_dtype.shape:
      problems.append(f"{name} has shape {value.shape} in our layout, expected {shape_dtype.shape}")
    return value

  converted = jax.tree_util.tree_map_with_path(fill, target)
  unused = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
  problems += [f"{name} is not used" for name in unused]
  if problems:
    raise ValueError(f"the state dict does not match torchvision's {arch} ({len(problems)} problems): "
                     + "; ".join(problems[:5]))
  return converted


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise UserError("converting torchvision weights needs torch: pip install torch") from None
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model"):  # training-script checkpoints wrap the weights
    if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
      loaded = loaded[key]
  return {k: v.detach().float().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_enum("arch", None, list(ARCHS), "torchvision architecture", flag_values=values)
  flags.DEFINE_string("input", None, "a torchvision state dict (.pth)", flag_values=values)
  flags.DEFINE_string("output", None, "directory for the converted checkpoint", flag_values=values)
  flags.mark_flags_as_required(["arch", "input", "output"], flag_values=values)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  """Converts the weights the flags name; returns the checkpoint directory written."""
  args, (source,) = cli.parse(argv, define_flags, __doc__, positional=(1, 1))
  if source != "torchvision":
    raise ConfigError(f"unknown source {source!r}; the converter reads torchvision weights: "
                      f"python -m resnet_jax.tools.convert torchvision --arch=... --input=... --output=...")
  try:
    weights = convert_state_dict(load_torch_state_dict(args.input), args.arch)
    config = model_config(args.arch)
    variant = f",variant={config['variant']}" if config["variant"] != "v1" else ""
    evaluate_config = f"configs/imagenet.py:depth={config['depth']}{variant}"
    output = save_weights(args.output, weights, "converted.json", {
        "source": "torchvision", "arch": args.arch, "input": args.input, "model": config,
        "evaluate_config": evaluate_config})
  except (ValueError, FileExistsError, FileNotFoundError) as error:
    raise ConfigError(str(error)) from None
  print(f"wrote {output}; score it with:\n  python -m resnet_jax.evaluate --config={evaluate_config} "
        f"--checkpoint={output} --config.data.data_dir=/path/to/imagenet")
  return output


def command() -> None:
  """The `resnet-jax-convert` console script (also `python -m resnet_jax.tools.convert`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
