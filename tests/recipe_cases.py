"""What the generic training tests need of each recipe: a train-step config, batches, a run config.

tests/test_train_step.py and tests/test_training.py check every guarantee of the core (sharded step
equal to one device, gradient accumulation, bit-equal losses after SIGTERM, SIGKILL and resume,
restore across meshes, NaN stop, fine-tuning, throughput and MFU) on every case of ``CASES``. A new
recipe gets them by adding a case here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


BATCH = 8  # rows of the batches the train-step tests use

# A config file of the MGDT, as a user writes one: the tiny experiment shrunk further, on a dataset.
MGDT_CONFIG_FILE = """
from experiments import tiny


def get_config():
    config = tiny.get_config()
    config.model.num_layers = 1
    config.model.d_model = 64
    config.model.num_heads = 2
    config.mesh.data = 1
    config.mesh.fsdp = -1  # parameters sharded 8 ways, so restoring onto 1 or 4 devices reshards them
    config.optimizer.warmup_steps = 4
    config.data.sources = [{source!r}]
    config.data.num_threads = 2
    config.train.batch_size = 16
    config.train.num_steps = {num_steps}
    config.train.log_every = 1
    config.train.checkpoint_every = {checkpoint_every}
    return config
"""

# The JAT: the tiny experiment shrunk further, on the two small datasets of tests/jat_datasets.py.
JAT_CONFIG_FILE = """
from experiments import jat_tiny


def get_config():
    config = jat_tiny.get_config()
    config.model.num_layers = 1
    config.model.d_model = 64
    config.model.num_heads = 2
    config.model.num_steps = 64  # 128 tokens a row: runs long enough to be stopped mid-way
    config.model.groups = ("discrete", "continuous")
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 4
    config.data.tasks = {tasks!r}
    config.train.batch_size = 16
    config.train.num_steps = {num_steps}
    config.train.log_every = 1
    config.train.checkpoint_every = {checkpoint_every}
    return config
"""


def step_config(case: Any, mesh: dict[str, int], *, dropout_rate: float = 0.1, grad_accum_steps: int = 1) -> dict:
    """A small plain-dict config of ``case``'s recipe (the step must not need ml_collections).

    One layer: compiling the step dominates these tests, and sharding equality is per layer."""
    return {
        **getattr(case, "step_sections", {}),
        "recipe": case.recipe,
        "model": {"num_layers": 1, "d_model": 64, "num_heads": 2, "dropout_rate": dropout_rate,
                  **getattr(case, "model_fields", {})},
        "mesh": mesh,
        "optimizer": {"learning_rate": 1e-3, "warmup_steps": 5},
        "train": {"batch_size": BATCH, "grad_accum_steps": grad_accum_steps, "num_steps": 100},
    }


class MgdtCase:
    name = recipe = "mgdt"
    metrics = ("return_loss", "action_loss", "reward_loss", "return_accuracy", "action_accuracy", "reward_accuracy")

    def batches(self, request: pytest.FixtureRequest) -> list[dict[str, np.ndarray]]:
        """Windows of real Breakout frames."""
        windows = request.getfixturevalue("breakout_windows")
        return [{name: value[first : first + BATCH] for name, value in windows.items()} for first in (0, BATCH)]

    def config_file(self, request: pytest.FixtureRequest, **fields: Any) -> str:
        return MGDT_CONFIG_FILE.format(source=str(request.getfixturevalue("rlds_dataset_dir")), **fields)


AD_CONFIG_FILE = """
from experiments import ad_darkroom


def get_config():
    config = ad_darkroom.get_config()
    config.model.context_steps = {context_steps}  # 8 Dark Room episodes: runs long enough to be stopped mid-way
    config.model.num_layers = 1
    config.model.d_model = 64
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.optimizer.warmup_steps = 4
    config.optimizer.schedule = "constant"
    config.optimizer.learning_rate = 3e-3
    config.data.sources = [{source!r}]
    config.train.batch_size = 16
    config.train.num_steps = {num_steps}
    config.train.log_every = 1
    config.train.checkpoint_every = {checkpoint_every}
    return config
