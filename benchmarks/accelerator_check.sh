#!/usr/bin/env bash
# One prepared check of an NVIDIA GPU machine, in under 8 minutes: what a session that is lent a GPU
# for a few minutes runs once, and what CI runs on the CPU to keep it working.
#
#   bash benchmarks/accelerator_check.sh [SUMMARY.json]
#
# 1. the Python: PYTHON if set (an interpreter that already has this project's requirements and
#    JAX's CUDA build, e.g. on a machine without internet), else the venv `make venv EXTRAS=cuda13`
#    builds as .venv-cuda (CUDA_EXTRA=cuda12 for a CUDA 12 driver); on a machine without a GPU, .venv;
# 2. jax.devices();
# 3. the tests that apply to one device: the train step, checkpoint save and restore, bfloat16;
# 4. ResNet-50 and ResNet-18 train steps in bfloat16 and float32 at 224 px, each at the largest
#    batch of BATCHES that runs: images/s, MFU and peak memory (resnet_jax.tools.benchmark);
# 5. the input pipelines' images/s on all the host's cores (benchmarks/input_pipeline.py), and the
#    cores each would need to feed the GPU's fastest ResNet-50 rate;
# then one JSON summary on the last line (and in SUMMARY.json if given). Without a GPU it says so
# and runs the same parts at toy sizes (ResNet-18 at 64 px, a few images), which proves the script,
# not a speed. Numbers measured with it go in the README's "Accelerator check" section.
set -euo pipefail
cd "$(dirname "$0")/.."
SUMMARY="${1:-}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

GPUS=0
if command -v nvidia-smi > /dev/null; then GPUS="$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)"; fi
if [ "$GPUS" -gt 0 ]; then
  MODE=gpu
  nvidia-smi -L
  [ -n "${PYTHON:-}" ] || { make venv VENV=.venv-cuda EXTRAS="${CUDA_EXTRA:-cuda13}"; PYTHON=.venv-cuda/bin/python; }
  DEPTHS="50 18"; IMAGE_SIZE=224; BATCHES="${BATCHES:-1024 512 256 128 64}"; STEPS=20
  PIPELINE_FLAGS=(--images=256 --batches=20)
else
  MODE=cpu
  echo "no NVIDIA GPU on this machine: running the check's CPU parts at toy sizes (they prove the script, not a speed)"
  [ -n "${PYTHON:-}" ] || { make venv; PYTHON=.venv/bin/python; }
  DEPTHS="18"; IMAGE_SIZE=64; BATCHES="8"; STEPS=2
  PIPELINE_FLAGS=(--images=16 --batches=2 --batch=8)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== devices"
"$PYTHON" -c 'import resnet_jax, jax; print(jax.devices())' | tee "$WORK/devices.txt"

echo "== tests that apply to one device"
tests=0
"$PYTHON" -m pytest -p no:xdist -q -p no:cacheprovider tests/test_train_step.py tests/test_checkpoint.py \
  tests/test_models.py -k "not torch" -m "not slow" 2>&1 | tail -5 | tee "$WORK/tests.txt" || tests=$?

echo "== train steps"
for depth in $DEPTHS; do
  for dtype in bfloat16 float32; do
    for batch in $BATCHES; do
      if "$PYTHON" -m resnet_jax.tools.benchmark --config="configs/imagenet.py:depth=$depth,dtype=$dtype" \
          --config.batch_size="$batch" --config.data.image_size="$IMAGE_SIZE" --steps="$STEPS" --warmup=2 \
          > "$WORK/step.txt" 2>&1; then
        grep -v '^{' "$WORK/step.txt" | tail -12
        tail -1 "$WORK/step.txt" >> "$WORK/steps.jsonl"
        break
      fi
      echo "ResNet-$depth $dtype: batch $batch failed ($(grep -m1 -io 'resource_exhausted\|out of memory\|error.*' "$WORK/step.txt" | head -c 200)); trying a smaller one"
    done
  done
done

echo "== input pipelines on $(nproc) cores"
"$PYTHON" benchmarks/input_pipeline.py "${PIPELINE_FLAGS[@]}" 2>&1 | grep -v 'absl\|oneDNN' | tee "$WORK/pipeline.txt"
tail -1 "$WORK/pipeline.txt" > "$WORK/pipeline.json"

"$PYTHON" - "$MODE" "$tests" "$WORK" "$SUMMARY" $DEPTHS << 'EOF'
import json, pathlib, sys
mode, tests, work, summary_path = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
depths = sys.argv[5:]
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()] \
    if (work / "steps.jsonl").exists() else []
pipeline = json.loads((work / "pipeline.json").read_text())
keep = ("model", "dtype", "image_size", "device", "batch", "images_per_s", "step_ms_median", "mfu", "peak_tflops",
        "peak_source", "memory_bytes", "memory_source", "compile_s")
fastest = max((s["images_per_s"] for s in steps if "ResNet-50" in s["model"]), default=None)
summary = {
    "mode": mode,
    "devices": (work / "devices.txt").read_text().strip(),
    "tests": {"passed": tests == 0, "tail": (work / "tests.txt").read_text().strip().splitlines()[-1:]},
    "train_steps": [{k: s.get(k) for k in keep} for s in steps],
    "input_pipeline": {"cores": pipeline["cores"], "images_per_s_per_core": {
        name: rate / pipeline["cores"] for name, rate in pipeline["images_per_s"].items()}},
    # Host cores each pipeline needs to keep up with the fastest ResNet-50 step measured above.
    "cores_needed_for_resnet50": {name: fastest / (rate / pipeline["cores"])
                                  for name, rate in pipeline["images_per_s"].items()} if fastest else None,
}
if summary_path:
  pathlib.Path(summary_path).write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
sys.exit(0 if tests == 0 and len(steps) == 2 * len(depths) else 1)  # every network ran in both dtypes
EOF
