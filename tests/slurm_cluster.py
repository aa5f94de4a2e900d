"""A real one-node SLURM cluster on this machine, for testing launch/slurm.sbatch as a user runs it.

Debian's packages (slurmctld, slurmd, slurm-client, munge), started without systemd or cgroups:
munged as the munge user, then slurmctld and slurmd in the foreground as children of this process,
all configured by one slurm.conf in a scratch directory (clients find it through SLURM_CONF). Stopped
by pid. Needs root and apt-get, or the packages already installed.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import time

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "munged")
# A requeued job may start again this many seconds after its requeue (SLURM's default is 120).
CREDENTIAL_SECONDS = 5


class InstallFailed(RuntimeError):
  """The packages could not be installed (no package index reachable, say)."""


def unavailable() -> str | None:
  """Why no cluster can be started here, or None."""
  if all(shutil.which(name) for name in COMMANDS):
    return None if os.geteuid() == 0 else "not root: slurmd and munged must start as root"
  if os.geteuid() != 0:
    return "not root, and SLURM is not installed: apt-get needs root"
  if not shutil.which("apt-get"):
    return "SLURM is not installed and there is no apt-get to install it"
  return None


def install() -> None:
  """Installs the packages where a daemon is missing (refreshing the package lists only if needed)."""
  if all(shutil.which(name) for name in COMMANDS):
    return
  command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  if subprocess.run(command, env=env, capture_output=True).returncode != 0:
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
      last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
      raise InstallFailed(f"apt-get install {' '.join(PACKAGES)} failed: {' '.join(last)}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _node_line() -> str:
  """This machine as `slurmd -C` describes it (its first line: NodeName=... CPUs=... RealMemory=...)."""
  described = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
  return described.splitlines()[0]


def _config(directory: pathlib.Path, node_line: str) -> str:
  node = node_line.split()[0].split("=", 1)[1]
  return "\n".join([
      "ClusterName=resnetjax-test",
      f"SlurmctldHost={node}",
      "SlurmUser=root",
      "SlurmdUser=root",
      f"SlurmctldPort={_free_port()}",
      f"SlurmdPort={_free_port()}",
      "AuthType=auth/munge",
      f"AuthInfo=cred_expire={CREDENTIAL_SECONDS}",
      f"StateSaveLocation={directory}/state",
      f"SlurmdSpoolDir={directory}/spool",
      f"SlurmctldPidFile={directory}/slurmctld.pid",
      f"SlurmdPidFile={directory}/slurmd.pid",
      f"SlurmctldLogFile={directory}/slurmctld.log",
      f"SlurmdLogFile={directory}/slurmd.log",
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_Core",
      "AccountingStorageType=accounting_storage/none",
      "JobAcctGatherType=jobacct_gather/none",
      "JobCompType=jobcomp/none",
      "MpiDefault=none",
      "ReturnToService=2",
      "SchedulerType=sched/backfill",
      f"{node_line} State=UNKNOWN",
      f"PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP",
      "",
  ])


def _munge_running() -> bool:
  encoded = subprocess.run(["munge", "-n"], capture_output=True)
  return encoded.returncode == 0 and subprocess.run(["unmunge"], input=encoded.stdout,
                                                    capture_output=True).returncode == 0


class Cluster:
  """A started cluster: `env` (SLURM_CONF set) for the client commands; `stop()` ends what it started."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.env = dict(os.environ, SLURM_CONF=str(directory / "slurm.conf"))
    self.daemons: list[subprocess.Popen] = []
    self.munged: int | None = None

  def start(self) -> "Cluster":
    for name in ("state", "spool"):
      (self.directory / name).mkdir(parents=True, exist_ok=True)
    (self.directory / "slurm.conf").write_text(_config(self.directory, _node_line()))
    self._start_munge()
    for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
      log = open(self.directory / f"{daemon[0]}.out", "w")
      self.daemons.append(subprocess.Popen(daemon, env=self.env, stdout=log, stderr=subprocess.STDOUT))
      if daemon[0] == "slurmctld":
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld to answer")
    self._wait(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", "the node to be idle")
    return self

  def _start_munge(self) -> None:
    if _munge_running():
      return
    run_directory = pathlib.Path("/run/munge")
    run_directory.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(run_directory, "munge", "munge")
    if not pathlib.Path("/etc/munge/munge.key").exists():
      subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    self.munged = int(pathlib.Path("/run/munge/munged.pid").read_text())
    self._wait(_munge_running, "munged to answer")

  def _wait(self, condition, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
      if time.time() > deadline or any(d.poll() is not None for d in self.daemons):
        logs = "".join(p.read_text()[-1500:] for p in sorted(self.directory.glob("*.log")) if p.exists())
        self.stop()
        raise RuntimeError(f"the test cluster did not come up: waited for {what}\n{logs}")
      time.sleep(0.2)

  def run(self, *command: str, check: bool = True, env: dict | None = None,
          cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """A client command (sbatch, squeue, scontrol, ...) against this cluster; `env` replaces `self.env`."""
    return subprocess.run(command, env=env or self.env, cwd=cwd, capture_output=True, text=True, check=check,
                          timeout=60)

  def stop(self) -> None:
    for daemon in reversed(self.daemons):
      daemon.terminate()
      try:
        daemon.wait(timeout=20)
      except subprocess.TimeoutExpired:
        daemon.kill()
    self.daemons = []
    if self.munged:
      os.kill(self.munged, 15)
      self.munged = None
