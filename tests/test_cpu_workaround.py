"""jaxlib 0.10.2 miscomputes on the CPU (upstream jax issue 39103) unless resnet_jax's flag is set.

Each test starts a fresh interpreter, since XLA reads its flags once per process.
"""

import pytest
from conftest import run_python

from resnet_jax import _jaxlib_version

# The work-around applies only to jaxlib 0.10 (Python 3.11's stack); 0.11.1 and later compute correctly.
only_with_the_workaround = pytest.mark.skipif(
    not (0, 10, 2) <= _jaxlib_version() < (0, 11), reason="jaxlib needs no work-around")

# The upstream reproducer: a vmapped matrix-vector product followed by a reduction. With YNN
# fusions on, jaxlib 0.10.2 returns another sum than (n - 1)^2 = 1073741824 (upstream 1065369600, here
# 1071645696).
VMAPPED_MATVEC = """
import jax, jax.numpy as jnp
n = 32_769
i = jnp.arange(n, dtype=jnp.float32)
x = jnp.stack((i, jnp.zeros_like(i), jnp.zeros_like(i)), axis=1)
m = jnp.eye(3, dtype=jnp.float32)
f = jax.jit(lambda x: jax.vmap(lambda r: jnp.sum((m @ r) ** 2))(x))
got = float(f(x)[-1])
assert got == float(n - 1) ** 2, got
"""


def test_importing_resnet_jax_first_gives_correct_cpu_results():
  result = run_python("import resnet_jax\n" + VMAPPED_MATVEC, {"XLA_FLAGS": None})
  assert result.returncode == 0, result.stderr


@only_with_the_workaround
def test_without_the_workaround_this_jaxlib_miscomputes_the_reproducer():
  """The negative control of the test above: the same code without importing resnet_jax gets the
  upstream wrong answer, so that test passes because of the work-around."""
  result = run_python(VMAPPED_MATVEC, {"XLA_FLAGS": None})
  assert result.stderr.strip().splitlines()[-1].startswith("AssertionError: "), result.stderr[-2000:]


def test_jaxlib_0_12_keeps_ynn_for_dots_and_reductions_and_is_correct():
  if not (0, 12) <= _jaxlib_version() < (0, 13):
    pytest.skip(f"jaxlib {_jaxlib_version()} is not 0.12")
  code = ("import os, resnet_jax\n"
          "assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'\n" + VMAPPED_MATVEC)
  result = run_python(code, {"XLA_FLAGS": None})
  assert result.returncode == 0, result.stderr


def test_users_own_xla_flags_are_kept():
  code = "import os, resnet_jax, jax\n" + VMAPPED_MATVEC + (
      "assert jax.device_count() == 3, jax.devices()\n"
      "assert '--xla_force_host_platform_device_count=3' in os.environ['XLA_FLAGS']\n"
  )
  result = run_python(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
  assert result.returncode == 0, result.stderr


@only_with_the_workaround
def test_warns_when_jax_started_before_the_import():
  code = (
      "import warnings, jax\n"
      "jax.numpy.zeros(1)\n"
      "with warnings.catch_warnings(record=True) as caught:\n"
      "  warnings.simplefilter('always')\n"
      "  import resnet_jax\n"
      "assert any('Import resnet_jax first' in str(w.message) for w in caught), caught\n"
  )
  result = run_python(code, {"XLA_FLAGS": None})
  assert result.returncode == 0, result.stderr
