"""A run's directory: what a run writes where, and how the commands and tools read it back. Every
name below is used through this module, so the layout is written down once:

  WORKDIR/
    checkpoints/STEP/        the Orbax checkpoints (checkpoint.py)
    unreadable_checkpoints/  checkpoints a restore found damaged, moved aside for inspection
    config.json              the run's whole config
    metrics.jsonl            every logged scalar: {"step": N, "train/loss": ..., "eval/top1": ...} a line
    eval/*.json              one record per evaluation (`write_record`): what was scored, the numbers,
                             the command, the hardware; the final one marks a finished run
    events.out.tfevents.*    TensorBoard's copy of the metrics (clu)
    train.log                a sweep's log of the run's output
    LOCK                     held by the trainer running in it (lock.py)
"""

import datetime
import json
import logging
import os
import pathlib
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

CHECKPOINTS = "checkpoints"
UNREADABLE_CHECKPOINTS = "unreadable_checkpoints"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval"
SWEEP_LOG = "train.log"
LOCK = "LOCK"
TRAIN_PREFIX = "train/"  # the trainer's metric names; an evaluation's: `metric_prefix`


def metric_prefix(evaluation: str | None = None, weights: str = "live") -> str:
  """The prefix of an evaluation's metric names: `eval/` for the config's eval split, `eval_NAME/`
  for a named one of `config.evals`, with `_ema` for the EMA weights' scores."""
  return f"eval{'' if evaluation is None else '_' + evaluation}{'' if weights == 'live' else '_' + weights}/"


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes a whole file or nothing: a crash never leaves one half written."""
  temporary = path.with_name(f".{path.name}.tmp")
  temporary.write_text(text)
  os.replace(temporary, path)


def write_config(workdir: str | pathlib.Path, config: Mapping) -> None:
  write_atomically(pathlib.Path(workdir) / CONFIG, json.dumps(config, indent=2, default=str) + "\n")


def read_config(workdir: str | pathlib.Path) -> dict:
  return json.loads((pathlib.Path(workdir) / CONFIG).read_text())


def start_metrics(workdir: str | pathlib.Path) -> pathlib.Path:
  """The metrics file, ready to append to: a line cut short by a crash stays apart from the resumed
  run's."""
  path = pathlib.Path(workdir) / METRICS
  if path.exists() and path.stat().st_size:
    with path.open("rb+") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        f.write(b"\n")
  return path


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """A run's logged metric records, in order; a line cut short by a crash is skipped."""
  path = pathlib.Path(workdir) / METRICS
  records = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    try:
      records.append(json.loads(line))
    except ValueError:
      if line:
        logging.warning("%s line %d is damaged (a crash while writing it?); skipped", path, number)
  return records


def is_run(path: str | pathlib.Path) -> bool:
  return (pathlib.Path(path) / METRICS).exists()


def write_record(workdir: str | pathlib.Path, step: int, config: Any, results: dict, weights: str = "live",
                 checkpoint: str | None = None, final: bool = False, evaluation: str | None = None,
                 split: str | None = None, command: str | None = None) -> pathlib.Path:
  """Writes (on process 0) the record of one evaluation: what was scored (checkpoint, weights,
  protocol, split and, for one of `config.evals`, its name), the numbers, the command that ran it
  (default: this process's), where and when; `final` marks the end of a training run."""
  import jax

  protocol = config.data.eval_view
  record = {
      "step": step, "weights": weights, "protocol": protocol, "split": split or config.data.eval_split,
      "evaluation": evaluation, "data": config.data.name, "checkpoint": checkpoint, "final": final,
      "results": results, "command": command or command_line(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "hardware": hardware(), "config": config.to_dict(),
  }
  name = f"step_{step}_{weights}_{protocol}{'' if evaluation is None else '_' + evaluation}.json"
  path = pathlib.Path(workdir) / EVAL / name
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(record, indent=2, default=str) + "\n")
  return path


def read_record(path: pathlib.Path) -> dict | None:
  """An evaluation record, or None with a warning when it cannot be read."""
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    logging.warning("skipping the unreadable evaluation record %s (%s)", path, error)
    return None


def records(workdir: str | pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
  """A run's readable evaluation records, by file name."""
  found = ((path, read_record(path)) for path in sorted((pathlib.Path(workdir) / EVAL).glob("*.json")))
  return [(path, record) for path, record in found if record is not None]


def final_record(workdir: str | pathlib.Path) -> dict | None:
  """The record training wrote at its end (of the config's eval split, live weights); None while
  the run is unfinished."""
  final = [r for _, r in records(workdir) if r.get("final") and r.get("weights") == "live"
           and r.get("evaluation") is None]
  return max(final, key=lambda r: r["step"]) if final else None


def run_of_checkpoint(directory: str) -> str | None:
  """The run a `WORKDIR/checkpoints/STEP` directory belongs to, where its records go; None otherwise."""
  path = pathlib.Path(directory).absolute()
  return str(path.parent.parent) if path.parent.name == CHECKPOINTS and path.name.isdigit() else None


def command_line(module: str | None = None, argv: Sequence[str] | None = None) -> str:
  """A command as a user would type it: `python -m module argv...` (a command run in-process, e.g.
  from a notebook), or how this process was started."""
  if module is None:
    return shlex.join(["python", *sys.orig_argv[1:]])
  return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def hardware() -> dict[str, Any]:
  import jax

  device = jax.devices()[0]
  description = {"platform": jax.default_backend(), "device_kind": device.device_kind,
                 "devices": jax.device_count(), "processes": jax.process_count(), "host": platform.node()}
  if device.platform == "cpu":
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    description.update(cpu=models[0] if models else platform.processor(), cores=os.cpu_count())
  return description
