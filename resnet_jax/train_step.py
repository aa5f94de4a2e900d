"""The train step: a pure function of (state, batch), jitted over the device mesh with the state
replicated and donated and the batch split on the `data` axis. Images arrive as uint8 and are
normalised here, on the devices.

Its own module so that the benchmark can compile it without the trainer's TensorFlow-backed
writers (GPU machines may lack TensorFlow).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from resnet_jax import mixing, sharding
from resnet_jax.data.in_memory import Normalizer
from resnet_jax.evaluation import correct_top_k
from resnet_jax.experiment import Experiment, TrainState
from resnet_jax.mixing import MixConfig


MIXING, STOCHASTIC_DEPTH = 0, 1  # what a step's random key is for


def step_key(seed: int, step: jax.Array, purpose: int) -> jax.Array:
  """The randomness of one step's device-side augmentation: a function of (seed, step), so a
  resumed run draws what the uninterrupted one did."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), purpose)


def targets_for(labels: jax.Array, images: jax.Array, step: jax.Array, *, num_classes: int, mix: MixConfig,
                seed: int, label_smoothing: float) -> tuple[jax.Array, jax.Array]:
  """The images and class-probability targets a step trains on: one-hot, mixed (mixing.py, drawn
  from (seed, step)), smoothed."""
  targets = jax.nn.one_hot(labels, num_classes)
  if mix.enabled:
    drawn = mixing.draw(mix, step_key(seed, step, MIXING), *images.shape[1:3])
    images, targets = mixing.mix(images, targets, drawn, mix.style)
  return images, optax.smooth_labels(targets, label_smoothing)


def loss_of(logits: jax.Array, targets: jax.Array, kind: str, bce_target_threshold: float) -> jax.Array:
  if kind == "cross_entropy":
    return optax.softmax_cross_entropy(logits, targets).mean()
  if bce_target_threshold:
    targets = (targets > bce_target_threshold).astype(targets.dtype)
  return optax.sigmoid_binary_cross_entropy(logits, targets).mean()


@dataclasses.dataclass(frozen=True)
class EmaRule:
  """How the weights' moving average follows training. By default it moves toward the weights by
  1 - decay at every step. torchvision's recipe instead updates every `every` steps of an epoch
  (counted from the epoch's first), averages the BN statistics too (`buffers`), and copies the
  weights outright at each update of the first `copy_epochs` epochs and at the first one after."""

  decay: float
  every: int = 1
  buffers: bool = False
  copy_epochs: int = 0
  steps_per_epoch: int = 1

  def update(self, ema: Any, live: Any, step: jax.Array) -> Any:
    if self.every == 1 and not self.copy_epochs:
      return optax.incremental_update(live, ema, 1.0 - self.decay)
    rate = jnp.where(step <= self.copy_epochs * self.steps_per_epoch, 1.0, 1.0 - self.decay)
    rate = jnp.where(step % self.steps_per_epoch % self.every == 0, rate, 0.0)
    return optax.incremental_update(live, ema, rate)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    normalize: Normalizer,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    make_targets: Callable[..., tuple[jax.Array, jax.Array]],
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    ema: "EmaRule",
    drop_key: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  labels = batch["label"]
  images = normalize(batch["image"], batch.get("lighting"))
  if "erase" in batch:  # before mixing, as torchvision erases each example before its collate mixes them
    images = mixing.erase(images, batch["erase"])
  images, targets = make_targets(labels, images, state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.batch_stats)
    logits = model(images, drop_key(state.step)) if drop_key else model(images)
    return loss(logits, targets), (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    live = {"params": params, "batch_stats": batch_stats} if ema.buffers else params
    ema_params = ema.update(ema_params, live, state.step)
  metrics = {
      "loss": loss,
      "top1": correct_top_k(logits, labels, 1).mean(),
      "top5": correct_top_k(logits, labels, 5).mean(),
      "learning_rate": schedule(state.step),
      "grad_norm": optax.tree.norm(grads),
  }
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=ema_params,
  )
  return new_state, metrics


def step_options(experiment: Experiment, config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """The keyword arguments of `train_step` for a run config (default: the experiment's)."""
  config = config or experiment.config
  make_targets = functools.partial(
      targets_for, num_classes=experiment.model_config.num_classes, mix=MixConfig.from_mapping(config.mix),
      seed=config.seed, label_smoothing=config.label_smoothing)
  return dict(graphdef=experiment.graphdef, normalize=experiment.data.normalize, optimizer=experiment.optimizer,
              schedule=experiment.schedule, make_targets=make_targets,
              loss=functools.partial(loss_of, kind=config.loss, bce_target_threshold=config.bce_target_threshold),
              ema=EmaRule(config.ema_decay, every=config.ema_every_steps, buffers=config.ema_buffers,
                          copy_epochs=config.ema_copy_epochs, steps_per_epoch=experiment.steps_per_epoch),
              drop_key=functools.partial(step_key, config.seed, purpose=STOCHASTIC_DEPTH)
              if experiment.model_config.drop_path_rate else None)


def compile_train_step(experiment: Experiment):
  replicated = sharding.replicated(experiment.mesh)
  return jax.jit(functools.partial(train_step, **step_options(experiment)), donate_argnums=0,
                 out_shardings=(replicated, replicated))
