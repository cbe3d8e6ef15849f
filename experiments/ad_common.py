"""The shared base of the Algorithm Distillation configs (recipe "ad"; docs/algorithm_distillation.md).

``ad_config(env)`` is ``common.base_config()`` with the AD sections: the model (the AD model's
fields; observations and actions come from the histories), the data (environment, history
directories, tail episodes for the ED baseline) and the in-context evaluation split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiments.common import _section, base_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def ad_config(env: str, context_steps: int) -> ConfigDict:
    config = base_config()
    config.recipe = "ad"
    model = config.model
    model.context_steps = context_steps  # history steps per window: >= 4 episodes for in-context RL
    model.token_layout = "joint"  # one token per step (docs/algorithm_distillation.md, "Model")
    model.positions = "alibi"
    model.num_layers = 2
    model.d_model = 64
    model.num_heads = 2
    model.dropout_rate = 0.1

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 50
    config.optimizer.schedule = "cosine"
    config.optimizer.weight_decay = 0.01

    config.data.env = env  # an environment of mgdt_jax.envs; the histories must be of it
    config.data.sources = ()  # mgdt-ad-histories directories; --config.data.sources=DIR
    config.data.tail_episodes = 0  # > 0: windows from each history's last N episodes only (ED)

    config.evaluation = _section()
    config.evaluation.split_seed = 0  # the task split the histories were generated on
    config.evaluation.num_heldout = 0  # 0: the environment's default (Dark Room: 16 goals)
    config.evaluation.episodes = 0  # 0: 100 pulls for bandits, 40 episodes otherwise
    config.evaluation.seed = 0

    config.train.batch_size = 64
    config.train.num_steps = 2_000
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.eval_every = 0
    return config
