"""Learning-rate schedules and optimizers: the paper's SGD recipe and the common large-batch ones.

Schedule boundaries are absolute step numbers (the paper's CIFAR "/10 at 32k and 48k" counts the
warmup iterations too); a config may give them in epochs, converted with the epoch length.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax import sections


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """The learning rate: a peak (`learning_rate`; the run config derives it from the batch size),
  `decay` 'step' (x `decay_factor` at each of `boundaries`) or 'cosine' (to 0 at the end), lengths
  in `unit` ('steps' | 'epochs'), and `warmup` of that length: 'linear' (Goyal et al.'s ramp from
  `warmup_lr`) or 'constant' (`warmup_lr`, then the peak, as for ResNet-110)."""

  learning_rate: float = 0.1
  decay: str = "step"
  boundaries: tuple[float, ...] = ()
  decay_factor: float = 0.1
  unit: str = "steps"
  warmup: float = 0.0
  warmup_kind: str = "linear"
  warmup_lr: float = 0.0

  def __post_init__(self):
    sections.check(self, "schedule", (
        ("learning_rate", lambda v: v > 0, "positive (a negative rate climbs the loss)"),
        ("decay", lambda v: v in ("step", "cosine"), "'step' or 'cosine'"),
        ("boundaries", lambda v: list(v) == sorted(v) and all(b > 0 for b in v), "positive and increasing"),
        ("decay_factor", lambda v: v > 0, "positive"),
        ("unit", lambda v: v in ("steps", "epochs"), "'steps' or 'epochs'"),
        ("warmup", lambda v: v >= 0, "0 (none) or a positive length"),
        ("warmup_kind", lambda v: v in ("linear", "constant"), "'linear' or 'constant'"),
        ("warmup_lr", lambda v: v >= 0, "non-negative"),
    ))

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "ScheduleConfig":
    return sections.from_mapping(cls, fields, "schedule")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """`name` 'sgd' (the paper's, with `momentum`, optionally `nesterov`) or 'lars' (You et al., for
  large batches); `weight_decay` on every parameter (the paper) or, `decay_bn_and_bias=False`, on
  the conv and dense kernels only."""

  name: str = "sgd"
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 1e-4
  decay_bn_and_bias: bool = True

  def __post_init__(self):
    sections.check(self, "optimizer", (
        ("name", lambda v: v in ("sgd", "lars"), "'sgd' or 'lars'"),
        ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("weight_decay", lambda v: v >= 0, "non-negative"),
    ))

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "OptimizerConfig":
    return sections.from_mapping(cls, fields, "optimizer")


def learning_rate_schedule(schedule: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The schedule as a function of the step (see `ScheduleConfig`)."""
  def to_steps(length: float) -> int:
    return round(length * steps_per_epoch) if schedule.unit == "epochs" else int(length)

  peak = schedule.learning_rate
  warmup = to_steps(schedule.warmup)
  if schedule.decay == "step":
    boundaries = [to_steps(b) for b in schedule.boundaries]
    main = optax.piecewise_constant_schedule(peak, {b: schedule.decay_factor for b in boundaries})
  else:
    span = max(total_steps - warmup, 1)
    main = lambda step: 0.5 * peak * (1 + jnp.cos(jnp.pi * jnp.clip(step - warmup, 0, span) / span))

  def rate(step: jax.Array) -> jax.Array:
    if not warmup:
      return main(step)
    start = schedule.warmup_lr
    ramp = start + (peak - start) * step / warmup if schedule.warmup_kind == "linear" else start
    return jnp.where(step < warmup, ramp, main(step))

  return rate


def decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
  """Which parameters get weight decay: all (the paper), or only conv/dense kernels."""
  return jax.tree.map(lambda p: decay_bn_and_bias or p.ndim > 1, params)


def make_optimizer(config: OptimizerConfig, schedule: optax.Schedule, params: Any) -> optax.GradientTransformation:
  """SGD adds the decay to the gradient before momentum, as Caffe and torch.optim.SGD do."""
  mask = decay_mask(params, config.decay_bn_and_bias)
  if config.name == "lars":
    kernels = decay_mask(params, False)  # LARS leaves BN and biases out of the trust ratio.
    return optax.lars(
        schedule, weight_decay=config.weight_decay, weight_decay_mask=mask,
        trust_ratio_mask=kernels, momentum=config.momentum, nesterov=config.nesterov,
    )
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )
