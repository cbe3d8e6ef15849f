"""DT-40M of the paper: 6 layers, d 768, 12 heads (43.0M parameters): the base config as is."""

from __future__ import annotations

import ml_collections

from experiments.common import base_config


def get_config() -> ml_collections.ConfigDict:
    return base_config()
