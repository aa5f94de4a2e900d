"""Where a run's metrics go while it trains: clu writers (TensorBoard event files and log lines)
plus the run directory's JSON-lines copy for scripts, written by process 0 only; and how often the
loops read metrics back from the devices."""

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from resnet_jax import rundir
from resnet_jax.errors import disk_full


class Reporter:
  def __init__(self, workdir: str):
    from clu import metric_writers  # imports TensorFlow: only where metrics are written

    self.workdir = workdir
    self.is_writer = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_writer, asynchronous=True
    )
    self.jsonl = rundir.start_metrics(workdir) if self.is_writer else None

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    values = {name: float(value) for name, value in values.items()}
    self.writer.write_scalars(step, values)
    if self.is_writer:
      with self.jsonl.open("a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")

  def hparams(self, values: Mapping) -> None:
    self.writer.write_hparams(values)

  def config(self, config: Mapping, history: Sequence[Mapping] = ()) -> None:
    """The run's whole config and what resumes changed in it, for the plot and table commands (and
    for people)."""
    if self.is_writer:
      rundir.write_config(self.workdir, config, history)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


# The CPU backend deadlocks with ~30 collective steps queued: the trainer and the evaluator read
# their results (`fetch`) at least this often.
MAX_STEPS_IN_FLIGHT = 8


def fetch(pending: list[dict]) -> list[dict[str, float]]:
  """Reads device metrics to the host, which bounds the steps in flight."""
  return [{k: float(np.asarray(v)) for k, v in m.items()} for m in jax.device_get(pending)]


def host_sum(outputs: Iterable[Any], progress: Callable[[int], None] | None = None) -> Any:
  """The sum, in float64 on the host, of the device pytrees `outputs` yields (one a step, e.g. an
  eval batch's sums), read back every MAX_STEPS_IN_FLIGHT steps; `progress(steps read)` after each
  read-back. None when there are none."""
  total, done, pending = None, 0, []

  def add(results: list) -> None:
    nonlocal total, done
    for tree in results:
      tree = jax.tree.map(lambda value: np.asarray(value, np.float64), tree)
      total = tree if total is None else jax.tree.map(np.add, total, tree)
    done += len(results)
    if progress:
      progress(done)

  for output in outputs:
    pending.append(output)
    if len(pending) >= MAX_STEPS_IN_FLIGHT:
      add(jax.device_get(pending))
      pending = []
  if pending:
    add(jax.device_get(pending))
  return total


def quiet_libraries() -> None:
  """Keeps Orbax's and TensorFlow's per-save INFO chatter out of the run's log; warnings stay. A full
  disk fails each of a save's write tasks, which Orbax and asyncio report with a traceback each:
  those are dropped, as the trainer reports the full disk itself, in one line."""
  def keep(record: logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or "/tensorflow" in record.pathname
    return (record.levelno >= logging.WARNING or not noisy) and not (noisy and _about_a_full_disk(record))
  logging.getLogger("absl").addFilter(keep)
  logging.getLogger("asyncio").addFilter(lambda record: not _about_a_full_disk(record))


def _about_a_full_disk(record: logging.LogRecord) -> bool:
  error = record.exc_info[1] if record.exc_info else record.__dict__.get("exception")
  return disk_full(error or Exception(record.getMessage())) is not None
