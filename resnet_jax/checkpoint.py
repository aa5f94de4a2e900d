"""Orbax checkpoints of a run: async saves, the last K plus the best by eval top-1, and a resume
that never uses a damaged or mislabelled checkpoint.

A checkpoint holds the train state and the data position (a JSON item), so a resumed run draws
the batch an uninterrupted run would have drawn. What this module guarantees on top of Orbax:
- Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save
  leaves the previous checkpoint untouched.
- A state holding NaN or infinite values is never written (`save` checks it on the device first).
- Once a save has committed, a manifest of SHA-256 checksums of every file (`manifest.sha256`,
  `sha256sum -c` format) is written beside it; a restore verifies it, so a flipped byte is caught
  instead of restoring changed weights.
- A checkpoint that fails to verify or read is reported, moved to `WORKDIR/unreadable_checkpoints/`
  (kept for inspection, and so the step is written again) and the one before it is used.
- A checkpoint of another network (depth, classes, EMA on/off) is named as such, not as damage.
Readers (the evaluate command) open the directory read-only: they never delete or move anything.
`weights_from_run` and `weights_from_directory` load the weights to score.
"""

import datetime
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from resnet_jax import rundir
from resnet_jax.errors import CheckpointError, ConfigError, DiskFull, TrainingDiverged

BEST_METRIC = "top1"
MANIFEST = "manifest.sha256"
PRECISE_BN_RECORD = "precise_bn.json"  # what a precise-BN checkpoint says of itself (tools/precise_bn.py)
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")


# What to do when training diverges: a rerun with another rate changes the run, so it must say so.
DIVERGED_FIX = ("Lower schedule.learning_rate or add schedule.warmup and rerun with --amend naming the changed fields "
                "(e.g. --amend=schedule.learning_rate), which resumes from that checkpoint and records the change; "
                "or start again in a new --workdir.")


def disk_full_error(problem: str, newest: int | None) -> DiskFull:
  """A full disk's one line: what failed, which checkpoint is intact, and how to go on."""
  kept = f"checkpoint {newest} is intact" if newest else "no checkpoint was written"
  return DiskFull(f"{problem}; {kept}. Free space (or use a --workdir elsewhere) and rerun the same command to resume")


class CorruptCheckpoint(Exception):
  """A checkpoint's files differ from its manifest."""


