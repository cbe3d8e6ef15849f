"""DT-200M, the released model: 10 layers, d 1280, 20 heads (197,638,542 parameters).

Its parameter tree matches the released checkpoint, so ``mgdt-import-checkpoint`` output loads here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments.common import base_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = base_config()
    config.model.num_layers = 10
    config.model.d_model = 1280
    config.model.num_heads = 20
    config.model.dtype = "bfloat16"  # a 200M model is trained on accelerators
    return config
