"""AD on 10-armed Bernoulli bandits: histories of 100 pulls (Thompson sampling), a 100-pull context.

    mgdt-ad-histories --env bandit --source thompson --episodes 100 --num-train 16384 --out DIR
    mgdt-train --config experiments/ad_bandit.py --workdir W --config.data.sources=DIR
"""

from experiments.ad_common import ad_config


def get_config():
    config = ad_config("bandit", context_steps=100)
    config.train.num_steps = 1_500
    return config
