"""Training speed: the real train step on synthetic data already on the devices.

  python -m resnet_jax.tools.benchmark --config=configs/imagenet.py:depth=50,dtype=bfloat16 --config.batch_size=256
  python -m resnet_jax.tools.benchmark --config=configs/cifar10.py:depth=20 --input_pipeline
  python -m resnet_jax.tools.benchmark --config=configs/imagenet.py:depth=50 --find_max_batch

Prints compile time, step time (median, 10th/90th percentiles), images/s, the FLOPs of a train
step per image (XLA's cost analysis of the compiled step beside 6x the model's multiply-adds), the
bytes it moves per image and so its arithmetic intensity (below the device's peak FLOP/s over its
bandwidth, ~300 FLOP/byte for an H100 in bf16, memory bounds the step), achieved TFLOP/s and MFU
against the device's peak, and peak memory; then a JSON line.
--input_pipeline also times the config's real input pipeline alone and feeding the step, to show
which bounds the run. The synthetic path imports neither TensorFlow nor tfds.
"""

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from absl import logging as absl_logging

from resnet_jax import cli, sharding
from resnet_jax.data.in_memory import Normalizer
from resnet_jax.data.inputs import Inputs
from resnet_jax.errors import ConfigError
from resnet_jax.experiment import Experiment, setup
from resnet_jax.models import build_model
from resnet_jax.models.flops import module_macs
from resnet_jax.tools import cpu
from resnet_jax.train_step import compile_train_step

# Dense peak TFLOP/s (bfloat16, and float32 matmuls as the device runs them: TF32 tensor cores on
# NVIDIA, bf16 passes on TPU), by a substring of jax's device_kind; first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v6 lite", {"bfloat16": 918.0, "float32": 918.0}),
)


def peak_tflops(device: jax.Device, dtype: str, machine: dict[str, Any] | None = None,
                measured: float | None = None) -> tuple[float, str]:
  """The device's peak for `dtype` from the table; a CPU's float32 peak from its cores, clock and
  vector width (`machine`, tools/cpu.py's facts); else a large-matmul rate (`measured` if the
  caller has one)."""
  for name, peaks in PEAK_TFLOPS:
    if name in device.device_kind:
      return peaks[dtype], f"{dtype} peak of {device.device_kind}"
  if machine and dtype == "float32" and machine["peak_float32_tflops"]:
    return machine["peak_float32_tflops"], cpu.peak_source(machine)
  rate = measured if measured is not None else measured_matmul_tflops(jnp.dtype(dtype))
  return rate, f"measured {dtype} matmul rate of {device.device_kind}"


def measured_matmul_tflops(dtype: jnp.dtype, size: int = 1024, repeats: int = 5) -> float:
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    matmul(a).block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def synthetic_inputs(config: ml_collections.ConfigDict) -> Inputs:
  """Stands in for the config's data: only its facts, no reading."""
  def no_data(*_):
    raise RuntimeError("the benchmark's synthetic inputs hold no data")

  channels = config.model.input_channels
  return Inputs(num_train=config.batch_size * 1000, channels=channels,
                num_classes=config.model.num_classes or 1000, train=no_data, eval_batches=no_data,
                normalize=Normalizer(np.full(channels, 127.5, np.float32), np.full(channels, 64.0, np.float32)))


