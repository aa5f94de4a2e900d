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


DECAYS = ("step", "cosine", "linear")
OPTIMIZERS = ("sgd", "lars", "lamb", "adamw")
# Which parameters weight decay leaves out, by recipe: none (the paper), the norms' scales and biases
# (torchvision's --norm-weight-decay 0), every 1-D parameter (norms and the fc bias: timm's and the
# LARS papers'), or the norms of the stem and residual branches but not the shortcut projections' (FFCV
# selects "bn" in torchvision's names, which the projections' "downsample.1" lacks).
NO_DECAY = ("none", "norms", "norms_and_biases", "stem_and_branch_norms")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """The learning rate: a peak (`learning_rate`; the run config derives it from the batch size),
  `decay` 'step' (x `decay_factor` at each of `boundaries`), 'cosine' or 'linear' (to 0 at the end:
  FFCV's "cyclic" schedule after its linear warmup), lengths
  in `unit` ('steps' | 'epochs'), and `warmup` of that length: 'linear' (Goyal et al.'s ramp from
  `warmup_lr`) or 'constant' (`warmup_lr`, then the peak, as for ResNet-110). Cosine decays to
  `min_lr`, over the steps after the warmup or, with `cosine_from_start` (timm's scheduler), over
  all of them with the warmup replacing its start. `change_every` 'epoch' holds the rate through each
  epoch at its value at the epoch's start, as torchvision's and timm's schedulers step once an
  epoch; 'step' changes it every step."""

  learning_rate: float = 0.1
  decay: str = "step"
  boundaries: tuple[float, ...] = ()
  decay_factor: float = 0.1
  unit: str = "steps"
  warmup: float = 0.0
  warmup_kind: str = "linear"
  warmup_lr: float = 0.0
  min_lr: float = 0.0
  cosine_from_start: bool = False
  change_every: str = "step"

  def __post_init__(self):
    sections.check(self, "schedule", (
        ("learning_rate", lambda v: v > 0, "positive (a negative rate climbs the loss)"),
        ("decay", lambda v: v in DECAYS, "'step', 'cosine' or 'linear'"),
        ("boundaries", lambda v: list(v) == sorted(v) and all(b > 0 for b in v), "positive and increasing"),
        ("decay_factor", lambda v: v > 0, "positive"),
        ("unit", lambda v: v in ("steps", "epochs"), "'steps' or 'epochs'"),
        ("warmup", lambda v: v >= 0, "0 (none) or a positive length"),
        ("warmup_kind", lambda v: v in ("linear", "constant"), "'linear' or 'constant'"),
        ("warmup_lr", lambda v: v >= 0, "non-negative"),
        ("min_lr", lambda v: v >= 0, "non-negative"),
        ("change_every", lambda v: v in ("step", "epoch"), "'step' or 'epoch'"),
    ))

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "ScheduleConfig":
    return sections.from_mapping(cls, fields, "schedule")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """`name` 'sgd' (the paper's, with `momentum`, optionally `nesterov`), 'lars' (You et al., for
  large batches), 'lamb' (You et al. 2020, as timm's Lamb: RSB's) or 'adamw' (Loshchilov & Hutter, as
  torch.optim.AdamW); `weight_decay` on every parameter but those `no_decay` names (see NO_DECAY).
  Adam's moments: `beta1`, `beta2`, `eps`. `clip_grad_norm` > 0 scales the gradients down to that
  global norm first (timm's Lamb does it itself, at 1.0)."""

  name: str = "sgd"
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 1e-4
  no_decay: str = "none"
  beta1: float = 0.9
  beta2: float = 0.999
  eps: float = 1e-8
  clip_grad_norm: float = 0.0

  def __post_init__(self):
    sections.check(self, "optimizer", (
        ("name", lambda v: v in OPTIMIZERS, "one of " + ", ".join(map(repr, OPTIMIZERS))),
        ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("weight_decay", lambda v: v >= 0, "non-negative"),
        ("no_decay", lambda v: v in NO_DECAY, "one of " + ", ".join(map(repr, NO_DECAY))),
        ("beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("eps", lambda v: v > 0, "positive"),
        ("clip_grad_norm", lambda v: v >= 0, "0 (off) or positive"),
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
    begin = 0 if schedule.cosine_from_start else warmup
    span = max(total_steps - begin, 1)
    done = lambda step: jnp.clip(step - begin, 0, span) / span
    if schedule.decay == "cosine":
      low = schedule.min_lr
      main = lambda step: low + 0.5 * (peak - low) * (1 + jnp.cos(jnp.pi * done(step)))
    else:
      main = lambda step: peak * (1 - done(step))

  def rate(step: jax.Array) -> jax.Array:
    if schedule.change_every == "epoch":
      step = step // steps_per_epoch * steps_per_epoch
    if not warmup:
      return main(step)
    start = schedule.warmup_lr
    ramp = start + (peak - start) * step / warmup if schedule.warmup_kind == "linear" else start
    return jnp.where(step < warmup, ramp, main(step))

  return rate


def decay_mask(params: Any, no_decay: str) -> Any:
  """Which parameters get weight decay (True), those `no_decay` names left out (see NO_DECAY)."""
  def decays(path: tuple, p: jax.Array) -> bool:
    names = {getattr(key, "key", None) for key in path}
    in_norm = bool(names & {"norm", "norms"})
    return {"none": True, "norms": not in_norm, "norms_and_biases": p.ndim > 1,
            "stem_and_branch_norms": not in_norm or "shortcut" in names}[no_decay]

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, schedule: optax.Schedule, params: Any) -> optax.GradientTransformation:
  """SGD adds the decay to the gradient before momentum, as Caffe and torch.optim.SGD do. LAMB is
  timm's: Adam's step plus the decay, scaled by |w| / |step| on the decayed parameters only (the
  others take Adam's step as it is). AdamW decays by lr x wd x w beside Adam's step."""
  mask = decay_mask(params, config.no_decay)
  if config.name == "lars":
    kernels = decay_mask(params, "norms_and_biases")  # LARS leaves BN and biases out of the trust ratio.
    optimizer = optax.lars(
        schedule, weight_decay=config.weight_decay, weight_decay_mask=mask,
        trust_ratio_mask=kernels, momentum=config.momentum, nesterov=config.nesterov,
    )
  elif config.name in ("lamb", "adamw"):
    adam = optax.scale_by_adam(b1=config.beta1, b2=config.beta2, eps=config.eps)
    decay = optax.add_decayed_weights(config.weight_decay, mask)
    # timm adapts only what it decays; with no decay at all, nothing.
    trust = (optax.masked(optax.scale_by_trust_ratio(), mask if config.weight_decay else jax.tree.map(lambda _: False, mask))
             if config.name == "lamb" else optax.identity())
    optimizer = optax.chain(adam, decay, trust, optax.scale_by_learning_rate(schedule))
  else:
    optimizer = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
    )
  if config.clip_grad_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), optimizer)
  return optimizer
