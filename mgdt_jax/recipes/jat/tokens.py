"""JAT's per-step inputs as the model reads them: mission text as word ids, groups, padded fields.

Both the training data (data.py) and the evaluation policy (evaluate.py) turn the JAT fields of a
step (mgdt_jax/recipes/jat/fields.py) into the same arrays through ``step_arrays``, so the model
sees the same inputs in both. Nothing here needs TensorFlow, TFDS or an environment.

**Standardised observations.** With ``model.normalize_observations`` both pass the task's
observation statistics (references.ObservationStats, measured on its expert data) to
``step_arrays``, which standardises continuous observations per dimension,
(x - mean) / max(std, ``STD_FLOOR``), before they are padded (and tiled by the model). JAT feeds
raw observations; see docs/jat.md §6 for why we offer this.

**Mission text.** JAT tokenises BabyAI's mission with GPT-2's BPE (64 tokens, downloaded from the
Hub). Here the tokenizer is a fixed word vocabulary of BabyAI's instruction grammar (minigrid
``envs/babyai/core/verifier.py``: "go to", "pick up", "open", "put ... next to", ", then",
"after you", "and", the colours, object types and locations), so nothing is downloaded and every
mission of every BabyAI level is a short sequence of known words. Id 0 pads; a word outside the
grammar maps to ``UNKNOWN_WORD`` (id 1) rather than failing, so other text still runs.

**Groups.** A task's observation fields decide which encoder reads its observation token; tasks of
one group share the encoder and a batch is drawn from one group (see data.py):

=============  =====================================================  ====================
group          observation fields                                     action field
=============  =====================================================  ====================
"discrete"     discrete_observations and/or text_observations         discrete_actions
"continuous"   continuous_observations                                continuous_actions
"image"        image_observations (and optionally text_observations)  discrete_actions
=============  =====================================================  ====================
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from mgdt_jax.recipes.jat.references import ObservationStats

GROUPS = ("discrete", "continuous", "image")
PAD_WORD, UNKNOWN_WORD = 0, 1
WORDS = (
    "go", "to", "pick", "up", "open", "put", "next", "then", "after", "you", "and", ",",
    "the", "a", "object", "on", "your", "in", "front", "of", "behind", "left", "right",
    "red", "green", "blue", "purple", "yellow", "grey",
    "box", "ball", "key", "door",
)  # fmt: skip
VOCABULARY = {word: index + 2 for index, word in enumerate(WORDS)}  # 0 pads, 1 is an unknown word
TEXT_VOCABULARY_SIZE = len(WORDS) + 2
# Smallest std a dimension is divided by. The smallest spread of a moving dimension in our expert data
# is ~1e-3 (InvertedPendulum's pole angle); Meta-World has dimensions constant up to float noise
# (std 2e-7 - 7e-7: a quaternion's w, a fixed goal height) that a smaller floor would blow up to O(1).
STD_FLOOR = 1e-4


class InputError(ValueError):
    """A task or a step the model cannot read; the message names it and the fault."""


def tokenize(text: str, length: int) -> np.ndarray:
    """A mission -> int32 [length] word ids, padded with 0 (cut after ``length`` words)."""
    words = re.findall(r"[a-z]+|,", text.lower())
    ids = np.zeros(length, np.int32)
    ids[: len(words)] = [VOCABULARY.get(word, UNKNOWN_WORD) for word in words[:length]]
    return ids


def task_group(task: str, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The group of a task with these fields (table above); InputError for another combination."""
    if "image_observations" in shapes:
        group, action = "image", "discrete_actions"
    elif "continuous_observations" in shapes:
        group, action = "continuous", "continuous_actions"
    else:
        group, action = "discrete", "discrete_actions"
    if action not in shapes:
        raise InputError(f"{task}: {group} observations with {sorted(set(shapes) - {'rewards'})} are not a "
                         f"combination the JAT model reads ({group} observations need {action})")
    if group == "continuous" and {"discrete_observations", "text_observations"} & set(shapes):
        raise InputError(f"{task}: continuous observations mixed with discrete or text ones are not supported")
    return group