def batch_shapes(experiment: Experiment, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  size, channels = experiment.config.data.image_size, experiment.model_config.input_channels
  split = sharding.batch_sharded(experiment.mesh)
  return {"image": jax.ShapeDtypeStruct((global_batch, size, size, channels), jnp.uint8, sharding=split),
          "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=split)}


def synthetic_batch(experiment: Experiment) -> dict[str, jax.Array]:
  """Random uint8 images and labels of the config's batch, on the devices."""
  shapes = batch_shapes(experiment, experiment.config.batch_size // jax.process_count())
  rng = np.random.default_rng(0)
  local = {
      "image": rng.integers(0, 256, shapes["image"].shape, np.uint8),
      "label": rng.integers(0, experiment.model_config.num_classes, shapes["label"].shape).astype(np.int32),
  }
  return sharding.global_batch(local, experiment.mesh)


def compile_step(experiment: Experiment, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = compile_train_step(experiment).lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def time_steps(compiled: Any, state: Any, next_batch, warmup: int, steps: int) -> tuple[list[float], Any]:
  """Seconds per step, each waited for (which also keeps CPU collectives from piling up)."""
  times = []
  for i in range(warmup + steps):
    batch = next_batch()
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times, state


def memory_estimate(compiled: Any) -> int:
  """Bytes the compiled step needs on a device: arguments, outputs not aliased to them, temporaries."""
  stats = compiled.memory_analysis()
  return stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes


def largest_fitting(start: int, bytes_of: Callable[[int], int], limit_bytes: float) -> tuple[int, dict[int, int]]:
  """The largest size whose `bytes_of` fits in `limit_bytes` (0 if none), found by doubling or halving
  from `start` and then bisecting (bytes grow with the size); also each size tried, with its bytes."""
  tried: dict[int, int] = {}

  def fits(size: int) -> bool:
    tried[size] = bytes_of(size)
    return tried[size] <= limit_bytes

  start = max(1, start)
  if fits(start):
    low, high = start, start * 2
    while fits(high):
      low, high = high, high * 2
  else:
    low, high = start // 2, start
    while low and not fits(low):
      low, high = low // 2, low
  while low and high - low > 1:
    middle = (low + high) // 2
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low, tried


def largest_batch(config: ml_collections.ConfigDict, limit_bytes: float) -> tuple[int, dict[int, int]]:
  """The largest per-device batch whose compiled step fits in `limit_bytes`, searched from the
  config's batch. Only compiles: XLA's memory analysis gives the bytes without running anything."""
  devices = jax.device_count()

  def step_bytes(per_device: int) -> int:
    trial = ml_collections.ConfigDict(config.to_dict())
    trial.batch_size = per_device * devices
    experiment = setup(trial, synthetic_inputs(trial))
    step = compile_train_step(experiment).lower(experiment.abstract_state(), batch_shapes(experiment, trial.batch_size))
    return memory_estimate(step.compile())

  return largest_fitting(config.batch_size // devices, step_bytes, limit_bytes)


def run(config: ml_collections.ConfigDict, steps: int, warmup: int, input_pipeline: bool) -> dict[str, Any]:
  experiment = setup(config, synthetic_inputs(config))
  devices = jax.device_count()
  state = experiment.initial_state()
  batch = synthetic_batch(experiment)
  compiled, compile_s = compile_step(experiment, state, batch)
  times, state = time_steps(compiled, state, lambda: batch, warmup, steps)
  step_s = statistics.median(times)
  images_per_s = config.batch_size / step_s
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = cost.get("flops", 0.0) * devices / config.batch_size  # the cost is one device's program
  xla_bytes = cost.get("bytes accessed", 0.0) * devices / config.batch_size
  size = config.data.image_size
  macs, _ = module_macs(build_model(experiment.model_config), jax.ShapeDtypeStruct(
      (1, size, size, experiment.model_config.input_channels), jnp.float32))
  device = jax.devices()[0]
  dtype = experiment.model_config.dtype
  machine = matmul = None
  if device.platform == "cpu":  # the report states the machine and a measured matmul rate beside the peak
    machine, matmul = cpu.cpu_facts(), measured_matmul_tflops(jnp.dtype(dtype))
  peak, peak_source = peak_tflops(device, dtype, machine, matmul)
  achieved = xla_flops * images_per_s / devices / 1e12  # per device
  memory = device.memory_stats() or {}
  result = {
      "model": experiment.model_config.describe(), "image_size": size, "dtype": experiment.model_config.dtype,
      "device": device.device_kind, "platform": device.platform, "devices": devices,
      "batch": config.batch_size, "per_device_batch": config.batch_size // devices,
      "compile_s": compile_s, "step_ms_median": 1e3 * step_s,
      "step_ms_p10": 1e3 * float(np.percentile(times, 10)), "step_ms_p90": 1e3 * float(np.percentile(times, 90)),
      "steps": steps, "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / devices,
      "train_gflops_per_image_xla": xla_flops / 1e9, "train_gflops_per_image_analytic": 6 * macs / 1e9,
      "train_mb_accessed_per_image_xla": xla_bytes / 1e6,
      "tflops_per_device": achieved, "peak_tflops": peak, "peak_source": peak_source, "mfu": achieved / peak,
      "memory_bytes": memory.get("peak_bytes_in_use") or memory_estimate(compiled),
      "memory_source": "device peak" if memory.get("peak_bytes_in_use") else "compiled step's estimate",
  }
  if machine:
    result.update(machine=machine, matmul_tflops_measured=matmul)
  if input_pipeline:
    result.update(time_input(experiment, state, steps, warmup))
  return result


def time_input(experiment: Experiment, state: Any, steps: int, warmup: int) -> dict[str, float]:
  """Images/s of the config's input pipeline alone, and of the step fed by it (batches prefetched to
  the devices as the trainer does); the bytes a step's batch moves to the devices, and as float32."""
  from resnet_jax.data.inputs import make_inputs

  config = experiment.config
  batches = make_inputs(config).train(0)
  batch = next(batches)  # untimed, like the warmup: the one whose bytes are reported
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  input_rate = steps * config.batch_size / (time.perf_counter() - start)
  # The real batch may carry fields the synthetic one lacks (a lighting shift): jit, not `compiled`.
  fed = sharding.prefetch_to_devices(batches, experiment.mesh)
  times, _ = time_steps(compile_train_step(experiment), state, lambda: next(fed), warmup, steps)
  sent = sum(value.nbytes for value in jax.tree.leaves(batch)) * jax.process_count()
  as_float32 = sent + 3 * batch["image"].size * jax.process_count() if batch["image"].dtype == np.uint8 else sent
  return {"input_images_per_s": input_rate, "fed_images_per_s": steps * config.batch_size / sum(times),
          "input_mb_per_step": sent / 1e6, "input_mb_per_step_float32": as_float32 / 1e6}


def format_report(r: dict[str, Any]) -> str:
  rows = [
      ("model", f"{r['model']}, {r['image_size']}x{r['image_size']}"),
      ("devices", f"{r['devices']} x {r['device']} ({r['platform']})"),
      *([("machine", cpu.describe(r["machine"])),
         ("matmul rate", f"{r['matmul_tflops_measured']:.3g} TFLOP/s measured (1024^2 matmuls)")] if "machine" in r else []),
      ("batch", f"{r['batch']} ({r['per_device_batch']} per device)"),
      ("compile", f"{r['compile_s']:.1f} s"),
      ("step time", f"{r['step_ms_median']:.1f} ms median (p10 {r['step_ms_p10']:.1f}, p90 {r['step_ms_p90']:.1f}; {r['steps']} steps)"),
      ("images/s", f"{r['images_per_s']:,.0f} ({r['images_per_s_per_device']:,.0f} per device)"),
      ("train GFLOPs/image", f"{r['train_gflops_per_image_xla']:.3f} (XLA); 6 x multiply-adds "
                             f"{r['train_gflops_per_image_analytic']:.3f} (ratio "
                             f"{r['train_gflops_per_image_xla'] / r['train_gflops_per_image_analytic']:.2f})"),
      ("memory traffic", f"{r['train_mb_accessed_per_image_xla']:.1f} MB/image (XLA): "
                         f"{r['train_gflops_per_image_xla'] * 1e3 / r['train_mb_accessed_per_image_xla']:.0f} "
                         f"FLOP/byte"),
      ("achieved", f"{r['tflops_per_device']:.3g} TFLOP/s per device; MFU {100 * r['mfu']:.1f}% of "
                   f"{r['peak_tflops']:.3g} ({r['peak_source']})"),
      ("memory", f"{r['memory_bytes'] / 2**30:.2f} GiB per device ({r['memory_source']})"),
  ]
  if "input_images_per_s" in r:
    bound = "input" if r["input_images_per_s"] < r["images_per_s"] else "compute"
    rows += [
        ("input pipeline", f"{r['input_images_per_s']:,.0f} images/s alone"),
        ("step fed by it", f"{r['fed_images_per_s']:,.0f} images/s: bound by {bound}"),
        ("to the devices", f"{r['input_mb_per_step']:.2f} MB per step ({r['input_mb_per_step_float32']:.2f} MB "
                           f"if the images crossed as float32)"),
    ]
  if "max_per_device_batch" in r:
    rows.append(("largest batch", f"{r['max_per_device_batch']} per device within {r['memory_limit_gb']:.2f} GB"))
  return "\n".join(f"{name:<20}{value}" for name, value in rows)


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_integer("steps", 20, "timed steps", flag_values=values)
  flags.DEFINE_integer("warmup", 3, "untimed steps after compiling", flag_values=values)
  flags.DEFINE_bool("input_pipeline", False, "also time the config's input pipeline (needs its data)",
                    flag_values=values)
  flags.DEFINE_bool("find_max_batch", False, "search the largest per-device batch whose step fits in memory",
                    flag_values=values)
  flags.DEFINE_float("memory_limit_gb", 0.0, "memory per device for --find_max_batch (default: the device's)",
                     flag_values=values)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Benchmarks the config the flags give; prints the report and its JSON line, returns the result."""
  args, _ = cli.parse(argv, define_flags, __doc__, config=True)
  absl_logging.set_verbosity(absl_logging.WARNING)  # the report is the output
  config = args.config
  try:
    result = run(config, args.steps, args.warmup, args.input_pipeline)
    if args.find_max_batch:
      limit = args.memory_limit_gb * 1e9 or (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
      if not limit:
        raise ValueError(f"{jax.devices()[0].device_kind} reports no memory limit; pass --memory_limit_gb")
      result["max_per_device_batch"], tried = largest_batch(config, limit)
      if not result["max_per_device_batch"]:
        raise ValueError(f"not even a per-device batch of 1 fits in {limit / 1e9:.2f} GB")
      result["memory_limit_gb"] = limit / 1e9
      result["tried_bytes"] = tried
  except ValueError as error:
    raise ConfigError(str(error)) from None
  print(format_report(result))
  print(json.dumps(result))
  return result


def command() -> None:
  """The `resnet-jax-benchmark` console script (also `python -m resnet_jax.tools.benchmark`)."""
  cli.run(main)


if __name__ == "__main__":
  command()
