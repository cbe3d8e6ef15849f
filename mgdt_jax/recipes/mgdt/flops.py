"""Analytic training FLOPs of MGDT: the generic decoder plus its patch embedding and output heads.

``blocks`` and ``attention`` are the decoder's (mgdt_jax/core/flops.py) over the window's
tokens (156, or 148 for behaviour cloning); ``embeddings_and_heads`` is the patch projection
(196 x D per patch token) and the output heads (120 + 18 + 4 logits, or 18 for behaviour cloning)
per timestep, x6 for forward + backward. ``blocks + attention`` is the PyTorch peer's formula.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.model import ModelConfig
from mgdt_jax.core.flops import decoder_flops


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


def training_flops(model_config: Any, batch_size: int) -> TrainingFlops:
    """FLOPs of one training step (forward + backward) on ``batch_size`` windows."""
    config = ModelConfig.from_config(model_config)
    length = config.sequence_length
    step_tokens = batch_size * config.num_steps
    head_outputs = tokens.NUM_ACTIONS if config.behaviour_cloning else tokens.NUM_RETURNS + tokens.NUM_ACTIONS + tokens.NUM_REWARDS
    patch_pixels = tokens.PATCH_SIZE**2 * tokens.FRAME_SHAPE[-1]
    blocks, attention = decoder_flops(
        num_layers=config.num_layers, d_model=config.d_model, mlp_ratio=config.mlp_ratio,
        sequence_length=length, batch_size=batch_size,
    )
    return TrainingFlops(
        blocks=blocks,
        attention=attention,
        embeddings_and_heads=6.0 * config.d_model * step_tokens * (tokens.NUM_PATCHES * patch_pixels + head_outputs),
        tokens=batch_size * length,
    )
