"""AD on Dark Key-to-Door 9x9 (50-step episodes), a 200-step (4-episode) context.

    mgdt-ad-histories --env key_to_door --source q_learning --episodes 300 --histories-per-task 2 \
        --num-train 1024 --num-heldout 64 --out DIR
    mgdt-train --config experiments/ad_key_to_door.py --workdir W --config.data.sources=DIR \
        --config.evaluation.num_heldout=64
"""

from experiments.ad_common import ad_config


def get_config():
    config = ad_config("key_to_door", context_steps=200)
    config.model.num_layers = 4
    config.model.d_model = 128
    config.model.num_heads = 4
    config.train.num_steps = 5_000
    return config
