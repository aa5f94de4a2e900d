"""Runs a sweep: every combination of a config's arguments, one workdir each, one after another.

  python -m resnet_jax.tools.sweep --sweep=mnist_degradation --root=runs/mnist_degradation
  python -m resnet_jax.tools.sweep --config=configs/cifar10.py --grid=depth=20,56 --grid=plain=False,True \\
      --root=runs/cifar_small [--set=config.num_train_steps=1000]

A finished run (its final evaluation record is written) is skipped when it trained with the settings
the sweep asks for now; one that trained with others is reported as different, with the fields, and
left as it is. An unfinished one resumes from its newest checkpoint, so rerunning the same command
after a crash continues the sweep; one that another process is training (it holds the run's LOCK)
is reported as in progress. Each run is `python -m resnet_jax.main` in its own process (a crash or
a hang of one run cannot take the sweep with it), its output in WORKDIR/train.log; a failed run is
reported and the sweep goes on, then exits 1 (so does a sweep with a run that differs).
"""

import importlib.util
import itertools
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import flags

from resnet_jax import cli, lock, provenance, rundir
from resnet_jax.errors import ConfigError


def grid_runs(grid: dict[str, list]) -> list[str]:
  """Every combination of the grid as a config argument string, e.g. 'depth=20,plain=True'."""
  keys = list(grid)
  return [",".join(f"{k}={v}" for k, v in zip(keys, values)) for values in itertools.product(*grid.values())]


def run_name(arguments: str) -> str:
  return arguments.replace("=", "-").replace(",", "_") or "default"


def parse_grid(entries: list[str]) -> dict[str, list[str]]:
  grid = {}
  for entry in entries:
    key, sep, values = entry.partition("=")
    if not sep or not values:
      raise ConfigError(f"--grid={entry!r} is not ARGUMENT=V1,V2,...")
    grid[key] = values.split(",")
  return grid


