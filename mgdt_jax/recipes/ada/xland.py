"""XLand-MiniGrid tasks for the AdA recipe: k-trial episodes of rulesets from a generated benchmark.

    config.env = {"factory": "mgdt_jax.recipes.ada.xland:make", "benchmark": "trivial_10k.pkl.bz2",
                  "env_id": "XLand-MiniGrid-R1-9x9", "num_trials": 5}
    config.model.observation = "grid"

The meta-environment is `mgdt_jax.envs.xland.trials.TrialEnv` seen through the recipe's protocol
(mgdt_jax/recipes/ada/env.py): the observation is the egocentric (tile, colour) view as int32
[view, view, 2]; ``done`` is the end of the episode's last trial; ``trial`` is the trial the reward
belongs to (the one that just ended when a step ends a trial: TrialEnv's own ``trial`` already names
the next, unless ``show_trial_end`` shows the end as a step of its own). The agent's extras (AdA:
the goal is observed, the rules are not) are the trial index (one-hot, k), the time within the
trial (steps / trial length, or with ``time_onehot`` one-hot over the trial's steps) and the goal
(xminigrid's encoding one-hot: goal type, then tile and colour of each of its two object slots).
``observe_goal=False`` zeroes the goal features, as XLand-MiniGrid's RL² baselines see only the
view: then even a goal-only (trivial) task has something to infer in context, which object is
rewarded and how.

Tasks are drawn uniformly, or by PLR with a no-op filter (``curriculum = "plr"``), over the
training rulesets of ``benchmark`` (a file of ``mgdt-xland-benchmark``, checked against its sha256
record); ``heldout_fraction`` holds a fixed split out for evaluation (mgdt-ada-eval). The rulesets are constants of the compiled step: keep the
benchmark to what fits comfortably in a program (a million ``high`` rulesets, ~165 MB, does not).
Needs xminigrid (the ``ada`` extra).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mgdt_jax.core.config_sections import read_section
from mgdt_jax.core.files import MAX_SEED
from mgdt_jax.envs.xland import generator, trials
from mgdt_jax.recipes.ada import curriculum
from mgdt_jax.recipes.ada.env import TimeStep, UniformTasks


@dataclasses.dataclass(frozen=True)
class XLandConfig:
    """The ``env`` section (besides ``factory``)."""

    benchmark: str = ""  # a benchmark file written by mgdt-xland-benchmark
    env_id: str = "XLand-MiniGrid-R1-9x9"
    num_trials: int = 5
    fixed_start: bool = True  # every trial restarts from the episode's first world (AdA)
    max_steps: int = 0  # a trial's step limit; 0: xminigrid's default (3 * height * width)
    show_trial_end: bool = False  # a trial's last (rewarded) view is a step of its own (trials.TrialEnv)
    max_trials: int = 0  # width of the trial one-hot the agent sees (0: num_trials); evaluation may run up to it
    observe_goal: bool = True  # AdA observes the goal; False hides it (XLand-MiniGrid's RL² baselines)
    time_onehot: bool = False  # the time within the trial one-hot over its steps instead of steps / trial length
    heldout_fraction: float = 0.0  # rulesets held out of training (generator.task_split), for evaluation
    split_seed: int = 0
    curriculum: str = "uniform"  # "uniform" | "plr" (PLR with a no-op filter, curriculum.py)
    curriculum_settings: dict = dataclasses.field(default_factory=dict)  # keyword arguments of curriculum.init


def goal_features(goal: jax.Array) -> jax.Array:
    """uint8 [5] xminigrid goal encoding -> float32 one-hot of its type, then (tile, colour) of each
    object slot: [NUM_GOALS + 2 * (NUM_TILES + NUM_COLORS)]. Empty slots (0, 0) are one-hot at 0."""
    from xminigrid.core.constants import NUM_COLORS, NUM_TILES
    from xminigrid.core.goals import NUM_GOALS

    goal = goal.astype(jnp.int32)
    return jnp.concatenate([
        jax.nn.one_hot(goal[0], NUM_GOALS),
        jax.nn.one_hot(goal[1::2], NUM_TILES).reshape(-1),
        jax.nn.one_hot(goal[2::2], NUM_COLORS).reshape(-1),
    ])


@dataclasses.dataclass(frozen=True)
class XLandTrials:
    """`trials.TrialEnv` as the AdA recipe's meta-environment (module docstring)."""

    env: trials.TrialEnv
    benchmark: dict[str, Any]  # the benchmark's record: benchmark_id, sha256, generator settings
    trial_features: int  # width of the trial one-hot (>= num_trials)
    observe_goal: bool = True
    # One-hot time lets attention match the same step of earlier trials (a dot product of two
    # scalars t_q * t_k cannot peak at t_q == t_k); with a fixed start that step's next action
    # replays a path that reached the goal.
    time_onehot: bool = False

    @property
    def num_actions(self) -> int:
        return self.env.num_actions

    @property
    def num_trials(self) -> int:
        return self.env.num_trials

    @property
    def episode_length(self) -> int:
        """Most steps a meta-episode takes."""
        return self.env.episode_length

    def reset(self, key: jax.Array, ruleset: Any) -> tuple[trials.TrialState, TimeStep]:
        state, timestep = self.env.reset(key, ruleset)
        return state, self._timestep(timestep)

    def step(self, state: trials.TrialState, action: jax.Array) -> tuple[trials.TrialState, TimeStep]:
        state, timestep = self.env.step(state, action)
        return state, self._timestep(timestep)

    def _timestep(self, timestep: trials.TrialTimeStep) -> TimeStep:
        # Unless the end is shown, TrialEnv's trial already names the next trial after a trial's last
        # step; the reward is the last trial's.
        reward_trial = jnp.where(timestep.trial_done & ~self.env.show_trial_end,
                                 (timestep.trial - 1) % self.num_trials, timestep.trial)
        return TimeStep(
            observation=timestep.observation.astype(jnp.int32),
            reward=timestep.reward,
            done=timestep.episode_done,
            trial=reward_trial.astype(jnp.int32),
            extras={
                "trial": jax.nn.one_hot(timestep.trial, self.trial_features, dtype=jnp.float32),
                "time": (jax.nn.one_hot(timestep.time, self.env.trial_length + 1, dtype=jnp.float32) if self.time_onehot
                         else (timestep.time / self.env.trial_length).astype(jnp.float32)[None]),
                "goal": goal_features(timestep.goal) * self.observe_goal,  # zeros when hidden
            },
        )

    def describe(self) -> dict[str, Any]:
        return {"name": "xland", "env_id": self.env.env_id, "num_trials": self.num_trials,
                "fixed_start": self.env.fixed_start, "trial_length": self.env.trial_length,
                "show_trial_end": self.env.show_trial_end,
                "trial_features": self.trial_features, "observe_goal": self.observe_goal, "time_onehot": self.time_onehot,
                "benchmark_id": self.benchmark["benchmark_id"], "benchmark_sha256": self.benchmark["sha256"]}


