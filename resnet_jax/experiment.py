"""What a config turns into, shared by the trainer and the evaluator: the mesh, the data, the
model's definition and initial state, the schedule and the optimizer."""

import dataclasses
import logging
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from resnet_jax import config as config_lib
from resnet_jax import optim, sharding
from resnet_jax.checkpoint import Checkpoints
from resnet_jax.data.inputs import Inputs, make_inputs
from resnet_jax.errors import ConfigError
from resnet_jax.models import ModelConfig, build_model


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as plain pytrees (what Orbax saves)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # None without an EMA


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model_config: ModelConfig
  graphdef: nnx.GraphDef  # the model in training mode
  eval_graphdef: nnx.GraphDef  # the same model using BN running averages
  data: Inputs
  steps_per_epoch: int
  total_steps: int
  schedule: optax.Schedule
  optimizer: optax.GradientTransformation

  def initial_state(self) -> TrainState:
    model = build_model(self.model_config, seed=self.config.seed)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=self.optimizer.init(params),
        # A copy: the train step donates the state, and one buffer cannot be donated twice.
        ema_params=self._ema_of(params, batch_stats) if self.config.ema_decay > 0 else None,
    )
    return jax.device_put(state, sharding.replicated(self.mesh))

  def _ema_of(self, params: Any, batch_stats: Any) -> Any:
    """A copy (the train step donates the state, and one buffer cannot be donated twice) of what the
    EMA averages: the parameters, and the BN statistics with config.ema_buffers."""
    ema = {"params": params, "batch_stats": batch_stats} if self.config.ema_buffers else params
    return jax.tree.map(jnp.copy, ema)

  def ema_weights(self, state: TrainState) -> tuple[Any, Any] | None:
    """(params, batch_stats) to score the EMA with (its own statistics when it averages them);
    None without an EMA."""
    if state.ema_params is None:
      return None
    if self.config.ema_buffers:
      return state.ema_params["params"], state.ema_params["batch_stats"]
    return state.ema_params, state.batch_stats

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the train state, for restoring without building it."""
    replicated = sharding.replicated(self.mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(self.initial_state),
    )

  def restore(self, checkpoints: Checkpoints, step: int | None = None) -> tuple[TrainState, int, dict]:
    """The state to continue from: the newest readable checkpoint, or a fresh start."""
    found = checkpoints.restore(self.abstract_state(), step)
    if found is None:
      return self.initial_state(), 0, {"step": 0}
    step, state, data_state = found
    logging.info("resumed from checkpoint %d in %s", step, checkpoints.directory)
    return state, step, data_state


def setup(config: ml_collections.ConfigDict, inputs: Inputs | None = None) -> Experiment:
  """Checks the config and loads what the run needs (the config's data, unless `inputs` stands in
  for it); every config error surfaces here, before anything compiles."""
  config_lib.validate(config)
  schedule_config = optim.ScheduleConfig.from_mapping(config.schedule)
  optimizer_config = optim.OptimizerConfig.from_mapping(config.optimizer)
  sharding.check_global_batch(config.eval_batch_size, "eval_batch_size")
  sharding.check_global_batch(config.batch_size, "batch_size")
  model_config = ModelConfig.from_mapping(config.model)
  if model_config.bn_group_size and config.batch_size % model_config.bn_group_size:
    raise ConfigError(
        f"batch_size={config.batch_size} does not split into BN groups of "
        f"model.bn_group_size={model_config.bn_group_size}"
    )
  inputs = inputs or make_inputs(config)
  _check_inputs(model_config, inputs)
  model = nnx.eval_shape(lambda: build_model(model_config, seed=config.seed))
  steps_per_epoch = inputs.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"batch_size={config.batch_size} exceeds the {inputs.num_train} training examples")
  total_steps = config.num_train_steps or round(config.num_epochs * steps_per_epoch)
  if total_steps <= 0:
    raise ConfigError("set num_train_steps or num_epochs to a positive value")
  schedule = optim.learning_rate_schedule(schedule_config, steps_per_epoch, total_steps)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return Experiment(
      config=config, mesh=sharding.make_mesh(), model_config=model_config,
      graphdef=nnx.graphdef(model),
      eval_graphdef=nnx.graphdef(nnx.view(model, use_running_average=True)),
      data=inputs,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps, schedule=schedule,
      optimizer=optim.make_optimizer(optimizer_config, schedule, params),
  )


def _check_inputs(model_config: ModelConfig, inputs: Inputs) -> None:
  channels = inputs.channels
  if channels != model_config.input_channels:
    raise ConfigError(
        f"the images have {channels} channel(s) but model.input_channels={model_config.input_channels}"
    )
  if inputs.num_classes > model_config.num_classes:
    raise ConfigError(
        f"the data has {inputs.num_classes} classes but model.num_classes={model_config.num_classes}"
    )
