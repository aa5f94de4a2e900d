#!/usr/bin/env bash
# One machine, all its devices (every local GPU or TPU chip, or the CPU): one process, no
# distributed runtime.
#
#   launch/local.sh --config=configs/imagenet.py:depth=50 --workdir=runs/r50
#   launch/local.sh --dry-run --config=... --workdir=...    (prints the command, runs nothing)
#
# Set: PYTHON (default: the repository's .venv), CUDA_VISIBLE_DEVICES to use fewer GPUs.
# Every argument goes to `python -m resnet_jax.main`; rerun the same command to resume.
set -euo pipefail
source "$(dirname "$0")/common.sh"
resolve_paths "$@"
cd "$ROOT"
run "$PYTHON" -m "$MODULE" --distributed=off "${ARGS[@]}"
