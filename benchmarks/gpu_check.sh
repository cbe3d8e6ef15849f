#!/usr/bin/env bash
# Every accelerator figure the project claims, in one command of under 10 minutes (docs/performance.md).
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--only NAMES] [--skip NAMES] [--total-s S] [--dry-run] [--wheels DIR]
#
# Runs from the repository root with nothing installed but jax, flax, optax, orbax and numpy
# (PYTHON picks the interpreter; python3 by default). On a machine that cannot reach a package
# index, --wheels DIR installs the .whl files in DIR into a temporary folder first, ahead of the
# machine's own packages (e.g. ale-py and gymnasium for the actor section; see docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
arguments=()
wheels=""
while (($#)); do
  case "$1" in
    --wheels) (($# >= 2)) || { echo "gpu_check: --wheels needs a folder of .whl files" >&2; exit 2; }
              wheels="$2"; shift 2 ;;
    --wheels=*) wheels="${1#--wheels=}"; shift ;;
    *) arguments+=("$1"); shift ;;
  esac
done
site=""
if [[ -n "$wheels" ]]; then
  shopt -s nullglob
  files=("$wheels"/*.whl)
  shopt -u nullglob
  ((${#files[@]})) || { echo "gpu_check: --wheels $wheels: no .whl files there" >&2; exit 2; }
  site="$(mktemp -d -t gpu_check_site.XXXXXX)"
  trap 'rm -rf "$site"' EXIT
  "$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" "${files[@]}" \
    || { echo "gpu_check: --wheels $wheels: pip could not install them (its message is above)" >&2; exit 2; }
  GPU_CHECK_WHEELS="$(printf '%s\n' "${files[@]##*/}" | paste -sd,)"
  export GPU_CHECK_WHEELS
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The training sections look for the largest batch that fits: let JAX's allocator take most of the
# device (its default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
if [[ -z "$site" ]]; then
  exec "$python" benchmarks/gpu_check.py "${arguments[@]}"
fi
"$python" benchmarks/gpu_check.py "${arguments[@]}"  # not exec: the EXIT trap removes the installed wheels