def check_widths(task: str, shapes: Mapping[str, tuple[int, ...]], *, continuous_width: int,
                 discrete_width: int) -> None:
    """InputError (one line) for a vector wider than the model's tiling or slot width."""
    for name in ("continuous_observations", "continuous_actions"):
        if name in shapes and (len(shapes[name]) != 1 or shapes[name][0] > continuous_width):
            raise InputError(f"{task}: {name} of shape {tuple(shapes[name])} is wider than the tiling width "
                             f"model.continuous_width={continuous_width}")
    if "discrete_observations" in shapes and (len(shapes["discrete_observations"]) != 1
                                              or shapes["discrete_observations"][0] > discrete_width):
        raise InputError(f"{task}: discrete_observations of shape {tuple(shapes['discrete_observations'])} "
                         f"exceed model.discrete_width={discrete_width}")


# The keys of a training batch: every batch carries COMMON_KEYS and its group's keys only, so a
# batch's structure names its group. The jitted train step then compiles once per group, each program
# holding only that group's encoder and loss (a ``lax.switch`` over the groups kept the image
# branch's buffers alive on every batch: docs/jat.md §9).
COMMON_KEYS = ("loss_weight", "segment", "position", "rewards")
GROUP_KEYS = {
    "discrete": ("discrete_observations", "text_observations", "discrete_actions", "num_discrete_actions"),
    "continuous": ("continuous_observations", "continuous_observation_size", "continuous_actions",
                   "continuous_action_size"),
    "image": ("image_observations", "text_observations", "discrete_actions", "num_discrete_actions"),
}


def batch_keys(group: str) -> tuple[str, ...]:
    """The keys of a training batch of ``group`` (COMMON_KEYS, then the group's own)."""
    return COMMON_KEYS + GROUP_KEYS[group]


def batch_group(batch: Mapping[str, object]) -> str:
    """The group of a training batch, read from its keys (``batch_keys``); static under ``jax.jit``."""
    for group in ("image", "continuous", "discrete"):
        if GROUP_KEYS[group][0] in batch:
            return group
    raise InputError(f"a batch with keys {sorted(batch)} has the observations of no group {list(GROUPS)}")


def standardize(observations: np.ndarray, stats: ObservationStats) -> np.ndarray:
    """float32 [..., D] continuous observations -> (x - mean) / max(std, STD_FLOOR) per dimension."""
    mean = np.asarray(stats.mean, np.float32)
    scale = np.maximum(np.asarray(stats.std, np.float32), np.float32(STD_FLOOR))
    return (np.asarray(observations, np.float32) - mean) / scale


def step_arrays(fields: Mapping[str, np.ndarray | list[str]], num_steps: int, *, continuous_width: int,
                discrete_width: int, text_length: int, image_shape: tuple[int, ...] | None,
                observation_stats: ObservationStats | None = None) -> dict[str, np.ndarray]:
    """The JAT fields of ``num_steps`` steps -> the model's per-step arrays of those steps.

    Returns continuous_observations / continuous_actions float32 [T, continuous_width] (zero beyond
    the real size; the model tiles them; observations standardised with ``observation_stats`` when
    given), discrete_observations int32 [T, discrete_width],
    text_observations int32 [T, text_length], discrete_actions int32 [T], image_observations uint8
    [T, *image_shape] (when image_shape is given), each zero where the task lacks the field.
    Rewards are not here: the data and the policy fold r_{t-1} into step t themselves.
    """
    out = {
        "continuous_observations": np.zeros((num_steps, continuous_width), np.float32),
        "continuous_actions": np.zeros((num_steps, continuous_width), np.float32),
        "discrete_observations": np.zeros((num_steps, discrete_width), np.int32),
        "text_observations": np.zeros((num_steps, text_length), np.int32),
        "discrete_actions": np.zeros(num_steps, np.int32),
    }
    if image_shape is not None:
        out["image_observations"] = np.zeros((num_steps, *image_shape), np.uint8)
    for name in ("continuous_observations", "continuous_actions", "discrete_observations"):
        if name in fields:
            values = np.asarray(fields[name])
            if name == "continuous_observations" and observation_stats is not None:
                values = standardize(values, observation_stats)
            out[name][:, : values.shape[1]] = values
    if "discrete_actions" in fields:
        out["discrete_actions"][:] = np.asarray(fields["discrete_actions"])
    if "text_observations" in fields:
        cache: dict[str, np.ndarray] = {}
        for t, text in enumerate(fields["text_observations"]):
            if text not in cache:
                cache[text] = tokenize(text, text_length)
            out["text_observations"][t] = cache[text]
    if "image_observations" in fields:
        images = np.asarray(fields["image_observations"])
        if image_shape is None or images.shape[1:] != tuple(image_shape):
            raise InputError(f"image_observations of shape {images.shape[1:]} do not match model.image_shape "
                             f"{image_shape}")
        out["image_observations"][:] = images
    return out