def named_sweeps(sweeps_file: str) -> dict[str, tuple]:
  spec = importlib.util.spec_from_file_location("sweeps", sweeps_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.SWEEPS


def load_sweep(name: str, sweeps_file: str) -> tuple[str, dict[str, list], list[str]]:
  """(config file, grid, settings for every run) of a named sweep."""
  sweeps = named_sweeps(sweeps_file)
  if name not in sweeps:
    raise ConfigError(f"unknown sweep {name!r}; {sweeps_file} defines: {', '.join(sweeps)}")
  config, grid, *settings = sweeps[name]
  return config, grid, list(settings[0]) if settings else []


def train(command: list[str], workdir: pathlib.Path) -> tuple[int, str]:
  """Runs one training command, appending its output to the run's log; returns its exit status and
  its outcome: the final evaluation, or the error line it ended with."""
  log_path = workdir / rundir.SWEEP_LOG
  with log_path.open("a") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  final = rundir.final_record(workdir)
  if code == 0 and final is not None:
    results = final["results"]
    top5 = f", top-5 error {results['top5_error']:.2f}%" if "top5_error" in results else ""
    return code, f"top-1 error {results['top1_error']:.2f}%{top5} at step {final['step']:,}"
  errors = [line for line in log_path.read_text().splitlines() if line.startswith("error")]
  return code, errors[-1] if errors else f"see {log_path}"


def settings_changed(workdir: pathlib.Path, final: dict, config_arguments: list[str]) -> list[provenance.Change]:
  """What the finished run in `workdir` trained with that differs from what the sweep now asks for
  (the fields that change what is trained)."""
  recorded = (rundir.read_identity(workdir) or final)["config"]
  asked = cli.load_config(config_arguments).to_dict()
  return [change for change in provenance.changes(recorded, asked) if not change.free]


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("sweep", None, "a named sweep of --sweeps_file", flag_values=values)
  flags.DEFINE_string("sweeps_file", "configs/sweeps.py", "where named sweeps are defined", flag_values=values)
  flags.DEFINE_string("config", None, "config file, for a sweep given by --grid", flag_values=values)
  flags.DEFINE_multi_string("grid", [], "ARGUMENT=V1,V2,...: values of one config argument", flag_values=values)
  flags.DEFINE_multi_string("set", [], "config.FIELD=VALUE, passed to every run as --config.FIELD=VALUE",
                            flag_values=values)
  flags.DEFINE_string("root", None, "directory holding one workdir per run", flag_values=values)
  flags.DEFINE_bool("dry_run", False, "print each run's command and state; run nothing", flag_values=values)
  flags.mark_flags_as_required(["root"], flag_values=values)


def main(argv: Sequence[str] | None = None) -> list[str]:
  """Runs (or resumes) the sweep; returns the names of the runs that failed or trained with other
  settings than asked."""
  args, _ = cli.parse(argv, define_flags, __doc__)
  if bool(args.sweep) == bool(args.config):
    raise ConfigError("give either --sweep=NAME or --config=FILE with --grid")
  if args.sweep:
    config, grid, settings = load_sweep(args.sweep, args.sweeps_file)
  else:
    config, grid, settings = args.config, parse_grid(args.grid), []
  settings += args.set
  runs = grid_runs(grid)
  root = pathlib.Path(args.root)
  started, failed, different, busy, durations = time.time(), [], [], [], []
  for index, arguments in enumerate(runs, start=1):
    workdir = root / run_name(arguments)
    config_arguments = [f"--config={config}:{arguments}", *(f"--{setting}" for setting in settings)]
    command = [sys.executable, "-m", "resnet_jax.main", config_arguments[0], f"--workdir={workdir}",
               *config_arguments[1:]]
    prefix = f"[{index}/{len(runs)}] {workdir.name}"
    holder = lock.holder(workdir)
    if holder:
      busy.append(workdir.name)
      print(f"{prefix}: in progress ({holder}), skipped", flush=True)
      continue
    final = rundir.final_record(workdir)
    if final:
      changed = settings_changed(workdir, final, config_arguments)
      if changed:
        different.append(workdir.name)
        print(f"{prefix}: finished with other settings than asked ({'; '.join(map(str, changed))}), left as "
              f"it is; use another --root for the new settings", flush=True)
      else:
        print(f"{prefix}: finished, skipped", flush=True)
      continue
    state = "resuming" if (workdir / rundir.CHECKPOINTS).exists() else "starting"
    if args.dry_run:
      print(f"{prefix}: would be {state}: {' '.join(command)}")
      continue
    workdir.mkdir(parents=True, exist_ok=True)
    eta = ""
    if durations:
      left = sum(1 for a in runs[index - 1:] if not rundir.final_record(root / run_name(a)))
      eta = f", sweep ETA {sum(durations) / len(durations) * left / 60:.0f} min"
    print(f"{prefix}: {state} (log: {workdir / rundir.SWEEP_LOG}{eta})", flush=True)
    run_started = time.time()
    code, outcome = train(command, workdir)
    durations.append(time.time() - run_started)
    if code != 0:
      failed.append(workdir.name)
      print(f"{prefix}: failed (exit {code}): {outcome}", flush=True)
    else:
      print(f"{prefix}: {outcome} ({durations[-1] / 60:.1f} min)", flush=True)
  if not args.dry_run:
    done = len(runs) - len(failed) - len(different) - len(busy)
    print(f"sweep of {len(runs)} runs in {root}: {done} finished, {len(failed)} failed, {len(different)} "
          f"trained with other settings, {len(busy)} in progress elsewhere, {(time.time() - started) / 60:.1f} "
          f"min this time")
  if failed:
    print(f"failed: {', '.join(failed)}; rerun the same command to retry them", file=sys.stderr)
  if different:
    print(f"trained with other settings than asked: {', '.join(different)}", file=sys.stderr)
  return failed + different


def command() -> None:
  """The `resnet-jax-sweep` console script (also `python -m resnet_jax.tools.sweep`)."""
  cli.run(lambda argv: sys.exit(1) if main(argv) else None)


if __name__ == "__main__":
  command()
