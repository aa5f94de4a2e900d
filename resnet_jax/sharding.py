"""Data parallelism over one device mesh: parameters replicated, every batch split on a `data` axis.

Under `jax.jit` with these shardings XLA inserts the gradient all-reduce, and batch-norm statistics
of a batch-sharded input are means over the global batch: cross-replica BN with no explicit
collective.
"""

import collections
import itertools
from collections.abc import Iterator
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from resnet_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process.

  Auto axis type: jax 0.10's default Explicit axes reject the gradient of a batch-sharded matmul.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_global_batch(batch_size: int, what: str = "batch_size") -> int:
  """Returns the per-process batch; a clear error, before anything compiles, if it cannot split."""
  devices, processes = jax.device_count(), jax.process_count()
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ConfigError(f"{what} must be a positive integer; got {batch_size!r}")
  if batch_size % devices:
    lower = batch_size - batch_size % devices
    suggestion = f"{lower} or {lower + devices}" if lower else f"{devices}"
    raise ConfigError(
        f"{what}={batch_size} does not divide evenly over {devices} devices (per-device batch "
        f"{batch_size / devices:g}); use a multiple of {devices}, e.g. {suggestion}"
    )
  return batch_size // processes


def global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """Assembles one global array per array of the batch (a field may be a tuple of arrays, one a
  scale) from this process's slice of it."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda value: jax.make_array_from_process_local_data(sharding, value), local_batch)


def prefetch_to_devices(local_batches: Iterator[dict[str, Any]], mesh: Mesh, size: int = 2) -> Iterator[dict[str, Any]]:
  """Global batches with `size` more already on their way to the devices: transfers are
  asynchronous, so the next batch crosses while the current step computes."""
  queue = collections.deque(global_batch(b, mesh) for b in itertools.islice(local_batches, size))
  while queue:
    yield queue.popleft()
    queue.extend(global_batch(b, mesh) for b in itertools.islice(local_batches, 1))
