"""Training throughput and MFU of mgdt_jax, against the machine's matmul peak and the PyTorch peer.

Times full training steps (forward, backward, optimizer; dropout on) on one fixed synthetic batch
and reports tokens/s, achieved FLOP/s (mgdt_jax/recipes/mgdt/flops.py, the peer's formula) and MFU against
the best fp32 (CPU) / bf16 (GPU) matmul measured in the same run. With ``--peer-python`` (an
interpreter with torch and transformers) it also runs ../shared/peers/torch_mgdt.py on each size,
right after ours so both see the same machine load, and prints ours/peer ratios.

Needs only jax, flax, optax and numpy (no TensorFlow, no ml_collections), so it runs on a bare
accelerator machine. Sizes are the experiment configs' (layers x d_model): tiny 2x128, 10m 4x512,
40m 6x768, 200m 10x1280, 1b 20x2048 (with remat), each on a pure data-parallel mesh. Default sizes:
tiny,10m,40m on CPU; also 200m,1b on GPU.

    python benchmarks/train.py --peer-python ../peer-venv/bin/python --json train_cpu.json
    python benchmarks/train.py --sizes 200m@256,1b@64 --dtype bfloat16      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.peers import check_peer, run_peer
from experiments import mgdt_1b, mgdt_10m, mgdt_40m, mgdt_200m, tiny
from mgdt_jax.core import host_memory, sharding
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, names_argument, output_file_argument, path_argument
from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.flops import training_flops
from mgdt_jax.core import flops
from mgdt_jax.core.train_step import Trainer

SIZES = {"tiny": tiny, "10m": mgdt_10m, "40m": mgdt_40m, "200m": mgdt_200m, "1b": mgdt_1b}  # name -> experiment
PEER_SIZES = ("tiny", "10m", "40m")  # what torch_mgdt.py implements
REPO = Path(__file__).resolve().parents[1]


def synthetic_batch(batch_size: int, num_steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch_size, num_steps)
    return {
        "observations": rng.integers(0, 256, (*shape, *tokens.FRAME_SHAPE), dtype=np.uint8),
        "returns_to_go": rng.integers(0, tokens.NUM_RETURNS, shape, dtype=np.int32),
        "actions": rng.integers(0, tokens.NUM_ACTIONS, shape, dtype=np.int32),
        "rewards": rng.choice(np.array([0, 1, 3], np.int32), shape),
        "step_mask": np.ones(shape, bool),
    }


def bench_ours(size: str, batch_size: int, optimizer: str, dtype: str, steps: int, warmup: int,
               cross_check: bool) -> dict:
    config = SIZES[size].get_config()
    config.model.dtype = dtype
    config.optimizer.name = optimizer
    config.train.batch_size = batch_size
    config.train.num_steps = 1_000_000
    trainer = Trainer(config, sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}))
    state = trainer.init(seed=0)
    batch = trainer.shard_batch(synthetic_batch(batch_size, trainer.recipe.model_config.num_steps))
    analytic = training_flops(trainer.recipe.model_config, batch_size)
    result = {"size": size, "optimizer": optimizer, "dtype": dtype, "batch": batch_size,
              "params": sum(leaf.size for leaf in jax.tree.leaves(state.params)),
              "train_flops_per_step": analytic.total, "peer_formula_flops_per_step": analytic.blocks + analytic.attention}
    if cross_check:
        compiled = trainer.lower_step(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)).compile()
        xla_flops = flops.compiled_flops(compiled)
        result["xla_cost_analysis_flops"] = xla_flops
        if xla_flops:
            print(f"  cross-check: XLA cost analysis {xla_flops / 1e9:,.1f} GFLOP/step per device program vs "
                  f"analytic {analytic.total / 1e9:,.1f} ({xla_flops * jax.device_count() / analytic.total:.3f}x over "
                  f"{jax.device_count()} device(s))", flush=True)

    start = time.perf_counter()
    for _ in range(warmup):  # the first step compiles
        state, metrics = trainer.step(state, batch)
        first_loss = float(metrics["loss"])
    result["warmup_s"] = time.perf_counter() - start
    step_times = []
    timed_start = time.perf_counter()
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = trainer.step(state, batch)
        last_loss = float(metrics["loss"])  # blocks, like the peer's loss.item()
        step_times.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - timed_start
    steps_per_s = steps / elapsed
    result.update(
        step_s_median=statistics.median(step_times), step_s_min=min(step_times), step_s_max=max(step_times),
        tokens_per_s=steps_per_s * analytic.tokens,
        achieved_flops=steps_per_s * analytic.total,
        loss_first=first_loss, loss_last=last_loss,
    )
    return result


def bench_peer(peer_python: str, peer_script: Path, size: str, batch_size: int, steps: int, warmup: int) -> dict:
    report = run_peer([peer_python, str(peer_script), "--sizes", f"{size}@{batch_size}", "--steps", str(steps),
                             "--warmup", str(warmup), "--threads", str(os.cpu_count())])
    result = report["results"][0]
    result["peer_peak_flops"] = report["peak_gflops_used_for_mfu"] * 1e9
    return result


def parse_sizes(text: str, default_batch: int, known: Sequence[str] = tuple(SIZES)) -> list[tuple[str, int]]:
    """"tiny,40m@64" -> [("tiny", default_batch), ("40m", 64)]: names from ``known``, NAME@B sets that
    size's batch; SystemExit (one line) on an unknown name, a bad batch or no size at all."""
    entries = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, batch = entry.lower().partition("@")
        if name not in known:
            raise SystemExit(f"--sizes: unknown size {name!r}; choose from {', '.join(known)}")
        if batch and not (batch.isdigit() and int(batch) > 0):
            raise SystemExit(f"--sizes: batch of {entry!r} is not a positive integer")
        entries.append((name, int(batch) if batch else default_batch))
    if not entries:  # ran nothing and exited 0
        raise SystemExit(f"--sizes {text!r}: no size given; choose from {', '.join(known)}")
    return entries