"""
AD_CONTEXT_STEPS = 160


class AdCase:
    """Algorithm Distillation on Q-learning histories of Dark Room written by mgdt-ad-histories."""

    name = recipe = "ad"
    metrics = ("action_loss", "action_accuracy")
    step_sections = {"data": {"env": "darkroom"}}

    def batches(self, request: pytest.FixtureRequest) -> list[dict[str, np.ndarray]]:
        from mgdt_jax.recipes.ad.data import TrainingWindows
        from mgdt_jax.recipes.ad.histories import read_histories

        histories = read_histories(request.getfixturevalue("darkroom_histories_dir"))
        windows = TrainingWindows(histories, context_steps=40, global_batch_size=BATCH, seed=0)
        return [windows.batch(step) for step in (0, 1)]

    def config_file(self, request: pytest.FixtureRequest, **fields: Any) -> str:
        return AD_CONFIG_FILE.format(source=str(request.getfixturevalue("darkroom_histories_dir")),
                                     context_steps=AD_CONTEXT_STEPS, **fields)


# The AdA recipe on arm recall: an online recipe (rollouts of environments inside the jitted step,
# their states, memories and curriculum in the checkpoint).
ADA_CONFIG_FILE = """
from experiments import ada_tiny


def get_config():
    config = ada_tiny.get_config()
    config.model.num_layers = 1  # as the step tests' case: compiling the Transformer-XL dominates
    config.model.d_model = 64
    config.model.memory_length = 32
    config.ppo.rollout_length = 16  # steps long enough for the run to be stopped mid-way
    # One optimizer step per train step, as the other cases: the NaN-stop test counts on an infinite
    # learning rate showing in the loss of the next step (with several, it shows within the same one).
    config.ppo.num_epochs = 1
    config.ppo.num_minibatches = 1
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.train.batch_size = 16
    config.train.num_steps = {num_steps}
    config.train.log_every = 1
    config.train.checkpoint_every = {checkpoint_every}
    config.train.keep_checkpoints = 3
    return config
"""


class AdaCase:
    name = recipe = "ada"
    metrics = (
        "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
        "reward_per_step", "episodes", "episode_return", *(f"return_trial_{k}" for k in range(1, 5)),
    )
    step_sections = {
        "env": {"factory": "mgdt_jax.recipes.ada.arm_recall:make", "num_trials": 4},
        "ppo": {"rollout_length": 8, "num_epochs": 2, "num_minibatches": 2},
    }

    def batches(self, request: pytest.FixtureRequest) -> list[dict[str, np.ndarray]]:
        return [{}, {}]  # the step rolls out its own

    def config_file(self, request: pytest.FixtureRequest, **fields: Any) -> str:
        return ADA_CONFIG_FILE.format(**fields)



class JatCase:
    name = recipe = "jat"
    metrics = ("action_loss", "observation_loss", "real_step_fraction")
    # Short rows and no image encoder keep compiling the step on 8 devices fast; the image encoder
    # has its own tests (tests/test_jat_model.py).
    model_fields = {"num_steps": 16, "groups": ("discrete", "continuous")}

    def _tasks(self, request: pytest.FixtureRequest) -> tuple[dict, ...]:
        return tuple({"path": str(path)} for path in request.getfixturevalue("jat_datasets").values())

    def batches(self, request: pytest.FixtureRequest) -> list[dict[str, np.ndarray]]:
        """Packed rows of the small synthetic JAT datasets: batch 0 discrete, batch 1 continuous."""
        from mgdt_jax.recipes.jat import tokens
        from mgdt_jax.recipes.jat.recipe import JatRecipe

        config = {**step_config(self, {}), "data": {"tasks": self._tasks(request)}}
        data = JatRecipe(config).training_data(process_index=0, process_count=1)
        by_group = {}
        for step in range(64):
            batch = data.batch(step)
            by_group.setdefault(tokens.batch_group(batch), batch)
        return [by_group["discrete"], by_group["continuous"]]

    def config_file(self, request: pytest.FixtureRequest, **fields: Any) -> str:
        return JAT_CONFIG_FILE.format(tasks=self._tasks(request), **fields)




CASES = {case.name: case for case in (MgdtCase(), AdCase(), JatCase(), AdaCase())}
