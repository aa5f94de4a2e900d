"""Multi-host training on one machine: processes that meet through `jax.distributed` on 127.0.0.1 and
run their collectives over gloo, started as a user does (launch/local_multiprocess.sh), against a
single process over as many devices.

Every process is killed with SIGKILL on a timeout: JAX turns SIGTERM into a preemption request.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from runs import ROOT, command, environment, leaves, losses, metrics, read_item, read_state, saved_steps, train

from resnet_jax.distributed import initialize_arguments

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves these out

STEPS = 8
# A small learning rate: 2 x 4 and 1 x 8 devices sum in different orders, and a tiny net at the
# demo's rate amplifies rounding by ~5x a step; at this rate 8 steps stay within 1e-5.
SETTINGS = ("--config.schedule.learning_rate=0.001", "--config.checkpoint_every_steps=4")
TOLERANCE = 1e-5


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_two_processes(workdir, steps, *overrides, timeout=400, before_waiting=None, module="resnet_jax.main"):
  """launch/local_multiprocess.sh with 2 processes x 4 CPU devices running `module`;
  `before_waiting(script)` can act on the running script."""
  env = dict(os.environ, PORT=str(free_port()), DEVICES_PER_PROCESS="4", MODULE=module)
  env.pop("XLA_FLAGS", None)
  flags = command(module, workdir, steps, *overrides)[3:]
  script = subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    if before_waiting:
      before_waiting(script)
    output, _ = script.communicate(timeout=timeout)
  finally:
    if script.poll() is None:
      os.killpg(script.pid, signal.SIGKILL)
  return script.returncode, output


def wait_for_steps(workdir, count, processes):
  deadline = time.time() + 300
  while len(logged_lines(workdir)) < count:
    assert time.time() < deadline and all(p.poll() is None for p in processes), "the run stopped early"
    time.sleep(0.2)


def logged_lines(workdir):
  path = workdir / "metrics.jsonl"
  return path.read_text().splitlines() if path.exists() else []


def final_eval(workdir):
  return [r for r in metrics(workdir) if "eval/top1" in r][-1]


def max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b), strict=True))


def assert_same_losses(run, reference, steps):
  for step in steps:
    assert abs(run[step] - reference[step]) <= TOLERANCE * abs(reference[step]), (step, run[step], reference[step])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same 8 steps on 2 processes x 4 devices and on 1 process x 8 devices."""
  root = tmp_path_factory.mktemp("multihost")
  code, output = launch_two_processes(root / "two", STEPS, *SETTINGS)
  assert code == 0, output[-4000:]
  one = train(root / "one", STEPS, *SETTINGS, devices=8)
  assert one.returncode == 0, one.stderr[-4000:]
  return {"two": root / "two", "one": root / "one", "output": output}


def test_two_processes_train_as_one_process_over_as_many_devices(runs):
  assert "training 8 steps (125 per epoch), from step 0, on 8 device(s) of cpu" in runs["output"]
  two, one = losses(runs["two"]), losses(runs["one"])
  assert sorted(two) == list(range(1, STEPS + 1))
  assert_same_losses(two, one, two)
  assert max_difference(read_state(runs["two"])["params"], read_state(runs["one"])["params"]) <= TOLERANCE
  assert max_difference(read_state(runs["two"])["batch_stats"], read_state(runs["one"])["batch_stats"]) <= TOLERANCE
  # Process 0 alone writes the logs and the final report.
  assert runs["output"].count("final (8 steps)") == 1 and "[0] final (8 steps)" in runs["output"]


def test_eval_over_two_processes_scores_every_example_once(runs):
  """The 2-process run's final eval equals a 1-process scoring of the same checkpoint: 1,000 digits in
  batches of 96 (the last one padded), split across processes."""
  in_run = final_eval(runs["two"])
  assert in_run["eval/examples"] == 1000
  scored = train(runs["two"], STEPS, devices=8, module="resnet_jax.evaluate")
  assert scored.returncode == 0, scored.stderr[-3000:]
  record = json.loads((runs["two"] / "eval" / f"step_{STEPS}_live_center.json").read_text())["results"]
  assert record["examples"] == 1000
  assert record["top1"] == in_run["eval/top1"] and record["top5"] == in_run["eval/top5"]
  assert record["loss"] == pytest.approx(in_run["eval/loss"], rel=1e-5)


def test_precise_bn_over_two_processes_equals_one_process_over_as_many_devices(runs, tmp_path):
  """Each process reads its slice of every global batch; the statistics are over the whole batch."""
  code, output = launch_two_processes(runs["two"], STEPS, "--batches=4", f"--output={tmp_path / 'two'}",
                                      module="resnet_jax.tools.precise_bn")
  assert code == 0, output[-4000:]
  one = train(runs["two"], STEPS, "--batches=4", f"--output={tmp_path / 'one'}", devices=8,
              module="resnet_jax.tools.precise_bn")
  assert one.returncode == 0, one.stderr[-4000:]
  record = json.loads((tmp_path / "two" / "precise_bn.json").read_text())
  assert (record["hardware"]["processes"], record["hardware"]["devices"]) == (2, 8)
  assert max_difference(read_item(tmp_path / "two" / "state"), read_item(tmp_path / "one" / "state")) <= TOLERANCE


