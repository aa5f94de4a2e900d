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


def define_flags(values: flags.FlagValues) -> None:
  """The flags of a command that may run over several processes (read back by `flag_settings`)."""
  flags.DEFINE_enum(
      "distributed", "auto", ["auto", "on", "off"],
      "auto: start JAX's distributed runtime when the flags, the JAX_* variables or the cluster "
      "(SLURM srun, Open MPI, GKE TPU) say there are several processes; on: always (Cloud TPU pods); "
      "off: never", flag_values=values)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator (or JAX_COORDINATOR_ADDRESS)",
                      flag_values=values)
  flags.DEFINE_integer("num_processes", None, "processes in the run (or JAX_NUM_PROCESSES)", flag_values=values)
  flags.DEFINE_integer("process_id", None, "this process's index, 0-based (or JAX_PROCESS_ID)", flag_values=values)
  flags.DEFINE_integer("heartbeat_timeout", 100,
                       "seconds of silence after which a process counts as dead and the others stop", flag_values=values)


def flag_settings(values: flags.FlagValues) -> dict[str, Any]:
  """`initialize`'s arguments from a command's parsed `define_flags`."""
  return dict(mode=values.distributed, coordinator_address=values.coordinator_address,
              num_processes=values.num_processes, process_id=values.process_id,
              heartbeat_timeout=values.heartbeat_timeout)


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


def initialize(mode: str = "auto", coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout: int = 100) -> None:
  """Starts the distributed runtime if the arguments and the environment call for it (see the
  module); a no-op when it is running already (a second command in one process)."""
  arguments = initialize_arguments(mode, coordinator_address, num_processes, process_id, os.environ, heartbeat_timeout)
  if arguments is None:
    return
  import jax

  if jax.distributed.is_initialized():
    return
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
