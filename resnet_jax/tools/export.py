"""Exports a checkpoint's weights in torchvision's ResNet layout, the inverse of tools/convert.py, so a
network trained here runs in PyTorch:

  python -m resnet_jax.tools.export --workdir=runs/r50 --output=r50.pth            # torch.save
  python -m resnet_jax.tools.export --workdir=runs/r50 --output=r50.safetensors    # no torch needed
      [--step=N] [--weights=ema]

  model = torchvision.models.resnet50(num_classes=...); model.load_state_dict(torch.load("r50.pth"))

Only the networks torchvision has: ImageNet depths with option B shortcuts, the v1 blocks for 18/34
and v1.5 for 50/101/152, three input channels, no BlurPool. Others (option A or C shortcuts, plain
and CIFAR nets, v1 bottlenecks, whose weights would load into torchvision's model but compute
something else) are refused. A JSON file beside the export records the run, step, weights and the
input normalisation the network expects.
"""

import json
import pathlib
import struct
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import flags

from resnet_jax import cli, rundir
from resnet_jax.errors import ConfigError, UserError
from resnet_jax.tools.convert import ARCHS, torchvision_name

FORMATS = (".pth", ".safetensors")
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


def torchvision_arch(model: Mapping) -> str:
  """torchvision's name for the network a model config describes; ConfigError where it has none."""
  depth, variant = model.get("depth"), model.get("variant", "v1")
  if model.get("dataset", "imagenet") != "imagenet":
    raise ConfigError(f"torchvision has no layout for this network: dataset={model.get('dataset')!r} "
                      f"(torchvision's ResNets are the ImageNet ones)")
  expected_variant = "v1" if depth in (18, 34) else "v1.5"
  differences = [
      *(["plain=True (no shortcuts)"] if model.get("plain") else []),
      *([f"shortcut={model.get('shortcut')!r} (torchvision's are option B)"]
        if model.get("shortcut") not in (None, "B") else []),
      *([f"variant={variant!r} (torchvision's ResNet-{depth} is {expected_variant})"]
        if variant != expected_variant else []),
      *([f"input_channels={model.get('input_channels')}"] if model.get("input_channels", 3) != 3 else []),
      *(["blurpool=True"] if model.get("blurpool") else []),
  ]
  if differences:
    raise ConfigError(f"torchvision has no layout for this network: {'; '.join(differences)}")
  return next(arch for arch, arch_depth in ARCHS.items() if arch_depth == depth)


def _to_torchvision(name: str, value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # convolution: (h, w, in, out) -> (out, in, h, w)
    return value.transpose(3, 2, 0, 1)
  if name == "fc.weight":
    return value.T
  return value


def export_state_dict(params: Mapping, batch_stats: Mapping) -> dict[str, np.ndarray]:
  """torchvision's state dict (numpy arrays, C-contiguous) of our weights, with the
  `num_batches_tracked` counters its BN layers carry (0: they are not used in eval mode)."""
  exported = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path({"params": params, "batch_stats": batch_stats})[0]:
    keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
    name = torchvision_name(keys)
    exported[name] = np.ascontiguousarray(_to_torchvision(name, np.asarray(leaf)))
    if name.endswith(".running_mean"):
      exported[name.replace("running_mean", "num_batches_tracked")] = np.array(0, np.int64)
  return exported


def write_safetensors(state_dict: Mapping[str, np.ndarray], path: pathlib.Path, metadata: Mapping[str, str]) -> None:
  """The safetensors format: a little-endian u64 header length, a JSON header of each tensor's dtype,
  shape and byte range, padded to 8 bytes, then the tensors' bytes in that order."""
  header, offset = {"__metadata__": dict(metadata)}, 0
  for name, value in state_dict.items():
    header[name] = {"dtype": _SAFETENSORS_DTYPES[value.dtype], "shape": list(value.shape),
                    "data_offsets": [offset, offset + value.nbytes]}
    offset += value.nbytes
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  with open(path, "wb") as file:
    file.write(struct.pack("<Q", len(encoded)) + encoded)
    for value in state_dict.values():
      file.write(value.astype(value.dtype.newbyteorder("<")).tobytes())


def write_pth(state_dict: Mapping[str, np.ndarray], path: pathlib.Path) -> None:
  try:
    import torch
  except ImportError:
    raise UserError("writing a .pth needs torch (pip install torch); a .safetensors output does not") from None
  torch.save({name: torch.from_numpy(value.copy()) for name, value in state_dict.items()}, path)


def _normalization(config: Mapping | None) -> str:
  """The input the network expects, in torchvision's terms where they apply (a converted checkpoint:
  torchvision's own)."""
  data = config["data"] if config else {"source": "folder", "normalization": "channel_mean_std"}
  imagenet_statistics = data.get("source") == "folder" or str(data.get("name", "")).startswith("imagenet")
  if data.get("normalization") == "channel_mean_std" and imagenet_statistics:
    return ("RGB scaled to [0, 1], then torchvision's Normalize(mean=(0.485, 0.456, 0.406), "
            "std=(0.229, 0.224, 0.225))")
  return f"as the run's data.normalization={data.get('normalization')!r} (see its config.json)"


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "the run whose checkpoint to export (or a converted checkpoint)",
                      flag_values=values)
  flags.DEFINE_string("output", None, "the file to write: NAME.pth (needs torch) or NAME.safetensors",
                      flag_values=values)
  flags.DEFINE_integer("step", None, "the checkpoint's step (default: the newest)", flag_values=values)
  flags.DEFINE_enum("weights", "live", ["live", "ema"], "the trained weights or their EMA", flag_values=values)
  flags.mark_flags_as_required(["workdir", "output"], flag_values=values)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  """Exports the checkpoint the flags name; returns the file written."""
  args, _ = cli.parse(argv, define_flags, __doc__)
  output = pathlib.Path(args.output).absolute()
  if output.suffix not in FORMATS:
    raise ConfigError(f"--output={args.output}: name a .pth or a .safetensors file")
  if output.exists():
    raise ConfigError(f"{output} exists; an export never replaces a file: choose another --output")
  from resnet_jax.checkpoint import network_of, network_weights

  named = pathlib.Path(args.workdir) / rundir.CHECKPOINTS / str(args.step) if args.step else args.workdir
  directory, step, model, config = network_of(str(named))
  arch = torchvision_arch(model)
  _, params, batch_stats = network_weights(directory, model, config, ema=args.weights == "ema")
  state_dict = export_state_dict(params, batch_stats)
  num_classes = state_dict["fc.bias"].shape[0]
  description = {"checkpoint": str(directory), "step": step, "weights": args.weights,
                 "torchvision": f"torchvision.models.{arch}(num_classes={num_classes})",
                 "input": _normalization(config), "model": model,
                 "command": rundir.command_line("resnet_jax.tools.export", argv)}
  output.parent.mkdir(parents=True, exist_ok=True)
  if output.suffix == ".pth":
    write_pth(state_dict, output)
  else:
    write_safetensors(state_dict, output, {k: json.dumps(v) if not isinstance(v, str) else v
                                           for k, v in description.items()})
  rundir.write_atomically(output.with_name(output.name + ".json"), json.dumps(description, indent=2) + "\n")
  print(f"wrote {output} (step {step}, {args.weights} weights); load it with "
        f"{description['torchvision']}.load_state_dict(...); input: {description['input']}")
  return output


def command() -> None:
  """The `resnet-jax-export` console script (also `python -m resnet_jax.tools.export`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