class Checkpoints:
  """The checkpoint directory of one run (`workdir/checkpoints`); `read_only` for the readers of a
  run that may be training at the same time."""

  def __init__(self, workdir: str, *, keep: int, keep_best: bool, read_only: bool = False):
    keep_policies = [policies.LatestN(n=keep)]
    if keep_best:
      keep_policies.append(policies.BestN(
          get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1,
          keep_checkpoints_without_metrics=False,
      ))
    self.read_only = read_only
    self.directory = pathlib.Path(workdir).absolute() / rundir.CHECKPOINTS
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            # A reader must not clean up: the trainer's in-progress save is a temporary directory.
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=True,
            read_only=read_only,
        ),
    )
    self._sealing: threading.Thread | None = None

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def newest(self) -> int | None:
    """The newest complete checkpoint, once any save in flight has finished."""
    self.wait()
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_state: dict, metrics: dict | None = None) -> None:
    """Starts an async save of a state checked finite; a step already on disk is left as it is."""
    nonfinite = {part: count for part, count in nonfinite_counts(state).items() if count}
    if nonfinite:
      newest = self.newest()
      kept = f"the newest checkpoint, step {newest}, holds only finite values" if newest else "no checkpoint was written"
      raise TrainingDiverged(
          f"the train state after step {step} holds non-finite values "
          f"({', '.join(f'{n:,} in {part}' for part, n in nonfinite.items())}) and was not saved; {kept}. "
          f"{DIVERGED_FIX}")
    if step in self.manager.all_steps():
      return
    self.wait()  # Orbax would wait for the previous save too; this also seals it first.
    self._check_space(step, state)
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        metrics=metrics,
    )
    if jax.process_index() == 0:
      self._sealing = threading.Thread(target=self._seal, args=(step,), daemon=True)
      self._sealing.start()

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save the file system has no room for, before Orbax writes any of it: its many
    concurrent writes would each fail with a traceback of their own."""
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) * 1.1 + 2**18  # + metadata, manifest
    existing = self.directory if self.directory.exists() else self.directory.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
      raise disk_full_error(f"no room for checkpoint {step} in {self.directory}: it needs about "
                            f"{needed / 2**20:,.1f} MB and {free / 2**20:,.1f} MB are free", self.newest())

  def _seal(self, step: int) -> None:
    """Writes the step's manifest as soon as Orbax has committed it (renamed into place). It polls:
    waiting on Orbax from this thread would take the save's errors away from the trainer."""
    while self.manager.is_saving_in_progress():
      time.sleep(0.02)
    final = self.directory / str(step)
    if final.is_dir():  # absent when the save failed (Orbax reports that itself)
      write_manifest(final)

  def wait(self) -> None:
    """Until the save in flight, and its manifest, are on disk."""
    if self._sealing is not None:
      self._sealing.join()
      self._sealing = None
    self.manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores `step`, or else the newest usable checkpoint; None when there is none.

    A checkpoint that fails its manifest, fails to read or holds non-finite values is reported,
    moved aside (unless read-only) and the one before it tried. One written for another network
    is a ConfigError naming the difference.
    """
    if step is not None and step not in self.manager.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; have {self.steps()}")
    candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    unreadable = []
    for candidate in candidates:
      path = self.directory / str(candidate)
      try:
        if not verify_manifest(path):
          logging.warning("checkpoint %d has no %s (the run stopped before writing it): restoring it "
                          "unverified", candidate, MANIFEST)
        _check_structure(candidate, _saved_tree(path / "state"), abstract_state)
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        ))
        nonfinite = {part: n for part, n in nonfinite_counts(restored.state).items() if n}
        if nonfinite:
          raise CorruptCheckpoint(f"it holds non-finite values: {nonfinite}")
        if dict(restored.data).get("step") != candidate:
          raise CorruptCheckpoint(f"its data position {dict(restored.data)} is not step {candidate}")
      except ConfigError:
        raise
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint gets the same treatment
        unreadable.append(candidate)
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        logging.error("checkpoint %d in %s is unreadable (%s); %s", candidate, self.directory, reason,
                      "falling back to the one before it" if candidate != candidates[-1] else "no older one")
        self._move_aside(candidate)
        continue
      self._reload_after_moving(unreadable)
      return candidate, restored.state, dict(restored.data)
    self._reload_after_moving(unreadable)
    if candidates:
      moved = "" if self.read_only else f"; moved to {self.directory.parent / rundir.UNREADABLE_CHECKPOINTS} for inspection"
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {candidates}{moved}). "
                            f"Rerun the same command to start the run again from step 0.")
    return None

  def _move_aside(self, step: int) -> None:
    if self.read_only or jax.process_index() != 0:
      return
    aside = self.directory.parent / rundir.UNREADABLE_CHECKPOINTS
    aside.mkdir(exist_ok=True)
    target = aside / f"{step}_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    os.replace(self.directory / str(step), target)
    logging.warning("moved unreadable checkpoint %d to %s; the run will write step %d again", step, target, step)

  def _reload_after_moving(self, moved: list[int]) -> None:
    if moved and not self.read_only:
      _sync("resnet_jax: unreadable checkpoints moved")
      self.manager.reload()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def write_manifest(directory: pathlib.Path) -> None:
  """SHA-256 of every file under `directory`, as `sha256sum` writes it; written atomically."""
  lines = [f"{_sha256(path)}  {path.relative_to(directory).as_posix()}\n"
           for path in sorted(directory.rglob("*")) if path.is_file() and path.name != MANIFEST]
  temporary = directory / f".{MANIFEST}.tmp"
  temporary.write_text("".join(lines))
  os.replace(temporary, directory / MANIFEST)


def verify_manifest(directory: pathlib.Path) -> bool:
  """True when every file matches the manifest; False when there is no manifest; CorruptCheckpoint
  naming the first file that differs (a damaged manifest line is a difference too)."""
  manifest = pathlib.Path(directory) / MANIFEST
  if not manifest.exists():
    return False
  text = manifest.read_bytes().decode("utf-8", errors="replace")
  if not text.endswith("\n"):
    raise CorruptCheckpoint(f"{manifest} is truncated")
  for line in text[:-1].split("\n"):
    match = _MANIFEST_LINE.fullmatch(line)
    if not match:
      raise CorruptCheckpoint(f"{manifest} has a damaged line: {line[:100]!r}")
    digest, name = match.groups()
    path = pathlib.Path(directory) / name
    if not path.is_file():
      raise CorruptCheckpoint(f"{name} is missing (listed in {MANIFEST})")
    if _sha256(path) != digest:
      raise CorruptCheckpoint(f"{name} does not match its checksum in {MANIFEST}")
  return True


def _sha256(path: pathlib.Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


@jax.jit
def _nonfinite_counts(tree: Any) -> dict[str, jax.Array]:
  counts = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      part = _key_name(path[0])
      counts[part] = counts.get(part, 0) + jnp.sum(~jnp.isfinite(leaf))
  return counts


def nonfinite_counts(tree: Any) -> dict[str, int]:
  """NaN and infinite values per top-level part of a state (params, batch_stats, opt_state, ...),
  counted on the device: one small transfer whatever the model's size."""
  return {part: int(count) for part, count in jax.device_get(_nonfinite_counts(tree)).items()}


