"""The step profile (resnet_jax/tools/step_profile.py): overlapping thunks share their time, each thunk
meets its own end, gradient convolutions are told from forward ones, and a real profile's rows add up
to the step."""

import re
import time

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.tools import step_profile
from resnet_jax.tools.step_profile import BACKWARD, ELEMENTWISE, FORWARD, LAYOUT, OUTSIDE


def test_overlapping_thunks_share_the_time_they_run_together():
  # a: 0-10, b: 5-15, c alone 20-24; 5-10 is shared by two, 15-20 is idle.
  shares, busy = step_profile.shared_times([("a", 0, 10), ("b", 5, 15), ("c", 20, 24)])
  assert shares == pytest.approx({"a": 7.5, "b": 7.5, "c": 4.0})
  assert busy == pytest.approx(19.0)


def test_each_thunk_run_is_matched_with_its_own_end():
  # conv runs twice (two steps); its end events come later than its start events' own durations
  # (an asynchronous convolution); fusion has no end event, so its own duration counts.
  def start(name, ts, dur):
    return {"ph": "X", "ts": ts, "dur": dur, "name": name, "args": {"hlo_op": name}}

  def end(name, ts):
    return {"ph": "X", "ts": ts, "dur": 0, "name": f"end: {name}"}

  events = [start("conv", 0, 1), end("conv", 8), start("fusion", 9, 2), start("conv", 100, 1), end("conv", 130)]
  assert sorted(step_profile.thunk_spans(events)) == [("conv", 0, 8), ("conv", 100, 130), ("fusion", 9, 11)]


def _loss(x, kernel):
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jax.nn.relu(y) ** 2)


def test_gradient_convolutions_are_told_from_the_forward_one():
  """The gradient of a convolution w.r.t. input and kernel compiles to three convolutions: one forward
  and two in the backward row (the kernel gradient without JAX's metadata, as XLA:CPU rewrites it)."""
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  text = jax.jit(jax.grad(_loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
  kinds = step_profile.hlo_kinds(text)
  convolutions = [name for name in kinds if re.search(rf"%{re.escape(name)} = \S+ convolution\(", text)]
  assert sorted(kinds[name] for name in convolutions) == sorted([FORWARD, BACKWARD, BACKWARD])
  assert ELEMENTWISE in kinds.values()


def test_a_real_profile_fills_the_rows_and_adds_up_to_the_step():
  x = jax.random.normal(jax.random.key(0), (8, 28, 28, 32))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
  compiled = jax.jit(jax.grad(_loss, argnums=(0, 1))).lower(x, kernel).compile()
  jax.block_until_ready(compiled(x, kernel))

  def run_steps(count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
      jax.block_until_ready(compiled(x, kernel))
    return time.perf_counter() - start

  profile = step_profile.profile_xla(compiled, run_steps, 3)
  rows = profile["rows"]
  assert set(rows) == set(step_profile.ROWS)
  assert rows[FORWARD] > 0 and rows[BACKWARD] > 0 and rows[LAYOUT] > 0 and rows[OUTSIDE] >= 0
  assert sum(rows.values()) == pytest.approx(profile["step_ms"], rel=1e-6)
  assert {kind for _, kind, _ in profile["top"]} >= {FORWARD, BACKWARD}


@pytest.mark.parametrize("operator, row", [("aten::mkldnn_convolution", FORWARD), ("aten::addmm", FORWARD),
                                           ("aten::convolution_backward", BACKWARD), ("aten::copy_", LAYOUT),
                                           ("aten::native_batch_norm", ELEMENTWISE)])
def test_torch_operators_land_in_the_rows_ours_do(operator, row):
  assert step_profile.torch_row(operator) == row
