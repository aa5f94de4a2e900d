"""What the checkpoint manifest costs: the seconds to save a ResNet-50 train state (SGD momentum,
float32) with Orbax, and to checksum and to verify its files, as a share of the save.

  .venv/bin/python benchmarks/checkpoint_integrity.py [--depth=50] [--repeats=3]
"""

import pathlib
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

import resnet_jax  # noqa: F401  (first: the CPU work-around)
from resnet_jax import cli
from resnet_jax.checkpoint import Checkpoints, verify_manifest, write_manifest


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_integer("depth", 50, "ImageNet ResNet depth", flag_values=values)
  flags.DEFINE_integer("repeats", 3, "saves to time", flag_values=values)


def main(argv: Sequence[str] | None = None) -> None:
  args, _ = cli.parse(argv, define_flags, __doc__)

  import jax
  import optax
  import orbax.checkpoint as ocp
  from flax import nnx

  from resnet_jax.models import ModelConfig, build_model
  model = build_model(ModelConfig(depth=args.depth, dataset="imagenet"))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  state = {"params": params, "batch_stats": stats, "opt_state": optax.sgd(0.1, momentum=0.9).init(params)}
  size = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6
  timings = {"save (Orbax, to committed)": [], "write manifest": [], "verify manifest": []}
  for _ in range(args.repeats):
    with tempfile.TemporaryDirectory() as workdir:
      checkpoints = Checkpoints(workdir, keep=1, keep_best=False)
      start = time.perf_counter()
      checkpoints.manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
      checkpoints.manager.wait_until_finished()
      timings["save (Orbax, to committed)"].append(time.perf_counter() - start)
      step_dir = pathlib.Path(workdir) / "checkpoints" / "1"
      start = time.perf_counter()
      write_manifest(step_dir)
      timings["write manifest"].append(time.perf_counter() - start)
      start = time.perf_counter()
      assert verify_manifest(step_dir)
      timings["verify manifest"].append(time.perf_counter() - start)
      checkpoints.close()
  save = np.median(timings["save (Orbax, to committed)"])
  print(f"ResNet-{args.depth} train state: {size:.0f} MB; median of {args.repeats}")
  print("| step | seconds | share of the save |\n|---|---|---|")
  for name, values in timings.items():
    print(f"| {name} | {np.median(values):.3f} | {np.median(values) / save:.0%} |")


if __name__ == "__main__":
  cli.run(main)
