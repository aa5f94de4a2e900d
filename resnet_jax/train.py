"""The trainer: one data-parallel loop for every config, around the train step of train_step.py.

Metrics are read back every few steps, which also checks the loss: a checkpoint is only written
after every step before it has been seen finite, and only of a finite state (see checkpoint.py).
The run holds its workdir's lock throughout (see lock.py).
"""

import logging
import math
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax import provenance, rundir, sharding
from resnet_jax.checkpoint import DIVERGED_FIX, Checkpoints, PreemptionWatch, disk_full_error
from resnet_jax.config import evaluations, resolve_data_name
from resnet_jax.errors import ConfigError, TrainingDiverged, disk_full
from resnet_jax.evaluation import describe, evaluate, set_description
from resnet_jax.experiment import setup
from resnet_jax.lock import WorkdirLock
from resnet_jax.reporting import MAX_STEPS_IN_FLIGHT, Reporter, fetch
from resnet_jax.train_step import compile_train_step


def _check_finite(metrics: list[dict[str, float]], first_step: int, checkpoints: Checkpoints) -> None:
  for offset, m in enumerate(metrics):
    if not math.isfinite(m["loss"]):
      newest = checkpoints.newest()
      kept = (f"the newest checkpoint, step {newest}, holds only finite values" if newest
              else "no checkpoint was written")
      raise TrainingDiverged(f"loss is {m['loss']} at step {first_step + offset}; training stopped and {kept}. "
                             f"{DIVERGED_FIX}")


def _mean(window: list[dict[str, float]]) -> dict[str, float]:
  return {f"train/{k}": float(np.mean([m[k] for m in window])) for k in window[0]}


def _evaluate_and_report(experiment, state, step, reporter) -> dict[tuple[str | None, str], dict[str, float]]:
  """Scores the config's eval split and each named evaluation, with the live weights and the EMA's
  (when kept); logs them all. Returns the results by (evaluation name, weights)."""
  ema = experiment.ema_weights(state)
  weights = [("live", (state.params, state.batch_stats))] + ([("ema", ema)] if ema else [])
  scored = {}
  for evaluation, split in evaluations(experiment.config).items():
    for name, (params, batch_stats) in weights:
      results = evaluate(experiment, params, batch_stats, split)
      prefix = rundir.metric_prefix(evaluation, name)
      reporter.scalars(step, {f"{prefix}{k}": v for k, v in results.items()})
      logging.info("%s at step %d (%s): %s", prefix[:-1], step, split, describe(results))
      scored[evaluation, name] = results
  return scored


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, command: str | None = None,
                       amend: tuple[str, ...] = ()) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final eval results. `command` is what
  the records say ran it (default: this process's command line); `amend` names the settings (or
  `dataset.*` facts) a resume may change, recorded in the run's history (provenance.py)."""
  amend = provenance.check_amend_names(amend)
  lock = WorkdirLock(workdir)
  try:
    if jax.process_index() == 0:
      lock.acquire()  # first: a second trainer, or an unwritable workdir, fails before any set-up
    return _train(config, workdir, command, amend)
  except Exception as error:
    full = disk_full(error)
    if full is None:
      raise
    raise disk_full_error(f"no space left on the device of {workdir} ({full})",
                          rundir.newest_checkpoint(workdir)) from None
  finally:
    lock.release()


def _identity(experiment, workdir: str, checkpoints: Checkpoints, amend: list[str]) -> tuple[dict | None, list]:
  """The run's recorded identity and this start's changes to it; refuses what may not change."""
  recorded = rundir.read_identity(workdir)
  if jax.process_count() > 1:  # every process reads the same identity: none rewrites it before all have read it
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("resnet_jax: run identity read")
  if recorded is None:
    if amend:
      raise ConfigError(f"--amend applies to a run with a recorded identity; {workdir} has no "
                        f"{rundir.IDENTITY} yet: leave --amend out")
    return None, []
  return recorded, provenance.compare(recorded, experiment.config.to_dict(), experiment.data.fingerprint, amend,
                                      workdir, resuming=bool(checkpoints.steps()))


