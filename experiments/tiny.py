"""Tiny MGDT (2 layers, d 128, 0.48M parameters): tests and the demo, seconds per step on a CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments.common import base_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = base_config()
    config.model.num_layers = 2
    config.model.d_model = 128
    config.model.num_heads = 2  # d_model // 64
    config.optimizer.warmup_steps = 100  # short runs must reach the peak rate
    config.optimizer.learning_rate = 1e-3  # a small model tolerates (and needs, in few steps) more
    config.train.batch_size = 32
    config.train.num_steps = 2_000
    config.train.log_every = 10
    config.train.checkpoint_every = 200
    config.data.num_threads = 2
    return config
