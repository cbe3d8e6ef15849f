"""Analytic FLOPs of the generic decoder (for tokens/s -> FLOP/s -> MFU) and XLA's count to check them.

Counting (2 FLOPs per multiply-add, x3 for forward + backward), for the decoder of
``mgdt_jax/core/transformer.py``:

* blocks: 6 * N * tokens, N = the decoder's non-embedding parameters (blocks + ``ln_f``), the
  standard dense-transformer count (Kaplan et al. 2020);
* attention: 12 * L * D * T^2 per sequence (scores and weighted values over the whole T x T square:
  the kernel computes it masked, there is no causal saving).

A recipe adds its own embeddings and heads (``Recipe.step_cost``). ``blocks + attention`` is the
formula of the PyTorch peer benchmarks, so MFU figures compare. Optimizer and elementwise work is
not counted (it is not model FLOPs). MFU divides the achieved FLOP/s
by a peak: ``peak_flops_per_device`` gives the datasheet's.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp


# Dense bfloat16 peak FLOP/s per device (vendor datasheets, no sparsity), by ``device_kind`` prefix;
# the longest matching prefix wins (an "NVIDIA H200 NVL" is not an SXM "NVIDIA H200"). MFU is
# reported against these for bfloat16 compute only; other cases have no meaningful peak here.
BF16_PEAK_FLOPS = {
    "NVIDIA H200": 989e12,  # SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA H100": 989e12,  # SXM
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,
}


def peak_flops_per_device(device: Any, compute_dtype: str) -> float | None:
    """The device's datasheet peak FLOP/s for the compute dtype, or None when unknown (CPUs, float32)."""
    if compute_dtype != "bfloat16":
        return None
    kind = getattr(device, "device_kind", "")
    matches = [prefix for prefix in BF16_PEAK_FLOPS if kind.startswith(prefix)]
    return BF16_PEAK_FLOPS[max(matches, key=len)] if matches else None


def matmul_peak(dtype: jnp.dtype, size: int, reps: int = 5) -> float:
    """Best FLOP/s of one jitted ``size`` x ``size`` matmul on the default device, over ``reps``
    timed calls after a compiling one: the measured ceiling an MFU on a CPU (no datasheet peak)
    is read against, and a machine's speed beside a time claim."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def non_embedding_parameters(num_layers: int, d_model: int, mlp_ratio: int) -> int:
    """Blocks (4 D^2 + 4 D attention, 2 * ratio * D^2 + (ratio + 1) D MLP, 4 D LayerNorm) + ln_f."""
    d, ratio = d_model, mlp_ratio
    per_block = 4 * d * d + 4 * d + 2 * ratio * d * d + (ratio + 1) * d + 4 * d
    return num_layers * per_block + 2 * d


def decoder_flops(*, num_layers: int, d_model: int, mlp_ratio: int, sequence_length: int, batch_size: int) -> tuple[float, float]:
    """``(blocks, attention)`` FLOPs of one training step of the decoder on ``batch_size`` sequences."""
    blocks = 6.0 * non_embedding_parameters(num_layers, d_model, mlp_ratio) * (batch_size * sequence_length)
    attention = 12.0 * num_layers * d_model * sequence_length**2 * batch_size
    return blocks, attention


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
    """FLOPs XLA counts for one device's program of a compiled computation, or None if unknown.

    Useful once, to cross-check a recipe's analytic count: XLA also counts elementwise and
    optimizer work, so it reads somewhat higher, but it counts the body of a loop (``lax.scan``:
    a rollout, gradient accumulation) once, so a step with one reads far lower.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
