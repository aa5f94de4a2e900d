"""Per-stage output shapes, parameters and multiply-adds of any network, beside the paper's numbers.

  python -m resnet_jax.models.summary --depth=50
  python -m resnet_jax.models.summary --dataset=cifar --depth=110 --plain
  python -m resnet_jax.models.summary --depth=18 --parameters   # clu's per-parameter table
  python -m resnet_jax.models.summary --table                   # the README's model table

Multiply-adds are read off the traced forward pass (nothing is computed), so even ResNet-1202
summarises in seconds.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import flags
from clu import parameter_overview
from flax import nnx

from resnet_jax import cli, paper
from resnet_jax.models.blocks import SHORTCUT_OPTIONS
from resnet_jax.models.flops import count_params, module_macs
from resnet_jax.models.resnet import (
    DATASETS,
    DTYPES,
    IMAGENET_STAGES,
    VARIANTS,
    ModelConfig,
    ResNet,
    build_model,
)

@dataclasses.dataclass(frozen=True)
class StageRow:
  name: str
  output_shape: tuple[int, ...]
  params: int
  macs: int


def default_image_size(config: ModelConfig) -> int:
  return 224 if config.dataset == "imagenet" else 32


def stage_rows(model: ResNet, image_size: int) -> list[StageRow]:
  """One row per piece of the network (conv1, conv2_x, ..., pool + fc) for a batch of one image."""
  pieces = [("conv1" + (" + pool" if model.stem.max_pool else ""), model.stem)]
  pieces += [(f"conv{i + 2}_x", stage) for i, stage in enumerate(model.stages)]
  pieces.append(("pool + fc", model.head))
  x = jax.ShapeDtypeStruct((1, image_size, image_size, model.config.input_channels), jnp.float32)
  rows = []
  for name, piece in pieces:
    macs, x = module_macs(piece, x)
    rows.append(StageRow(name, x.shape[1:], count_params(piece), macs))
  return rows


def totals(rows: list[StageRow]) -> tuple[int, int]:
  """(parameters, multiply-adds) of the whole network."""
  return sum(r.params for r in rows), sum(r.macs for r in rows)


def paper_figure(config: ModelConfig) -> tuple[str, str] | None:
  """(table, figure) the paper gives for this exact network, if any."""
  if config.plain or config.variant != "v1":
    return None
  if config.dataset == "imagenet" and config.shortcut == "B":
    return "Table 1", f"{paper.TABLE1_GFLOPS[config.depth]} x 10^9 FLOPs (multiply-adds)"
  if config.dataset == "cifar" and config.shortcut == "A" and config.depth in paper.TABLE6_MPARAMS:
    return "Table 6", f"{paper.TABLE6_MPARAMS[config.depth]}M parameters"
  return None


def format_summary(model: ResNet, image_size: int) -> str:
  config = model.config
  rows = stage_rows(model, image_size)
  lines = [
      f"{config.describe()}, input {image_size}x{image_size}x{config.input_channels}",
      f"{'stage':<12}{'output':>16}{'params':>16}{'multiply-adds':>18}",
  ]
  for row in rows:
    shape = "x".join(map(str, row.output_shape))
    lines.append(f"{row.name:<12}{shape:>16}{row.params:>16,}{row.macs:>18,}")
  params, macs = totals(rows)
  lines.append(f"{'total':<12}{'':>16}{params:>16,}{macs:>18,}")
  lines.append(f"= {params / 1e6:.3f}M parameters, {macs / 1e9:.3f} x 10^9 multiply-adds per image")
  figure = paper_figure(config)
  if figure:
    lines.append(f"paper {figure[0]}: {figure[1]}")
  return "\n".join(lines)


def model_table() -> str:
  """The networks of Table 1 (option B) and Table 6 (option A), as a markdown table."""
  configs = [ModelConfig(depth=d, dataset="imagenet") for d in IMAGENET_STAGES]
  configs += [ModelConfig(depth=d, dataset="cifar") for d in paper.CIFAR_DEPTHS]
  lines = [
      "| network | block | blocks per stage | params | multiply-adds | paper |",
      "|---|---|---|---|---|---|",
  ]
  for config in configs:
    size = default_image_size(config)
    params, macs = totals(stage_rows(build_model(config), size))
    blocks = "/".join(map(str, config.stage_blocks))
    lines.append(
        f"| {config.family} {config.name} ({config.shortcut}) | {config.block} | {blocks} | {params:,} "
        f"| {macs / 1e9:.3f} G at {size}x{size} | {paper_figure(config)[1]} |"
    )
  return "\n".join(lines)


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_integer("depth", 50, "the network's depth", flag_values=values)
  flags.DEFINE_enum("dataset", "imagenet", list(DATASETS), "the network family", flag_values=values)
  flags.DEFINE_enum("shortcut", None, list(SHORTCUT_OPTIONS), "default: B for imagenet, A for cifar (the paper's)",
                    flag_values=values)
  flags.DEFINE_bool("plain", False, "no shortcuts (the degradation ablation)", flag_values=values)
  flags.DEFINE_enum("variant", "v1", list(VARIANTS), "block variant", flag_values=values)
  flags.DEFINE_integer("num_classes", None, "default: 1000 imagenet, 10 cifar", flag_values=values)
  flags.DEFINE_integer("input_channels", 3, "image channels", flag_values=values)
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "computation dtype", flag_values=values)
  flags.DEFINE_integer("image_size", None, "default: 224 imagenet, 32 cifar", flag_values=values)
  flags.DEFINE_bool("parameters", False, "also print every parameter (clu)", flag_values=values)
  flags.DEFINE_bool("table", False, "print the table of all paper networks", flag_values=values)


def main(argv: Sequence[str] | None = None) -> None:
  args, _ = cli.parse(argv, define_flags, __doc__)
  if args.table:
    print(model_table())
    return
  config = ModelConfig(
      depth=args.depth, dataset=args.dataset, shortcut=args.shortcut, plain=args.plain, variant=args.variant,
      num_classes=args.num_classes, input_channels=args.input_channels, dtype=args.dtype,
  )
  model = build_model(config)
  print(format_summary(model, args.image_size or default_image_size(config)))
  if args.parameters:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    print(parameter_overview.get_parameter_overview(params, include_stats=False))


def command() -> None:
  """The `resnet-jax-summary` console script (also `python -m resnet_jax.models.summary`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
