"""Where a run's metrics go while it trains: clu writers (TensorBoard event files and log lines)
plus the run directory's JSON-lines copy for scripts, written by process 0 only; and how often the
loops read metrics back from the devices."""

import json
import logging
from collections.abc import Mapping

import jax
import numpy as np

from resnet_jax import rundir


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

  def config(self, config: Mapping) -> None:
    """The run's whole config, for the plot and table commands (and for people)."""
    if self.is_writer:
      rundir.write_config(self.workdir, config)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


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
