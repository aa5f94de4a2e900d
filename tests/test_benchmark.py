"""The benchmark command: its numbers agree with each other, it runs without TensorFlow, and the
largest-batch search stops at the memory limit. (Speed itself is never asserted.)"""

import json
import subprocess
import sys

import pytest

from conftest import load_config

ROOT = __import__("pathlib").Path(__file__).parent.parent

# Makes `import tensorflow` fail, as on a GPU machine that carries only JAX.
BLOCK_TENSORFLOW = '''
import sys
class BlockTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
      raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, BlockTensorFlow())
'''


@pytest.mark.slow
def test_benchmark_reports_consistent_numbers_on_eight_devices_without_tensorflow(tmp_path):
  (tmp_path / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
  env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run(
      [sys.executable, "-m", "resnet_jax.tools.benchmark", "--config=configs/mnist_demo.py:depth=8,batch=32",
       "--config.eval_batch_size=32", "--steps=4", "--warmup=0", "--input_pipeline"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["per_device_batch"] == 4 and report["image_size"] == 28
  assert report["images_per_s"] == pytest.approx(32 / (report["step_ms_median"] / 1e3))
  assert report["step_ms_p10"] <= report["step_ms_median"] <= report["step_ms_p90"]
  # XLA's count of the whole step per image, against 6 x the forward multiply-adds: the same
  # model, so within 25% (XLA adds BN and elementwise work, the analytic count only convs and fc).
  ratio = report["train_gflops_per_image_xla"] / report["train_gflops_per_image_analytic"]
  assert 0.75 < ratio < 1.25
  assert report["mfu"] == pytest.approx(report["tflops_per_device"] / report["peak_tflops"])
  # On a CPU it says what it ran on, and its peak is the CPU's, from the facts it states.
  machine = report["machine"]
  assert machine["xla_flags"].startswith("--xla_force_host_platform_device_count=8") and machine["cores"] >= 1
  assert report["peak_tflops"] == pytest.approx(machine["cores"] * machine["clock_ghz"] * machine["float32_lanes"]
                                                * 2 * machine["fma_units_assumed"] / 1e3)
  assert report["peak_source"].startswith(f"float32 peak: {machine['cores']} cores x")
  assert f"XLA_FLAGS={machine['xla_flags']}" in result.stdout and machine["cpu"] in result.stdout
  assert report["train_mb_accessed_per_image_xla"] > 0
  assert report["memory_bytes"] > 0 and report["input_images_per_s"] > 0 and report["fed_images_per_s"] > 0
  assert "MFU" in result.stdout and "bound by" in result.stdout
  # A step's batch crosses as uint8 images (32 x 28 x 28 x 1) and int32 labels; float32 images are 4x.
  assert report["input_mb_per_step"] == pytest.approx((32 * 28 * 28 + 32 * 4) / 1e6)
  assert report["input_mb_per_step_float32"] == pytest.approx((4 * 32 * 28 * 28 + 32 * 4) / 1e6)


@pytest.mark.parametrize("start", [1, 5, 64, 1000])
def test_the_search_finds_the_largest_size_within_the_limit_and_tries_both_sides(start):
  from resnet_jax.tools.benchmark import largest_fitting
  bytes_of = lambda size: 1000 * size + 300  # a fixed cost and a cost per example
  found, tried = largest_fitting(start, bytes_of, limit_bytes=37_500)
  assert found == 37 and tried[37] <= 37_500 < tried[38]
  assert all(tried[size] == bytes_of(size) for size in tried) and len(tried) <= 2 * 11
  nothing, tried = largest_fitting(start, bytes_of, limit_bytes=1)
  assert nothing == 0 and 1 in tried


@pytest.mark.slow
def test_largest_batch_is_the_last_that_fits_the_memory_limit():
  from resnet_jax.tools.benchmark import largest_batch
  config = load_config("mnist_demo", "depth=8,batch=2")  # small batches: few, quick compiles
  found, tried = largest_batch(config, limit_bytes=1)  # nothing fits in a byte
  assert found == 0 and sorted(tried) == [1, 2]
  limit = tried[2] * 2
  found, tried = largest_batch(config, limit)
  assert found > 2 and tried[found] <= limit < tried[found + 1]  # both sides of the boundary tried


def test_the_cpu_facts_are_read_from_cpuinfo(tmp_path, monkeypatch):
  """An AVX-512 server and an AVX2 one: lanes, ISA list and peak from /proc/cpuinfo's lines."""
  from resnet_jax.tools import cpu

  for flags, lanes in (("fpu avx2 fma avx512f avx512bw avx512_bf16 amx_tile", 16), ("fpu avx2 fma", 8)):
    monkeypatch.setattr(cpu, "cpuinfo", lambda: {"model name": "Some CPU", "cpu MHz": "2500.000", "flags": flags})
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    facts = cpu.cpu_facts()
    assert facts["float32_lanes"] == lanes and facts["isa"] == [f for f in cpu.ISA_FLAGS if f in flags.split()]
    assert facts["peak_float32_tflops"] == pytest.approx(4 * 2.5 * lanes * 2 * 2 / 1e3)
    assert "Some CPU, 4 cores at 2.50 GHz; avx2 fma" in cpu.describe(facts)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_comparison_with_torch_states_its_machine_and_both_torch_layouts(dtype):
  """benchmarks/vs_torch.py at toy size: ours, torch NCHW and torch channels_last take turns (in
  bfloat16: ours computing in it, torch under autocast); the JSON states the machine (CPU, ISA, the
  XLA flags our worker ran with) and both ratios; --profile splits each side's step into the same rows."""
  pytest.importorskip("torch")
  result = subprocess.run(
      [sys.executable, "benchmarks/vs_torch.py", "--depth=18", "--batch=2", "--image_size=32", "--steps=1",
       "--warmup=0", "--rounds=1", "--channels_last", f"--dtype={dtype}", "--profile"], cwd=ROOT, capture_output=True, text=True,
      timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(report["frameworks"]) == {"ours", "torch", "torch_cl"} and "channels_last" in report["frameworks"]["torch_cl"]
  assert report["dtype"] == dtype and ("autocast" in report["frameworks"]["torch"]) == (dtype == "bfloat16")
  assert set(report["ratios"]) == {"ours/torch", "ours/torch_cl"}
  assert report["ratios"]["ours/torch"] == pytest.approx(report["median"]["ours"] / report["median"]["torch"])
  assert "ynn_fusion_type" in report["machine"]["xla_flags"] and report["machine"]["cpu"] in result.stdout
  from resnet_jax.tools.step_profile import BACKWARD, FORWARD, ROWS
  assert set(report["profile"]) == {"ours", "torch", "torch_cl"} and "where a step's time goes" in result.stdout
  for profile in report["profile"].values():
    assert set(profile["rows"]) == set(ROWS) and profile["rows"][FORWARD] > 0 and profile["rows"][BACKWARD] > 0
    assert sum(profile["rows"].values()) == pytest.approx(profile["step_ms"], rel=1e-6)


@pytest.mark.torch
def test_the_input_benchmark_times_torchvisions_dataloader_beside_ours():
  """benchmarks/input_pipeline.py at toy size with --torch_python: torchvision's three pipelines are
  timed on the same folder and each has its ratio to ours."""
  pytest.importorskip("torchvision")
  result = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py", "--images=16", "--batches=2", "--batch=8",
       f"--torch_python={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  torch_side = report["torchvision"]
  assert set(torch_side["images_per_s"]) == {"train: RandomResizedCrop 224 + flip", "eval: Resize 256 + CenterCrop 224",
                                             "train: torchvision recipe at 176 (+ TA-Wide, erasing)"}
  crop = "train: RandomResizedCrop 224 + flip"
  assert torch_side["ours_over_torchvision"][crop] == pytest.approx(
      report["images_per_s"]["train: inception (random-resized crop, flip)"] / torch_side["images_per_s"][crop])
  assert "DataLoader, " in result.stdout
