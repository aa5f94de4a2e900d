"""Orbax checkpoints of a run: async saves, the last K plus the best by eval top-1, resume that
survives a corrupt latest checkpoint, and preemption by SIGTERM.

A checkpoint holds the train state and the data position (a JSON item), so a resumed run draws
the batch an uninterrupted run would have drawn. Orbax writes each step to a temporary directory
and renames it when complete, so a crash mid-save leaves the previous checkpoint untouched.
"""

import logging
import pathlib
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "top1"


class Checkpoints:
  """The checkpoint directory of one run (`workdir/checkpoints`)."""

  def __init__(self, workdir: str, *, keep: int, keep_best: bool):
    keep_policies = [policies.LatestN(n=keep)]
    if keep_best:
      keep_policies.append(policies.BestN(
          get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1,
          keep_checkpoints_without_metrics=False,
      ))
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        ),
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, metrics: dict | None = None) -> None:
    """Starts an async save; a step already on disk is left as it is."""
    if step in self.manager.all_steps():
      return
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        metrics=metrics,
    )

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores `step`, or else the newest readable checkpoint; None when there is none.

    A checkpoint that fails to read is reported and the one before it is tried.
    """
    candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if step is not None and step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {self.steps()}")
    for candidate in candidates:
      try:
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        ))
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint gets the same treatment
        logging.error(
            "checkpoint %d in %s is unreadable (%s: %s); falling back to the one before it",
            candidate, self.directory, type(error).__name__, str(error).splitlines()[0][:300],
        )
        continue
      return candidate, restored.state, dict(restored.data)
    if candidates:
      raise RuntimeError(f"no readable checkpoint in {self.directory} (tried steps {candidates})")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_weights(directory: str | pathlib.Path, abstract_weights: dict) -> dict:
  """Reads only the weights (e.g. {"params", "batch_stats"}) from the `state` item of a checkpoint
  directory: one step of a run's checkpoints, or what `resnet_jax.convert` writes."""
  path = pathlib.Path(directory).absolute() / "state"
  if not path.is_dir():
    raise FileNotFoundError(f"{directory} holds no checkpoint (no state/ inside); give a run's "
                            f"checkpoints/STEP directory or the output of python -m resnet_jax.convert")
  checkpointer = ocp.PyTreeCheckpointer()
  saved = _shapes(checkpointer.metadata(path).item_metadata.tree)
  wanted = _shapes(abstract_weights)
  mismatched = [f"{name}: saved {saved.get(name, 'nothing')}, the network has {shape}"
                for name, shape in wanted.items() if saved.get(name) != shape]
  if mismatched:
    raise ValueError(
        f"the weights in {directory} do not fit the config's network (check depth, variant, shortcut "
        f"and num_classes); {len(mismatched)} of {len(wanted)} arrays differ, e.g. {'; '.join(mismatched[:3])}")
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_weights)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=abstract_weights, restore_args=restore_args, partial_restore=True))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """Array shapes by path (list indices and their string forms alike), for the weights' keys only."""
  def name(path) -> str:
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)
  return {name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if path and name(path[:1]) in ("params", "batch_stats")}


class PreemptionWatch:
  """Turns SIGTERM into a flag the train loop checks at each step boundary.

  Over several processes, JAX's distributed runtime already takes SIGTERM (its preemption
  notifier), so the handler is left to it.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary, then exiting")
    self._event.set()

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All processes must stop at the same step: JAX's own preemption notifier (which takes SIGTERM
      # under jax.distributed) agrees on one.
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._event.is_set()

  def restore_handler(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
