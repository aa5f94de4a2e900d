"""Train (or resume) one run:

  python -m resnet_jax.main --config=configs/cifar10.py:depth=56 --workdir=runs/cifar56

Running the same command again on the same workdir resumes from its newest checkpoint; a resume that
changes what is trained (a setting, or the data) is refused unless --amend names each change, which
the run's history then records (provenance.py). A run over several processes starts every process
with the same command (see launch/ and distributed.py).
"""

import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from resnet_jax import cli, distributed, rundir
from resnet_jax.reporting import quiet_libraries


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results", flag_values=values)
  flags.mark_flags_as_required(["workdir"], flag_values=values)
  flags.DEFINE_list("amend", [], "on a resume, the changed settings (or dataset.* facts) to accept, e.g. "
                    "schedule.learning_rate; each is recorded in the run's history", flag_values=values)
  distributed.define_flags(values)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains the run the flags describe; returns `train_and_evaluate`'s outcome."""
  args, _ = cli.parse(argv, define_flags, __doc__, config=True)
  quiet_libraries()
  import jax

  from resnet_jax.train import train_and_evaluate

  try:
    distributed.initialize(**distributed.flag_settings(args))
    outcome = train_and_evaluate(args.config, args.workdir, rundir.command_line("resnet_jax.main", argv),
                                 amend=tuple(args.amend))
  except jax.errors.JaxRuntimeError as error:
    if jax.process_count() == 1:
      raise
    _stop_after_lost_process(error, args.workdir)
  if outcome["preempted"] and jax.process_index() == 0:
    print(f"preempted at step {outcome['step']}; checkpoint saved. Rerun the same command to resume.")
  return outcome


def _stop_after_lost_process(error: Exception, workdir: str) -> None:
  """Ends this process when a collective with the others failed, which means one of them died.

  It exits at once: JAX's shutdown at exit would wait at a barrier for the dead process and then
  abort with a C++ stack trace.
  """
  message = (
      f"error: a collective with the other processes failed ({str(error).splitlines()[0][:300]}); "
      f"another process of this run has probably died, see its log. The checkpoints in "
      f"{os.path.join(workdir, 'checkpoints')} are intact: start the same command on every "
      f"process to resume."
  )
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


def command() -> None:
  """The `resnet-jax-train` console script (also `python -m resnet_jax.main`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
