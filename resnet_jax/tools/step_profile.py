"""Where a train step's time goes on the CPU, per kind of work, for ours and for torch in the same rows.

Ours comes from XLA's own trace (`jax.profiler`): XLA:CPU runs a compiled step as a graph of thunks
(one per fused kernel, convolution or copy) and records when each starts and ends. Thunks can overlap
(two cores, independent branches), so each instant of the step is shared equally among the thunks
running then; the shares add up to the step's busy time, and the rest is time in no thunk. Each thunk
is put in a row from the HLO it runs. Torch's comes from `torch.profiler`, by each operator's own
(self) time. Neither module imports jax or torch at the top: the torch worker imports this file
under an interpreter that has torch and not jax.
"""

import collections
import gzip
import json
import pathlib
import re
import tempfile
from collections.abc import Callable, Iterable

FORWARD = "convolutions and matmuls, forward"
BACKWARD = "convolutions and matmuls, backward"
LAYOUT = "layout transposes and copies"
ELEMENTWISE = "BN, ReLU, adds, pooling, loss, optimizer"
OUTSIDE = "in no op (idle, dispatch)"
ROWS = (FORWARD, BACKWARD, LAYOUT, ELEMENTWISE, OUTSIDE)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+) = (.*?) ([a-z][a-z0-9_-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+) \(")
_CALLS = re.compile(r"calls=%([\w.-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_kinds(hlo_text: str) -> dict[str, str]:
  """The row of each instruction a thunk can be named after, read from a compiled module's HLO text.

  A convolution or dot is forward unless JAX's metadata says it belongs to the gradient (`transpose(`)
  or it has none (XLA:CPU's rewrite of a kernel gradient into a convolution); a fusion counts as a
  layout change when it transposes, as a convolution or matmul when it holds one (YNNPACK's dot
  fusions), else as elementwise work.
  """
  computations: dict[str, list[str]] = collections.defaultdict(list)  # name -> opcodes inside
  entries: dict[str, tuple[str, str, str]] = {}  # instruction -> (opcode, op_name, called computation)
  current = None
  for line in hlo_text.splitlines():
    if header := _COMPUTATION.match(line):
      current = header.group(1)
      continue
    if not (match := _INSTRUCTION.match(line)):
      continue
    name, _, opcode, rest = match.groups()
    computations[current].append(opcode)
    op_name = _OP_NAME.search(rest)
    calls = _CALLS.search(rest)
    entries[name] = (opcode, op_name.group(1) if op_name else "", calls.group(1) if calls else "")
  return {name: _kind(opcode, op_name, computations.get(called, ()))
          for name, (opcode, op_name, called) in entries.items()}


def _kind(opcode: str, op_name: str, inside: Iterable[str]) -> str:
  ops = set(inside) | {opcode}
  if ops & {"convolution", "dot"}:
    return BACKWARD if "transpose(" in op_name or not op_name else FORWARD
  if ops & {"transpose", "copy"}:
    return LAYOUT
  return ELEMENTWISE


def thunk_spans(events: list[dict]) -> list[tuple[str, float, float]]:
  """(thunk, start, end) in microseconds from a trace's events: a thunk's start event carries its HLO
  op; its end is the matching `end: NAME` event (asynchronous convolutions finish there), or its own
  duration where there is none."""
  starts = sorted((e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})),
                  key=lambda e: e["ts"])
  ends: dict[str, list[float]] = collections.defaultdict(list)
  for event in sorted((e for e in events if e.get("name", "").startswith("end: ")), key=lambda e: e["ts"]):
    ends[event["name"][len("end: "):]].append(event["ts"])
  spans = []
  for event in starts:
    name, start = event["args"]["hlo_op"], event["ts"]
    later = [t for t in ends.get(name, ()) if t >= start]
    end = later[0] if later else start + event.get("dur", 0)
    if later:
      ends[name].remove(end)
    spans.append((name, start, max(end, start + event.get("dur", 0))))
  return spans


def shared_times(spans: list[tuple[str, float, float]]) -> tuple[dict[str, float], float]:
  """Each thunk's share of the time it ran (an instant split equally among the thunks running then),
  and the busy time, the union of the spans: a sweep over their starts and ends."""
  points = sorted({t for _, start, end in spans for t in (start, end)})
  index = {t: i for i, t in enumerate(points)}
  running: list[list[str]] = [[] for _ in points]
  for name, start, end in spans:
    for i in range(index[start], index[end]):
      running[i].append(name)
  shares: dict[str, float] = collections.defaultdict(float)
  busy = 0.0
  for i, names in enumerate(running[:-1]):
    width = points[i + 1] - points[i]
    if names:
      busy += width
      for name in names:
        shares[name] += width / len(names)
  return dict(shares), busy


def xla_rows(trace_events: list[dict], hlo_text: str, wall_us: float, steps: int) -> dict:
  """Milliseconds a step per row for our compiled step, and the ten thunks that take longest."""
  shares, busy = shared_times(thunk_spans(trace_events))
  kinds = hlo_kinds(hlo_text)
  rows = dict.fromkeys(ROWS, 0.0)
  for name, share in shares.items():
    rows[kinds.get(name, ELEMENTWISE)] += share / steps / 1000
  rows[OUTSIDE] = max(wall_us - busy, 0.0) / steps / 1000
  top = sorted(shares.items(), key=lambda item: -item[1])[:10]
  return {"rows": rows, "top": [(name, kinds.get(name, ELEMENTWISE), share / steps / 1000) for name, share in top]}


def profile_xla(compiled, run_steps: Callable[[int], float], steps: int) -> dict:
  """Profiles `steps` steps of a compiled function (`run_steps(n)` runs n of them, waits for the
  results and returns the wall seconds) through `jax.profiler`, and splits the time into rows."""
  import jax

  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    try:
      wall = run_steps(steps)
    finally:
      jax.profiler.stop_trace()
    trace, = pathlib.Path(directory).rglob("*.trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
  return {**xla_rows(events, compiled.as_text(), wall * 1e6, steps), "step_ms": wall * 1000 / steps}


_TORCH_ROWS = (
    (("convolution_backward", "mm", "_convolution_backward"), BACKWARD),
    (("convolution", "mkldnn_convolution", "_convolution", "addmm", "linear", "matmul"), FORWARD),
    (("copy_", "clone", "contiguous", "to", "_to_copy", "empty_like"), LAYOUT),
)


def torch_row(operator: str) -> str:
  """The row of a torch operator (`aten::NAME`) by its name."""
  name = operator.split("::")[-1]
  for names, row in _TORCH_ROWS:
    if name in names:
      return row
  return ELEMENTWISE


def torch_rows(self_us: dict[str, float], wall_us: float, steps: int) -> dict:
  """Milliseconds a step per row from torch operators' self times, and the ten that take longest."""
  rows = dict.fromkeys(ROWS, 0.0)
  for operator, time in self_us.items():
    rows[torch_row(operator)] += time / steps / 1000
  rows[OUTSIDE] = max(wall_us - sum(self_us.values()), 0.0) / steps / 1000
  top = sorted(self_us.items(), key=lambda item: -item[1])[:10]
  return {"rows": rows, "top": [(name, torch_row(name), time / steps / 1000) for name, time in top]}


def profile_torch(run_steps: Callable[[int], float], steps: int) -> dict:
  """Profiles `steps` torch steps (`run_steps(n)` returns the wall seconds) by operators' self time."""
  import torch.profiler

  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    wall = run_steps(steps)
  # Only ATen operators are ops; the autograd engine's and Python's own time stays in OUTSIDE.
  self_us = {entry.key: entry.self_cpu_time_total for entry in profile.key_averages()
             if entry.self_cpu_time_total > 0 and entry.key.startswith("aten::")}
  return {**torch_rows(self_us, wall * 1e6, steps), "step_ms": wall * 1000 / steps}
