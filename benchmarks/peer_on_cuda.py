"""Runs a PyTorch peer benchmark (../shared/peers/torch_ad.py or torch_jat.py) on the GPU, unchanged.

    python benchmarks/peer_on_cuda.py [--autocast bfloat16] PEER_SCRIPT [the peer's own arguments]

The peers are written for CPUs. This loads one as a module and, before its ``main()``, makes three
changes so that its training step runs on CUDA as a PyTorch user's would (a fourth with
``--autocast``):

- ``torch.set_default_device("cuda")``: the model, its parameters and the optimizer state are made
  there (the peers build them with torch's factory functions);
- its ``make_batch`` (``torch.from_numpy``, which ignores the default device) is wrapped to move
  the batch to the GPU once, as the peer builds it once;
- TF32 matmuls are allowed, because JAX uses them for float32 matmuls on this GPU by default, and
  its ``matmul_peak`` is replaced by one that waits for the GPU (the peer's own times the launch
  only), so its MFU is read against a real peak;
- with ``--autocast bfloat16``, the forward pass of its model (the peer's ``Torch*`` classes) runs
  under ``torch.autocast("cuda", torch.bfloat16)``, PyTorch's mixed precision, with the outputs cast
  back to float32 for the loss (parameters and optimizer stay float32, as in our bf16 configs), and
  the peak is a bf16 matmul's: the bf16 comparison against our ``dtype="bfloat16"`` models.

Only the training mode is meant for this: the peers' evaluation loops call ``.numpy()`` on model
outputs. benchmarks/ad.py and benchmarks/jat.py launch their peer through this when JAX's backend
is a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import time
from pathlib import Path


PRECISIONS = ("float32", "bfloat16")  # benchmarks/ad.py and jat.py --precision: ours' dtype, the peer's autocast


def peer_command(peer_python: str, peer_script: Path, on_gpu: bool, precision: str = "float32") -> list[str]:
    """The command that runs ``peer_script`` on the device our side runs on: through this file on a GPU.

    Raises ValueError for a bfloat16 ``precision`` off a GPU (the autocast hook is this file's) or an
    unknown one."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not on_gpu:
        if precision != "float32":
            raise ValueError(f"precision {precision}: the peer runs in bfloat16 on a GPU only (its autocast hook is "
                             f"{Path(__file__).name}'s); compare float32 here")
        return [peer_python, str(peer_script)]
    autocast = ["--autocast", precision] if precision != "float32" else []
    return [peer_python, str(Path(__file__).resolve()), *autocast, str(peer_script)]


def synchronized_matmul_peak(n: int = 8192, reps: int = 10, dtype: str = "float32") -> dict:
    """The matmul FLOP/s of ``reps`` n^3 products (float32 runs as TF32), timed from launch to completion."""
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
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
            "checksum": float(c[0, 0]), "dtype": dtype}


def autocast_models(peer, dtype: str) -> list[str]:
    """Runs the forward of each ``Torch*`` module class of ``peer`` under CUDA autocast to ``dtype``,
    returning float32 outputs; the names of the classes changed (none: ValueError)."""
    import torch

    def to_float32(output):
        if isinstance(output, torch.Tensor):
            return output.float() if output.is_floating_point() else output
        if isinstance(output, (tuple, list)):
            return type(output)(to_float32(item) for item in output)
        if isinstance(output, dict):
            return {key: to_float32(value) for key, value in output.items()}
        return output

    def wrap(forward):
        def autocast_forward(*args, **kwargs):
            with torch.autocast("cuda", dtype=getattr(torch, dtype)):
                output = forward(*args, **kwargs)
            return to_float32(output)
        return autocast_forward

    changed = []
    for name, value in vars(peer).items():
        if name.startswith("Torch") and isinstance(value, type) and issubclass(value, torch.nn.Module):
            value.forward = wrap(value.forward)
            changed.append(name)
    if not changed:
        raise ValueError(f"{peer.__name__} has no Torch* model class to autocast")
    return changed


def main() -> int:
    try:
        import torch
    except ImportError as error:
        print(f"peer_on_cuda: {sys.executable} cannot import torch ({error})", file=sys.stderr)
        return 2
    autocast = None
    if sys.argv[1:2] == ["--autocast"]:
        autocast = sys.argv[2] if len(sys.argv) > 2 else ""
        if autocast not in PRECISIONS[1:]:
            print(f"peer_on_cuda: --autocast {autocast!r}: expected one of {', '.join(PRECISIONS[1:])}", file=sys.stderr)
            return 2
        del sys.argv[1:3]
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
    peer.matmul_peak = functools.partial(synchronized_matmul_peak, dtype=autocast or "float32")
    mixed = ""
    if autocast:
        try:
            mixed = f", {', '.join(autocast_models(peer, autocast))} under {autocast} autocast"
        except ValueError as error:
            print(f"peer_on_cuda: {error}", file=sys.stderr)
            return 2
    print(f"peer_on_cuda: {path.name} on {torch.cuda.get_device_name()} (torch {torch.__version__}, TF32 on{mixed})",
          file=sys.stderr)
    return peer.main() or 0


if __name__ == "__main__":
    sys.exit(main())
