"""The paper's Figure 7: standard deviations of the 3x3 layers' responses (after BN, before the ReLU
or the addition) over each run's eval split, plain nets beside ResNets, with the numbers as JSON:

  python -m resnet_jax.tools.responses runs/cifar10_depths --output=figure7.png   (a sweep's runs)
  python -m resnet_jax.tools.responses runs/plain56 runs/resnet56 --output=figure7.png

Each run is scored at its newest checkpoint with its own config (--data_dir when its data has
moved). The figure has the paper's two panels: the layers in network order, and the same values
sorted in descending order; ResNets are solid lines, plain nets dashed, one colour per depth.
figure7.json beside the PNG holds every layer's value (resnet_jax/responses.py says how each is
computed) and each run's checkpoint.
"""

import json
import pathlib
from collections.abc import Sequence

from absl import flags

from resnet_jax import cli, rundir
from resnet_jax.errors import DataError
from resnet_jax.reporting import quiet_libraries
from resnet_jax.tools.plot import depth_colours, find_runs

DEFINITION = ("std: the standard deviation of all of a layer's response values (every example, position and "
              "channel of the eval split); channel_std: each channel's standard deviation, averaged over the "
              "layer's channels. A response is a 3x3 convolution's output after its BN (running statistics), "
              "before the ReLU or the addition.")


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("output", None, "the PNG to write (its numbers go to the same name with .json)",
                      flag_values=values)
  flags.DEFINE_string("data_dir", None, "read the runs' data from here instead of where they trained",
                      flag_values=values)
  flags.DEFINE_string("title", None, "a title over the figure", flag_values=values)
  flags.mark_flags_as_required(["output"], flag_values=values)


def run_responses(run: pathlib.Path, data_dir: str | None = None) -> dict:
  """One run's network, checkpoint and layer responses over its eval split."""
  import ml_collections

  from resnet_jax import sharding
  from resnet_jax.checkpoint import network_of, network_weights
  from resnet_jax.experiment import setup
  from resnet_jax.models import ModelConfig
  from resnet_jax.responses import layer_responses

  directory, step, model, run_config = network_of(str(run))
  config = ml_collections.ConfigDict({k: v for k, v in run_config.items() if k != "history"})
  if data_dir:
    config.data.data_dir = data_dir
  experiment = setup(config)
  model_config = ModelConfig.from_mapping(model)
  graphdef, params, batch_stats = network_weights(directory, model, run_config,
                                                  sharding=sharding.replicated(experiment.mesh))
  layers = layer_responses(experiment, graphdef, params, batch_stats, model_config,
                           experiment.data.eval_batches(None))
  return {"run": str(run.absolute()), "checkpoint": str(directory), "step": step, "network": model_config.name,
          "plain": model_config.plain, "depth": model_config.depth, "split": config.data.eval_split,
          "data": config.data.name, "layers": layers,
          "sorted": sorted((layer["std"] for layer in layers), reverse=True)}


def draw(networks: list[dict], title: str | None = None):
  """Figure 7's two panels: std by layer index (network order), and sorted in descending order."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, (by_layer, by_size) = plt.subplots(2, 1, figsize=(7, 7))
  colours = depth_colours(sorted({n["depth"] for n in networks}))
  for n in sorted(networks, key=lambda n: (n["plain"], n["depth"])):
    style = dict(color=colours[n["depth"]], linestyle="--" if n["plain"] else "-", linewidth=1.2,
                 marker=".", markersize=3, label=n["network"])
    by_layer.plot([layer["index"] for layer in n["layers"]], [layer["std"] for layer in n["layers"]], **style)
    by_size.plot(range(1, len(n["sorted"]) + 1), n["sorted"], **style)
  by_layer.set_xlabel("layer index (original)")
  by_size.set_xlabel("layer index (sorted by magnitude)")
  for axis in (by_layer, by_size):
    axis.set_ylabel("std")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  return figure


def main(argv: Sequence[str] | None = None) -> dict:
  """Writes the figure and its JSON for the runs named; returns what the JSON holds."""
  args, paths = cli.parse(argv, define_flags, __doc__, positional=(1, None))
  quiet_libraries()
  try:
    runs = find_runs(paths)
  except FileNotFoundError as error:
    raise DataError(str(error)) from None
  networks = []
  for number, run in enumerate(runs, start=1):
    print(f"[{number}/{len(runs)}] {run}", flush=True)
    networks.append(run_responses(run, args.data_dir))
    layers = networks[-1]["layers"]
    print(f"  {networks[-1]['network']}: {len(layers)} layers, std {min(l['std'] for l in layers):.3f} to "
          f"{max(l['std'] for l in layers):.3f}", flush=True)
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  numbers = {"definition": DEFINITION, "command": rundir.command_line("resnet_jax.tools.responses", argv),
             "networks": networks}
  rundir.write_atomically(output.with_suffix(".json"), json.dumps(numbers, indent=2) + "\n")
  draw(networks, args.title).savefig(output, dpi=120)
  print(f"wrote {output} and {output.with_suffix('.json')} ({len(networks)} runs)")
  return numbers


def command() -> None:
  """The `resnet-jax-responses` console script (also `python -m resnet_jax.tools.responses`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
