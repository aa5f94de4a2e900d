"""resnet_jax: the ResNets of He, Zhang, Ren & Sun (2015) in JAX/Flax NNX.

Importing the package first sets XLA's CPU options for the installed jaxlib (see `_set_cpu_flags`).
"""

import importlib.metadata
import os
import sys
import warnings

_YNN_OPTION = "--xla_cpu_experimental_ynn_fusion_type="
# (first jaxlib, first jaxlib after, the option's value, whether results are wrong without it).
# An unknown flag aborts XLA, so each is set only on the versions where it was checked.
_CPU_SETTINGS = (
    # jaxlib 0.10.2 returns wrong numbers from its YNN fusions (upstream jax issues 39103, 39257),
    # and small CNNs train ~2x faster with them all off.
    ((0, 10, 2), (0, 11), "", True),
    # jaxlib 0.12 computes correctly, but its YNN convolutions make a ResNet train step ~1.5x slower
    # on the CPU than XLA's own (ResNet-50: 2.84 vs 4.06 images/s); YNN keeps dots and reductions.
    ((0, 12), (0, 13), "dot,reduce", False),
)


def _jaxlib_version() -> tuple[int, ...]:
  try:
    release = importlib.metadata.version("jaxlib").split("+")[0]
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(part) for part in release.split(".")[:3] if part.isdigit())


def _set_cpu_flags() -> None:
  """Sets the XLA:CPU option `_CPU_SETTINGS` gives the installed jaxlib, unless the user set it.

  XLA reads XLA_FLAGS when the first backend starts, so this must run before any array is created;
  if JAX started first and the setting matters for correctness, a warning says so.
  """
  version = _jaxlib_version()
  found = [setting for setting in _CPU_SETTINGS if setting[0] <= version < setting[1]]
  flags = os.environ.get("XLA_FLAGS", "")
  if not found or "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  _, _, value, needed_for_correctness = found[0]
  xla_bridge = sys.modules.get("jax._src.xla_bridge")
  if xla_bridge is not None and xla_bridge.backends_are_initialized():
    if needed_for_correctness:
      warnings.warn(
          "JAX started before resnet_jax was imported, so the CPU work-around for jaxlib "
          f"{'.'.join(map(str, version))} could not be applied and CPU results may be "
          f"wrong. Import resnet_jax first, or set XLA_FLAGS={_YNN_OPTION}{value}",
          RuntimeWarning,
          stacklevel=2,
      )
    return
  os.environ["XLA_FLAGS"] = f"{flags} {_YNN_OPTION}{value}".strip()


_set_cpu_flags()
