"""How every command starts and fails.

A command is `main(argv)`, argv being its arguments without the program name. It defines its flags
afresh on each call (`parse`), so a notebook or a test can drive it in-process, twice if it likes;
a library module defines none. From the shell (`run`), a user's mistake (`errors.UserError`) ends
the command with one `error:` line and exit status 1, and a bad flag or config with one line and
status 2. Any other exception is a bug and keeps its traceback.
"""

import faulthandler
import re
import sys
from collections.abc import Callable, Sequence

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from resnet_jax.errors import ConfigError, UserError

Command = Callable[[Sequence[str] | None], None]


def fail(message: str, status: int = 1) -> None:
  """Ends the command with one `error:` line."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


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


def parse(argv: Sequence[str] | None, define: Callable[[flags.FlagValues], None], usage: str,
          positional: tuple[int, int | None] = (0, 0), config: bool = False) -> tuple[flags.FlagValues, list[str]]:
  """A command's flags, defined by `define` into a fresh set, parsed from `argv` (default: the
  process's arguments); returns them and the positional arguments, of which `positional` gives the
  (least, most) allowed. `config` adds the required `--config=FILE[:ARGUMENTS]` and its
  `--config.FIELD=VALUE` overrides. A bad flag, config file or override ends the command with one
  line; --help prints `usage` and the flags."""
  argv = list(sys.argv[1:] if argv is None else argv)
  values = flags.FlagValues()
  if config:
    _define_config(values, argv)
    flags.mark_flag_as_required("config", flag_values=values)
  define(values)
  for flag in flags.FLAGS.get_flags_for_module("absl.logging"):  # --verbosity, --logtostderr, ...
    values[flag.name] = flag
  if "--help" in argv or "-h" in argv:
    print(f"{usage.strip()}\n\nflags:\n{values.get_help(include_special_flags=False)}")
    sys.exit(0)
  try:
    arguments = values([sys.argv[0], *argv])[1:]
    if config:
      values.config.get("seed")  # a config file that failed to load raises only when read
  except (flags.Error, KeyError, AttributeError, OSError) as error:
    fail(_flag_error(error), status=2)
  least, most = positional
  if not least <= len(arguments) <= (len(arguments) if most is None else most):
    example = next((line.strip() for line in usage.splitlines() if "python -m" in line), "--help")
    problem = f"unexpected arguments {arguments}" if len(arguments) > least else "missing arguments"
    fail(f"{problem}; usage: {example}", status=2)
  flags.FLAGS.mark_as_parsed()
  return values, arguments


def _define_config(values: flags.FlagValues, argv: Sequence[str]) -> None:
  """`--config=FILE[:ARGUMENTS]`; ml_collections finds its `--config.FIELD=VALUE` overrides in `argv`."""
  config_flags.DEFINE_config_file("config", None, "config file[:arguments]", flag_values=values,
                                  lock_config=True, sys_argv=[sys.argv[0], *argv])


def load_config(arguments: Sequence[str]):
  """The config that `--config=FILE[:ARGUMENTS]` and `--config.FIELD=VALUE` arguments give, parsed
  as the commands parse them (e.g. what a sweep asks of a run); a bad one is a ConfigError."""
  values = flags.FlagValues()
  _define_config(values, arguments)
  try:
    values([sys.argv[0], *arguments])
    values.config.get("seed")
  except (flags.Error, KeyError, AttributeError, OSError) as error:
    raise ConfigError(_flag_error(error)) from None
  return values.config


def run(main: Command) -> None:
  """Runs a command from the shell (its console script or `python -m`): absl's log format on
  stderr, and a `UserError` as one line."""
  try:
    faulthandler.enable()  # a crash in native code still prints the Python stack
  except (OSError, ValueError):  # stderr is not a file (captured, as under pytest)
    pass
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.INFO)  # absl's default; --verbosity changes it
  try:
    main(None)
  except UserError as error:
    fail(str(error))