def _train(config: ml_collections.ConfigDict, workdir: str, command: str | None, amend: list[str]) -> dict[str, Any]:
  from clu import parameter_overview, periodic_actions  # imports TensorFlow (~15 s): after the lock

  resolve_data_name(config)
  experiment = setup(config)
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best)
  try:
    recorded, changes = _identity(experiment, workdir, checkpoints, amend)
  except Exception:
    checkpoints.close()
    raise
  reporter = Reporter(workdir)
  preemption = PreemptionWatch()
  try:
    state, start, data_state = experiment.restore(checkpoints)
    total = experiment.total_steps
    if start > total:
      raise ConfigError(
          f"the newest checkpoint in {checkpoints.directory} is step {start}, past this config's end at step "
          f"{total}; set num_train_steps (or num_epochs) to at least that to continue the run, or use a new "
          f"--workdir")
    identity = (provenance.identity(config.to_dict(), experiment.data.fingerprint) if recorded is None else
                provenance.amended(recorded, config.to_dict(), experiment.data.fingerprint, changes, start))
    if jax.process_index() == 0 and (recorded is None or changes):
      rundir.write_identity(workdir, identity)
    for change in changes:
      logging.warning("%s from step %d: %s", "changed" if change.free else "amended", start, change)
    reporter.config(config.to_dict(), identity["history"])
    finished = rundir.final_record(workdir) if start == total else None
    if finished and finished["step"] == total:
      return _report_finished(workdir, finished)
    if start == 0:
      parameter_overview.log_parameter_overview(state.params)
      reporter.hparams(_flat(config.to_dict()))
    logging.info(
        "training %d steps (%d per epoch), from step %d, on %d device(s) of %s",
        total, experiment.steps_per_epoch, start, jax.device_count(), jax.default_backend(),
    )
    batches = sharding.prefetch_to_devices(experiment.data.train(data_state["step"]), experiment.mesh)
    step_fn = compile_train_step(experiment)
    eval_every = max(1, round(config.eval_every_epochs * experiment.steps_per_epoch)) if config.eval_every_epochs else 0
    hooks = []
    if reporter.is_writer:
      hooks.append(periodic_actions.ReportProgress(num_train_steps=total, writer=reporter.writer, every_secs=30))
      if config.profile_steps:
        hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_steps))
    pending, window, scored, size = [], [], None, None
    for done in range(start + 1, total + 1):
      batch = next(batches)
      if batch["image"].shape[1] != size:  # a new resolution compiles the step anew (progressive resizing)
        size = batch["image"].shape[1]
        logging.info("training on %dx%d images from step %d", size, batch["image"].shape[2], done)
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      for hook in hooks:
        hook(done)
      log_now = done % config.log_every_steps == 0 or done == total
      eval_now = bool(eval_every) and done % eval_every == 0 or done == total
      save_now = done % config.checkpoint_every_steps == 0 or done == total or eval_now
      preempted = preemption.requested(done)
      if len(pending) >= MAX_STEPS_IN_FLIGHT or log_now or save_now or preempted:
        fetched = fetch(pending)
        _check_finite(fetched, done - len(pending) + 1, checkpoints)
        window += fetched
        pending = []
      if log_now and window:
        reporter.scalars(done, _mean(window))
        window = []
      scored = None
      if eval_now:
        try:
          scored = _evaluate_and_report(experiment, state, done, reporter)
        except Exception:
          checkpoints.save(done, state, {"step": done})  # the training done is kept, unscored
          raise
      if save_now or preempted:
        best_metric = {"top1": scored[None, "live"]["top1"]} if scored else None
        checkpoints.save(done, state, {"step": done}, metrics=best_metric)
      if preempted:
        logging.warning("preempted: checkpoint %d saved; run the same command to resume", done)
        return {"preempted": True, "step": done}
    if scored is None:  # trained to the end, but stopped before its final records were written
      scored = _evaluate_and_report(experiment, state, total, reporter)
    splits = evaluations(config)
    for (evaluation, weights), results in scored.items():
      run = provenance.run_summary(workdir, identity, splits[evaluation])
      path = rundir.write_record(workdir, total, config, results, weights, final=True, evaluation=evaluation,
                                 split=splits[evaluation], command=command, run=run,
                                 source=set_description(experiment, splits[evaluation]))
      if jax.process_index() == 0 and weights == "live":
        print(f"final ({total} steps), {config.data.name} {splits[evaluation]}: {describe(results)}")
    if jax.process_index() == 0:
      print(f"results: {path.parent}; TensorBoard: tensorboard --logdir {workdir}")
    return {"preempted": False, "step": total, **scored[None, "live"]}
  finally:
    preemption.restore_handler()
    checkpoints.close()
    reporter.close()


def _report_finished(workdir: str, final: dict) -> dict[str, Any]:
  """A rerun of a finished run: its final result again, nothing rescored or rewritten."""
  if jax.process_index() == 0:
    print(f"the run in {workdir} finished at step {final['step']:,}: {final['data']} {final['split']}: "
          f"{describe(final['results'])}. Its records stay as written; to score it another way: "
          f"python -m resnet_jax.evaluate --workdir={workdir} ...")
  return {"preempted": False, "step": final["step"], **final["results"]}


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat
