"""Expert action inference against behaviour cloning on mixed-quality data, at a scale for 2 CPU cores.

Used by experiments/mgdt_expert_inference.py (which explains the protocol). ``config.experiment``
holds the experiment's own settings; the rest is the training config of both models (the tiny MGDT;
the BC variant sets ``model.behaviour_cloning``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from experiments import tiny

if TYPE_CHECKING:
    from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = tiny.get_config()
    config.train.num_steps = 8_000
    config.train.checkpoint_every = 1_000
    config.train.log_every = 100

    config.experiment = ml_collections.ConfigDict()
    experiment = config.experiment
    # Pretraining games: scripted experts whose play a 2-layer model learns from 84x84 frames in
    # minutes (Breakout's was not learned in 3,000 steps, Boxing's only in part: docs/results.md).
    experiment.games = ("Freeway", "DemonAttack")
    # A held-out game whose expert (FIRE, the accelerator, held) shares DemonAttack's action and whose
    # recording has return modes far apart (random play scores 0). SpaceInvaders shares the action,
    # but its random episodes score as much as its expert's; Pong shares nothing (docs/results.md).
    experiment.heldout_game = "Enduro"
    experiment.steps_per_game = 50_000  # agent steps recorded per pretraining game
    # Whole games (Boxing's bout is ~1,780 steps, Freeway's 2,048): the return modes lie further
    # apart over the -20..99 range kappa's tilt is scaled to (docs/results.md).
    experiment.max_episode_steps = 2_000  # episode cap in recording and evaluation (4 frames a step)
    # Episodes alternate random play and the expert with 10% random actions. With a noiseless
    # expert the frame gives the mode away (DemonAttack's cannon never leaves its start), so one
    # low return sampled early moves the cannon and the model plays the random mode from then on;
    # with noise in both modes only the return-to-go tells them apart (docs/results.md).
    experiment.epsilon = "cycle:1,0.1"
    experiment.heldout_fraction = 0.01  # of steps_per_game, recorded for fine-tuning
    experiment.eval_episodes = 40  # per game and method
    experiment.kappa = 10.0  # expert action inference
    experiment.finetune_steps = 500  # from the pretrained model and from scratch alike
    experiment.finetune_learning_rate = 1e-4  # paper §4.5
    # Seeds everything (game i recorded with seed + i). Seed 1 met all three targets; seed 0's
    # pretraining met the first only, and its Enduro recording made fine-tuning from scratch the
    # better (docs/results.md).
    experiment.seed = 0
    return config


def quick(config: ConfigDict) -> ConfigDict:
    """A smoke-test size: minutes on 2 cores; checks the flow, claims nothing."""
    config.train.num_steps = 100
    config.train.checkpoint_every = 50
    config.train.log_every = 25
    config.experiment.steps_per_game = 3_000
    config.experiment.max_episode_steps = 300
    config.experiment.finetune_steps = 30
    return config