@interruptible("benchmarks/train.py", errors=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program, not called from Python
        host_memory.reexec_with_huge_page_malloc()
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,10m,40m" if on_cpu else "tiny,10m,40m,200m,1b",
                        help="comma list of tiny,10m,40m,200m,1b; NAME@B sets that size's batch")
    parser.add_argument("--batch", type=count_argument(), default=32 if on_cpu else 256, help="global batch in windows")
    parser.add_argument("--dtype", default="float32" if on_cpu else "bfloat16", choices=["float32", "bfloat16"],
                        help="matmul dtype (the peer is float32)")
    parser.add_argument("--optimizers", type=names_argument(("lamb", "adamw")), default="lamb,adamw",
                        help="lamb (our default, the paper's) and/or adamw (the peer's, for like-for-like)")
    parser.add_argument("--steps", type=count_argument(), default=10, help="timed steps per size")
    parser.add_argument("--warmup", type=count_argument(1), default=3, help="untimed steps per size (the first compiles: at least 1)")
    parser.add_argument("--peer-python", help="interpreter with torch + transformers; runs the PyTorch peer")
    parser.add_argument("--peer-script", type=path_argument, default=REPO.parent / "shared" / "peers" / "torch_mgdt.py",
                        help="the PyTorch MGDT peer run by --peer-python (default: %(default)s)")
    parser.add_argument("--json", type=output_file_argument, help="write every figure here")
    args = parser.parse_args(argv)

    sizes = parse_sizes(args.sizes, args.batch)
    optimizers = args.optimizers
    with_peer = args.peer_python is not None
    if with_peer:
        check_peer(args.peer_python, args.peer_script, "torch, transformers", on_gpu=False)

    device = jax.devices()[0]
    print(f"# jax {jax.__version__}  backend={jax.default_backend()}  devices={jax.device_count()} x "
          f"{device.device_kind}  cpus={os.cpu_count()}  {platform.processor() or platform.machine()}", flush=True)
    peak_dtype, peak_size = (jnp.float32, 4096) if on_cpu else (jnp.bfloat16, 8192)
    datasheet = flops.peak_flops_per_device(device, "bfloat16")
    peak = 0.0

    results, peers = [], []
    for index, (size, batch_size) in enumerate(sizes):
        # Re-measured before every size and the best kept: on a shared machine one early probe can
        # land in a busy moment and inflate every MFU after it.
        probe = flops.matmul_peak(peak_dtype, peak_size)
        peak = max(peak, probe)
        print(f"peak: {jnp.dtype(peak_dtype).name} matmul {peak_size}^3 {probe / 1e9:,.1f} GFLOP/s now, best "
              f"{peak / 1e9:,.1f} per device (used for MFU)"
              + (f"; datasheet {datasheet / 1e12:.0f} TFLOP/s" if datasheet else ""), flush=True)
        for optimizer in optimizers:
            print(f"{size} B={batch_size} {optimizer} {args.dtype}: compiling and timing {args.warmup}+{args.steps} steps...",
                  flush=True)
            ours = bench_ours(size, batch_size, optimizer, args.dtype, args.steps, args.warmup,
                              cross_check=index == 0 and optimizer == optimizers[0])
            ours["mfu"] = ours["achieved_flops"] / (peak * jax.device_count())
            results.append(ours)
            print(f"  ours  {size:>4} {optimizer:<5} {ours['tokens_per_s']:>9,.0f} tok/s  step {ours['step_s_median']:.3f}s  "
                  f"{ours['achieved_flops'] / 1e9:,.1f} GFLOP/s  MFU {100 * ours['mfu']:.1f}%  "
                  f"loss {ours['loss_first']:.3f}->{ours['loss_last']:.3f}", flush=True)
        if with_peer and size in PEER_SIZES:
            print(f"{size} B={batch_size}: PyTorch peer (AdamW, float32)...", flush=True)
            peer = bench_peer(args.peer_python, args.peer_script, size, batch_size, args.steps, args.warmup)
            peers.append(peer)
            print(f"  peer  {size:>4} adamw {peer['tokens_per_s']:>9,.0f} tok/s  step {peer['step_s_median']:.3f}s  "
                  f"{peer['achieved_gflops']:,.1f} GFLOP/s  MFU {100 * peer['mfu']:.1f}% (of its own torch peak "
                  f"{peer['peer_peak_flops'] / 1e9:,.1f})", flush=True)
            for ours in results[-len(optimizers):]:
                ours["ratio_vs_peer"] = ours["tokens_per_s"] / peer["tokens_per_s"]
                print(f"  ratio {size:>4} ours({ours['optimizer']}) / peer(adamw): {ours['ratio_vs_peer']:.2f}x tokens/s",
                      flush=True)

    print(f"\nMFU against the best matmul peak of the run, {peak / 1e9:,.1f} GFLOP/s per device")
    print("size  B    optimizer dtype     tokens/s    GFLOP/s  MFU    vs peer")
    for ours in results:
        ours["mfu"] = ours["achieved_flops"] / (peak * jax.device_count())
        ratio = f"{ours['ratio_vs_peer']:.2f}x" if "ratio_vs_peer" in ours else "-"
        print(f"{ours['size']:<5} {ours['batch']:<4} {ours['optimizer']:<9} {ours['dtype']:<9} {ours['tokens_per_s']:>9,.0f} "
              f"{ours['achieved_flops'] / 1e9:>9,.1f}  {100 * ours['mfu']:4.1f}%  {ratio}")
    if args.json:
        report = {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": device.device_kind,
                  "device_count": jax.device_count(), "python": sys.version.split()[0],
                  "best_matmul_peak_flops": peak, "datasheet_peak_flops": datasheet, "ours": results, "peer": peers}
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    else:
        print("wrote nothing (pass --json PATH to keep these figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
