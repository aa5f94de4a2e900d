"""Where metrics go: clu writers (TensorBoard event files and log lines) plus a JSON-lines copy for
scripts, written by process 0 only."""

import json
import logging
import os
import pathlib
from collections.abc import Mapping

import jax
import numpy as np


class Reporter:
  def __init__(self, workdir: str):
    from clu import metric_writers  # imports TensorFlow: only where metrics are written

    self.is_writer = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_writer, asynchronous=True
    )
    self.jsonl = pathlib.Path(workdir) / "metrics.jsonl"
    if self.is_writer and self.jsonl.exists() and self.jsonl.stat().st_size:
      with self.jsonl.open("rb+") as f:  # a line cut short by a crash stays apart from the resumed run's
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
          f.write(b"\n")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    values = {name: float(value) for name, value in values.items()}
    self.writer.write_scalars(step, values)
    if self.is_writer:
      with self.jsonl.open("a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")

  def hparams(self, values: Mapping) -> None:
    self.writer.write_hparams(values)

  def config(self, config: Mapping) -> None:
    """The run's whole config as `config.json`, for the plot and table commands (and for people)."""
    if self.is_writer:
      write_atomically(self.jsonl.parent / "config.json", json.dumps(config, indent=2, default=str) + "\n")

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  """The JSON-lines copy of a run's metrics, in order; a line cut short by a crash is skipped."""
  records = []
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
    try:
      records.append(json.loads(line))
    except ValueError:
      if line:
        logging.warning("%s line %d is damaged (a crash while writing it?); skipped", path, number)
  return records


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes a whole file or nothing: a crash never leaves one half written."""
  temporary = path.with_name(f".{path.name}.tmp")
  temporary.write_text(text)
  os.replace(temporary, path)


def read_record(path: pathlib.Path) -> dict | None:
  """An evaluation record (eval/*.json), or None with a warning when it cannot be read."""
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    logging.warning("skipping the unreadable evaluation record %s (%s)", path, error)
    return None


# The CPU backend deadlocks with ~30 collective steps queued: the trainer and the evaluator read
# their results (`fetch`) at least this often.
MAX_STEPS_IN_FLIGHT = 8


def fetch(pending: list[dict]) -> list[dict[str, float]]:
  """Reads device metrics to the host, which bounds the steps in flight."""
  return [{k: float(np.asarray(v)) for k, v in m.items()} for m in jax.device_get(pending)]


def quiet_libraries() -> None:
  """Keeps Orbax's and TensorFlow's per-save INFO chatter out of the run's log; warnings stay."""
  def keep(record: logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or "/tensorflow" in record.pathname
    return record.levelno >= logging.WARNING or not noisy
  logging.getLogger("absl").addFilter(keep)
