"""DT-40M of the paper: 6 layers, d 768, 12 heads (43.0M parameters): the base config as is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments.common import base_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return base_config()