def _check_structure(step: int, saved: Any, abstract_state: Any) -> None:
  """A ConfigError naming what differs when the checkpoint holds another network's state."""
  saved_shapes, wanted = _shapes(saved), _shapes(abstract_state)
  problems = _differences(saved_shapes, wanted, "the config")
  problems += [f"{name}: saved {shape}, the config has nothing" for name, shape in saved_shapes.items()
               if name not in wanted]
  if problems:
    parts = sorted({problem.split("/")[0].split(":")[0] for problem in problems})
    raise ConfigError(
        f"checkpoint {step} was written by a different network or settings than this config "
        f"({len(problems)} arrays differ, in {', '.join(parts)}; e.g. {'; '.join(problems[:3])}). Check depth, "
        f"variant, shortcut, num_classes, ema_decay and the optimizer, or use a new --workdir")


def restore_weights(directory: str | pathlib.Path, abstract_weights: dict) -> dict:
  """Reads only the weights (e.g. {"params", "batch_stats"}) from the `state` item of a checkpoint
  directory: one step of a run's checkpoints, or what `resnet_jax.tools.convert` writes. Its manifest,
  when it has one, is verified first."""
  path = pathlib.Path(directory).absolute() / "state"
  if not path.is_dir():
    raise CheckpointError(f"{directory} holds no checkpoint (no state/ inside); give a run's "
                          f"checkpoints/STEP directory or the output of python -m resnet_jax.tools.convert")
  try:
    verify_manifest(path.parent)
  except CorruptCheckpoint as error:
    raise CheckpointError(f"checkpoint {directory} is damaged: {error}") from None
  saved = _shapes(_saved_tree(path), parts=tuple(abstract_weights))
  wanted = _shapes(abstract_weights)
  mismatched = _differences(saved, wanted, "the network")
  if mismatched:
    raise ConfigError(
        f"the weights in {directory} do not fit the config's network (check depth, variant, shortcut "
        f"and num_classes); {len(mismatched)} of {len(wanted)} arrays differ, e.g. {'; '.join(mismatched[:3])}")
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_weights)
  return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=abstract_weights, restore_args=restore_args, partial_restore=True))


