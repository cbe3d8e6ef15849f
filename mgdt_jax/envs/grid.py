"""Movement on the square grids of the Dark Room family, shared by darkroom.py and key_to_door.py.

Positions are int32 [2] = (row, column), row 0 at the top; the observation id of a cell is
row * size + column. Actions (the order the AD task description lists them): 0 no-op, 1 up, 2 down,
3 left, 4 right; a move into a wall leaves the agent where it is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mgdt_jax.envs.base import EnvError, Task

NUM_ACTIONS = 5
ACTION_NAMES = ("noop", "up", "down", "left", "right")
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], np.int32)  # (d row, d column)


class Room:
    """What the square-room environments share: `size` cells a side (a dataclass field of the
    subclass), the five moves, and tasks numbered 0..num_tasks-1 that the subclass's
    `_tasks(index)` turns into its task pytree."""

    num_actions = NUM_ACTIONS

    @property
    def num_cells(self) -> int:
        return self.size * self.size

    def all_tasks(self) -> Task:
        """Every task, in index order (leaves [num_tasks, ...])."""
        return self._tasks(jnp.arange(self.num_tasks))

    def sample_tasks(self, key: jax.Array, n: int) -> Task:
        """n tasks uniform over all of them (with replacement)."""
        return self._tasks(jax.random.randint(key, (n,), 0, self.num_tasks))

    def task_split(self, seed: int, num_train: int | None = None,
                   num_heldout: int | None = None) -> tuple[Task, Task]:
        """Tasks split by a seeded permutation (split_indices); Dark Room 9x9 defaults to 65 train
        and 16 held-out goals, as in the AD^epsilon code."""
        train, heldout = split_indices(self.name, seed, self.num_tasks, num_train, num_heldout)
        return self._tasks(train), self._tasks(heldout)


def move(position: jax.Array, action: jax.Array, size: int) -> jax.Array:
    return jnp.clip(position + jnp.asarray(MOVES)[action], 0, size - 1)


def cell_id(position: jax.Array, size: int) -> jax.Array:
    return (position[..., 0] * size + position[..., 1]).astype(jnp.int32)


def cell_position(cell: jax.Array, size: int) -> jax.Array:
    return jnp.stack([cell // size, cell % size], axis=-1).astype(jnp.int32)


def manhattan(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.abs(a - b).sum(-1)


def toward(position: jax.Array, target: jax.Array) -> jax.Array:
    """An action on a shortest path from position to target (rows first); no-op when there."""
    d_row, d_col = target[0] - position[0], target[1] - position[1]
    return jnp.select([d_row < 0, d_row > 0, d_col < 0, d_col > 0], [1, 2, 3, 4], 0).astype(jnp.int32)


def split_indices(name: str, seed: int, total: int, num_train: int | None, num_heldout: int | None,
                  heldout_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of range(total): train = its first num_train entries, held-out = its last
    num_heldout (so the held-out set does not depend on num_train). Defaults: round(0.2 * total)
    held out, the rest for training. EnvError if the two would share a task."""
    num_heldout = round(heldout_fraction * total) if num_heldout is None else num_heldout
    num_train = total - num_heldout if num_train is None else num_train
    if num_train < 0 or num_heldout < 0:
        raise EnvError(f"{name}: a split of {num_train} train and {num_heldout} held-out tasks of {total}: "
                       "neither may be negative")
    if num_train + num_heldout > total:
        raise EnvError(f"{name}: a split of {num_train} train and {num_heldout} held-out tasks overlaps "
                       f"(only {total} tasks exist)")
    order = np.asarray(jax.random.permutation(jax.random.key(seed), total))
    return order[:num_train], order[total - num_heldout:]
