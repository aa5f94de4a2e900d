"""Training speed beside PyTorch on this machine: our compiled train step against torchvision's ResNet
trained by a plain torch loop, same network, batch and image size, float32 (or --dtype=bfloat16: ours in
bfloat16 beside torch's autocast).

  .venv/bin/python benchmarks/vs_torch.py --depth=50 --batch=8 [--torch_python=/venv-with-torch/bin/python]

Each framework runs in its own process (torch need not be in our venv: `--torch_python` names an
interpreter that has it), compiles and warms up once, then they take turns: `--rounds` rounds of
`--steps` timed steps each, alternating, so both see the same machine load. Prints each round's
images/s, the medians and the ratio ours / torch, then a JSON line. Torch's side: SGD momentum 0.9,
weight decay 1e-4, cross-entropy, NCHW (and channels_last with --channels_last); threads as torch
sets them. Ours: configs/imagenet.py's train step on a synthetic uint8 batch already on the device.
`--profile` then profiles one more round on each side (`resnet_jax/tools/step_profile.py`) and prints
the milliseconds a step each kind of work takes, in the same rows for both.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def jax_worker(depth: int, batch: int, size: int, steps: int, warmup: int, dtype: str) -> None:
  import resnet_jax  # noqa: F401  (first: the CPU work-around on jaxlib 0.10)
  import importlib.util

  import jax

  from resnet_jax.experiment import setup
  from resnet_jax.tools.benchmark import compile_step, synthetic_batch, synthetic_inputs, time_steps
  from resnet_jax.tools.step_profile import profile_xla

  spec = importlib.util.spec_from_file_location("imagenet", ROOT / "configs/imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"depth={depth},batch={batch},variant=v1.5,dtype={dtype}")  # torchvision's network
  config.data.image_size = size
  experiment = setup(config, synthetic_inputs(config))
  state, data = experiment.initial_state(), synthetic_batch(experiment)
  compiled, _ = compile_step(experiment, state, data)
  _, state = time_steps(compiled, state, lambda: data, warmup, 0)

  def step_times(count: int) -> list[float]:
    nonlocal state  # the step donates it
    times, state = time_steps(compiled, state, lambda: data, 0, count)
    return times

  serve(lambda: step_times(steps), lambda: profile_xla(compiled, lambda n: sum(step_times(n)), steps),
        f"jax {jax.__version__} ({jax.default_backend()})", xla_flags=os.environ.get("XLA_FLAGS", ""))


def torch_worker(depth: int, batch: int, size: int, steps: int, warmup: int, channels_last: bool, dtype: str) -> None:
  sys.path.insert(0, str(ROOT))
  import torch
  import torch.nn.functional as F

  from resnet_jax.tools.step_profile import profile_torch
  from resnet_jax.tools.torch_resnet import resnet

  torch.manual_seed(0)
  model = resnet(depth).train()
  images = torch.randn(batch, 3, size, size)
  labels = torch.randint(0, 1000, (batch,))
  if channels_last:
    model, images = model.to(memory_format=torch.channels_last), images.to(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

  # bfloat16 as torch's recipes train in it: autocast over float32 weights.
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step_times(count: int) -> list[float]:
    times = []
    for _ in range(count):
      start = time.perf_counter()
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = F.cross_entropy(model(images), labels)
      loss.backward()
      optimizer.step()
      times.append(time.perf_counter() - start)
    return times

  step_times(warmup)
  name = (f"torch {torch.__version__}" + (" channels_last" if channels_last else "")
          + (" autocast" if dtype == "bfloat16" else ""))
  serve(lambda: step_times(steps), lambda: profile_torch(lambda n: sum(step_times(n)), steps), name)


def serve(round_times, profile, name: str, **facts) -> None:
  """A worker's loop: announce itself (with `facts`, e.g. the XLA flags it runs with), then for each
  line read time one round ("go") or profile one (`step_profile`'s rows: "profile")."""
  print(json.dumps({"ready": name, **facts}), flush=True)
  for line in sys.stdin:
    answer = {"profile": profile()} if line.strip() == "profile" else {"times": round_times()}
    print(json.dumps(answer), flush=True)


def start(kind: str, python: str, args: argparse.Namespace, channels_last: bool = False) -> tuple[subprocess.Popen, dict]:
  """A worker process and what it announced: its name and facts."""
  command = [python, __file__, f"--worker={kind}", f"--depth={args.depth}", f"--batch={args.batch}",
             f"--image_size={args.image_size}", f"--steps={args.steps}", f"--warmup={args.warmup}", f"--dtype={args.dtype}"]
  if channels_last:
    command.append("--channels_last")
  process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  return process, json.loads(_line(process, kind))


def ask(process: subprocess.Popen, kind: str, request: str) -> dict:
  process.stdin.write(f"{request}\n")
  process.stdin.flush()
  return json.loads(_line(process, kind))


def profile_table(profiles: dict[str, dict]) -> str:
  """Milliseconds a step per row of `step_profile`, one column a worker, then each worker's longest ops."""
  from resnet_jax.tools.step_profile import ROWS

  names = list(profiles)
  lines = ["where a step's time goes (ms a step, from each side's profiler over one round):",
           f"  {'':<42}" + "".join(f"{name:>10}" for name in names)]
  for row in ROWS:
    lines.append(f"  {row:<42}" + "".join(f"{profiles[name]['rows'][row]:10.1f}" for name in names))
  lines.append(f"  {'step (profiled)':<42}" + "".join(f"{profiles[name]['step_ms']:10.1f}" for name in names))
  for name in names:
    lines.append(f"  {name}'s longest: " + ", ".join(f"{op} {ms:.1f}" for op, _, ms in profiles[name]["top"][:6]))
  return "\n".join(lines)


def _line(process: subprocess.Popen, kind: str) -> str:
  while line := process.stdout.readline():
    if line.startswith("{"):
      return line
  raise SystemExit(f"error: the {kind} worker ended (exit status {process.wait()}); its errors are above")


def main() -> None:
  # argparse, not our absl convention: the torch worker runs this file under an interpreter that may
  # have torch and nothing of ours.
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--depth", type=int, default=50)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--channels_last", action="store_true", help="also torch with channels_last tensors")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                      help="bfloat16: our bfloat16 computation beside torch's autocast")
  parser.add_argument("--profile", action="store_true",
                      help="after the rounds, profile one round on each side and print where the time goes")
  parser.add_argument("--torch_python", default=sys.executable, help="an interpreter with torch")
  parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == "jax":
    return jax_worker(args.depth, args.batch, args.image_size, args.steps, args.warmup, args.dtype)
  if args.worker == "torch":
    return torch_worker(args.depth, args.batch, args.image_size, args.steps, args.warmup, args.channels_last,
                        args.dtype)

  sys.path.insert(0, str(ROOT))
  from resnet_jax.tools import cpu

  workers = {"ours": start("jax", sys.executable, args), "torch": start("torch", args.torch_python, args)}
  if args.channels_last:
    workers["torch_cl"] = start("torch", args.torch_python, args, channels_last=True)
  machine = {**cpu.cpu_facts(), "xla_flags": workers["ours"][1]["xla_flags"]}
  print(f"machine: {cpu.describe(machine)}", flush=True)
  rates = {name: [] for name in workers}
  for round_number in range(1, args.rounds + 1):
    for name, (process, ready) in workers.items():
      times = ask(process, name, "go")["times"]
      rates[name].append(args.batch / statistics.median(times))
      print(f"round {round_number}: {name:<8} {ready['ready']:<34} {rates[name][-1]:7.2f} images/s", flush=True)
  profiles = {}
  if args.profile:
    profiles = {name: ask(process, name, "profile")["profile"] for name, (process, _) in workers.items()}
  for process, _ in workers.values():
    process.stdin.close()
    process.wait()
  if profiles:
    print(profile_table(profiles), flush=True)
  medians = {name: statistics.median(values) for name, values in rates.items()}
  ratios = {f"ours/{name}": medians["ours"] / medians[name] for name in workers if name != "ours"}
  print(f"ResNet-{args.depth}, batch {args.batch}, {args.image_size} px, {args.dtype}: "
        + ", ".join(f"{name} {rate:.2f} images/s" for name, rate in medians.items()) + "; "
        + ", ".join(f"{name} = {ratio:.2f}x" for name, ratio in ratios.items()))
  print(json.dumps({"depth": args.depth, "batch": args.batch, "image_size": args.image_size, "dtype": args.dtype,
                    "machine": machine,
                    "frameworks": {name: ready["ready"] for name, (_, ready) in workers.items()},
                    "images_per_s": rates, "median": medians, "ratios": ratios,
                    "profile": profiles}))


if __name__ == "__main__":
  main()
