"""Dark Key-to-Door (Laskin et al. 2022, §4.1), JAX-native.

A 9 x 9 room, episodes of 50 steps, the five moves of grid.py. A task is a (key, door) pair of
distinct cells, both invisible: the first step that ends on the key pays 1 and picks it up; a later
step that ends on the door while holding the key pays 1 and, in the reference (corl-team/toy-meta-gym
`Dark-Key-To-Door-9x9-v0`, max_episode_steps 50, random_start), ends the episode. The start cell is
uniform over the room in each episode, as in that reference (`random_start=False` starts at the
centre instead, as in AMAGO's fixed-start comparison variant).

Observations. Tabular learners need a Markov observation, and where the agent should go depends on
whether it holds the key, so the observation is the cell id plus num_cells when the key is held
(0..161 on 9 x 9). The reward history tells the same to a sequence model. As in darkroom.py's Hard
variant, each episode keeps its fixed length: opening the door moves the agent to an absorbing
terminal state, observed as id 2 * num_cells (162), where actions do nothing and nothing pays.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mgdt_jax.envs import grid

SEEKING_KEY, HOLDING_KEY, DOOR_OPEN = 0, 1, 2


class KeyDoorTask(NamedTuple):
    id: jax.Array  # int32 []: key cell * num_cells + door cell
    key: jax.Array  # int32 [2]: (row, column)
    door: jax.Array  # int32 [2]


class KeyDoorState(NamedTuple):
    position: jax.Array  # int32 [2]
    t: jax.Array  # int32 []
    phase: jax.Array  # int32 []: SEEKING_KEY, HOLDING_KEY or DOOR_OPEN (terminal)


@dataclasses.dataclass(frozen=True)
class KeyToDoor(grid.Room):
    name: str = "key_to_door"
    size: int = 9
    episode_length: int = 50
    random_start: bool = True

    @property
    def num_observations(self) -> int:
        return 2 * self.num_cells + 1

    @property
    def num_tasks(self) -> int:
        return self.num_cells * (self.num_cells - 1)

    def _tasks(self, index: jax.Array) -> KeyDoorTask:
        """Task index in [0, num_tasks) -> the index-th (key, door) pair with key != door."""
        index = jnp.asarray(index, jnp.int32)
        key_cell, rest = index // (self.num_cells - 1), index % (self.num_cells - 1)
        door_cell = rest + (rest >= key_cell)
        return KeyDoorTask(key_cell * self.num_cells + door_cell, grid.cell_position(key_cell, self.size),
                           grid.cell_position(door_cell, self.size))

    def _observation(self, position: jax.Array, phase: jax.Array) -> jax.Array:
        return jnp.where(phase == DOOR_OPEN, 2 * self.num_cells,
                         grid.cell_id(position, self.size) + phase * self.num_cells).astype(jnp.int32)

    def reset(self, task: KeyDoorTask, key: jax.Array) -> tuple[KeyDoorState, jax.Array]:
        if self.random_start:
            position = jax.random.randint(key, (2,), 0, self.size, jnp.int32)
        else:
            position = jnp.full((2,), self.size // 2, jnp.int32)
        phase = jnp.int32(SEEKING_KEY)
        return KeyDoorState(position, jnp.int32(0), phase), self._observation(position, phase)

    def step(self, task: KeyDoorTask, state: KeyDoorState, action: jax.Array,
             key: jax.Array) -> tuple[KeyDoorState, jax.Array, jax.Array, jax.Array]:
        done_before = state.phase == DOOR_OPEN
        position = jnp.where(done_before, state.position, grid.move(state.position, action, self.size))
        got_key = (state.phase == SEEKING_KEY) & jnp.all(position == task.key)
        opened = (state.phase == HOLDING_KEY) & jnp.all(position == task.door)
        phase = state.phase + got_key + opened
        t = state.t + 1
        return (KeyDoorState(position, t, phase), self._observation(position, phase),
                (got_key | opened).astype(jnp.float32), t >= self.episode_length)

    def terminated(self, state: KeyDoorState) -> jax.Array:
        return state.phase == DOOR_OPEN

    def optimal_action(self, task: KeyDoorTask, observation: jax.Array) -> jax.Array:
        phase, cell = observation // self.num_cells, observation % self.num_cells
        target = jnp.where(phase == SEEKING_KEY, task.key, task.door)
        action = grid.toward(grid.cell_position(cell, self.size), target)
        return jnp.where(phase == DOOR_OPEN, 0, action).astype(jnp.int32)

    def optimal_return(self, task: KeyDoorTask) -> jax.Array:
        """Closed form, averaged over start cells when the start is random: the key is reached
        after max(d(start, key), 1) steps (one no-op if the agent starts on it), the door
        d(key, door) >= 1 steps later; each pays 1 if reached within the episode."""
        if self.random_start:
            starts = grid.cell_position(jnp.arange(self.num_cells), self.size)
        else:
            starts = jnp.full((1, 2), self.size // 2, jnp.int32)
        key_time = jnp.maximum(grid.manhattan(starts, task.key), 1)
        door_time = key_time + grid.manhattan(task.key, task.door)
        returns = (key_time <= self.episode_length).astype(jnp.float32) + (door_time <= self.episode_length)
        return returns.mean()

    def config(self) -> dict:
        return {"name": self.name, "size": self.size, "episode_length": self.episode_length,
                "random_start": self.random_start, "actions": list(grid.ACTION_NAMES)}


KEY_TO_DOOR = KeyToDoor()
