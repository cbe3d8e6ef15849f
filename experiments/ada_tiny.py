"""Tiny AdA on arm recall (mgdt_jax/recipes/ada/arm_recall.py): a 2-layer Transformer-XL, PPO, CPU minutes.

Two arms, 4 trials of 2 steps: a memoryless policy earns 0.5 per trial, an agent that remembers
0.5 in trial 1 and 1.0 in trials 2-4. ``config.model.agent = "gru"`` trains the RL² baseline instead.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from experiments import common
from mgdt_jax.recipes.ada.agents import AgentConfig
from mgdt_jax.recipes.ada.ppo import KickstartConfig, PPOConfig

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return common.from_dict(
        {
            "recipe": "ada",
            "env": {
                "factory": "mgdt_jax.recipes.ada.arm_recall:make",
                "num_arms": 2, "num_trials": 4, "trial_length": 2, "wait_penalty": 0.5,
            },
            "model": {
                **dataclasses.asdict(AgentConfig()),
                "num_layers": 1, "d_model": 32, "num_heads": 2, "memory_length": 8, "gru_hidden": 32, "head_hidden": 32,
            },
            "ppo": {**dataclasses.asdict(PPOConfig()), "rollout_length": 8, "num_epochs": 2, "num_minibatches": 2,
                    "entropy_coef": 0.01},
            "kickstart": dataclasses.asdict(KickstartConfig()),
            "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
            "optimizer": {"name": "adamw", "learning_rate": 3e-3, "warmup_steps": 10, "schedule": "constant",
                          "grad_clip_norm": 0.5, "eps": 1e-5},
            "train": {
                "batch_size": 64, "grad_accum_steps": 1, "num_steps": 300, "seed": 0, "log_every": 20,
                "checkpoint_every": 100, "keep_checkpoints": 2, "eval_every": 0, "init_from": "", "profile_steps": 0,
            },
        }
    )
