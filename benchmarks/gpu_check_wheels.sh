#!/usr/bin/env bash
# Wheels for `gpu_check.sh --wheels DIR` on an accelerator machine with no package index: the
# packages its sections import beyond jax, flax, optax and numpy (ale-py and gymnasium, for the
# actor section), at the versions .ci/constraints.txt pins, built for that machine's Python.
#
#   bash benchmarks/gpu_check_wheels.sh DIR [PYTHON_VERSION]    # e.g. .wheels 3.12; default: this python3's
#
# Run it where pip can reach PyPI; copy DIR to the accelerator machine with the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# < 1 || $# > 2)); then
  echo "usage: bash benchmarks/gpu_check_wheels.sh DIR [PYTHON_VERSION]" >&2
  exit 2
fi
out="$1"
version="${2:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
if [[ ! "$version" =~ ^3\.[0-9]+$ ]]; then
  echo "gpu_check_wheels: $version: not a Python version such as 3.12" >&2
  exit 2
fi
requirements=()
for name in ale-py gymnasium farama-notifications cloudpickle; do  # gymnasium's needs but numpy and typing-extensions
  pinned="$(grep -i -m1 "^$name==" .ci/constraints.txt || true)"
  if [[ -z "$pinned" ]]; then
    echo "gpu_check_wheels: $name is not pinned in .ci/constraints.txt" >&2
    exit 2
  fi
  requirements+=("$pinned")
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --implementation cp \
  --python-version "$version" "${platforms[@]}" -d "$out" "${requirements[@]}"
echo "wheels for CPython $version in $out: bash benchmarks/gpu_check.sh --wheels $out"
