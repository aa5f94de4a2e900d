# Shared by the launch scripts: the Python and the module to run (MODULE=resnet_jax.evaluate scores a
# checkpoint instead of training), and --dry-run (print each command instead).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULE="${MODULE:-resnet_jax.main}"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi

# quoted WORD...: the words as one command line, quoted only where the shell needs it.
quoted() {
  local line="" word
  for word in "$@"; do
    [[ "$word" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]] || word="${word@Q}"
    line+="${line:+ }$word"
  done
  echo "$line"
}

# run CMD...: runs it, or with --dry-run prints it and runs nothing.
run() {
  if [ "$DRY_RUN" = 0 ]; then "$@"; else quoted "$@"; fi
}

# resolve_paths ARG...: sets ARGS to the arguments with relative paths made absolute against the
# caller's directory, since the scripts run from the repository root: --workdir, --checkpoint,
# --output, the data paths in --config.data.* and a --config file found from here.
resolve_paths() {
  ARGS=("$@")
  [ "$PWD" != "$ROOT" ] || return 0
  ARGS=()
  local arg key value
  for arg in "$@"; do
    if [[ "$arg" =~ ^--(workdir|checkpoint|output|config\.data\.(data_dir|exclude_file|eval_label_file))=[^/] ]]; then
      key="${arg%%=*}" value="${arg#*=}"
      arg="$key=$PWD/$value"
    elif [[ "$arg" =~ ^--config=[^/] ]] && [ -f "$PWD/$(echo "${arg#--config=}" | cut -d: -f1)" ]; then
      arg="--config=$PWD/${arg#--config=}"
    fi
    ARGS+=("$arg")
  done
}
