"""MGDT token vocabulary and sequence layout, shared by the input pipeline, the model and the policy.

NumPy only (no JAX): the data pipeline tokenizes on the host, the model and the policy use the
same constants on device. Every number here comes from the released MGDT model (see docs/model.md).
"""

from __future__ import annotations

import numpy as np

FRAME_SHAPE = (84, 84, 1)  # one grayscale frame per timestep, no frame stacking
PATCH_SIZE = 14
NUM_PATCHES = (FRAME_SHAPE[0] // PATCH_SIZE) * (FRAME_SHAPE[1] // PATCH_SIZE)  # 36
# Per timestep: [36 patches, return-to-go, action, reward].
TOKENS_PER_STEP = NUM_PATCHES + 3  # 39
RETURN_OFFSET = NUM_PATCHES  # position of the return-to-go token inside a step
ACTION_OFFSET = NUM_PATCHES + 1
REWARD_OFFSET = NUM_PATCHES + 2
DEFAULT_NUM_STEPS = 4  # context window in timesteps: 4 * 39 = 156 tokens

RETURN_MIN, RETURN_MAX = -20, 100  # released range; bin size 1
NUM_RETURNS = RETURN_MAX - RETURN_MIN  # 120 classes: returns -20..99
NUM_ACTIONS = 18  # ALE's full action set, shared by every game
NUM_REWARDS = 4  # 0: zero, 1: positive, 2: unused ("terminal"), 3: negative


def encode_return(returns_to_go: np.ndarray) -> np.ndarray:
    """Returns-to-go -> class ids in [0, 120).

    The released model has 120 return classes for the range -20..100, so a return of 100 or more
    has no class of its own; it shares the top class (99) with 99, which is also what JAX's clamping
    gather did for the released model.
    """
    values = np.asarray(returns_to_go)
    return (np.clip(np.trunc(values), RETURN_MIN, RETURN_MAX - 1) - RETURN_MIN).astype(np.int32)


def decode_return(return_tokens: np.ndarray) -> np.ndarray:
    """Class ids -> the return value each class stands for."""
    return np.asarray(return_tokens).astype(np.int32) + RETURN_MIN


def encode_reward(rewards: np.ndarray) -> np.ndarray:
    """Rewards -> ternary tokens {0: zero, 1: positive, 3: negative}, as in the released model."""
    values = np.asarray(rewards)
    return ((values > 0) * 1 + (values < 0) * 3).astype(np.int32)


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go within one episode, including the current reward."""
    values = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(values[::-1])[::-1].astype(np.float32)
