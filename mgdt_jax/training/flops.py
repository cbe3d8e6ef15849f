"""Analytic training FLOPs of MGDT (for tokens/s -> FLOP/s -> MFU) and a cross-check against XLA.

Counting (2 FLOPs per multiply-add, x3 for forward + backward):

* ``blocks``: 6 * N * tokens, N = the transformer's non-embedding parameters (blocks + ``ln_f``),
  the standard dense-transformer count (Kaplan et al. 2020).
* ``attention``: 12 * L * D * T^2 per window (scores and weighted values over the whole T x T
  square: the kernel computes it masked, there is no causal saving).
* ``embeddings_and_heads``: the patch projection (196 x D per patch token) and the output heads.

``blocks + attention`` is exactly the formula of the PyTorch peer benchmark, so MFU figures compare.
Optimizer and elementwise work is not counted (it is not model FLOPs). MFU divides the achieved
FLOP/s by a peak: ``peak_flops_per_device`` gives the datasheet's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from mgdt_jax import tokens
from mgdt_jax.models.mgdt import ModelConfig

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


@dataclasses.dataclass(frozen=True)
class TrainingFlops:
    blocks: float
    attention: float
    embeddings_and_heads: float
    tokens: int  # tokens per step

    @property
    def total(self) -> float:
        return self.blocks + self.attention + self.embeddings_and_heads

    @property
    def per_token(self) -> float:
        return self.total / self.tokens


def non_embedding_parameters(config: ModelConfig) -> int:
    """Blocks (4 D^2 + 4 D attention, 2 * ratio * D^2 + (ratio + 1) D MLP, 4 D LayerNorm) + ln_f."""
    d, ratio = config.d_model, config.mlp_ratio
    per_block = 4 * d * d + 4 * d + 2 * ratio * d * d + (ratio + 1) * d + 4 * d
    return config.num_layers * per_block + 2 * d


def training_flops(model_config: Any, batch_size: int) -> TrainingFlops:
    """FLOPs of one training step (forward + backward) on ``batch_size`` windows."""
    config = ModelConfig.from_config(model_config)
    length = config.sequence_length
    num_tokens = batch_size * length
    step_tokens = batch_size * config.num_steps
    head_outputs = tokens.NUM_ACTIONS if config.behaviour_cloning else tokens.NUM_RETURNS + tokens.NUM_ACTIONS + tokens.NUM_REWARDS
    patch_pixels = tokens.PATCH_SIZE**2 * tokens.FRAME_SHAPE[-1]
    return TrainingFlops(
        blocks=6.0 * non_embedding_parameters(config) * num_tokens,
        attention=12.0 * config.num_layers * config.d_model * length**2 * batch_size,
        embeddings_and_heads=6.0 * config.d_model * step_tokens * (tokens.NUM_PATCHES * patch_pixels + head_outputs),
        tokens=num_tokens,
    )


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
    """FLOPs XLA counts for a compiled computation (all devices' shards summed), or None if unknown.

    Useful once, to cross-check ``training_flops``: XLA also counts elementwise and optimizer work,
    so it reads somewhat higher.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