def noop_trial_returns(env: trials.TrialEnv, benchmark: Any, ids: np.ndarray, key: jax.Array) -> jax.Array:
    """float32 [len(ids)]: the return of the no-op policy (``trials.NOOP_ACTION`` at every step) in the
    first trial of an episode of each ruleset id (pure JAX; one start per task, drawn from ``key``).
    With ``fixed_start`` every trial restarts from the same world, so this is its return per trial."""
    rulesets = trials.get_rulesets(benchmark, ids)
    state, _ = jax.vmap(env.reset)(jax.random.split(key, len(ids)), rulesets)

    def one_step(carry, _):
        state, total, running = carry
        state, timestep = jax.vmap(env.step)(state, jnp.full(len(ids), trials.NOOP_ACTION, jnp.int32))
        return (state, total + jnp.where(running, timestep.reward, 0.0), running & ~timestep.trial_done), None

    carry = (state, jnp.zeros(len(ids), jnp.float32), jnp.ones(len(ids), bool))
    (_, total, _), _ = jax.lax.scan(one_step, carry, None, length=env.trial_length)
    return total


CURRICULA = ("uniform", "plr")


def make(env_config: Any) -> tuple[XLandTrials, UniformTasks | curriculum.CurriculumTasks]:
    """The ``env.factory`` of XLand-MiniGrid: the meta-environment and its task source, uniform or
    PLR with a no-op filter (``curriculum``) over the training rulesets of ``benchmark``; with
    ``heldout_fraction`` a split of ``generator.task_split(n, heldout_fraction, split_seed)`` is held
    out (the task source's ``heldout_ids``) and never drawn.

    ValueError (one line) for a missing, altered or unreadable benchmark file, an unknown
    ``env_id`` or curriculum, or bad trial or split settings.
    """
    settings = read_section(XLandConfig, env_config)
    if not settings.benchmark:
        raise ValueError("env.benchmark: give a benchmark file (mgdt-xland-benchmark writes one)")
    if settings.curriculum not in CURRICULA:
        raise ValueError(f"env.curriculum {settings.curriculum!r} is not one of {CURRICULA}")
    trial_features = settings.max_trials or settings.num_trials
    if trial_features < settings.num_trials:
        raise ValueError(f"env.max_trials {settings.max_trials}: below num_trials {settings.num_trials}")
    if not 0 <= settings.split_seed <= MAX_SEED:  # NumPy's generator said "expected non-negative integer"
        raise ValueError(f"env.split_seed {settings.split_seed}: a seed is a whole number from 0 to {MAX_SEED}")
    benchmark, record = generator.load(settings.benchmark)
    env = trials.TrialEnv(settings.env_id, num_trials=settings.num_trials, fixed_start=settings.fixed_start,
                          max_steps=settings.max_steps or None, show_trial_end=settings.show_trial_end)
    env.num_actions  # noqa: B018  (an unknown env_id fails here, in one line, not inside a trace)
    num_tasks = record["num_rulesets"]
    train_ids = heldout_ids = None
    if settings.heldout_fraction:
        train_ids, heldout_ids = generator.task_split(num_tasks, settings.heldout_fraction, settings.split_seed)
    meta_env = XLandTrials(env, record, trial_features, settings.observe_goal, settings.time_onehot)
    if settings.curriculum == "uniform":
        return meta_env, UniformTasks(num_tasks, benchmark.get_ruleset, train_ids, heldout_ids)
    train = np.arange(num_tasks, dtype=np.int32) if train_ids is None else train_ids

    def noop_scores() -> jax.Array:
        scores = noop_trial_returns(env, benchmark, train, jax.random.key(settings.split_seed))
        return jnp.zeros(num_tasks, jnp.float32).at[train].set(scores)

    try:
        curriculum.init(num_tasks, train, **dict(settings.curriculum_settings))
    except TypeError as error:  # an unknown setting
        raise ValueError(f"env.curriculum_settings: {error}") from None
    tasks = curriculum.CurriculumTasks(num_tasks, benchmark.get_ruleset, train,
                                       np.zeros(0, np.int32) if heldout_ids is None else heldout_ids,
                                       settings.num_trials, noop_scores, dict(settings.curriculum_settings))
    return meta_env, tasks