def save_weights(output: str | pathlib.Path, weights: dict, record_name: str, record: dict) -> pathlib.Path:
  """Writes a weights-only checkpoint (`output/state`, what `evaluate --checkpoint` reads), the JSON
  `record_name` saying what it is, and its manifest: whole or not at all. It is assembled in a hidden
  directory beside `output` and renamed into place; an `output` that holds anything is never
  replaced (FileExistsError). Every process calls it (Orbax's save is collective)."""
  output = pathlib.Path(output).absolute()
  if output.exists() and (not output.is_dir() or any(output.iterdir())):
    raise FileExistsError(f"{output} exists; choose another --output or remove it")
  temporary = output.with_name(f".{output.name}.partial")
  if jax.process_index() == 0 and temporary.exists():
    shutil.rmtree(temporary)  # what an interrupted attempt left; the output itself was never touched
  _sync("resnet_jax: weights directory ready")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(temporary / "state", weights)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    (temporary / record_name).write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_manifest(temporary)
    os.replace(temporary, output)  # onto a missing or empty directory
  _sync("resnet_jax: weights written")
  return output


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _differences(saved: dict[str, tuple], wanted: dict[str, tuple], holder: str) -> list[str]:
  """'path: saved S, HOLDER has W' for every wanted array the saved shapes lack or disagree with."""
  return [f"{name}: saved {saved.get(name, 'nothing')}, {holder} has {shape}"
          for name, shape in wanted.items() if saved.get(name) != shape]


def _saved_tree(item_directory: pathlib.Path) -> Any:
  """The tree of array metadata (shapes, dtypes) an Orbax item directory holds, read without the data."""
  return ocp.PyTreeCheckpointer().metadata(item_directory).item_metadata.tree


def _key_name(key: Any) -> str:
  return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))


def _shapes(tree: Any, parts: tuple[str, ...] | None = None) -> dict[str, tuple[int, ...]]:
  """Array shapes by path (dict keys, list indices and attribute names alike, so an Orbax metadata
  tree and the state it was saved from agree), for the top-level `parts` only if given."""
  def name(path) -> str:
    return "/".join(_key_name(key) for key in path)
  return {name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if path and (parts is None or name(path[:1]) in parts)}


def weights_from_run(experiment: Any, workdir: str, step: int | None = None) -> tuple[int, list]:
  """(step, [(name, params, batch_stats)]) of a run's checkpoint `step` (default: the newest
  readable): the live weights, and the EMA's when the run keeps one."""
  if not (pathlib.Path(workdir) / rundir.CHECKPOINTS).is_dir():
    raise CheckpointError(f"no checkpoints in {workdir}; train first with python -m resnet_jax.main")
  config = experiment.config
  # Read-only: the run may be training right now, and its in-progress save must stay untouched.
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best, read_only=True)
  try:
    state, step, _ = experiment.restore(checkpoints, step)
  finally:
    checkpoints.close()
  if step == 0:
    raise CheckpointError(f"no checkpoint in {checkpoints.directory} yet; the run has not saved one")
  scored = [("live", state.params, state.batch_stats)]
  if state.ema_params is not None:
    scored.append(("ema", *experiment.ema_weights(state)))
  return step, scored


def weights_from_directory(experiment: Any, directory: str) -> tuple[int, list]:
  """A run's checkpoints/STEP directory (its step is the name), a precise-BN one (its source's step;
  weights named `precise_bn`, or `ema_precise_bn` for the EMA's) or a converted one (step 0)."""
  abstract = experiment.abstract_state()
  weights = restore_weights(directory, {"params": abstract.params, "batch_stats": abstract.batch_stats})
  scored = (weights["params"], weights["batch_stats"])
  record = pathlib.Path(directory) / PRECISE_BN_RECORD
  if record.exists():
    made = json.loads(record.read_text())
    return made["step"], [(f"{'' if made['weights'] == 'live' else made['weights'] + '_'}precise_bn", *scored)]
  name = pathlib.Path(directory).name
  return (int(name) if name.isdigit() else 0), [("live", *scored)]


