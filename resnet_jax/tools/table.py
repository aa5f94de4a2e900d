"""A markdown results table from evaluation records, beside the paper's numbers:

  python -m resnet_jax.tools.table runs/demo runs/mnist_degradation [--readme=README.md]

Reads every WORKDIR/eval/*.json (written at the end of training and by the evaluate command), keeps
each run's newest record per command, scored run, protocol, weights and split, and prints one row
each: the network, data and protocol, steps, top-1/top-5 error, the paper's errors for the same
network and protocol (Tables 2, 3, 4 and 6), what wrote the record (the trainer's final one, or the
evaluate command, naming the scored run when it is another) with the run's amendments, the command
and the hardware. Only measured numbers appear; a setting the paper does not report, or a top-5 of
5 classes or fewer, shows "-". `--readme` rewrites the block between the README's results markers.
"""

import pathlib
import re
from collections.abc import Sequence

from absl import flags

from resnet_jax import cli, paper, provenance, rundir
from resnet_jax.errors import DataError
from resnet_jax.models import ModelConfig

BEGIN, END = "<!-- results: begin (python -m resnet_jax.tools.table) -->", "<!-- results: end -->"


def find_records(paths: list[str]) -> list[dict]:
  """Each run's newest record per (command, scored run, protocol, weights, split), under the given
  runs or directories of runs."""
  newest: dict[tuple, dict] = {}
  for path in map(pathlib.Path, paths):
    for run in [path, *sorted(p for p in path.iterdir() if p.is_dir())] if path.is_dir() else []:
      own = (rundir.read_identity(run) or {}).get("id")
      for _, record in rundir.records(run):
        record["workdir"], record["own_run"] = str(run), own
        key = (record["workdir"], record.get("by", "train"), scored_run(record), record.get("protocol", "center"),
               record["weights"], record["split"])
        if key not in newest or (record["step"], record["date"]) >= (newest[key]["step"], newest[key]["date"]):
          newest[key] = record
  if not newest:
    raise FileNotFoundError(f"no evaluation records (eval/*.json) under {', '.join(paths)}")
  return sorted(newest.values(), key=_order)


def _order(record: dict) -> tuple:
  model = model_of(record)
  return record["data"], model.plain, model.depth, model.shortcut, record["workdir"]


def model_of(record: dict) -> ModelConfig:
  """The record's network, with the defaults the run had (e.g. the paper's shortcut option)."""
  return ModelConfig.from_mapping(record["config"]["model"])


def network(model: ModelConfig) -> str:
  name = model.name if model.plain else f"{model.name} ({model.shortcut})"
  return name + (f" {model.variant}" if model.variant != "v1" else "")


def paper_numbers(record: dict) -> tuple[float, float | None, str] | None:
  model = model_of(record)
  if model.variant != "v1" and model.block == "bottleneck":
    return None  # the paper's bottleneck nets are v1
  shortcut = None if model.plain else model.shortcut
  return paper.ERRORS.get((record["data"], model.depth, model.plain, shortcut, record.get("protocol", "center")))


def scored_run(record: dict) -> str | None:
  """The id of the run whose weights the record scored (None: the one it is in, for older records)."""
  return record.get("run", {}).get("id")


def origin(record: dict) -> str:
  """What wrote the record and of which run, and what the run's resumes changed."""
  by = record.get("by", "train")
  text = "final" if by == "train" and record.get("final") else by
  if scored_run(record) not in (None, record.get("own_run")):
    text += f" of {record['run']['workdir']}"
  amendments = provenance.describe_history(record.get("run", {}).get("history", []))
  return text + (f"; amended: {amendments}" if amendments else "")


def hardware(record: dict) -> str:
  h = record["hardware"]
  if h["platform"] == "cpu" and h.get("cpu"):
    return f"{h['cpu']} ({h['cores']} cores)"
  return f"{h['devices']} x {h['device_kind']}"


# How the table names weights other than the live ones (tools/precise_bn.py makes the last two).
WEIGHTS = {"ema": "EMA weights", "precise_bn": "precise BN", "ema_precise_bn": "EMA weights, precise BN"}


def rows(records: list[dict]) -> list[str]:
  header = ["network", "data (split)", "protocol", "steps", "top-1 err %", "top-5 err %", "paper top-1 / top-5 err %",
            "record", "command", "hardware"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in records:
    paper = None if r.get("ensemble") else paper_numbers(r)
    paper_text = "-" if paper is None else f"{paper[0]:.2f} / {'-' if paper[1] is None else f'{paper[1]:.2f}'} ({paper[2]})"
    weights = "" if r["weights"] in ("live", "ensemble") else f" ({WEIGHTS.get(r['weights'], r['weights'] + ' weights')})"
    name = (f"ensemble of {', '.join(m['network'] for m in r['ensemble'])}" if r.get("ensemble")
            else network(model_of(r)) + weights)
    cells = [name, f"{r['data']} ({r['split']})", r.get("protocol", "center"),
             f"{r['step']:,}", f"{r['results']['top1_error']:.2f}",
             f"{r['results']['top5_error']:.2f}" if "top5_error" in r["results"] else "-", paper_text, origin(r),
             f"`{r.get('command', '-')}`", hardware(r)]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def replace_block(text: str, table: str) -> str:
  if BEGIN not in text or END not in text:
    raise ValueError(f"the README has no results block; add the lines {BEGIN} and {END} where it goes")
  return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}\n{END}", text, flags=re.S)


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("readme", None, "rewrite this file's block between the results markers", flag_values=values)


def main(argv: Sequence[str] | None = None) -> str:
  """Prints (and with --readme writes) the table of the runs named; returns it."""
  args, paths = cli.parse(argv, define_flags, __doc__, positional=(1, None))
  try:
    table = "\n".join(rows(find_records(paths)))
    if args.readme:
      readme = pathlib.Path(args.readme)
      readme.write_text(replace_block(readme.read_text(), table))
  except (FileNotFoundError, ValueError) as error:
    raise DataError(str(error)) from None
  print(table)
  return table


def command() -> None:
  """The `resnet-jax-table` console script (also `python -m resnet_jax.tools.table`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
