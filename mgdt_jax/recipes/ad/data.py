"""Step-indexed training windows for Algorithm Distillation, cut from learning histories in memory.

Training batch k is a pure function of (seed, k): each of its ``global_batch_size`` windows picks a
history uniformly and a start uniformly among the starts that fit, and is the next ``context_steps``
steps of that history (across episode boundaries: a window spans several episodes, which is what
lets the model see the source algorithm improve; Laskin et al. 2022, §4). A host takes its
contiguous share of the rows, so resuming at step k, or training on another number of hosts,
reads the same global batches.

The Expert Distillation baseline (ED, §5 of the paper) is the same model trained on expert behaviour
only: either histories of an expert policy, or, with ``tail_episodes``, only the last episodes of
each learning history, where the source algorithm has converged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class TrainingWindows:
    """Windows of ``context_steps`` consecutive steps from ``histories`` (a
    mgdt_jax.recipes.ad.histories.Histories, or any object with its fields: ``observations``,
    ``actions`` int32 [H, T], ``rewards`` float32 [H, T], ``episode_length``, ``num_actions``,
    ``env_name``).

    ``batch(k)`` -> this host's rows of global batch k: ``observations``, ``actions`` int32 [b, S],
    ``rewards`` float32 [b, S], ``previous_action`` int32 [b] (the action before the window, or
    START = num_actions at a history's first step), ``previous_reward`` float32 [b] (0 there), with
    b = global_batch_size / process_count and S = context_steps.

    Raises ValueError (one line naming the value) for a context shorter than one episode or longer
    than the histories (or their tail), a batch that does not split over the hosts, or no history.
    """

    def __init__(
        self,
        histories: Any,
        *,
        context_steps: int,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        tail_episodes: int | None = None,
    ):
        num_histories, history_steps = histories.observations.shape
        episode_length = histories.episode_length
        name = f"{histories.env_name} histories"
        if num_histories == 0:
            raise ValueError(f"{name}: no history to train on")
        if context_steps < episode_length:
            raise ValueError(
                f"context_steps {context_steps} is shorter than one {histories.env_name} episode "
                f"({episode_length} steps): AD's context must span whole episodes (4 or more to learn in context)"
            )
        first_step = 0
        if tail_episodes is not None:
            episodes = history_steps // episode_length
            if not 1 <= tail_episodes <= episodes:
                raise ValueError(f"tail_episodes {tail_episodes} outside 1..{episodes} (the episodes per history of the {name})")
            first_step = history_steps - tail_episodes * episode_length
        if context_steps > history_steps - first_step:
            raise ValueError(
                f"context_steps {context_steps} is longer than the {history_steps - first_step} steps "
                f"windows can be cut from in the {name}"
            )
        if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} does not split evenly over {process_count} host(s)")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
        self.histories = histories
        self.context_steps = context_steps
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self._first_start = first_step
        self._last_start = history_steps - context_steps  # inclusive

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's part of global batch ``step`` (a function of the seed and ``step`` only)."""
        if step < 0:
            raise ValueError(f"step {step} is negative")
        rng = np.random.default_rng([self.seed, step])
        history = rng.integers(0, self.histories.observations.shape[0], self.global_batch_size)
        start = rng.integers(self._first_start, self._last_start + 1, self.global_batch_size)
        rows = slice(self.process_index * self.local_batch_size, (self.process_index + 1) * self.local_batch_size)
        history, start = history[rows], start[rows]
        steps = start[:, None] + np.arange(self.context_steps)  # [b, S]
        rows_index = history[:, None]
        before = np.maximum(start - 1, 0)
        at_history_start = start == 0
        return {
            "observations": self.histories.observations[rows_index, steps].astype(np.int32),
            "actions": self.histories.actions[rows_index, steps].astype(np.int32),
            "rewards": self.histories.rewards[rows_index, steps].astype(np.float32),
            "previous_action": np.where(
                at_history_start, self.histories.num_actions, self.histories.actions[history, before]
            ).astype(np.int32),
            "previous_reward": np.where(at_history_start, 0.0, self.histories.rewards[history, before]).astype(np.float32),
        }

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start_step``, ``start_step + 1``, ... without end."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
