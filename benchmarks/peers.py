"""The PyTorch peers (../shared/peers/torch_*.py) beside our benchmarks: the interpreter and script
checked before any work (``--peer-python``, ``--peer-script``), and one peer run's JSON report.
benchmarks/train.py, ad.py and jat.py use it."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.peer_on_cuda import peer_command
from mgdt_jax.core import host_memory


def check_peer(peer_python: str, peer_script: Path, modules: str, *, on_gpu: bool, precision: str | None = None) -> None:
    """Raises SystemExit with one line naming the flag at fault if ``peer_script`` is not a file,
    ``peer_python`` cannot be run or cannot ``import modules`` (e.g. "torch, transformers"), or
    ``precision`` (when given) is one the peer cannot run on this device (``peer_command``)."""
    if not peer_script.is_file():
        raise SystemExit(f"--peer-script: {peer_script} is not a file")
    try:
        probe = subprocess.run([peer_python, "-c", f"import {modules}"], capture_output=True, text=True)
        why = (probe.stderr.strip().splitlines() or ["import failed"])[-1] if probe.returncode else None
    except OSError as error:  # no such interpreter, or not executable
        why = error.strerror
    if why:
        raise SystemExit(f"--peer-python {peer_python}: cannot import {modules} ({why})")
    if precision is not None:
        try:
            peer_command(peer_python, peer_script, on_gpu, precision)
        except ValueError as error:
            raise SystemExit(f"--precision: {error}") from None


def run_peer(command: list[str]) -> dict[str, Any]:
    """Runs a peer ``command`` with ``--json FILE`` added, in the environment the benchmark was
    launched in (its malloc as a user has it); the peer's JSON report. RuntimeError, with the
    command and the end of its stderr, if it fails or writes no report."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "peer.json"
        run = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True,
                             env=host_memory.launch_environment())
        if run.returncode or not out.exists():
            raise RuntimeError(f"peer benchmark failed ({' '.join(command)}): {run.stderr.strip()[-500:]}")
        return json.loads(out.read_text())
