"""The commands: one convention (`main(argv)`, flags defined only when run), a console script for
each, and the same behaviour in-process, from `python -m` and from the installed script."""

import importlib
import pathlib
import subprocess
import sys
import tomllib

import pytest
from absl import flags
from runs import ROOT

from resnet_jax.errors import ConfigError

COMMANDS = {"train", "evaluate", "benchmark", "sweep", "plot", "table", "convert", "export", "precise-bn", "responses",
            "summary", "prepare", "scan"}


def scripts() -> dict[str, str]:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_has_a_console_script_and_defines_no_flag_on_import():
  assert {name.removeprefix("resnet-jax-") for name in scripts()} == COMMANDS
  modules = []
  for target in scripts().values():
    module_name, _, function = target.partition(":")
    modules.append(importlib.import_module(module_name))
    assert function == "command" and callable(modules[-1].command) and callable(modules[-1].main), target
  for module in modules:  # with every command imported, none of their flags is in absl's global set
    own = flags.FlagValues()
    module.define_flags(own)
    assert own and not set(own) & set(flags.FLAGS), module.__name__


def test_a_command_runs_twice_in_one_process_and_a_users_mistake_is_an_exception(capsys):
  from resnet_jax.models import summary
  summary.main(["--dataset=cifar", "--depth=20"])
  summary.main(["--dataset=cifar", "--depth=32", "--plain"])  # its flags are defined afresh each call
  out = capsys.readouterr().out
  assert out.startswith("CIFAR ResNet-20") and "CIFAR plain-32" in out
  with pytest.raises(ConfigError, match="no ImageNet ResNet of depth 19"):
    summary.main(["--depth=19"])


def test_a_bad_flag_or_argument_ends_a_command_with_one_line_and_status_2(capsys):
  from resnet_jax.tools import table
  for argv, message in [(["--no_such_flag=1", "runs"], "Unknown command line flag 'no_such_flag'"),
                        ([], "missing arguments; usage: python -m resnet_jax.tools.table")]:
    with pytest.raises(SystemExit) as exit_:
      table.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.slow  # two fresh processes
def test_an_installed_console_script_runs_like_its_module():
  script = pathlib.Path(sys.executable).parent / "resnet-jax-summary"
  by_script = subprocess.run([str(script), "--depth", "19"], capture_output=True, text=True, timeout=120)
  by_module = subprocess.run([sys.executable, "-m", "resnet_jax.models.summary", "--depth", "19"],
                             capture_output=True, text=True, timeout=120)
  assert by_script.returncode == by_module.returncode == 1
  assert by_script.stderr == by_module.stderr == "error: there is no ImageNet ResNet of depth 19; valid depths: " \
      "18, 34, 50, 101, 152 (Table 1)\n"
