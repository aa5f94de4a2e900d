"""Training curves in the style of the paper's Figures 4 and 6, from the metrics runs log:

  python -m resnet_jax.tools.plot runs/cifar10_depths --output=figure6.png   (a sweep: plain | ResNet)
  python -m resnet_jax.tools.plot runs/r50 --output=r50.png                  (one run)

Training error is dashed and test error solid, against iterations, one colour per depth; with plain
and residual runs among them, plain nets go on the left panel and ResNets on the right.
"""

import dataclasses
import pathlib
from collections.abc import Sequence

from absl import flags

from resnet_jax import cli, rundir
from resnet_jax.errors import DataError
from resnet_jax.models import ModelConfig


@dataclasses.dataclass
class Curves:
  name: str
  model: ModelConfig
  train: tuple[list[int], list[float]]  # steps, training error (%) over each logging window
  test: tuple[list[int], list[float]]  # steps, eval error (%)



def load_curves(workdir: str | pathlib.Path) -> Curves:
  """A run's curves from its metrics.jsonl and config.json; a step logged twice (a resume) keeps
  its last value."""
  workdir = pathlib.Path(workdir)
  model = ModelConfig.from_mapping(rundir.read_config(workdir)["model"])
  train, test = {}, {}
  for record in rundir.read_metrics(workdir):
    if f"{rundir.TRAIN_PREFIX}top1" in record:
      train[record["step"]] = 100 * (1 - record[f"{rundir.TRAIN_PREFIX}top1"])
    if f"{rundir.metric_prefix()}top1_error" in record:
      test[record["step"]] = record[f"{rundir.metric_prefix()}top1_error"]
  def series(points):
    steps = sorted(points)
    return steps, [points[s] for s in steps]
  return Curves(workdir.name, model, series(train), series(test))


def find_runs(paths: list[str]) -> list[pathlib.Path]:
  """Each path is a run (it holds metrics.jsonl) or a directory of runs (a sweep's root)."""
  runs = []
  for path in map(pathlib.Path, paths):
    if rundir.is_run(path):
      runs.append(path)
    else:
      runs += sorted(p.parent for p in path.glob(f"*/{rundir.METRICS}"))
  if not runs:
    raise FileNotFoundError(f"no run (a directory with metrics.jsonl) in {', '.join(paths)}")
  return runs


def depth_colours(depths: list[int]) -> dict[int, tuple]:
  """One colour per depth, shallow to deep along viridis (its yellow end left out: too pale)."""
  import matplotlib.pyplot as plt

  colours = plt.get_cmap("viridis")
  return {depth: colours(i / max(1, len(depths) - 1) * 0.85) for i, depth in enumerate(depths)}


def draw(curves: list[Curves], title: str | None = None, ymax: float | None = None):
  """The figure: one panel, or plain | ResNet panels sharing the error axis."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = [[c for c in curves if c.model.plain], [c for c in curves if not c.model.plain]]
  groups = [g for g in groups if g]
  figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), sharey=True, squeeze=False)
  colours = depth_colours(sorted({c.model.depth for c in curves}))
  for axis, group in zip(axes[0], groups):
    for c in sorted(group, key=lambda c: c.model.depth):
      colour = colours[c.model.depth]
      axis.plot(*c.train, linestyle="--", color=colour, linewidth=1)
      axis.plot(*c.test, linestyle="-", color=colour, linewidth=2, label=c.model.name)
    axis.set_title("plain networks" if group[0].model.plain else "ResNets")
    axis.set_xlabel("iterations")
    axis.grid(alpha=0.3)
    axis.legend(title="dashed: training, solid: test", fontsize=8, title_fontsize=8)
  axes[0][0].set_ylabel("error (%)")
  if ymax is not None:
    axes[0][0].set_ylim(0, ymax)
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  return figure


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("output", None, "the PNG to write", flag_values=values)
  flags.DEFINE_string("title", None, "a title over the figure", flag_values=values)
  flags.DEFINE_float("ymax", None, "top of the error axis in % (the paper's Figure 6 shows 0-20)", flag_values=values)
  flags.mark_flags_as_required(["output"], flag_values=values)


def main(argv: Sequence[str] | None = None) -> None:
  args, runs = cli.parse(argv, define_flags, __doc__, positional=(1, None))
  try:
    curves = [load_curves(run) for run in find_runs(runs)]
  except FileNotFoundError as error:
    raise DataError(str(error)) from None
  figure = draw(curves, args.title, args.ymax)
  pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(args.output, dpi=120)
  print(f"wrote {args.output} ({len(curves)} runs: {', '.join(c.model.name for c in curves)})")


def command() -> None:
  """The `resnet-jax-plot` console script (also `python -m resnet_jax.tools.plot`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
