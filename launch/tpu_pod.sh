#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker over `gcloud ... ssh --worker=all`;
# JAX asks the TPU metadata server for the coordinator and each worker's id.
#
#   launch/tpu_pod.sh setup                                  (once: code and venv on every worker)
#   launch/tpu_pod.sh --config=configs/imagenet.py:depth=50,source=tfds --workdir=/mnt/runs/r50
#   launch/tpu_pod.sh --dry-run ...                          (prints the gcloud commands)
#
# Set: TPU_NAME, ZONE, PROJECT (optional), REPO_URL (a clone of this repository the workers can
# fetch), REMOTE_DIR (its place on the workers, default resnet_jax), WORKER_PYTHON (a Python >= 3.12
# on the workers where `make` finds none: TPU VM images ship 3.10; `uv python install 3.12` adds one).
# Setup builds each worker's .venv with JAX's TPU extra (`make venv EXTRAS=tpu`). The workdir and
# the data must be on storage every worker mounts at the same path (Filestore, or a bucket
# through gcsfuse). Rerunning the same command resumes.
set -euo pipefail
source "$(dirname "$0")/common.sh"
: "${TPU_NAME:?set TPU_NAME to the pod slice name}" "${ZONE:?set ZONE to its zone}"
REMOTE_DIR="${REMOTE_DIR:-resnet_jax}"

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
    --worker=all --command="$1"
}

# Every value goes into the remote shell's command line quoted.
DIR_Q="$(printf '%q' "$REMOTE_DIR")"
if [ "${1:-}" = "setup" ]; then
  : "${REPO_URL:?set REPO_URL to a git URL of this repository}"
  on_all_workers "(git clone $(printf '%q' "$REPO_URL") $DIR_Q || git -C $DIR_Q pull) && \
cd $DIR_Q && make venv EXTRAS=tpu ${WORKER_PYTHON:+PYTHON=$(printf '%q' "$WORKER_PYTHON")}"
  exit 0
fi
on_all_workers "cd $DIR_Q && $(quoted .venv/bin/python -m "$MODULE" --distributed=on "$@")"
