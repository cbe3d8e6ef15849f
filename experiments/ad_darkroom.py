"""AD on Dark Room 9x9 (65 training / 16 held-out goals), an 80-step (4-episode) context.

    mgdt-ad-histories --env darkroom --source ad_epsilon --episodes 100 --histories-per-task 16 --out DIR
    mgdt-train --config experiments/ad_darkroom.py --workdir W --config.data.sources=DIR

The ED baseline is the same config with ``--config.data.tail_episodes=4`` (windows from the last 4
episodes of each history, where the source has converged) or on ``--source expert`` histories.
"""

from experiments.ad_common import ad_config


def get_config():
    config = ad_config("darkroom", context_steps=80)
    config.model.num_layers = 4
    config.model.d_model = 128
    config.model.num_heads = 4
    config.train.num_steps = 5_000
    return config
