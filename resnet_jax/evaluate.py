"""Scores a checkpoint with one of the paper's test protocols and writes an evaluation record:

  python -m resnet_jax.evaluate --config=configs/imagenet.py:depth=50 --workdir=DIR [--step=N] \
      [--protocol=center|10crop|multiscale]
  python -m resnet_jax.evaluate --config=... --checkpoint=DIR/checkpoints/N   (or a converted one)
  python -m resnet_jax.evaluate --config=... --workdir=OUT --ensemble=RUN1,RUN2/checkpoints/N,...

It scores the config's eval split and each of its named evaluations (`config.evals`), with the live
weights and, when the run keeps one, the EMA's. A run's checkpoint is scored with the config the
run trained with (its run.json) and this command's evaluation settings (splits, views, eval batch,
data directory). Each score is printed, then recorded as `eval/evaluate_step_N_*.json`: a new
record, never one that replaces the trainer's. An ensemble (Table 5) scores each example by its
members' softmax averaged over networks and views, with the first run's config; its record
(`evaluate_step_0_ensemble_*.json` in OUT) lists every member's checkpoint, step and network.
"""

import pathlib
from collections.abc import Sequence

from absl import flags

from resnet_jax import cli, distributed, rundir
from resnet_jax.errors import ConfigError, RecordError
from resnet_jax.reporting import quiet_libraries


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "the run's directory (holds checkpoints/; the record goes to its eval/)",
                      flag_values=values)
  flags.DEFINE_integer("step", None, "checkpoint step to score (default: the newest readable)", flag_values=values)
  flags.DEFINE_string("checkpoint", None, "score this checkpoint directory instead: a run's checkpoints/STEP "
                      "(its record goes to that run's eval/) or the output of python -m resnet_jax.tools.convert",
                      flag_values=values)
  flags.DEFINE_enum("protocol", None, ["center", "10crop", "multiscale"],
                    "the test views (sets data.eval_view): center crop, the 10 crops of Table 3, or "
                    "Table 4's fully-convolutional multi-scale", flag_values=values)
  flags.DEFINE_list("ensemble", [], "score these networks as one, each example by their mean softmax (Table 5): "
                    "runs' directories (their newest checkpoint), runs' checkpoints/STEP or converted checkpoints, "
                    "comma-separated; the record, listing each, goes to --workdir's eval/", flag_values=values)
  distributed.define_flags(values)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """Scores the checkpoint the flags name; returns the records written."""
  args, _ = cli.parse(argv, define_flags, __doc__, config=True)
  quiet_libraries()
  import jax

  from resnet_jax import provenance
  from resnet_jax.checkpoint import weights_from_directory, weights_from_run
  from resnet_jax.config import evaluations
  from resnet_jax.evaluation import describe, evaluate, set_description

  if args.ensemble:
    return _evaluate_ensemble(args, argv)
  scored_run = rundir.run_of_checkpoint(args.checkpoint) if args.checkpoint else args.workdir
  workdir = args.workdir or scored_run
  if not workdir:
    raise ConfigError("give --workdir: a run's directory to score, or, with --checkpoint outside a run, where "
                      "the evaluation record goes (WORKDIR/eval/)")
  identity = rundir.read_identity(scored_run) if scored_run else None
  config, experiment = scoring_setup(args, identity, args.protocol)
  if args.checkpoint:
    step, scored = weights_from_directory(experiment, args.checkpoint)
  else:
    step, scored = weights_from_run(experiment, workdir, args.step)
  written = []
  for evaluation, split in evaluations(config).items():
    for weights, params, batch_stats in scored:
      results = evaluate(experiment, params, batch_stats, split)
      if jax.process_index() == 0:
        print(f"step {step} ({weights} weights), {config.data.name} {split}, "
              f"{config.data.eval_view} protocol: {describe(results)}", flush=True)
      run = provenance.run_summary(scored_run or args.checkpoint, identity, split)
      try:
        path = rundir.write_record(workdir, step, config, results, weights, checkpoint=args.checkpoint,
                                   evaluation=evaluation, split=split, by="evaluate", run=run,
                                   source=set_description(experiment, split),
                                   command=rundir.command_line("resnet_jax.evaluate", argv))
      except OSError as error:
        raise RecordError(f"the score above is not recorded: cannot write to {pathlib.Path(workdir) / rundir.EVAL} "
                          f"({error.strerror}); rerun with --checkpoint=... and a --workdir you can write, where the "
                          f"record then goes") from None
      written.append(rundir.read_record(path) if jax.process_index() == 0 else None)
      if jax.process_index() == 0:
        print(f"recorded in {path}")
  return written


