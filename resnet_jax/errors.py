"""The errors a user fixes (a setting, the data, the run directory): the commands print each as one
`error:` line naming the fix and exit 1. Every other exception is a bug and keeps its traceback."""


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
