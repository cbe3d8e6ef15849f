"""A tiny JAT (recipe "jat") on the datasets `python -m experiments.jat_data --out data/jat` records.

    mgdt-train --config experiments/jat_tiny.py --workdir runs/jat_tiny
    mgdt-train --config experiments/jat_tiny.py:DIR --workdir runs/jat_tiny   # recorded with --out DIR

One BabyAI level, its RGB image twin, one Meta-World task and one MuJoCo task; a 2-layer, 128-wide
decoder over 32 steps (64 tokens). Loss weights are JAT's (tokenize_stream.py L64-69: Meta-World
x50, InvertedPendulum x50, other MuJoCo x10); sampling is uniform over tasks, as JAT's.
"""

from __future__ import annotations

from experiments import common

DATA_ROOT = "data/jat"
TASKS = (  # (task, loss weight)
    ("babyai-go-to-local", 1.0),
    ("babyai-rgb-go-to-red-ball-grey", 1.0),
    ("metaworld-reach", 50.0),
    ("mujoco-pendulum", 50.0),
)


def get_config(data_root: str = DATA_ROOT):
    """``data_root``: the folder `experiments.jat_data --out` recorded the tasks into (``FILE:DIR`` on
    mgdt-train's command line)."""
    if not data_root.strip():
        raise ValueError("the data folder after 'jat_tiny.py:' is empty")
    config = common.base_config()
    config.recipe = "jat"

    model = config.model = common._section()
    model.num_layers = 2
    model.d_model = 128
    model.num_heads = 4
    model.mlp_ratio = 4
    model.dropout_rate = 0.1
    model.dtype = "float32"
    model.param_dtype = "float32"
    model.remat = False
    model.num_steps = 32  # steps per sequence (64 tokens) and evaluation context
    model.continuous_width = 64  # tiling width (JAT: 377); our widest vector is Meta-World's 39
    model.discrete_width = 148
    model.max_discrete_value = 32
    model.text_length = 64
    model.discrete_embed_dim = 8
    model.num_discrete_actions = 18
    model.image_shape = (84, 84, 3)
    model.groups = ("discrete", "continuous", "image")
    model.observation_loss_coef = 0.005  # kappa (JAT's default)
    model.normalize_observations = True  # per-task standardised continuous observations (docs/jat.md §6)

    data = config.data = common._section()
    data.tasks = tuple({"path": f"{data_root.rstrip('/')}/{task}", "sampling_weight": 1.0, "loss_weight": weight}
                       for task, weight in TASKS)
    data.seed = 0
    data.packing = True
    data.prefetch = 2

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.01

    train = config.train
    train.batch_size = 32
    train.num_steps = 5000
    train.log_every = 50
    train.checkpoint_every = 1000
    train.eval_episodes = 10
    return config
