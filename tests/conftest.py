"""Shared test set-up."""

import os
import subprocess
import sys

import resnet_jax  # noqa: F401  (first: applies the jaxlib CPU work-around before JAX starts)


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
