"""How the commands start and fail: flags parsed with config-file errors reduced to one line, and a
user's mistake (`errors.UserError`) printed as one `error:` line with exit status 1. Any other
exception is a bug and keeps its traceback."""

import functools
import re
import sys
from collections.abc import Callable

from absl import app, flags

from resnet_jax.errors import UserError


def fail(message: str) -> None:
  """Ends the command with one `error:` line and exit status 1."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def _flag_error(error: Exception) -> str:
  """The line that matters of a flag-parsing failure: absl wraps a config file's exception in its
  traceback, and ml_collections reports an unknown field as a KeyError with a suggestion."""
  text = str(error)
  if isinstance(error, (KeyError, AttributeError)):
    suggestion = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
    if suggestion:
      return f"the config has no field {suggestion[2]!r}; did you mean {suggestion[1]!r}?"
    field = re.search(r"'([\w.]+)", text)
    return f"the config has no field {field[1] if field else text!r}; check the --config.* flags"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(error, OSError):  # ml_collections could not load the config file
    path = next((line for line in lines if line.endswith(".py")), "")
    reason = next((line for line in lines if line.startswith("[Errno")), lines[-1])
    return f"cannot load the config file {path}: {reason}"
  # A config file's exception ends absl's message: 'resnet_jax.errors.ConfigError: config argument ...'.
  kind, separator, message = lines[-1].partition(": ")
  return message if separator and kind.endswith("Error") and " " not in kind else lines[-1]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad config file, argument or override as one error line."""
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      flags.FLAGS.config.get("seed")  # a config file that failed to load raises only when read
  except (flags.Error, KeyError, AttributeError, OSError) as error:
    print(f"error: {_flag_error(error)}", file=sys.stderr, flush=True)
    sys.exit(2)
  return remaining


def call(main: Callable[[list[str]], None], argv: list[str]) -> None:
  """Runs a command's main: a `UserError` ends it with one line, anything else propagates."""
  try:
    main(argv)
  except UserError as error:
    fail(str(error))


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` for a command: flag errors and `UserError`s end it with one line."""
  app.run(functools.partial(call, main), flags_parser=parse_flags)
