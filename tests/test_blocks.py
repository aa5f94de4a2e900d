"""The network's batch norm: grouped statistics, the running-variance convention, and the group
size reaching every norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resnet_jax.models import build_model
from resnet_jax.models.blocks import BatchNorm


def test_grouped_bn_normalises_each_group_by_its_own_statistics():
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 4)) * 2 + jnp.arange(8.0)[:, None, None, None]
  grouped = BatchNorm(4, group_size=4, rngs=nnx.Rngs(0), use_running_average=False)
  separate = [BatchNorm(4, rngs=nnx.Rngs(0), use_running_average=False) for _ in range(2)]
  whole = BatchNorm(4, rngs=nnx.Rngs(0), use_running_average=False)
  y = grouped(x)
  parts = jnp.concatenate([bn(x[4 * i:4 * i + 4]) for i, bn in enumerate(separate)])
  np.testing.assert_allclose(y, parts, atol=1e-5)
  assert not np.allclose(y, whole(x), atol=1e-2)  # the groups' means differ: so must the outputs
  for name in ("mean", "var"):
    expected = (getattr(separate[0], name)[...] + getattr(separate[1], name)[...]) / 2
    np.testing.assert_allclose(getattr(grouped, name)[...], expected, rtol=1e-5)
  with pytest.raises(ValueError, match="does not split into BN groups of 4"):
    grouped(x[:6])


@pytest.mark.parametrize("unbiased", [True, False])
def test_bn_running_variance_is_torchs_unbiased_one_or_flaxs_biased_one(unbiased):
  x = np.asarray(jax.random.normal(jax.random.key(1), (4, 2, 2, 3)) * 3 + 1)  # 16 values a channel
  bn = BatchNorm(3, unbiased_running_var=unbiased, momentum=0.9, rngs=nnx.Rngs(0), use_running_average=False)
  y = bn(jnp.asarray(x))
  batch_var = x.reshape(-1, 3).var(0, ddof=1 if unbiased else 0)
  np.testing.assert_allclose(bn.var[...], 0.9 * 1.0 + 0.1 * batch_var, rtol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * x.reshape(-1, 3).mean(0), rtol=1e-5, atol=1e-6)
  # Either way the batch itself is normalised by its biased variance.
  np.testing.assert_allclose(y, (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5), atol=1e-5)


@pytest.mark.slow
def test_bn_group_size_reaches_every_norm_of_the_model():
  model = build_model({"depth": 8, "dataset": "cifar", "bn_group_size": 16})
  norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, BatchNorm)]
  assert norms and all(n.group_size == 16 for n in norms)
  with pytest.raises(ValueError, match="bn_group_size must be 0"):
    build_model({"depth": 8, "dataset": "cifar", "bn_group_size": -1})
