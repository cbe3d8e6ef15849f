"""Analytic FLOPs of the generic decoder (for tokens/s -> FLOP/s -> MFU) and XLA's count to check them.

Counting (2 FLOPs per multiply-add, x3 for forward + backward), for the decoder of
``mgdt_jax/models/transformer.py``:

* blocks: 6 * N * tokens, N = the decoder's non-embedding parameters (blocks + ``ln_f``), the
  standard dense-transformer count (Kaplan et al. 2020);
* attention: 12 * L * D * T^2 per sequence (scores and weighted values over the whole T x T square:
  the kernel computes it masked, there is no causal saving).

A recipe adds its own embeddings and heads (``Recipe.step_cost``). ``blocks + attention`` is the
formula of the PyTorch peer benchmarks, so MFU figures compare. Optimizer and elementwise work is
not counted (it is not model FLOPs).
"""

from __future__ import annotations

import jax


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
    optimizer work, so it reads somewhat higher.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
