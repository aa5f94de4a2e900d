"""Train (or resume) one run:

  python -m resnet_jax.main --config=configs/cifar10.py:depth=56 --workdir=runs/cifar56

Running the same command again on the same workdir resumes from its newest checkpoint.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from resnet_jax.data import DatasetNotPrepared
from resnet_jax.reporting import quiet_libraries

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "config file[:arguments]", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_libraries()
  from resnet_jax.train import TrainingDiverged, train_and_evaluate

  try:
    outcome = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (TrainingDiverged, DatasetNotPrepared, ValueError) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  if outcome["preempted"]:
    print(f"preempted at step {outcome['step']}; checkpoint saved. Rerun the same command to resume.")


if __name__ == "__main__":
  app.run(main)
