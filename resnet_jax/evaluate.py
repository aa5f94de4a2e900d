"""Evaluation: every example of the eval split exactly once (the last batch padded and masked),
top-1/top-5 accuracy and error. As a command, scores a checkpoint with one of the paper's test
protocols and writes a JSON record:

  python -m resnet_jax.evaluate --config=configs/imagenet.py:depth=50 --workdir=DIR [--step=N] \
      [--protocol=center|10crop|multiscale]
  python -m resnet_jax.evaluate --config=... --checkpoint=DIR/checkpoints/N   (or a converted one)
"""

import datetime
import functools
import json
import os
import pathlib
import platform
import shlex
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resnet_jax import sharding
from resnet_jax.errors import CheckpointError, ConfigError
from resnet_jax.reporting import MAX_STEPS_IN_FLIGHT, fetch, quiet_libraries, write_atomically


def correct_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  k = min(k, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


def eval_step(params: Any, batch_stats: Any, batch: dict, *, graphdef: nnx.GraphDef,
              normalize: Callable[[jax.Array], jax.Array]) -> dict:
  """Sums over the real (mask = 1) examples of one global batch.

  Images are uint8 (batch, views, H, W, C), or a tuple of such with one size each (the scales of
  Table 4's multi-scale testing), normalised here; an example's score is its softmax averaged over
  all its views (1 center crop, the 10 crops of Table 3, or the whole image and its mirror at every
  scale).
  """
  model = nnx.merge(graphdef, params, batch_stats)
  groups = batch["image"] if isinstance(batch["image"], tuple) else (batch["image"],)
  scores = []
  for images in groups:
    probabilities = jax.nn.softmax(model(normalize(images.reshape(-1, *images.shape[2:]))))
    scores.append(probabilities.reshape(*images.shape[:2], -1))
  scores = jnp.concatenate(scores, axis=1).mean(axis=1)
  mask, labels = batch["mask"], batch["label"]
  loss = -jnp.log(jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0] + 1e-12)
  return {
      "count": mask.sum(),
      "loss": (loss * mask).sum(),
      "top1": (correct_top_k(scores, labels, 1) * mask).sum(),
      "top5": (correct_top_k(scores, labels, 5) * mask).sum(),
  }


# One jitted function for the whole process: with the (hashable) graphdef and normaliser static,
# every periodic evaluation of a run reuses the first one's compilation.
_compiled_eval_step = jax.jit(eval_step, static_argnames=("graphdef", "normalize"))


def evaluate(experiment: Any, params: Any, batch_stats: Any) -> dict[str, float]:
  """Scores the whole eval split; returns accuracies, errors (in %) and the count scored."""
  step = functools.partial(_compiled_eval_step, graphdef=experiment.eval_graphdef,
                           normalize=experiment.data.normalize)
  totals = {"count": 0.0, "loss": 0.0, "top1": 0.0, "top5": 0.0}
  pending = []
  for batch in sharding.prefetch_to_devices(experiment.data.eval_batches(), experiment.mesh):
    pending.append(step(params, batch_stats, batch))
    if len(pending) >= MAX_STEPS_IN_FLIGHT:
      _accumulate(totals, fetch(pending))
      pending = []
  _accumulate(totals, fetch(pending))
  count = totals["count"]
  top1, top5 = 100 * totals["top1"] / count, 100 * totals["top5"] / count
  return {
      "top1": top1, "top5": top5, "top1_error": 100 - top1, "top5_error": 100 - top5,
      "loss": totals["loss"] / count, "examples": int(count),
  }


def _accumulate(totals: dict[str, float], sums: list[dict[str, float]]) -> None:
  for s in sums:
    for name in totals:
      totals[name] += s[name]


def describe(results: dict[str, float]) -> str:
  return (
      f"top-1 {results['top1']:.2f}% (error {results['top1_error']:.2f}%), "
      f"top-5 {results['top5']:.2f}% (error {results['top5_error']:.2f}%) "
      f"on {results['examples']:,} examples"
  )


def write_record(workdir: str | pathlib.Path, step: int, config: Any, results: dict, weights: str = "live",
                 checkpoint: str | None = None, final: bool = False) -> pathlib.Path:
  """A JSON record of one evaluation: what was scored (checkpoint, protocol, split), the numbers, the
  command, where and when; `final` marks the end of a training run. `python -m resnet_jax.table`
  collects these."""
  protocol = config.data.eval_view
  record = {
      "step": step, "weights": weights, "protocol": protocol, "split": config.data.eval_split,
      "data": config.data.name, "checkpoint": checkpoint, "final": final, "results": results,
      "command": command_line(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "hardware": hardware(), "config": config.to_dict(),
  }
  path = pathlib.Path(workdir) / "eval" / f"step_{step}_{weights}_{protocol}.json"
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(record, indent=2, default=str) + "\n")
  return path


