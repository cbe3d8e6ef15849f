#!/usr/bin/env bash
# Every accelerator figure the project claims, in one command of under 10 minutes (docs/performance.md).
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--only NAMES] [--skip NAMES] [--dry-run]
#
# Runs from the repository root with nothing installed but jax, flax, optax, orbax and numpy
# (PYTHON picks the interpreter; python3 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The training sections look for the largest batch that fits: let JAX's allocator take most of the
# device (its default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
