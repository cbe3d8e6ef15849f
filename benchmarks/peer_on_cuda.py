"""Runs a PyTorch peer benchmark (../shared/peers/torch_ad.py or torch_jat.py) on the GPU, unchanged.

    python benchmarks/peer_on_cuda.py PEER_SCRIPT [the peer's own arguments]

The peers are written for CPUs. This loads one as a module and, before its ``main()``, makes three
changes so that its training step runs on CUDA as a PyTorch user's would:

- ``torch.set_default_device("cuda")``: the model, its parameters and the optimizer state are made
  there (the peers build them with torch's factory functions);
- its ``make_batch`` (``torch.from_numpy``, which ignores the default device) is wrapped to move
  the batch to the GPU once, as the peer builds it once;
- TF32 matmuls are allowed, because JAX uses them for float32 matmuls on this GPU by default, and
  its ``matmul_peak`` is replaced by one that waits for the GPU (the peer's own times the launch
  only), so its MFU is read against a real peak.

Only the training mode is meant for this: the peers' evaluation loops call ``.numpy()`` on model
outputs. benchmarks/ad.py and benchmarks/jat.py launch their peer through this when JAX's backend
is a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


def peer_command(peer_python: str, peer_script: Path, on_gpu: bool) -> list[str]:
    """The command that runs ``peer_script`` on the device our side runs on: through this file on a GPU."""
    return [peer_python, str(Path(__file__).resolve()), str(peer_script)] if on_gpu else [peer_python, str(peer_script)]


def synchronized_matmul_peak(n: int = 8192, reps: int = 10) -> dict:
    """The fp32 (TF32) matmul FLOP/s of ``reps`` n^3 products, timed from launch to completion."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        c = torch.matmul(a, b)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / reps
    rate = 2.0 * n**3 / seconds / 1e9
    # One synchronised mean over the reps, so best and mean are the same figure.
    return {"n": n, "reps": reps, "gflops_best": rate, "gflops_mean": rate, "s_per_matmul": [seconds],
            "checksum": float(c[0, 0])}


def main() -> int:
    try:
        import torch
    except ImportError as error:
        print(f"peer_on_cuda: {sys.executable} cannot import torch ({error})", file=sys.stderr)
        return 2
    if len(sys.argv) < 2:
        print("peer_on_cuda: give the peer script first, then its arguments", file=sys.stderr)
        return 2
    if not Path(sys.argv[1]).is_file():
        print(f"peer_on_cuda: {sys.argv[1]} is not a file (give the peer script first)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("peer_on_cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    path = Path(sys.argv[1])
    sys.argv = sys.argv[1:]  # the peer parses its own arguments
    torch.set_default_device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    spec = importlib.util.spec_from_file_location(path.stem, path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    if lacking := [name for name in ("make_batch", "matmul_peak", "main") if not hasattr(peer, name)]:
        print(f"peer_on_cuda: {path} has no {', '.join(lacking)}: not one of the peers this runs", file=sys.stderr)
        return 2
    make_batch = peer.make_batch
    peer.make_batch = lambda *args, **kwargs: tuple(tensor.to("cuda") for tensor in make_batch(*args, **kwargs))
    peer.matmul_peak = synchronized_matmul_peak
    print(f"peer_on_cuda: {path.name} on {torch.cuda.get_device_name()} (torch {torch.__version__}, TF32 on)",
          file=sys.stderr)
    return peer.main() or 0


if __name__ == "__main__":
    sys.exit(main())
