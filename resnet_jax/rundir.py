"""A run's directory: what a run writes where, and how the commands and tools read it back. Every
name below is used through this module, so the layout is written down once:

  WORKDIR/
    checkpoints/STEP/        the Orbax checkpoints (checkpoint.py)
    unreadable_checkpoints/  checkpoints a restore found damaged, moved aside for inspection
    precise_bn/NAME/         a checkpoint's weights with recomputed BN statistics (tools/precise_bn.py),
                             new checkpoints beside the originals, each saying what made it
    run.json                 the run's identity: its config and data at the first start, and the
                             history of what a resume changed (provenance.py)
    config.json              the run's whole config as it is now, with that history
    metrics.jsonl            every logged scalar: {"step": N, "train/loss": ..., "eval/top1": ...} a line
    eval/*.json              one record per evaluation (`write_record`), written once and never
                             replaced: what was scored and by which command, the numbers, the
                             hardware; the trainer's final one marks a finished run
    events.out.tfevents.*    TensorBoard's copy of the metrics (clu)
    train.log                a sweep's log of the run's output
    LOCK                     held by the trainer running in it (lock.py)
"""

import datetime
import itertools
import json
import logging
import os
import pathlib
import platform
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

CHECKPOINTS = "checkpoints"
UNREADABLE_CHECKPOINTS = "unreadable_checkpoints"
PRECISE_BN = "precise_bn"
CONFIG = "config.json"
IDENTITY = "run.json"
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


def _write_json(path: pathlib.Path, value: Any) -> None:
  write_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


def write_config(workdir: str | pathlib.Path, config: Mapping, history: Sequence[Mapping] = ()) -> None:
  """The config as it is now; `history` (what resumes changed) is kept beside it when there is any."""
  _write_json(pathlib.Path(workdir) / CONFIG, {**config, "history": list(history)} if history else config)


def read_config(workdir: str | pathlib.Path) -> dict:
  return json.loads((pathlib.Path(workdir) / CONFIG).read_text())


def write_identity(workdir: str | pathlib.Path, identity: Mapping) -> None:
  _write_json(pathlib.Path(workdir) / IDENTITY, identity)


def read_identity(workdir: str | pathlib.Path) -> dict | None:
  """The run's identity (provenance.py), or None for a run that has none yet."""
  path = pathlib.Path(workdir) / IDENTITY
  return json.loads(path.read_text()) if path.exists() else None


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
                 split: str | None = None, command: str | None = None, by: str = "train",
                 run: Mapping | None = None, ensemble: Sequence[Mapping] = (),
                 source: Mapping | None = None) -> pathlib.Path:
  """Writes (on process 0) the record of one evaluation: what was scored (checkpoint, weights,
  protocol, split and, for one of `config.evals`, its name), by which command (`by`: 'train' or
  'evaluate'; `command`, default this process's), the run whose weights they are (`run`: its
  workdir, data and history) or, for an ensemble, every member (`ensemble`), for a set from another
  source what it is (`source`), the numbers, where and when; `final` marks the end of a training run.

  A record is never replaced: a name already taken gets a number (`..._2.json`)."""
  import jax

  protocol = config.data.eval_view
  split = split or config.data.eval_split
  record = {
      "step": step, "weights": weights, "protocol": protocol, "split": split,
      "evaluation": evaluation, "data": config.data.name, "checkpoint": checkpoint, "final": final, "by": by,
      "results": results, "command": command or command_line(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "hardware": hardware(), "run": dict(run or {}), "config": config.to_dict(),
      **({"ensemble": [dict(member) for member in ensemble]} if ensemble else {}),
      **({"source": dict(source)} if source else {}),
  }
  scored = evaluation if by == "train" else re.sub(r"[^\w.-]+", "_", evaluation or split).strip("_")
  name = f"{'' if by == 'train' else by + '_'}step_{step}_{weights}_{protocol}{'' if scored is None else '_' + scored}"
  directory = pathlib.Path(workdir) / EVAL
  if jax.process_index() != 0:
    return directory / f"{name}.json"
  directory.mkdir(parents=True, exist_ok=True)
  return write_once(directory, name, json.dumps(record, indent=2, default=str) + "\n")


def write_once(directory: pathlib.Path, name: str, text: str) -> pathlib.Path:
  """Writes `directory/NAME.json` whole, or `NAME_2.json` etc. when that is taken: the link that
  puts it in place fails rather than replace a file, so two writers never overwrite each other."""
  temporary = directory / f".{name}.{os.getpid()}.tmp"
  temporary.write_text(text)
  try:
    for number in itertools.count(1):
      path = directory / (f"{name}.json" if number == 1 else f"{name}_{number}.json")
      try:
        os.link(temporary, path)
        return path
      except FileExistsError:
        continue
  finally:
    temporary.unlink()


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
  final = [r for _, r in records(workdir) if r.get("final") and r.get("by", "train") == "train"
           and r.get("weights") == "live" and r.get("evaluation") is None]
  return max(final, key=lambda r: r["step"]) if final else None


def newest_checkpoint(workdir: str | pathlib.Path) -> int | None:
  """The newest committed checkpoint's step, from the directory names alone (Orbax's in-progress
  saves have other names); None when there is none."""
  directory = pathlib.Path(workdir) / CHECKPOINTS
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
  return max(steps, default=None)


def run_of_checkpoint(directory: str) -> str | None:
  """The run a `WORKDIR/checkpoints/STEP` or `WORKDIR/precise_bn/NAME` directory belongs to, where
  its records go; None otherwise."""
  path = pathlib.Path(directory).absolute()
  in_run = path.parent.name == CHECKPOINTS and path.name.isdigit() or path.parent.name == PRECISE_BN
  return str(path.parent.parent) if in_run else None


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
  if device.platform == "cpu":  # the ISA and XLA's flags choose the kernels, and so the rounding
    from resnet_jax.tools import cpu

    facts = cpu.cpu_facts()
    description.update(cpu=facts["cpu"] if facts["cpu"] != "unknown" else platform.processor(), cores=os.cpu_count(),
                       isa=facts["isa"], xla_flags=facts["xla_flags"])
  return description
