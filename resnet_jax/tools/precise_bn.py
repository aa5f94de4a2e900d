"""Precise BN (resnet_jax/precise_bn.py): recomputes a checkpoint's BN statistics as averages over N
batches of training images under the eval transform, and writes the result as a new checkpoint
beside the original, which is only read:

  python -m resnet_jax.tools.precise_bn --config=configs/imagenet.py --workdir=RUN [--step=N] \\
      [--weights=live|ema] [--batches=200] [--batch_size=256]
  python -m resnet_jax.evaluate --config=configs/imagenet.py --checkpoint=RUN/precise_bn/step_N_live_200x256

It runs with the run's own config and data (this command's data directory when it gives one, as
evaluate does). The new checkpoint, RUN/precise_bn/step_N_WEIGHTS_BATCHESxSIZE, holds the weights
with the new statistics and precise_bn.json: the source checkpoint, the batches, their size and
seed, the data and the command; it is written whole or not at all, and never over another.
`--checkpoint` names a converted checkpoint instead (tools/convert's output; then give --output).
Evaluating it writes records whose weights are named `precise_bn` (`ema_precise_bn`).
"""

import datetime
import pathlib
from collections.abc import Sequence

from absl import flags

from resnet_jax import cli, distributed, rundir
from resnet_jax.errors import ConfigError
from resnet_jax.reporting import quiet_libraries


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "the run whose checkpoint to recompute (its newest, or --step)",
                      flag_values=values)
  flags.DEFINE_integer("step", None, "the run's checkpoint step (default: the newest)", flag_values=values)
  flags.DEFINE_string("checkpoint", None, "a converted checkpoint (tools/convert's output) instead of a run's",
                      flag_values=values)
  flags.DEFINE_enum("weights", "live", ["live", "ema"], "which weights of the checkpoint", flag_values=values)
  flags.DEFINE_integer("batches", 200, "how many batches the statistics average over", flag_values=values)
  flags.DEFINE_integer("batch_size", 0, "images a batch (0: the run's batch_size)", flag_values=values)
  flags.DEFINE_integer("seed", 0, "the order the training images are drawn in", flag_values=values)
  flags.DEFINE_string("output", None, "where the new checkpoint goes (default for a run: "
                      "RUN/precise_bn/step_N_WEIGHTS_BATCHESxSIZE)", flag_values=values)
  distributed.define_flags(values)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  """Writes the precise-BN checkpoint the flags describe; returns its directory."""
  args, _ = cli.parse(argv, define_flags, __doc__, config=True)
  quiet_libraries()
  import jax

  from resnet_jax import sharding
  from resnet_jax.checkpoint import PRECISE_BN_RECORD, network_of, network_weights, save_weights
  from resnet_jax.evaluate import scoring_setup
  from resnet_jax.models import ModelConfig
  from resnet_jax.precise_bn import precise_statistics

  if bool(args.workdir) == bool(args.checkpoint):
    raise ConfigError("give --workdir=RUN (and --step=N for another than its newest checkpoint) or "
                      "--checkpoint=CONVERTED with --output")
  if args.batches < 1:
    raise ConfigError(f"--batches={args.batches}: average over at least one batch")
  named = args.checkpoint or (f"{args.workdir}/{rundir.CHECKPOINTS}/{args.step}" if args.step is not None
                              else args.workdir)
  directory, step, model, run_config = network_of(named)
  run = rundir.run_of_checkpoint(str(directory)) if run_config else None
  if run is None and not args.output:
    raise ConfigError(f"{named} is not a run's checkpoint: give --output, where the new checkpoint goes")
  config, experiment = scoring_setup(args, rundir.read_identity(run) if run else None)
  batch_size = args.batch_size or config.batch_size
  sharding.check_global_batch(batch_size, "--batch_size")
  name = f"step_{step}_{args.weights}_{args.batches}x{batch_size}"
  output = pathlib.Path(args.output or pathlib.Path(run) / rundir.PRECISE_BN / name).absolute()
  if output.exists():
    raise ConfigError(f"{output} exists (the same recomputation, made before); evaluate it with "
                      f"--checkpoint={output}, or give another --output")
  _, params, batch_stats = network_weights(directory, model, run_config, ema=args.weights == "ema",
                                           sharding=sharding.replicated(experiment.mesh))

  def progress(done: int, seconds: float) -> None:
    if jax.process_index() == 0:
      eta = seconds / done * (args.batches - done)
      print(f"precise BN: {done}/{args.batches} batches of {batch_size}, {seconds:.0f} s, ETA {eta:.0f} s", flush=True)

  statistics = precise_statistics(experiment, ModelConfig.from_mapping(model), params, batch_stats,
                                  batches=args.batches, batch_size=batch_size, seed=args.seed, progress=progress)
  d = config.data
  record = {
      "source": str(directory), "step": step, "weights": args.weights, "batches": args.batches,
      "batch_size": batch_size, "examples": args.batches * batch_size, "seed": args.seed,
      "data": {"name": d.name, "split": d.train_split, "fingerprint": experiment.data.fingerprint.get("splits", {}).get(
          d.train_split), "transform": _transform(config)},
      "statistics": "each BN layer's batch mean and unbiased batch variance (per group with bn_group_size), "
                    "in training mode, averaged over the batches with equal weights",
      "changes": _changes(jax.device_get(batch_stats), statistics),
      "command": rundir.command_line("resnet_jax.tools.precise_bn", argv),
      "date": datetime.datetime.now().isoformat(timespec="seconds"), "hardware": rundir.hardware(),
  }
  output.parent.mkdir(parents=True, exist_ok=True)
  save_weights(output, {"params": params, "batch_stats": statistics}, PRECISE_BN_RECORD, record)
  if jax.process_index() == 0:
    changes = record["changes"]
    print(f"wrote {output}: BN statistics of {record['examples']:,} training images; the running means moved by "
          f"{changes['mean_shift_median']:.3g} std (median; largest {changes['mean_shift_max']:.3g}), the variances "
          f"by a factor {changes['variance_ratio_median']:.3g} (median). Score it with:\n"
          f"  python -m resnet_jax.evaluate --config=... --checkpoint={output}")
  return output


