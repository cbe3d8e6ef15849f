"""Fine-tuning a pretrained MGDT on a held-out game (paper §4.5): lr 1e-4, weight decay 1e-2, batch 256.

    mgdt-train --config experiments/finetune.py:PRETRAINED_RUN --config.data.sources=NEW_GAME_DATA --workdir DIR

The argument after ':' (or ``--config.train.init_from``) is the pretrained run or one step's folder of
it; without one the run trains from scratch (the baseline fine-tuning is compared against). The
model fields must match the checkpoint (DT-200M here, the released size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments import mgdt_200m

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config(init_from: str = "") -> ConfigDict:
    config = mgdt_200m.get_config()
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-2
    config.optimizer.warmup_steps = 1_000  # not stated by the paper; short relative to 100k steps
    config.train.batch_size = 256
    config.train.num_steps = 100_000  # paper: 100k fine-tuning steps
    config.train.init_from = init_from  # the pretrained run; empty: from scratch
    return config
