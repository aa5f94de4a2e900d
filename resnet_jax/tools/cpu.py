"""What a CPU benchmark ran on: the processor, its vector instruction sets, the XLA flags in force
and its float32 peak, so that a CPU figure is never read without its machine.

The peak is cores x clock x float32 lanes of the widest vector unit x 2 (a fused multiply-add is
two operations) x 2 FMA units a core. Two units is an assumption (most server cores since Haswell
and Zen 2 have two; some Xeon Silver/Bronze parts have one for AVX-512), stated with the figure;
the clock is the one /proc/cpuinfo reports (nominal; turbo is not counted).
"""

import os
import pathlib
from typing import Any

# The instruction sets that decide which kernels XLA:CPU and torch can use, as /proc/cpuinfo names them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8")
FMA_UNITS = 2


def cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  path = pathlib.Path("/proc/cpuinfo")
  fields = {}
  for line in (path.read_text().splitlines() if path.exists() else []):
    if not line.strip():
      break
    key, _, value = line.partition(":")
    fields[key.strip()] = value.strip()
  return fields


def features() -> set[str]:
  """The CPU's feature flags (avx2, avx512f, amx_bf16, ...), as /proc/cpuinfo lists them."""
  return set(cpuinfo().get("flags", "").split())


def cpu_facts() -> dict[str, Any]:
  """The processor, the cores this process may use, its ISA flags, clock and float32 peak."""
  info = cpuinfo()
  flags = features()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
  ghz = float(info.get("cpu MHz", 0) or 0) / 1e3
  return {
      "cpu": info.get("model name", "unknown"), "cores": cores, "isa": [f for f in ISA_FLAGS if f in flags],
      "clock_ghz": ghz, "float32_lanes": lanes, "fma_units_assumed": FMA_UNITS,
      "peak_float32_tflops": cores * ghz * lanes * 2 * FMA_UNITS / 1e3,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def describe(facts: dict[str, Any]) -> str:
  """One line: processor, cores, ISA, XLA flags."""
  return (f"{facts['cpu']}, {facts['cores']} cores at {facts['clock_ghz']:.2f} GHz; {' '.join(facts['isa']) or 'no AVX2'}; "
          f"XLA_FLAGS={facts['xla_flags'] or '(none)'}")


def peak_source(facts: dict[str, Any]) -> str:
  return (f"float32 peak: {facts['cores']} cores x {facts['clock_ghz']:.2f} GHz x {facts['float32_lanes']} lanes x 2 "
          f"(FMA) x {facts['fma_units_assumed']} FMA units (assumed)")
