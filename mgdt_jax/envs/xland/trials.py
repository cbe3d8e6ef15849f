"""Meta-episodes of k trials of one XLand-MiniGrid task (AdA's episode structure), pure JAX.

An episode is `num_trials` trials of one ruleset. A trial is one xminigrid episode: it ends when
the goal is reached (reward 1 - 0.9 * t / max_steps, xminigrid `environment.py`) or after
`max_steps` steps (xminigrid's default 3 * height * width, 243 on 9x9). Then the world resets (a new
grid with the ruleset's objects; with `fixed_start` the same positions and direction as the
episode's first trial, as AdA's trials restart from the same initial state) while the episode goes
on; remembering what the last trial taught is the agent's business. The episode ends with its last
trial.

What the agent observes (AdA: the goal is observed, the rules are not; AMAGO's reading of AdA's
Table C1): the egocentric image (xminigrid's `view_size` x `view_size` x 2 grid of tile and colour
ids, 5x5 for XLand), the goal's encoding (uint8 [5]: xminigrid goal type id, then (tile, colour) of
its one or two objects, zeros after; an agent embeds type, tile and colour ids), the trial index
and the time step within the trial. The rules stay inside the state. The previous action and
reward are the agent's to keep.

    env = TrialEnv("XLand-MiniGrid-R1-9x9", num_trials=5)
    state, timestep = jax.vmap(env.reset)(keys, get_rulesets(benchmark, ids))
    state, timestep = jax.vmap(env.step)(state, actions)

`step` resets trials itself (gym style: a timestep that ends a trial carries that step's reward
and done flags, with the next trial's first observation). With `show_trial_end` a trial's end is
a step of its own instead: the timestep that ends a trial carries the view the last action led to
(the goal reached: the object held, or in front of the agent), and the next step, whatever the
action, restarts the world with reward 0. The view that earned a reward then reaches the agent
with the reward; gym style, a memory must link the reward to the step before it. When the last
trial ends, the episode starts over on the same ruleset (trial 0); a caller that wants a new task
calls `reset` there with a new ruleset (e.g. `jax.tree.map(partial(jnp.where, done), fresh,
stepped)`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Toggle changes nothing but doors (none in one-room layouts), triggers no goal or rule of our
# generator (they fire on forward, pick up and put down), and keeps the view: xminigrid has no
# no-op action, this is the closest (the no-op policy of AdA's no-op filter).
NOOP_ACTION = 5


class TrialState(NamedTuple):
    """Leaves carry no batch axis; vmap adds it."""

    inner: Any  # xminigrid TimeStep of the running trial (grid, agent, step count, encodings)
    start: Any  # xminigrid TimeStep the episode started from (every trial's start with fixed_start)
    ruleset: Any  # xminigrid RuleSet of the episode's task
    trial: jax.Array  # int32 []: index of the running trial, 0..num_trials-1
    key: jax.Array  # PRNG key for the next trial's start without fixed_start


class TrialTimeStep(NamedTuple):
    """observation, goal, trial and time describe the state the agent acts from next; reward,
    trial_done and episode_done the transition that led there."""

    observation: jax.Array  # uint8 [view, view, 2]: tile id, colour id
    goal: jax.Array  # uint8 [5]: the goal's xminigrid encoding
    trial: jax.Array  # int32 []: trial index of `observation` (the finished trial's on a shown end)
    time: jax.Array  # int32 []: steps taken in that trial (0 at its start)
    reward: jax.Array  # float32 []
    trial_done: jax.Array  # bool []: the step ended a trial (goal reached or time out)
    episode_done: jax.Array  # bool []: the step ended the episode's last trial


@dataclasses.dataclass(frozen=True)
class TrialEnv:
    """Episodes of `num_trials` trials of one task of xminigrid environment `env_id`; hashable, so
    it can be a static argument of jit. `max_steps` is the trial's length limit (None: xminigrid's
    default)."""

    env_id: str = "XLand-MiniGrid-R1-9x9"
    num_trials: int = 5
    fixed_start: bool = True
    max_steps: int | None = None
    show_trial_end: bool = False  # a trial's last view is a step of its own (module docstring)

    def __post_init__(self):
        if self.num_trials < 1:
            raise ValueError(f"num_trials {self.num_trials}: must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps {self.max_steps}: must be positive")

    @functools.cached_property
    def _env(self) -> tuple[Any, Any]:
        import xminigrid

        if self.env_id not in xminigrid.registered_environments():
            raise ValueError(f"unknown xminigrid environment {self.env_id!r}")
        env, params = xminigrid.make(self.env_id)
        if self.max_steps is not None:
            params = params.replace(max_steps=self.max_steps)
        return env, params

    @property
    def num_actions(self) -> int:
        env, params = self._env
        return env.num_actions(params)

    @property
    def trial_length(self) -> int:
        """Most steps a trial takes."""
        return int(self._env[1].max_steps)

    @property
    def episode_length(self) -> int:
        """Most steps an episode takes: num_trials * trial_length, plus a step a trial with
        show_trial_end."""
        return self.num_trials * (self.trial_length + self.show_trial_end)

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        env, params = self._env
        return tuple(env.observation_shape(params))

    def _params(self, ruleset):
        return self._env[1].replace(ruleset=ruleset)

    def reset(self, key: jax.Array, ruleset) -> tuple[TrialState, TrialTimeStep]:
        """Start an episode of `ruleset` (an xminigrid RuleSet, unbatched): trial 0, time 0.
        ValueError if the ruleset has more objects than the room has cells beside the agent."""
        params = self._params(ruleset)
        if ruleset.init_tiles.shape[-2] + 1 > (params.height - 2) * (params.width - 2):
            raise ValueError(f"rulesets with {ruleset.init_tiles.shape[-2]} objects do not fit in {self.env_id}")
        start_key, key = jax.random.split(key)
        inner = self._env[0].reset(params, start_key)
        state = TrialState(inner, inner, ruleset, jnp.int32(0), key)
        return state, self._timestep(state, jnp.float32(0.0), jnp.bool_(False), jnp.bool_(False))

    def step(self, state: TrialState, action: jax.Array) -> tuple[TrialState, TrialTimeStep]:
        """One step of the running trial; at a trial's end the world resets for the next trial
        (after the last trial: trial 0 of the same ruleset again). With show_trial_end the reset
        is the step after the one that ended the trial, and `action` is ignored there."""
        env, _ = self._env
        params = self._params(state.ruleset)
        # `inner` is a finished trial's last view only where show_trial_end kept it (else it restarted).
        ended = state.inner.last() & self.show_trial_end
        stepped = env.step(params, state.inner, action)
        # A shown end is followed by the reset alone; otherwise the reset follows the trial's end at once.
        trial_done = stepped.last() & ~ended
        restart = ended if self.show_trial_end else trial_done
        episode_done = trial_done & (state.trial == self.num_trials - 1)
        key = state.key
        if self.fixed_start:  # a copy of the episode's first world, no new draw
            restarted = state.start
        else:
            key, trial_key = jax.random.split(key)
            restarted = env.reset(params, trial_key)
        # Under vmap a cond runs both branches anyway; a select keeps the program flat.
        inner = jax.tree.map(lambda new, old: jnp.where(restart, new, old), restarted, stepped)
        trial = jnp.where(restart, (state.trial + 1) % self.num_trials, state.trial).astype(jnp.int32)
        reward = jnp.where(ended, 0.0, stepped.reward).astype(jnp.float32)  # a reset earns nothing
        state = TrialState(inner, state.start, state.ruleset, trial, key)
        return state, self._timestep(state, reward, trial_done, episode_done)

    def _timestep(self, state: TrialState, reward, trial_done, episode_done) -> TrialTimeStep:
        return TrialTimeStep(observation=state.inner.observation, goal=state.ruleset.goal.astype(jnp.uint8),
                             trial=state.trial, time=state.inner.state.step_num.astype(jnp.int32), reward=reward,
                             trial_done=trial_done, episode_done=episode_done)


def get_rulesets(benchmark, ids: jax.Array):
    """xminigrid RuleSet with leaves [n, ...] for ruleset ids int [n] of `benchmark` (jit-safe;
    pass the benchmark as an argument, not a closure, or its arrays become program constants)."""
    return jax.vmap(benchmark.get_ruleset)(jnp.asarray(ids))
