"""Learning-rate schedules and optimizers: the paper's SGD recipe and the common large-batch ones.

Schedule boundaries are absolute step numbers (the paper's CIFAR "/10 at 32k and 48k" counts the
warmup iterations too); a config may give them in epochs, converted with the epoch length.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.errors import ConfigError

DECAYS = ("step", "cosine")
WARMUPS = ("linear", "constant")
OPTIMIZERS = ("sgd", "lars")
UNITS = ("steps", "epochs")


def _choice(value: str, valid: tuple[str, ...], what: str) -> str:
  if value not in valid:
    raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
  return value


def learning_rate_schedule(schedule: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """`schedule` fields: learning_rate (peak), decay ('step' | 'cosine'), boundaries, decay_factor,
  unit ('steps' | 'epochs', for boundaries and warmup), warmup (length), warmup_kind ('linear':
  Goyal et al.'s ramp from warmup_lr; 'constant': warmup_lr, then the peak, as for ResNet-110)."""
  unit = _choice(schedule.unit, UNITS, "schedule unit")
  decay = _choice(schedule.decay, DECAYS, "learning-rate decay")
  warmup_kind = _choice(schedule.warmup_kind, WARMUPS, "warmup kind")

  def to_steps(length: float) -> int:
    return round(length * steps_per_epoch) if unit == "epochs" else int(length)

  peak = schedule.learning_rate
  warmup = to_steps(schedule.warmup)
  if decay == "step":
    boundaries = [to_steps(b) for b in schedule.boundaries]
    if boundaries != sorted(boundaries) or any(b <= 0 for b in boundaries):
      raise ConfigError(f"schedule boundaries must be positive and increasing; got {boundaries}")
    main = optax.piecewise_constant_schedule(peak, {b: schedule.decay_factor for b in boundaries})
  else:
    span = max(total_steps - warmup, 1)
    main = lambda step: 0.5 * peak * (1 + jnp.cos(jnp.pi * jnp.clip(step - warmup, 0, span) / span))

  def rate(step: jax.Array) -> jax.Array:
    if not warmup:
      return main(step)
    start = schedule.warmup_lr
    ramp = start + (peak - start) * step / warmup if warmup_kind == "linear" else start
    return jnp.where(step < warmup, ramp, main(step))

  return rate


def decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
  """Which parameters get weight decay: all (the paper), or only conv/dense kernels."""
  return jax.tree.map(lambda p: decay_bn_and_bias or p.ndim > 1, params)


def make_optimizer(config: Any, schedule: optax.Schedule, params: Any) -> optax.GradientTransformation:
  """`config` fields: name ('sgd' | 'lars'), momentum, nesterov, weight_decay, decay_bn_and_bias.

  SGD adds the decay to the gradient before momentum, as Caffe and torch.optim.SGD do.
  """
  name = _choice(config.name, OPTIMIZERS, "optimizer")
  mask = decay_mask(params, config.decay_bn_and_bias)
  if name == "lars":
    kernels = decay_mask(params, False)  # LARS leaves BN and biases out of the trust ratio.
    return optax.lars(
        schedule, weight_decay=config.weight_decay, weight_decay_mask=mask,
        trust_ratio_mask=kernels, momentum=config.momentum, nesterov=config.nesterov,
    )
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )
