"""One trainer per run directory: `WORKDIR/LOCK` names the process that holds it.

Two trainers on one workdir would interleave their metrics and overwrite each other's checkpoints
while both report success. The lock is a file created atomically (O_EXCL) by process 0 of a run,
so it works on a shared file system for a run over several hosts. A lock left by a process that
died on this host (the pid is gone, or is now another program) is taken over with a warning; one
from another host cannot be checked from here, so the error says how to remove it.
"""

import datetime
import json
import logging
import os
import pathlib
import socket

from resnet_jax import rundir
from resnet_jax.errors import ConfigError, WorkdirInUse



def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which tells
  a live holder from a new process that reused its pid; None when there is no such process."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict) -> bool:
  pid = holder.get("pid")
  if not isinstance(pid, int):
    return False
  if pathlib.Path("/proc").is_dir():
    return _start_time(pid) == holder.get("start_time")
  try:  # no /proc (macOS): the pid alone
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}  # absent, being written right now, or damaged


def holder(workdir: str | pathlib.Path) -> str | None:
  """Who trains in `workdir` now ('host H, pid P, since D'), or None when no live trainer holds it.
  A lock from another host counts as held: it cannot be checked from here."""
  path = pathlib.Path(workdir) / rundir.LOCK
  if not path.exists():
    return None
  found = _read(path)
  if found and found.get("host") == socket.gethostname() and not _alive(found):
    return None
  return _describe(found) if found else "a trainer starting"


def _describe(found: dict) -> str:
  return f"host {found.get('host')}, pid {found.get('pid')}, since {found.get('since')}"


class WorkdirLock:
  """Held from `acquire()` to `release()`; creating the workdir here also proves it writable,
  before any set-up work."""

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / rundir.LOCK
    self.held = False

  def acquire(self) -> None:
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise ConfigError(f"cannot create the workdir {self.workdir}: {error.strerror}; pass a --workdir you can write") from None
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
          "since": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):  # a second try after taking over a stale lock
      try:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      except OSError as error:
        raise ConfigError(f"cannot write to the workdir {self.workdir}: {error.strerror}; pass a --workdir you "
                          f"can write") from None
      try:
        with os.fdopen(descriptor, "w") as f:
          json.dump(me, f)
      except OSError:  # e.g. a full disk: no empty lock may stay behind to refuse the next start
        self.path.unlink(missing_ok=True)
        raise
      self.held = True
      return
    raise WorkdirInUse(f"could not take the lock {self.path}")

  def _take_over_if_stale(self) -> None:
    found = _read(self.path)
    if not found:
      raise WorkdirInUse(f"{self.workdir} is locked by another trainer ({self.path} is being written or is "
                         f"damaged); if no trainer runs on it, delete {self.path} and rerun")
    description = _describe(found)
    if found.get("host") != socket.gethostname() or _alive(found):
      raise WorkdirInUse(
          f"{self.workdir} is in use by another trainer ({description}); wait for it to finish, stop it, or "
          f"use another --workdir. If that process is gone, delete {self.path} and rerun")
    logging.warning("taking over the lock of %s from a trainer that is gone (%s)", self.workdir, description)
    self.path.unlink(missing_ok=True)

  def release(self) -> None:
    if self.held:
      self.path.unlink(missing_ok=True)
      self.held = False
