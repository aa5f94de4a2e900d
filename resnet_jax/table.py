"""A markdown results table from evaluation records, beside the paper's numbers:

  python -m resnet_jax.table runs/demo runs/mnist_degradation [--readme=README.md]

Reads every WORKDIR/eval/*.json (written at the end of training and by the evaluate command), keeps
each run's newest record per protocol and weights, and prints one row each: the network, data and
protocol, steps, top-1/top-5 error, the paper's errors for the same network and protocol (Tables 2,
3, 4 and 6), the command and the hardware. Only measured numbers appear; a setting the paper does
not report shows "-". `--readme` rewrites the block between the README's results markers.
"""

import pathlib
import re

from absl import app, flags

from resnet_jax.models import ModelConfig
from resnet_jax.reporting import read_record

BEGIN, END = "<!-- results: begin (python -m resnet_jax.table) -->", "<!-- results: end -->"

# (data, depth, plain, shortcut, protocol) -> (top-1 error, top-5 error or None, where in the paper).
# ImageNet rows are the paper's v1 networks; plain nets have no shortcut.
PAPER: dict[tuple, tuple[float, float | None, str]] = {
    ("imagenet2012", 18, True, None, "10crop"): (27.94, None, "Table 2"),
    ("imagenet2012", 18, False, "A", "10crop"): (27.88, None, "Table 2"),
    ("imagenet2012", 34, True, None, "10crop"): (28.54, 10.02, "Tables 2-3"),
    ("imagenet2012", 34, False, "A", "10crop"): (25.03, 7.76, "Tables 2-3"),
    ("imagenet2012", 34, False, "B", "10crop"): (24.52, 7.46, "Table 3"),
    ("imagenet2012", 34, False, "C", "10crop"): (24.19, 7.40, "Table 3"),
    ("imagenet2012", 50, False, "B", "10crop"): (22.85, 6.71, "Table 3"),
    ("imagenet2012", 101, False, "B", "10crop"): (21.75, 6.05, "Table 3"),
    ("imagenet2012", 152, False, "B", "10crop"): (21.43, 5.71, "Table 3"),
    ("imagenet2012", 34, False, "B", "multiscale"): (21.84, 5.71, "Table 4"),
    ("imagenet2012", 34, False, "C", "multiscale"): (21.53, 5.60, "Table 4"),
    ("imagenet2012", 50, False, "B", "multiscale"): (20.74, 5.25, "Table 4"),
    ("imagenet2012", 101, False, "B", "multiscale"): (19.87, 4.60, "Table 4"),
    ("imagenet2012", 152, False, "B", "multiscale"): (19.38, 4.49, "Table 4"),
    ("cifar10", 20, False, "A", "center"): (8.75, None, "Table 6"),
    ("cifar10", 32, False, "A", "center"): (7.51, None, "Table 6"),
    ("cifar10", 44, False, "A", "center"): (7.17, None, "Table 6"),
    ("cifar10", 56, False, "A", "center"): (6.97, None, "Table 6"),
    ("cifar10", 110, False, "A", "center"): (6.43, None, "Table 6"),
    ("cifar10", 1202, False, "A", "center"): (7.93, None, "Table 6"),
}


def find_records(paths: list[str]) -> list[dict]:
  """Each run's newest record per (protocol, weights), under the given runs or directories of runs."""
  newest: dict[tuple, dict] = {}
  for path in map(pathlib.Path, paths):
    for file in sorted(path.glob("eval/*.json")) + sorted(path.glob("*/eval/*.json")):
      record = read_record(file)
      if record is None:
        continue
      record["workdir"] = str(file.parent.parent)
      key = (record["workdir"], record.get("protocol", "center"), record["weights"])
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
  name = f"plain-{model.depth}" if model.plain else f"ResNet-{model.depth} ({model.shortcut})"
  return name + (f" {model.variant}" if model.variant != "v1" else "")


def paper_numbers(record: dict) -> tuple[float, float | None, str] | None:
  model = model_of(record)
  if model.variant != "v1" and model.block == "bottleneck":
    return None  # the paper's bottleneck nets are v1
  shortcut = None if model.plain else model.shortcut
  return PAPER.get((record["data"], model.depth, model.plain, shortcut, record.get("protocol", "center")))


def hardware(record: dict) -> str:
  h = record["hardware"]
  if h["platform"] == "cpu" and h.get("cpu"):
    return f"{h['cpu']} ({h['cores']} cores)"
  return f"{h['devices']} x {h['device_kind']}"


def rows(records: list[dict]) -> list[str]:
  header = ["network", "data (split)", "protocol", "steps", "top-1 err %", "top-5 err %", "paper top-1 / top-5 err %",
            "command", "hardware"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in records:
    paper = paper_numbers(r)
    paper_text = "-" if paper is None else f"{paper[0]:.2f} / {'-' if paper[1] is None else f'{paper[1]:.2f}'} ({paper[2]})"
    weights = "" if r["weights"] == "live" else f" ({r['weights']} weights)"
    cells = [network(model_of(r)) + weights, f"{r['data']} ({r['split']})", r.get("protocol", "center"),
             f"{r['step']:,}", f"{r['results']['top1_error']:.2f}", f"{r['results']['top5_error']:.2f}", paper_text,
             f"`{r.get('command', '-')}`", hardware(r)]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def replace_block(text: str, table: str) -> str:
  if BEGIN not in text or END not in text:
    raise ValueError(f"the README has no results block; add the lines {BEGIN} and {END} where it goes")
  return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}\n{END}", text, flags=re.S)


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    raise app.UsageError("usage: python -m resnet_jax.table RUN_OR_SWEEP_DIR... [--readme=README.md]")
  try:
    table = "\n".join(rows(find_records(argv[1:])))
    if flags.FLAGS.readme:
      readme = pathlib.Path(flags.FLAGS.readme)
      readme.write_text(replace_block(readme.read_text(), table))
  except (FileNotFoundError, ValueError) as error:
    raise SystemExit(f"error: {error}") from None
  print(table)


def command() -> None:
  """The `resnet-jax-table` console script (also `python -m resnet_jax.table`)."""
  flags.DEFINE_string("readme", None, "rewrite this file's block between the results markers")
  app.run(main)


if __name__ == "__main__":
  command()
