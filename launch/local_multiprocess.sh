#!/usr/bin/env bash
# N processes on this machine over CPU devices, talking through JAX's distributed runtime as the
# hosts of a cluster do: for trying multi-host code without a cluster.
#
#   launch/local_multiprocess.sh 2 --config=configs/mnist_demo.py --workdir=runs/two_processes
#   launch/local_multiprocess.sh --dry-run 2 --config=... --workdir=...   (prints the commands)
#
# Set: DEVICES_PER_PROCESS (CPU devices each process sees, default 4), PORT (process 0's
# coordinator port, default 12355), HEARTBEAT_TIMEOUT (seconds, default 30), PYTHON.
# Lines are prefixed with the process index. If one process fails, the others stop (JAX notices
# the lost peer) and the script exits with the first failure's status; Ctrl-C sends every process
# SIGTERM, which saves a checkpoint at a step all of them agree on.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--dry-run] NUM_PROCESSES --config=... --workdir=... [more flags]" >&2
  exit 2
fi
NUM_PROCESSES="$1"; shift
resolve_paths "$@"
cd "$ROOT"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  command=(env JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="${DEVICES_PER_PROCESS:-4}"
           "$PYTHON" -m "$MODULE" --coordinator_address="127.0.0.1:${PORT:-12355}"
           --num_processes="$NUM_PROCESSES" --process_id="$i"
           --heartbeat_timeout="${HEARTBEAT_TIMEOUT:-30}" "${ARGS[@]}")
  if [ "$DRY_RUN" = 1 ]; then run "${command[@]}"; continue; fi
  "${command[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
[ "$DRY_RUN" = 1 ] && exit 0

trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
status=0 killer=
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  finished=
  wait -n -p finished "${running[@]}" && code=0 || code=$?
  [ -n "${finished:-}" ] || continue  # woken by a signal (the trap above), not by an exit
  running=($(printf '%s\n' "${running[@]}" | grep -vx "$finished" || true))
  if [ "$code" != 0 ] && [ "$status" = 0 ]; then
    status=$code
    echo "a process exited with status $code; stopping the others" >&2
    # They notice the lost peer by themselves; SIGKILL whatever still runs after the grace period
    # (JAX turns SIGTERM into a preemption request, which a broken run cannot honour).
    ( sleep "${GRACE_SECONDS:-60}"; kill -KILL "${running[@]}" 2>/dev/null ) &
    killer=$!
  fi
done
[ -n "$killer" ] && kill "$killer" 2>/dev/null
exit "$status"
