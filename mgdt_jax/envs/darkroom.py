"""Dark Room and Dark Room Hard (Laskin et al. 2022, §4.1), JAX-native.

Dark Room: a size x size room (9 x 9), episodes of 20 steps starting at the centre, five actions
(grid.py). The goal cell is the task and is never observed: the observation is only the agent's
cell id, row * size + column. The reward is 1 on every step that ends on the goal, so an optimal
agent walks the Manhattan distance d to the goal and stays: return 20 - d + 1 (20 when the goal is
the centre), 16.54 on average over the 81 goals; a uniform-random agent gets 20 / 81 = 0.247 on
average over the goals (it stands on exactly one cell per step). Same facts in corl-team/ad-eps
`dark_room` and corl-team/toy-meta-gym `Dark-Room-9x9-v0` (which order the moves differently).

Dark Room Hard: 17 x 17, 20 steps, reward 1 only once, on reaching the goal. In the reference
(toy-meta-gym `Dark-Room-Hard-17x17-v0`: terminate_on_goal, max_episode_steps 20) reaching the goal
ends the episode. Here every episode keeps its 20 steps, so that a learning history is
episodes x 20 steps: on reaching the goal the agent enters an absorbing terminal state, observed as
the extra id size * size (289), where actions do nothing and nothing pays. Every policy's return is
the same as under the reference's termination, and `terminated` says the episode ended there.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mgdt_jax.envs import grid


class GoalTask(NamedTuple):
    id: jax.Array  # int32 []: the goal's cell id
    goal: jax.Array  # int32 [2]: (row, column)


class RoomState(NamedTuple):
    position: jax.Array  # int32 [2]
    t: jax.Array  # int32 []: steps taken this episode
    finished: jax.Array  # bool []: the goal was reached (Dark Room Hard only)


@dataclasses.dataclass(frozen=True)
class DarkRoom(grid.Room):
    """Dark Room (`hard=False`: reward on every goal step) or Dark Room Hard (`hard=True`)."""

    name: str = "darkroom"
    size: int = 9
    episode_length: int = 20
    hard: bool = False

    @property
    def num_observations(self) -> int:
        return self.num_cells + self.hard  # + the terminal observation of Dark Room Hard

    @property
    def num_tasks(self) -> int:
        return self.num_cells

    def _tasks(self, cells: jax.Array) -> GoalTask:
        cells = jnp.asarray(cells, jnp.int32)
        return GoalTask(cells, grid.cell_position(cells, self.size))

    def reset(self, task: GoalTask, key: jax.Array) -> tuple[RoomState, jax.Array]:
        position = jnp.full((2,), self.size // 2, jnp.int32)
        return RoomState(position, jnp.int32(0), jnp.bool_(False)), grid.cell_id(position, self.size)

    def step(self, task: GoalTask, state: RoomState, action: jax.Array,
             key: jax.Array) -> tuple[RoomState, jax.Array, jax.Array, jax.Array]:
        position = jnp.where(state.finished, state.position, grid.move(state.position, action, self.size))
        on_goal = jnp.all(position == task.goal) & ~state.finished
        finished = state.finished | (on_goal & self.hard)
        t = state.t + 1
        observation = jnp.where(finished, self.num_cells, grid.cell_id(position, self.size))
        return (RoomState(position, t, finished), observation.astype(jnp.int32), on_goal.astype(jnp.float32),
                t >= self.episode_length)

    def terminated(self, state: RoomState) -> jax.Array:
        return state.finished

    def optimal_action(self, task: GoalTask, observation: jax.Array) -> jax.Array:
        action = grid.toward(grid.cell_position(observation, self.size), task.goal)
        return jnp.where(observation >= self.num_cells, 0, action).astype(jnp.int32)  # terminal: nothing to do

    def optimal_return(self, task: GoalTask) -> jax.Array:
        """Closed form: the goal is first reached after max(d, 1) steps (d = Manhattan distance from
        the centre; a goal at the centre needs one no-op), and Dark Room pays on each remaining step."""
        first = jnp.maximum(grid.manhattan(task.goal, jnp.full((2,), self.size // 2)), 1)
        reached = first <= self.episode_length
        if self.hard:
            return reached.astype(jnp.float32)
        return jnp.where(reached, self.episode_length - first + 1, 0).astype(jnp.float32)

    def config(self) -> dict:
        return {"name": self.name, "size": self.size, "episode_length": self.episode_length, "hard": self.hard,
                "start": "centre", "actions": list(grid.ACTION_NAMES)}


DARKROOM = DarkRoom()
DARKROOM_HARD = DarkRoom(name="darkroom_hard", size=17, hard=True)