def scoring_setup(args: flags.FlagValues, identity: dict | None, protocol: str | None = None) -> tuple:
  """(config, experiment) to score with: the scored run's config (`identity`, when there is one)
  with the command's (`args`) evaluation settings and `protocol`; starts the distributed runtime
  (its flags in `args`) first."""
  from resnet_jax import provenance
  from resnet_jax.config import resolve_data_name
  from resnet_jax.experiment import setup

  if protocol:
    with args.config.unlocked():
      args.config.data.eval_view = protocol
  config = provenance.evaluation_config(identity, args.config)
  resolve_data_name(config)
  distributed.initialize(**distributed.flag_settings(args))
  return config, setup(config)


def _evaluate_ensemble(args, argv: Sequence[str] | None) -> list[dict]:
  """Scores `--ensemble`'s networks together with the first one's run config and this command's
  evaluation settings; one record per split, in --workdir, naming every member."""
  import jax

  from resnet_jax import sharding
  from resnet_jax.checkpoint import network_of, network_weights
  from resnet_jax.config import evaluations
  from resnet_jax.evaluation import describe, evaluate_ensemble, set_description
  from resnet_jax.models import ModelConfig

  if args.checkpoint or args.step is not None:
    raise ConfigError("--ensemble names each network itself (a run, or a run's checkpoints/STEP); "
                      "drop --checkpoint and --step")
  if not args.workdir:
    raise ConfigError("give --workdir: where the ensemble's record goes (WORKDIR/eval/)")
  named = [network_of(path) for path in args.ensemble]
  first_directory, _, _, first_config = named[0]
  identity = rundir.read_identity(rundir.run_of_checkpoint(str(first_directory))) if first_config else None
  config, experiment = scoring_setup(args, identity, args.protocol)
  members, described = [], []
  for path, (directory, step, model, run_config) in zip(args.ensemble, named, strict=True):
    network = ModelConfig.from_mapping(model)
    if network.num_classes != experiment.model_config.num_classes:
      raise ConfigError(f"--ensemble: {path} has {network.num_classes} classes, the data "
                        f"{experiment.model_config.num_classes}; every member must score the same classes")
    if run_config and run_config["data"]["normalization"] != config.data.normalization:
      raise ConfigError(f"--ensemble: {path} was trained on inputs normalised by "
                        f"{run_config['data']['normalization']!r}, this evaluation's are {config.data.normalization!r}")
    members.append(network_weights(directory, model, run_config, sharding=sharding.replicated(experiment.mesh)))
    described.append({"path": str(pathlib.Path(path).absolute()), "checkpoint": str(directory), "step": step,
                      "weights": "live", "network": network.describe()})
  written = []
  for evaluation, split in evaluations(config).items():
    results = evaluate_ensemble(experiment, members, split)
    if jax.process_index() == 0:
      print(f"ensemble of {len(members)} ({', '.join(m['network'] for m in described)}), {config.data.name} "
            f"{split}, {config.data.eval_view} protocol: {describe(results)}", flush=True)
    path = rundir.write_record(args.workdir, 0, config, results, "ensemble", evaluation=evaluation, split=split,
                               by="evaluate", ensemble=described, source=set_description(experiment, split),
                               command=rundir.command_line("resnet_jax.evaluate", argv))
    written.append(rundir.read_record(path) if jax.process_index() == 0 else None)
    if jax.process_index() == 0:
      print(f"recorded in {path}")
  return written


def command() -> None:
  """The `resnet-jax-evaluate` console script (also `python -m resnet_jax.evaluate`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