def _transform(config) -> str:
  """The eval transform the training images were seen through, in words."""
  from resnet_jax.data.inputs import eval_crop, kind_of

  d = config.data
  if kind_of(d) == "in memory":
    return "whole images, no augmentation"
  return f"shorter side {d.eval_resize}, center crop {eval_crop(d)} ({d.eval_resampler} resampling)"


def _changes(old, new) -> dict[str, float]:
  """How far the new statistics are from the old: each channel's mean shift in units of its old
  standard deviation, and its new variance over the old; medians and extremes over all channels."""
  import numpy as np

  means = [(np.asarray(o["mean"], np.float64), np.asarray(n["mean"], np.float64), np.asarray(o["var"], np.float64),
            np.asarray(n["var"], np.float64)) for o, n in zip(_layers(old), _layers(new), strict=True)]
  shifts = np.concatenate([np.abs(nm - om) / np.sqrt(ov + 1e-12) for om, nm, ov, _ in means])
  ratios = np.concatenate([(nv + 1e-12) / (ov + 1e-12) for _, _, ov, nv in means])
  return {"mean_shift_median": float(np.median(shifts)), "mean_shift_max": float(shifts.max()),
          "variance_ratio_median": float(np.median(ratios)), "variance_ratio_min": float(ratios.min()),
          "variance_ratio_max": float(ratios.max())}


def _layers(tree) -> list[dict]:
  """The BN layers of a batch_stats tree ({'mean', 'var'} dicts), in a fixed order."""
  if set(tree) == {"mean", "var"}:
    return [tree]
  return [layer for key in sorted(tree, key=str) for layer in _layers(tree[key])]


def command() -> None:
  """The `resnet-jax-precise-bn` console script (also `python -m resnet_jax.tools.precise_bn`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
