"""Runs a sweep: every combination of a config's arguments, one workdir each, one after another.

  python -m resnet_jax.sweep --sweep=mnist_degradation --root=runs/mnist_degradation
  python -m resnet_jax.sweep --config=configs/cifar10.py --grid=depth=20,56 --grid=plain=False,True \\
      --root=runs/cifar_small [--set=config.num_train_steps=1000]

A finished run (its final evaluation record is written) is skipped; an unfinished one resumes from
its newest checkpoint, so rerunning the same command after a crash continues the sweep. Each run is
`python -m resnet_jax.main` in its own process, its output in WORKDIR/train.log; a failed run is
reported and the sweep goes on, then exits 1.
"""

import importlib.util
import itertools
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from resnet_jax.reporting import read_record


def grid_runs(grid: dict[str, list]) -> list[str]:
  """Every combination of the grid as a config argument string, e.g. 'depth=20,plain=True'."""
  keys = list(grid)
  return [",".join(f"{k}={v}" for k, v in zip(keys, values)) for values in itertools.product(*grid.values())]


def run_name(arguments: str) -> str:
  return arguments.replace("=", "-").replace(",", "_") or "default"


def is_finished(workdir: pathlib.Path) -> bool:
  return any((read_record(p) or {}).get("final") for p in (workdir / "eval").glob("*.json"))


def parse_grid(entries: list[str]) -> dict[str, list[str]]:
  grid = {}
  for entry in entries:
    key, sep, values = entry.partition("=")
    if not sep or not values:
      raise app.UsageError(f"--grid={entry!r} is not ARGUMENT=V1,V2,...")
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
    raise app.UsageError(f"unknown sweep {name!r}; {sweeps_file} defines: {', '.join(sweeps)}")
  config, grid, *settings = sweeps[name]
  return config, grid, list(settings[0]) if settings else []


def train(command: list[str], log_path: pathlib.Path) -> tuple[int, str | None]:
  """Runs one training command, appending its output to `log_path`; returns its exit status and its
  last "final ..." or "error: ..." line."""
  with log_path.open("a") as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  outcomes = [line for line in log_path.read_text().splitlines() if line.startswith(("final", "error"))]
  return code, outcomes[-1] if outcomes else None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  if not FLAGS.root or bool(FLAGS.sweep) == bool(FLAGS.config):
    raise app.UsageError("give --root and either --sweep=NAME or --config=FILE with --grid")
  if FLAGS.sweep:
    config, grid, settings = load_sweep(FLAGS.sweep, FLAGS.sweeps_file)
  else:
    config, grid, settings = FLAGS.config, parse_grid(FLAGS.grid), []
  settings += FLAGS.set
  runs = grid_runs(grid)
  root = pathlib.Path(FLAGS.root)
  started, failed, durations = time.time(), [], []
  for index, arguments in enumerate(runs, start=1):
    workdir = root / run_name(arguments)
    command = [sys.executable, "-m", "resnet_jax.main", f"--config={config}:{arguments}", f"--workdir={workdir}",
               *(f"--{setting}" for setting in settings)]
    prefix = f"[{index}/{len(runs)}] {workdir.name}"
    if workdir.exists() and is_finished(workdir):
      print(f"{prefix}: finished, skipped", flush=True)
      continue
    state = "resuming" if (workdir / "checkpoints").exists() else "starting"
    if FLAGS.dry_run:
      print(f"{prefix}: would be {state}: {' '.join(command)}")
      continue
    workdir.mkdir(parents=True, exist_ok=True)
    eta = ""
    if durations:
      left = sum(1 for a in runs[index - 1:] if not is_finished(root / run_name(a)))
      eta = f", sweep ETA {sum(durations) / len(durations) * left / 60:.0f} min"
    print(f"{prefix}: {state} (log: {workdir / 'train.log'}{eta})", flush=True)
    run_started = time.time()
    code, outcome = train(command, workdir / "train.log")
    durations.append(time.time() - run_started)
    if code != 0:
      failed.append(workdir.name)
      print(f"{prefix}: failed (exit {code}): {outcome or 'see the log'}", flush=True)
    else:
      print(f"{prefix}: {outcome or 'done'} ({durations[-1] / 60:.1f} min)", flush=True)
  if FLAGS.dry_run:
    return
  print(f"sweep of {len(runs)} runs in {root}: {len(runs) - len(failed)} finished, {len(failed)} failed, "
        f"{(time.time() - started) / 60:.1f} min this time")
  if failed:
    print(f"failed: {', '.join(failed)}; rerun the same command to retry them", file=sys.stderr)
    sys.exit(1)


def command() -> None:
  """The `resnet-jax-sweep` console script (also `python -m resnet_jax.sweep`)."""
  flags.DEFINE_string("sweep", None, "a named sweep of --sweeps_file")
  flags.DEFINE_string("sweeps_file", "configs/sweeps.py", "where named sweeps are defined")
  flags.DEFINE_string("config", None, "config file, for a sweep given by --grid")
  flags.DEFINE_multi_string("grid", [], "ARGUMENT=V1,V2,...: values of one config argument")
  flags.DEFINE_multi_string("set", [], "config.FIELD=VALUE, passed to every run as --config.FIELD=VALUE")
  flags.DEFINE_string("root", None, "directory holding one workdir per run")
  flags.DEFINE_bool("dry_run", False, "print each run's command and state; run nothing")
  app.run(main)


if __name__ == "__main__":
  command()
