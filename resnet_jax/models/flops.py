"""Counting parameters and multiply-adds from the model itself.

The paper's "FLOPs" (Table 1) are multiply-adds of the convolutions and the fc layer. We read them
off the jaxpr that tracing the model produces, so the count describes the code that runs, not a
formula beside it. Tracing is abstract: nothing is computed.
"""

import math

import jax
import jax.extend.core as jex
from flax import nnx


def count_params(module: nnx.Module) -> int:
  """Trainable parameters (BN scale and offset included; BN running statistics are not)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def module_macs(module: nnx.Module, input_spec: jax.ShapeDtypeStruct) -> tuple[int, jax.ShapeDtypeStruct]:
  """Multiply-adds of the convolutions and matrix products in `module(x)`, and the output's shape.

  Calls, jits and branches in the trace are followed; loops (scan, while) would not be multiplied
  by their trip count, and the models here have none.

  The module is traced with BN in eval mode: the multiply-adds are the same, and train mode's
  running-average updates make Flax's tracing time grow with the square of the depth.
  """
  graphdef, state = nnx.split(nnx.view(module, use_running_average=True, raise_if_not_found=False))

  def apply(state, x):
    return nnx.merge(graphdef, state)(x)

  closed_jaxpr, output = jax.make_jaxpr(apply, return_shape=True)(state, input_spec)
  return _jaxpr_macs(closed_jaxpr.jaxpr), output


def _jaxpr_macs(jaxpr: jex.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      # Each output value takes (kernel size x input channels per group) multiply-adds.
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel) // out_features
    elif name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contracting)
    for sub in _sub_jaxprs(eqn.params.values()):
      total += _jaxpr_macs(sub)
  return total


def _sub_jaxprs(values) -> list[jex.Jaxpr]:
  found = []
  for value in values:
    if isinstance(value, jex.ClosedJaxpr):
      found.append(value.jaxpr)
    elif isinstance(value, jex.Jaxpr):
      found.append(value)
    elif isinstance(value, (tuple, list)):
      found.extend(_sub_jaxprs(value))
  return found
