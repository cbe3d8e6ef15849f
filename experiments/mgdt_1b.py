"""A 1B-parameter MGDT (20 layers, d 2048, 32 heads: 1.008B parameters) to show the sharding scales.

Parameters and LAMB moments (12 bytes/param, ~11 GB) are sharded over ``fsdp`` and attention
heads / MLP columns over ``tensor``, with remat, so it trains on devices that cannot hold one copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments.common import base_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = base_config()
    config.model.num_layers = 20
    config.model.d_model = 2048
    config.model.num_heads = 32
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.mesh.data = 1
    config.mesh.fsdp = -1  # ZeRO-3 over all devices...
    config.mesh.tensor = 1  # ...set to 2-8 within a node when activations, not weights, are the limit
    return config
