"""The JAT dataset's fields: which modality each is, its dtype and its per-step shape.

Source: the `jat-project/jat-dataset` card and `huggingface/jat` GUIDELINES.md (one row is one
episode; these seven columns are the only ones RL tasks use). A task stores only the fields it has,
e.g. BabyAI: discrete_observations, text_observations, discrete_actions, rewards.

In our RLDS datasets the observation fields live under `steps/observation/<field>`, the action
field under `steps/action/<field>` and `rewards` is RLDS's `steps/reward`; a dataset's
metadata.json holds its TaskSpec. data_pipelines/jat/rlds.py writes them; `read_spec` and
`episode_fields` read them back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

METADATA_FILE = "metadata.json"  # in a dataset directory: how it was made, with its TaskSpec


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


class DatasetError(ValueError):
    """Input or output that stops writing or reading a JAT dataset; the message names the fault."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task's fields and their per-step shapes, e.g. {"continuous_observations": (39,),
    "continuous_actions": (4,), "rewards": ()}; text_observations and discrete_actions are ()."""

    task: str
    shapes: dict[str, tuple[int, ...]]

    def __post_init__(self):
        check_fields(tuple(self.shapes), self.task)

    @property
    def action_field(self) -> str:
        return next(name for name in self.shapes if name in ACTION_FIELDS)

    @property
    def observation_fields(self) -> tuple[str, ...]:
        return tuple(name for name in OBSERVATION_FIELDS if name in self.shapes)

    def to_json(self) -> dict:
        return {"task": self.task, "shapes": {name: list(shape) for name, shape in self.shapes.items()}}

    @classmethod
    def from_json(cls, content: dict) -> TaskSpec:
        return cls(content["task"], {name: tuple(shape) for name, shape in content["shapes"].items()})


def read_spec(dataset_dir: Path) -> TaskSpec:
    """The task spec stored in a dataset's metadata.json; DatasetError (one line) naming the folder or
    file and the fault."""
    path = Path(dataset_dir) / METADATA_FILE
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        if not Path(dataset_dir).is_dir():  # a misspelt task or data folder, more often than a damaged dataset
            raise DatasetError(f"{dataset_dir}: no such dataset directory") from None
        raise DatasetError(f"{path}: missing: not a JAT dataset (mgdt-jat-record and mgdt-jat-import write it)") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a JAT dataset's metadata ({error})") from None
    if not isinstance(content, dict) or "spec" not in content:  # another writer's (an AD or MGDT dataset)
        raise DatasetError(f"{path}: not a JAT dataset's metadata (no 'spec' field: not written by mgdt-jat-record "
                           "or mgdt-jat-import)")
    try:
        return TaskSpec.from_json(content["spec"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DatasetError(f"{path}: a damaged task spec ({type(error).__name__}: {error})") from None


def episode_fields(episode: dict) -> dict[str, np.ndarray | list[str]]:
    """A read episode (a data source record) -> JAT field -> the T rows of its steps that carry an
    action (the final observation left out, as in the JAT dataset): images uint8 [T, H, W, C],
    vectors [T, D], discrete actions [T], rewards float32 [T], text a list of T str."""
    steps = episode["steps"]
    num_steps = len(steps) - 1
    rows = [steps[t] for t in range(num_steps)]
    out = {}
    for name in rows[0]["observation"] if rows else ():
        values = [row["observation"][name] for row in rows]
        out[name] = [v.decode() for v in values] if isinstance(values[0], bytes) else np.stack(values)
    for name in rows[0]["action"] if rows else ():
        out[name] = np.stack([row["action"][name] for row in rows])
    out["rewards"] = np.asarray([row["reward"] for row in rows], np.float32)
    return out
