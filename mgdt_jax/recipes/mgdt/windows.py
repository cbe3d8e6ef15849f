"""Windows of consecutive steps cut from one episode, tokenized into the batch contract.

A window ending at step ``t`` holds steps ``t - S + 1 .. t`` (``S = model.num_steps``, 4). Every step
of an episode can end a window, so the first steps of an episode are seen with less context, as at
the start of an evaluation episode: a window that would begin before the episode is padded on the
left with zero tokens and ``step_mask`` False. Returns-to-go are summed over the clipped rewards of
the whole episode (``tokens.returns_to_go``), never across an episode boundary.
"""

from __future__ import annotations

import numpy as np

from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.rlds_source import Episode


def cut_windows(episode: Episode, ends: np.ndarray, num_steps: int) -> dict[str, np.ndarray]:
    """The windows of ``num_steps`` steps ending at the steps ``ends``, in the batch contract.

    Returns ``observations`` uint8 [W, S, 84, 84, 1] and ``returns_to_go``, ``actions``, ``rewards``
    int32 [W, S] and ``step_mask`` bool [W, S], for ``W = len(ends)``. A frame shared by
    overlapping windows is decoded once.
    """
    ends = np.asarray(ends)
    if ends.size and not (0 <= ends.min() and ends.max() < len(episode)):
        raise IndexError(f"window ends {ends.tolist()} outside an episode of {len(episode)} steps")
    steps = ends[:, None] - np.arange(num_steps)[::-1]  # [W, S]: the step in each slot, < 0 = padding
    step_mask = steps >= 0
    steps = np.where(step_mask, steps, 0)
    decoded, position = np.unique(steps, return_inverse=True)
    observations = episode.frames(decoded)[position.reshape(steps.shape)]  # [W, S, 84, 84, 1]
    observations[~step_mask] = 0
    returns_to_go = tokens.encode_return(tokens.returns_to_go(episode.rewards))

    def padded(per_step: np.ndarray) -> np.ndarray:
        return np.where(step_mask, per_step[steps], 0).astype(np.int32)

    return {
        "observations": observations,
        "returns_to_go": padded(returns_to_go),
        "actions": padded(episode.actions),
        "rewards": padded(tokens.encode_reward(episode.rewards)),
        "step_mask": step_mask,
    }


def random_windows(episode: Episode, rng: np.random.Generator, num_steps: int, count: int) -> dict[str, np.ndarray]:
    """``count`` windows ending at distinct steps drawn uniformly (repeating only in shorter episodes)."""
    ends = np.sort(rng.choice(len(episode), size=count, replace=len(episode) < count))
    return cut_windows(episode, ends, num_steps)
