"""The console scripts pyproject.toml declares: each names a command function that exists, and an
installed one runs as a user types it, with the same output as its `python -m` form."""

import ast
import pathlib
import subprocess
import sys
import tomllib

import pytest
from runs import ROOT

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves these out

COMMANDS = {"train", "evaluate", "benchmark", "sweep", "plot", "table", "convert", "summary", "prepare", "scan"}


def test_every_command_has_a_console_script_naming_a_function_of_its_module():
  scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  assert {name.removeprefix("resnet-jax-") for name in scripts} == COMMANDS
  for target in scripts.values():
    module, _, function = target.partition(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    # Read, not imported: several commands define the same absl flags when imported.
    defined = {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    assert function in defined, target


def test_an_installed_console_script_runs_like_its_module():
  script = pathlib.Path(sys.executable).parent / "resnet-jax-summary"
  by_script = subprocess.run([str(script), "--depth", "19"], capture_output=True, text=True, timeout=120)
  by_module = subprocess.run([sys.executable, "-m", "resnet_jax.models.summary", "--depth", "19"],
                             capture_output=True, text=True, timeout=120)
  assert by_script.returncode == by_module.returncode == 2
  assert by_script.stderr == by_module.stderr and "no ImageNet ResNet of depth 19" in by_script.stderr