class PreemptionWatch:
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the train loop checks at each step
  boundary, where it saves and exits; a second Ctrl-C aborts at once.

  Over several processes, JAX's distributed runtime already takes SIGTERM (its preemption
  notifier), so the handlers are left to it.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    if signum == signal.SIGINT and self._event.is_set():
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt("second Ctrl-C: aborted without saving")
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    again = "; press Ctrl-C again to abort at once" if signum == signal.SIGINT else ""
    logging.warning("%s received: saving a checkpoint at the next step boundary, then exiting%s", name, again)
    self._event.set()

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All processes must stop at the same step: JAX's own preemption notifier (which takes SIGTERM
      # under jax.distributed) agrees on one.
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._event.is_set()

  def restore_handler(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def network_of(path: str) -> tuple[pathlib.Path, int, dict, dict | None]:
  """(checkpoint directory, step, model config, the run's config or None) of what a user names as a
  network: a run's directory (its newest checkpoint), a run's checkpoints/STEP or precise_bn/NAME,
  or a converted checkpoint (tools/convert's output, which records its model)."""
  location = pathlib.Path(path).absolute()
  whole_run = rundir.is_run(location)
  run = location if whole_run else rundir.run_of_checkpoint(str(location))
  if run is not None and location.parent.name == rundir.PRECISE_BN:
    if not (location / PRECISE_BN_RECORD).exists():
      raise CheckpointError(f"{location} holds no precise-BN checkpoint (no {PRECISE_BN_RECORD}); "
                            f"python -m resnet_jax.tools.precise_bn writes them")
    config = rundir.read_config(run)
    return location, json.loads((location / PRECISE_BN_RECORD).read_text())["step"], config["model"], config
  if run is not None:
    step = rundir.newest_checkpoint(run) if whole_run else int(location.name)
    if step is None:
      raise CheckpointError(f"no checkpoints in {run}; train first with python -m resnet_jax.main")
    directory = pathlib.Path(run) / rundir.CHECKPOINTS / str(step)
    if not directory.is_dir():
      raise CheckpointError(f"no checkpoint {directory}; the run's newest is step {rundir.newest_checkpoint(run)}")
    config = rundir.read_config(run)
    return directory, step, config["model"], config
  if (location / "converted.json").exists():
    return location, 0, json.loads((location / "converted.json").read_text())["model"], None
  raise CheckpointError(f"{path} is not a run's directory, a run's checkpoints/STEP or a converted checkpoint")


def network_weights(directory: pathlib.Path, model: Any, run_config: dict | None, ema: bool = False,
                    sharding: Any = None) -> tuple[Any, Any, Any]:
  """(eval graphdef, params, batch_stats) of a checkpoint's network, read without its optimizer
  state: the live weights, or `ema` the run's EMA (with its own BN statistics when it averages
  them); arrays placed with `sharding` when given."""
  from flax import nnx

  from resnet_jax.models import build_model

  network = nnx.eval_shape(lambda: build_model(model))
  graphdef, params, batch_stats = nnx.split(nnx.view(network, use_running_average=True), nnx.Param, nnx.BatchStat)
  place = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                    nnx.to_pure_dict(tree))
  params, batch_stats = place(params), place(batch_stats)
  if not ema:
    weights = restore_weights(directory, {"params": params, "batch_stats": batch_stats})
    return graphdef, weights["params"], weights["batch_stats"]
  if (directory / PRECISE_BN_RECORD).exists():
    raise CheckpointError(f"{directory} holds one network (its weights with precise BN statistics), no EMA "
                          f"beside it; read it as it is (live weights)")
  if not (run_config or {}).get("ema_decay"):
    raise CheckpointError(f"{directory} holds no EMA (its run's ema_decay is 0); use its live weights")
  if run_config.get("ema_buffers"):
    weights = restore_weights(directory, {"ema_params": {"params": params, "batch_stats": batch_stats}})
    return graphdef, weights["ema_params"]["params"], weights["ema_params"]["batch_stats"]
  weights = restore_weights(directory, {"ema_params": params, "batch_stats": batch_stats})
  return graphdef, weights["ema_params"], weights["batch_stats"]