def test_checkpoint_from_two_processes_resumes_in_one_process(runs, tmp_path):
  """Restart the 2-process run from its step-4 checkpoint in 1 process over 2 devices."""
  workdir = tmp_path / "moved"
  shutil.copytree(runs["two"], workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))
  assert saved_steps(workdir) == [4]
  result = train(workdir, STEPS, *SETTINGS, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint 4" in result.stderr
  assert_same_losses(losses(workdir), losses(runs["two"]), range(5, STEPS + 1))
  assert max_difference(read_state(workdir)["params"], read_state(runs["two"])["params"]) <= TOLERANCE


@pytest.mark.parametrize("victim", [0, 1])
def test_killing_one_process_stops_the_other_with_an_error(tmp_path, victim):
  """Process 0 hosts the coordinator: losing it and losing a worker both end the survivor."""
  port, processes = free_port(), []
  for index in range(2):
    flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={index}",
             "--heartbeat_timeout=10"]
    processes.append(subprocess.Popen(command("resnet_jax.main", tmp_path, 400, *flags), cwd=ROOT,
                                      env=environment(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
  try:
    wait_for_steps(tmp_path, 3, processes)
    processes[victim].kill()
    survivor = processes[1 - victim]
    killed_at = time.time()
    output, _ = survivor.communicate(timeout=90)
    assert time.time() - killed_at < 60
    assert survivor.returncode != 0
    assert "another process of this run has probably died" in output or "another task died" in output, output[-3000:]
    assert len(logged_lines(tmp_path)) < 400
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


def test_sigterm_makes_every_process_save_the_same_step_and_exit_cleanly(tmp_path):
  """What a cluster does before a time limit or a preemption (here through the launch script,
  which forwards SIGTERM to its processes, as it does Ctrl-C)."""
  def terminate_after_a_few_steps(script):
    wait_for_steps(tmp_path, 3, [script])
    script.send_signal(signal.SIGTERM)

  code, output = launch_two_processes(tmp_path, 400, before_waiting=terminate_after_a_few_steps)
  assert code == 0, output[-3000:]
  [step] = saved_steps(tmp_path)
  assert 3 <= step < 400
  assert f"[0] preempted at step {step}; checkpoint saved" in output
  assert output.count("preempted: checkpoint") == 2  # both processes stopped at that step


@pytest.mark.parametrize("script, arguments, env, expected", [
    ("local.sh", ["--config=configs/cifar10.py:depth=56", "--workdir=runs/c56"], {},
     ["{python} -m resnet_jax.main --distributed=off --config=configs/cifar10.py:depth=56 --workdir=runs/c56"]),
    ("local_multiprocess.sh", ["2", "--config=configs/mnist_demo.py", "--workdir=runs/two"],
     {"DEVICES_PER_PROCESS": "2", "PORT": "2222"},
     [f"env JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=2 {{python}} -m resnet_jax.main --coordinator_address=127.0.0.1:2222"
      f" --num_processes=2 --process_id={i} --heartbeat_timeout=30 --config=configs/mnist_demo.py --workdir=runs/two"
      for i in range(2)]),
    ("slurm.sbatch", ["--config=configs/imagenet.py:depth=50", "--workdir=/shared/r50"],
     {"SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"},
     ["export JAX_LOCAL_DEVICE_IDS=0,1,2,3",
      "srun --kill-on-bad-exit=1 {python} -m resnet_jax.main --distributed=on --config=configs/imagenet.py:depth=50"
      " --workdir=/shared/r50"]),
    ("slurm.sbatch", ["--config=configs/imagenet.py", "--workdir=/shared/r50"],
     {"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8", "MODULE": "resnet_jax.evaluate"},
     ["srun --kill-on-bad-exit=1 {python} -m resnet_jax.evaluate --distributed=on --config=configs/imagenet.py"
      " --workdir=/shared/r50"]),
    # An allocation without GPUs (tests/test_slurm.py runs this for real).
    ("slurm.sbatch", ["--workdir=runs/x"], {"SLURM_NTASKS_PER_NODE": "2", "SLURM_GPUS_ON_NODE": "0"},
     ["export JAX_PLATFORMS=cpu", "srun --kill-on-bad-exit=1 {python} -m resnet_jax.main --distributed=on --workdir=runs/x"]),
    ("tpu_pod.sh", ["--config=configs/imagenet.py:depth=50,source=tfds", "--workdir=/mnt/runs/r50"],
     {"TPU_NAME": "pod", "ZONE": "us-central2-b"},
     ["gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all '--command=cd resnet_jax && "
      ".venv/bin/python -m resnet_jax.main --distributed=on --config=configs/imagenet.py:depth=50,source=tfds "
      "--workdir=/mnt/runs/r50'"]),
    ("tpu_pod.sh", ["setup"], {"TPU_NAME": "pod", "ZONE": "z", "PROJECT": "p", "REPO_URL": "https://h/r.git",
                               "WORKER_PYTHON": "/opt/python 3.12/bin/python3"},
     ["gcloud compute tpus tpu-vm ssh pod --zone=z --project=p --worker=all '--command=(git clone https://h/r.git "
      "resnet_jax || git -C resnet_jax pull) && cd resnet_jax && make venv EXTRAS=tpu "
      "PYTHON=/opt/python\\ 3.12/bin/python3'"]),
    # Values with spaces or shell syntax reach the workers' shell quoted.
    ("tpu_pod.sh", ["--workdir=/mnt/r"], {"TPU_NAME": "pod", "ZONE": "z", "REMOTE_DIR": "my dir; ls"},
     ["gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all '--command=cd my\\ dir\\;\\ ls && "
      ".venv/bin/python -m resnet_jax.main --distributed=on --workdir=/mnt/r'"]),
])
def test_launch_script_dry_run_prints_its_commands(script, arguments, env, expected):
  python = "/usr/bin/python3-for-test"
  result = subprocess.run(["bash", f"launch/{script}", "--dry-run", *arguments], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHON=python, **env), timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [line.format(python=python) for line in expected]


def test_launch_from_another_directory_keeps_relative_paths_relative_to_it(tmp_path):
  (tmp_path / "my.py").write_text("")
  result = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "--dry-run", "--config=my.py:depth=8",
                           "--workdir=runs/x", "--config.data.data_dir=data", "--config=configs/cifar10.py"],
                          cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHON="py"), timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[4:] == [f"--config={tmp_path}/my.py:depth=8", f"--workdir={tmp_path}/runs/x",
                                       f"--config.data.data_dir={tmp_path}/data", "--config=configs/cifar10.py"]


@pytest.mark.parametrize("script, arguments, env, message", [
    ("local_multiprocess.sh", ["--config=x"], {}, "usage:"),
    ("slurm.sbatch", ["--config=x"], {"SLURM_NTASKS_PER_NODE": "3", "SLURM_GPUS_ON_NODE": "8"}, "use 1 or 8"),
    ("tpu_pod.sh", ["--config=x"], {}, "set TPU_NAME"),
])
def test_launch_script_refuses_bad_settings(script, arguments, env, message):
  result = subprocess.run(["bash", f"launch/{script}", "--dry-run", *arguments], cwd=ROOT, capture_output=True,
                          text=True, env={k: v for k, v in dict(os.environ, **env).items() if k != "TPU_NAME"}, timeout=60)
  assert result.returncode != 0 and message in result.stderr, result.stderr


def test_slurm_script_outside_a_job_says_to_submit_it():
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
  result = subprocess.run(["bash", "launch/slurm.sbatch", "--config=x"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)
  assert result.returncode == 2 and "sbatch launch/slurm.sbatch --config=x" in result.stderr


def test_slurm_job_refuses_a_venv_without_jax_cuda():
  env = dict(os.environ, SLURM_JOB_ID="1", SLURM_GPUS_ON_NODE="4", PYTHON=sys.executable)  # this venv: the CPU build
  result = subprocess.run(["bash", "launch/slurm.sbatch", "--config=x"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)
  assert result.returncode == 2 and "make venv EXTRAS=cuda13" in result.stderr, result.stderr


@pytest.mark.parametrize("mode, flags, env, expected", [
    ("auto", {}, {}, None),  # one process: no distributed runtime
    ("auto", {}, {"SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, None),
    ("auto", {}, {"SLURM_PROCID": "3", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4"},
     dict(coordinator_address=None, num_processes=None, process_id=None)),  # JAX reads SLURM's variables
    ("auto", {}, {"OMPI_COMM_WORLD_SIZE": "2"}, dict(coordinator_address=None, num_processes=None, process_id=None)),
    ("auto", {}, {"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, dict(coordinator_address=None, num_processes=None, process_id=None)),
    ("auto", dict(coordinator_address="h:1", num_processes=2, process_id=1), {},
     dict(coordinator_address="h:1", num_processes=2, process_id=1)),
    ("auto", {}, {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
     dict(coordinator_address="h:2", num_processes=4, process_id=3)),
    ("on", {}, {}, dict(coordinator_address=None, num_processes=None, process_id=None)),  # e.g. a Cloud TPU pod
    ("off", {}, {"SLURM_PROCID": "3", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4"}, None),
])
def test_when_the_distributed_runtime_starts(mode, flags, env, expected):
  arguments = dict(coordinator_address=None, num_processes=None, process_id=None) | flags
  got = initialize_arguments(mode, **arguments, env=env, heartbeat_timeout=7)
  assert got == (None if expected is None else dict(expected, heartbeat_timeout_seconds=7))


def test_a_process_id_outside_the_run_is_refused():
  with pytest.raises(ValueError, match="process_id=2 is outside 0..1"):
    initialize_arguments("auto", "h:1", 2, 2, env={})
