"""resnet_jax: the ResNets of He, Zhang, Ren & Sun (2015) in JAX/Flax NNX.

Importing the package first makes JAX safe on the CPU (see `_avoid_jaxlib_cpu_miscompile`).
"""

import importlib.metadata
import os
import sys
import warnings

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _jaxlib_version() -> tuple[int, ...]:
  try:
    release = importlib.metadata.version("jaxlib").split("+")[0]
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(part) for part in release.split(".")[:3] if part.isdigit())


def _avoid_jaxlib_cpu_miscompile() -> None:
  """Turns off XLA:CPU's YNN fusions, which return wrong numbers in jaxlib 0.10.2.

  Upstream jax issues 39103 (wrong sums after a vmapped matmul) and 39257 (crashes); with the
  fusions off, small CNNs also train ~2x faster on CPU. XLA reads XLA_FLAGS when the first
  backend starts, so this must run before any array is created. An unknown flag aborts XLA, so
  it is set only for the jaxlib versions pyproject.toml admits, where it was checked. An explicit
  user setting is kept.
  """
  version = _jaxlib_version()
  if not (0, 10, 2) <= version < (0, 11):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  xla_bridge = sys.modules.get("jax._src.xla_bridge")
  if xla_bridge is not None and xla_bridge.backends_are_initialized():
    warnings.warn(
        "JAX started before resnet_jax was imported, so the CPU work-around for jaxlib "
        f"{'.'.join(map(str, version))} could not be applied and CPU results may be "
        f"wrong. Import resnet_jax first, or set XLA_FLAGS={_YNN_FLAG}",
        RuntimeWarning,
        stacklevel=2,
    )
    return
  os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}".strip()


_avoid_jaxlib_cpu_miscompile()
