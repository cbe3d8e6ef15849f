"""Windows of consecutive steps cut from one episode, tokenized into the batch contract.

A window ending at step ``t`` holds steps ``t - S + 1 .. t`` (``S = model.num_steps``, 4). Every step
of an episode can end a window, so the first steps of an episode are seen with less context, as at
the start of an evaluation episode: a window that would begin before the episode is padded on the
left with zero tokens and ``step_mask`` False. Returns-to-go are summed over the clipped rewards of
the whole episode (``tokens.returns_to_go``), never across an episode boundary.
"""

from __future__ import annotations

import numpy as np

from mgdt_jax import tokens
from mgdt_jax.data.rlds_source import Episode


def cut_window(episode: Episode, end: int, num_steps: int) -> dict[str, np.ndarray]:
    """The window of ``num_steps`` steps ending at step ``end``, as one batch-contract element.

    Returns ``observations`` uint8 [S, 84, 84, 1] and ``returns_to_go``, ``actions``, ``rewards``
    int32 [S] and ``step_mask`` bool [S].
    """
    if not 0 <= end < len(episode):
        raise IndexError(f"window end {end} outside an episode of {len(episode)} steps")
    first = max(0, end - num_steps + 1)
    steps = np.arange(first, end + 1)
    padding = num_steps - len(steps)
    returns_to_go = tokens.returns_to_go(episode.rewards)

    def left_padded(values: np.ndarray, dtype: type) -> np.ndarray:
        padded = np.zeros((num_steps, *values.shape[1:]), dtype)
        padded[padding:] = values
        return padded

    return {
        "observations": left_padded(episode.frames(steps), np.uint8),
        "returns_to_go": left_padded(tokens.encode_return(returns_to_go[steps]), np.int32),
        "actions": left_padded(episode.actions[steps], np.int32),
        "rewards": left_padded(tokens.encode_reward(episode.rewards[steps]), np.int32),
        "step_mask": np.arange(num_steps) >= padding,
    }


def random_window(episode: Episode, rng: np.random.Generator, num_steps: int) -> dict[str, np.ndarray]:
    """A window ending at a step drawn uniformly from the episode."""
    return cut_window(episode, int(rng.integers(len(episode))), num_steps)
