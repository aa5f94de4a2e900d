"""Starting JAX's distributed runtime when a run spans processes (several hosts, or several
processes on one host).

Every process runs the same command. Under SLURM (`srun`), Open MPI and GKE TPU, JAX finds the
coordinator, the process count and this process's id itself; elsewhere they come from the flags or
from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. On a Cloud TPU pod, pass
`--distributed=on` and JAX asks the TPU metadata server. The runtime must start before anything
touches a device, so the entry points call `initialize()` first thing.

If a process dies, the coordination service misses its heartbeats and stops the others after
`--heartbeat_timeout` seconds, so a job fails instead of hanging in a collective.
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

from absl import flags
from absl import logging as absl_logging

from resnet_jax.errors import ConfigError

_MODE = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "auto: start JAX's distributed runtime when the flags, the JAX_* variables or the cluster "
    "(SLURM srun, Open MPI, GKE TPU) say there are several processes; on: always (Cloud TPU pods); "
    "off: never",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (or JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run (or JAX_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, 0-based (or JAX_PROCESS_ID)")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "seconds of silence after which a process counts as dead and the others stop")


def cluster_process_count(env: Mapping[str, str]) -> int:
  """How many processes a cluster manager started for this job, as its environment says (1: none)."""
  if "SLURM_PROCID" in env and "SLURM_STEP_NODELIST" in env:  # inside an srun step
    return int(env.get("SLURM_NTASKS", "1"))
  if "OMPI_COMM_WORLD_SIZE" in env:
    return int(env["OMPI_COMM_WORLD_SIZE"])
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  return len(hosts.split(",")) if hosts else 1


def initialize_arguments(
    mode: str,
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    env: Mapping[str, str],
    heartbeat_timeout: int = 100,
) -> dict[str, Any] | None:
  """The arguments for `jax.distributed.initialize`, or None when the run is a single process.

  Values not given stay None, for JAX to detect from the cluster.
  """
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if mode == "off":
    return None
  if mode == "auto":
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and cluster_process_count(env) <= 1:
      return None
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"process_id={process_id} is outside 0..{num_processes - 1} (num_processes={num_processes})")
  return dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
              heartbeat_timeout_seconds=heartbeat_timeout)


def initialize() -> None:
  """Starts the distributed runtime if the flags and the environment call for it (see the module)."""
  arguments = initialize_arguments(
      _MODE.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ, _HEARTBEAT.value)
  if arguments is None:
    return
  import jax

  try:
    jax.distributed.initialize(**arguments)
  except (ValueError, RuntimeError, TypeError) as error:
    given = ", ".join(f"{k}={v}" for k, v in arguments.items() if v is not None)
    raise ConfigError(
        f"could not start JAX's distributed runtime ({given}): {str(error).splitlines()[0]}. Outside "
        "SLURM, Open MPI and TPU pods, give every process the same --coordinator_address=HOST:PORT "
        "(process 0's host, a free port) and --num_processes, and each its own --process_id"
    ) from error
  logging.info("process %d of %d; %d local of %d devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.process_index() > 0:  # process 0 logs the run; the others only warnings and errors
    absl_logging.set_verbosity(absl_logging.WARNING)
