"""Running the trainer as a user does, in this process (`main.main`) or, where the process is the
point (kills, signals, device counts, several processes), as `python -m resnet_jax.main` in a fresh
one; and reading what a run leaves in its workdir. Shared by the trainer, reliability and
multi-host tests.

Tiny settings (ResNet-8 on 28x28 MNIST digits, batch 32) keep each run to seconds of training.
"""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from resnet_jax.rundir import read_metrics

ROOT = pathlib.Path(__file__).parent.parent
TINY = f"{ROOT}/configs/mnist_demo.py:depth=8,batch=32,steps={{steps}}"
COMMON = ["--config.eval_batch_size=96", "--config.log_every_steps=1", "--config.eval_every_epochs=0"]


def arguments(workdir, steps, *overrides):
  return [f"--config={TINY.format(steps=steps)}", f"--workdir={workdir}", *COMMON, *overrides]


def command(module, workdir, steps, *overrides):
  return [sys.executable, "-m", module, *arguments(workdir, steps, *overrides)]


def train_here(workdir, steps, *overrides):
  """Trains in this process (its one CPU device); returns the outcome `main.main` returns."""
  from resnet_jax import main
  return main.main(arguments(workdir, steps, *overrides))


def evaluate_here(workdir, steps, *overrides):
  """The evaluate command in this process; returns the records it wrote."""
  from resnet_jax import evaluate
  return evaluate.main(arguments(workdir, steps, *overrides))


def environment(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def train(workdir, steps, *overrides, devices=1, module="resnet_jax.main"):
  return subprocess.run(command(module, workdir, steps, *overrides), cwd=ROOT, env=environment(devices),
                        capture_output=True, text=True, timeout=400)


def start(workdir, steps, *overrides, held_save: tuple = ()):
  """Starts the trainer; `held_save=(step, phase, seconds)` holds that save open (tests/held_save.py)."""
  arguments_ = command("resnet_jax.main", workdir, steps, *overrides)
  if held_save:
    arguments_[1:3] = [str(ROOT / "tests" / "held_save.py"), *map(str, held_save)]
  return launch(arguments_)


def launch(arguments_):
  """Starts a command (one CPU device) with its output piped, for a test to wait on or kill."""
  return subprocess.Popen(arguments_, cwd=ROOT, env=environment(1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_until(condition, process, what: str, timeout: float = 300) -> None:
  """Polls `condition` every 20 ms while `process` runs; otherwise kills it and fails with its output."""
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if condition():
      return
    time.sleep(0.02)
  process.kill()
  raise AssertionError(f"never saw {what}: {process.communicate()[0][-3000:]}")


def saved_steps(workdir):
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


def read_state(workdir, step=None):
  """A checkpoint's train state on this process's one device, whatever device count wrote it."""
  return read_item(pathlib.Path(workdir).absolute() / "checkpoints" / str(step or saved_steps(workdir)[-1]) / "state")


def read_item(path):
  """An Orbax item directory's arrays on this process's one device, whatever device count wrote them."""
  import jax
  import orbax.checkpoint as ocp
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)


def metrics(workdir):
  """The run's logged metric records, in order."""
  return read_metrics(workdir)


def by_step(workdir, name):
  """One metric per step; after a resume the repeated steps' last values count."""
  return {record["step"]: record[name] for record in metrics(workdir) if name in record}


def losses(workdir):
  return by_step(workdir, "train/loss")


def leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
