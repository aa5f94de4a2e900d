"""The errors a user fixes (a setting, the data, the run directory): the commands print each as one
`error:` line naming the fix and exit 1. Every other exception is a bug and keeps its traceback."""

import errno
import os


class UserError(Exception):
  """A problem in what the user gave, not in the code; the message says what to change."""


class ConfigError(UserError, ValueError):
  """A setting is invalid or does not fit the data, the devices or the run's checkpoints; the
  message names the field."""


class DataError(UserError):
  """The data set is missing, laid out wrongly or holds a file that cannot be read."""


class DatasetNotPrepared(DataError):
  """A data set that is not on disk; the message says how to prepare it."""


class CheckpointError(UserError):
  """No checkpoint of the run can be used as it is."""


class TrainingDiverged(UserError):
  """The loss or the train state became NaN or infinite."""


class WorkdirInUse(UserError):
  """Another trainer holds the run directory."""


class RecordError(UserError):
  """A result could not be recorded in the run directory (after it was printed)."""


class DiskFull(UserError):
  """The run's file system is full (or over quota)."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException) -> str | None:
  """'No space left on device' (or the quota's message) when `error`, or an error it was raised
  from or while handling, is one; else None. Orbax and TensorStore wrap the OSError of a full disk
  in their own exceptions, so the chain is searched, and their messages too."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _FULL:
      return error.strerror or "no space left on device"
    text = str(error)
    for number in _FULL:
      if errno.errorcode[number] in text or os.strerror(number) in text:
        return os.strerror(number)
    error = error.__cause__ or error.__context__
  return None
