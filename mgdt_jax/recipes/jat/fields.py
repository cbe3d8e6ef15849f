"""The JAT dataset's fields: which modality each is, its dtype and its per-step shape.

Source: the `jat-project/jat-dataset` card and `huggingface/jat` GUIDELINES.md (one row is one
episode; these seven columns are the only ones RL tasks use). A task stores only the fields it has,
e.g. BabyAI: discrete_observations, text_observations, discrete_actions, rewards.

In our RLDS datasets the observation fields live under `steps/observation/<field>`, the action
field under `steps/action/<field>` and `rewards` is RLDS's `steps/reward`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
    """One JAT column. `role` is "observation", "action" or "reward"; `modality` names the encoder
    that reads it ("image", "continuous", "discrete" or "text")."""

    name: str
    role: str
    modality: str
    dtype: type


FIELDS: dict[str, Field] = {field.name: field for field in (
    Field("image_observations", "observation", "image", np.uint8),  # [H, W, C], channel last
    Field("continuous_observations", "observation", "continuous", np.float32),  # [D]
    Field("discrete_observations", "observation", "discrete", np.int64),  # [D]
    Field("text_observations", "observation", "text", str),  # one string
    Field("continuous_actions", "action", "continuous", np.float32),  # [A]
    Field("discrete_actions", "action", "discrete", np.int64),  # scalar
    Field("rewards", "reward", "continuous", np.float32),  # scalar
)}

OBSERVATION_FIELDS = tuple(name for name, field in FIELDS.items() if field.role == "observation")
ACTION_FIELDS = tuple(name for name, field in FIELDS.items() if field.role == "action")


class UnknownFieldError(ValueError):
    """A dataset column that is not one of the JAT fields."""


def check_fields(names: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    """The names in FIELDS order, or UnknownFieldError naming `where` and the first unknown name.

    A task needs at least one observation field, exactly one action field and `rewards`.
    """
    for name in names:
        if name not in FIELDS:
            raise UnknownFieldError(f"{where}: {name!r} is not a JAT field of a known modality "
                                    f"(known: {', '.join(FIELDS)})")
    actions = [name for name in names if name in ACTION_FIELDS]
    if len(actions) != 1 or "rewards" not in names or not any(name in OBSERVATION_FIELDS for name in names):
        raise UnknownFieldError(f"{where}: fields {sorted(names)} need one or more observation fields, "
                                f"exactly one action field and rewards")
    return tuple(name for name in FIELDS if name in names)
