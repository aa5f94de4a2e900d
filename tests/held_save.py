"""`python -m resnet_jax.main` with one checkpoint's save held open for a while, so that a test can
kill the trainer inside it (a real save is over in a fraction of a second):

  python tests/held_save.py STEP PHASE SECONDS ARGS...

PHASE `commit`: Orbax has written step STEP into its temporary directory and waits SECONDS before
renaming it into place. `seal`: the step is in place and its manifest waits SECONDS. Other saves run
at full speed; nothing else changes.
"""

import asyncio
import pathlib
import sys
import time

from orbax.checkpoint._src.path import async_path

from resnet_jax import checkpoint, main

PHASES = ("commit", "seal")


def hold(step: str, phase: str, seconds: float) -> None:
  if phase == "commit":
    rename = async_path.rename

    async def held_rename(source, destination):
      if destination.name == step:
        await asyncio.sleep(seconds)
      return await rename(source, destination)
    async_path.rename = held_rename
  else:
    write_manifest = checkpoint.write_manifest

    def held_write_manifest(directory: pathlib.Path) -> None:
      if directory.name == step:
        time.sleep(seconds)
      write_manifest(directory)
    checkpoint.write_manifest = held_write_manifest


if __name__ == "__main__":
  step, phase, seconds = sys.argv[1:4]
  assert phase in PHASES, phase
  hold(step, phase, float(seconds))
  sys.argv = [sys.argv[0], *sys.argv[4:]]
  main.command()
