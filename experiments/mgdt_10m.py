"""DT-10M of the paper: 4 layers, d 512, 8 heads (12.95M parameters with embeddings and heads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments.common import base_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = base_config()
    config.model.num_layers = 4
    config.model.d_model = 512
    config.model.num_heads = 8
    return config
