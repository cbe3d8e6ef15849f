"""Windows of consecutive steps, tokenized into the batch contract.

A window ending at step ``t`` holds steps ``t - S + 1 .. t`` (``S = model.num_steps``, 4). Every step
of an episode can end a window, so the first steps of an episode are seen with less context, as at
the start of an evaluation episode: a window that would begin before the episode is padded on the
left with zero tokens and ``step_mask`` False. Returns-to-go are summed over the clipped rewards of
the whole episode (``tokens.returns_to_go``), never across an episode boundary.

Training reads the steps of a window from the window index (``step_store.py``); ``cut_windows``
cuts the same windows from a decoded episode, the reference that index is tested against.
"""

from __future__ import annotations

import numpy as np

from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt.rlds_source import Episode


def tokenize(
    observations: np.ndarray,
    returns_to_go: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    step_mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """The per-step values of ``W`` windows -> the batch contract (docs/architecture.md).

    Takes ``observations`` uint8 [W, S, 84, 84, 1] (zero in padded slots), ``returns_to_go`` and
    ``rewards`` [W, S] (clipped rewards, their sums to the episode's end), ``actions`` [W, S] (full
    18-action-set ids) and ``step_mask`` bool [W, S]. Returns the contract's arrays; padded slots
    hold token 0. Return and reward tokens are those of the released model (``tokens.py``).
    """
    def masked(token_ids: np.ndarray) -> np.ndarray:
        return np.where(step_mask, token_ids, 0).astype(np.int32)

    return {
        "observations": observations,
        "returns_to_go": masked(tokens.encode_return(returns_to_go)),
        "actions": masked(actions),
        "rewards": masked(tokens.encode_reward(rewards)),
        "step_mask": step_mask,
    }


def cut_windows(episode: Episode, ends: np.ndarray, num_steps: int) -> dict[str, np.ndarray]:
    """The windows of ``num_steps`` steps ending at the steps ``ends`` of a decoded episode.

    Returns ``observations`` uint8 [W, S, 84, 84, 1] and ``returns_to_go``, ``actions``, ``rewards``
    int32 [W, S] and ``step_mask`` bool [W, S], for ``W = len(ends)``. A frame shared by
    overlapping windows is decoded once. Raises IndexError for an end outside the episode.
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
    returns_to_go = tokens.returns_to_go(episode.rewards)
    return tokenize(observations, returns_to_go[steps], episode.actions[steps], episode.rewards[steps], step_mask)