def command_line() -> str:
  """How this process was started, as a user would type it (`python -m module flags...`)."""
  return shlex.join(["python", *sys.orig_argv[1:]])


def hardware() -> dict[str, Any]:
  device = jax.devices()[0]
  description = {"platform": jax.default_backend(), "device_kind": device.device_kind,
                 "devices": jax.device_count(), "processes": jax.process_count(), "host": platform.node()}
  if device.platform == "cpu":
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    description.update(cpu=models[0] if models else platform.processor(), cores=os.cpu_count())
  return description


def main(argv: list[str]) -> None:
  from absl import flags

  from resnet_jax import distributed
  from resnet_jax.experiment import setup

  del argv
  quiet_libraries()
  FLAGS = flags.FLAGS
  config = FLAGS.config
  workdir = FLAGS.workdir or (FLAGS.checkpoint and run_of_checkpoint(FLAGS.checkpoint))
  if not workdir:
    raise ConfigError("give --workdir: a run's directory to score, or, with --checkpoint outside a run, where "
                      "the evaluation record goes (WORKDIR/eval/)")
  if FLAGS.protocol:
    with config.unlocked():
      config.data.eval_view = FLAGS.protocol
  distributed.initialize()
  experiment = setup(config)
  if FLAGS.checkpoint:
    step, scored = weights_from_directory(experiment, FLAGS.checkpoint)
  else:
    step, scored = weights_from_run(experiment, workdir, FLAGS.step)
  for weights, params, batch_stats in scored:
    results = evaluate(experiment, params, batch_stats)
    path = write_record(workdir, step, config, results, weights, checkpoint=FLAGS.checkpoint)
    if jax.process_index() == 0:
      print(f"step {step} ({weights} weights), {config.data.name} {config.data.eval_split}, "
            f"{config.data.eval_view} protocol: {describe(results)}; wrote {path}")


def run_of_checkpoint(directory: str) -> str | None:
  """The run a `WORKDIR/checkpoints/STEP` directory belongs to, where its records go; None otherwise."""
  path = pathlib.Path(directory).absolute()
  return str(path.parent.parent) if path.parent.name == "checkpoints" and path.name.isdigit() else None


def weights_from_run(experiment: Any, workdir: str, step: int | None) -> tuple[int, list]:
  """(step, [(name, params, batch_stats)]) of a run's checkpoint `step` (default: the newest
  readable): the live weights, and the EMA's when the run keeps one."""
  from resnet_jax.checkpoint import Checkpoints

  if not (pathlib.Path(workdir) / "checkpoints").is_dir():
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
    scored.append(("ema", state.ema_params, state.batch_stats))
  return step, scored


def weights_from_directory(experiment: Any, directory: str) -> tuple[int, list]:
  """A run's checkpoints/STEP directory (its step is the name) or a converted one (step 0)."""
  from resnet_jax.checkpoint import restore_weights

  abstract = experiment.abstract_state()
  weights = restore_weights(directory, {"params": abstract.params, "batch_stats": abstract.batch_stats})
  name = pathlib.Path(directory).name
  return (int(name) if name.isdigit() else 0), [("live", weights["params"], weights["batch_stats"])]


def command() -> None:
  """The `resnet-jax-evaluate` console script (also `python -m resnet_jax.evaluate`)."""
  from absl import flags
  from ml_collections import config_flags

  import resnet_jax.distributed  # noqa: F401  (its flags)
  from resnet_jax import cli

  config_flags.DEFINE_config_file("config", None, "config file[:arguments]", lock_config=True)
  flags.DEFINE_string("workdir", None, "the run's directory (holds checkpoints/; the record goes to its eval/)")
  flags.DEFINE_integer("step", None, "checkpoint step to score (default: the newest readable)")
  flags.DEFINE_string("checkpoint", None, "score this checkpoint directory instead: a run's checkpoints/STEP "
                      "(its record goes to that run's eval/) or the output of python -m resnet_jax.convert")
  flags.DEFINE_enum("protocol", None, ["center", "10crop", "multiscale"],
                    "the test views (sets data.eval_view): center crop, the 10 crops of Table 3, or "
                    "Table 4's fully-convolutional multi-scale")
  flags.mark_flags_as_required(["config"])
  cli.run(main)


if __name__ == "__main__":
  command()
