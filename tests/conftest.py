"""Shared test set-up."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import resnet_jax  # noqa: F401  (first: applies the jaxlib CPU work-around before JAX starts)

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def load_config(name: str, argument: str | None = None):
  """configs/<name>.py's config, as `--config=configs/<name>.py:<argument>` gives it."""
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument)


def run_python(code: str, env_updates: dict[str, str | None] | None = None, timeout: float = 300):
  """Runs `code` in a fresh Python process (a clean JAX start) and returns the finished process."""
  env = dict(os.environ)
  for key, value in (env_updates or {}).items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  return subprocess.run(
      [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
  )
