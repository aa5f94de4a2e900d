"""The train step: a pure function of (state, batch), jitted over the device mesh with the state
replicated and donated and the batch split on the `data` axis. Images arrive as uint8 and are
normalised here, on the devices.

Its own module so that the benchmark can compile it without the trainer's TensorFlow-backed
writers (GPU machines may lack TensorFlow).
"""

import functools

import jax
import optax
from flax import nnx

from resnet_jax import sharding
from resnet_jax.data.in_memory import Normalizer
from resnet_jax.evaluation import correct_top_k
from resnet_jax.experiment import Experiment, TrainState


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    normalize: Normalizer,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    label_smoothing: float,
    ema_decay: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
  labels = batch["label"]
  images = normalize(batch["image"], batch.get("lighting"))

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.batch_stats)
    logits = model(images)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    ema_params = optax.incremental_update(params, ema_params, 1.0 - ema_decay)
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


def compile_train_step(experiment: Experiment):
  config = experiment.config
  step = functools.partial(
      train_step, graphdef=experiment.graphdef, normalize=experiment.data.normalize, optimizer=experiment.optimizer,
      schedule=experiment.schedule, label_smoothing=config.label_smoothing,
      ema_decay=config.ema_decay,
  )
  replicated = sharding.replicated(experiment.mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))
