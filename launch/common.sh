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
