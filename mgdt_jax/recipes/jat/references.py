"""Expert and random references of a JAT task, and the expert-normalised score.

JAT scores a task as (score - random) / (expert - random), where "expert" is the mean return of the
dataset's episodes and "random" that of a uniform-random policy (`jat/utils.py`; JAT's paper, §4).
JAT's own references were measured on gymnasium 0.29, Meta-World v2 and MuJoCo v4 and do not apply
to the environments we record, so every dataset we write carries references measured with its
episodes, together with the versions of the packages that defined the environment. Evaluating on
other versions would compare returns of different environments; `check_versions` refuses that.

A task with continuous observations also stores the mean and standard deviation of each observation
dimension over its expert steps (`ObservationStats`), which a model trained with
``model.normalize_observations`` uses to standardise that task's observations in training and in
evaluation alike (docs/jat.md §6). Datasets written before these statistics existed have none.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import metadata
from pathlib import Path

REFERENCES_FILE = "references.json"


class ReferenceError(ValueError):
    """Missing, unreadable or mismatched references; the message names the task and the fault."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """Returns of one policy on a task: mean and standard deviation over `episodes` episodes, and
    the fraction of them that succeeded where the environment reports success (else None)."""

    mean_return: float
    std_return: float
    episodes: int
    success_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class ObservationStats:
    """Per-dimension mean and (population) standard deviation of a task's continuous observations
    over the `steps` expert steps of its dataset (the T rows per episode a model trains on, the final
    observation left out). The std is stored as measured; users floor it (tokens.STD_FLOOR)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    steps: int

    @classmethod
    def from_json(cls, content: dict) -> ObservationStats:
        stats = cls(mean=tuple(float(v) for v in content["mean"]), std=tuple(float(v) for v in content["std"]),
                    steps=int(content["steps"]))
        if len(stats.mean) != len(stats.std) or min(stats.std, default=0.0) < 0:
            raise ValueError(f"observation_stats: mean of {len(stats.mean)} and std of {len(stats.std)} "
                             f"dimensions, or a negative std")
        if not all(math.isfinite(v) for v in stats.mean + stats.std):  # would standardise every observation to NaN
            raise ValueError("observation_stats: a mean or std that is not a finite number")
        return stats


@dataclasses.dataclass(frozen=True)
class TaskReferences:
    """A task's references and what they were measured on.

    `versions` maps each package that defines the environment (e.g. gymnasium, minigrid, mujoco,
    metaworld) to the version installed when the references were measured. `random` is None for
    datasets imported without an environment to measure one in. `observation_stats` is None for
    tasks without continuous observations and for datasets recorded before it existed.
    """

    task: str
    env_id: str
    expert: Reference
    random: Reference | None
    versions: dict[str, str]
    observation_stats: ObservationStats | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, content: dict) -> TaskReferences:
        random, stats = content.get("random"), content.get("observation_stats")
        return cls(task=content["task"], env_id=content["env_id"], expert=Reference(**content["expert"]),
                   random=None if random is None else Reference(**random), versions=dict(content["versions"]),
                   observation_stats=None if stats is None else ObservationStats.from_json(stats))


def load(dataset_dir: Path, task: str | None = None) -> TaskReferences:
    """The references stored with a dataset; ReferenceError if they are missing or unreadable, or
    (``task`` given) of another task: a dataset copied under another task's name would score that
    task against these references and observation statistics."""
    path = Path(dataset_dir) / REFERENCES_FILE
    try:
        loaded = TaskReferences.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        if not Path(dataset_dir).is_dir():  # a task or --data misspelt, more often than a damaged dataset
            raise ReferenceError(f"{dataset_dir}: no such dataset (no folder of that name)") from None
        raise ReferenceError(f"{path}: no references stored with this dataset") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReferenceError(f"{path}: unreadable references ({error})") from None
    if task is not None and loaded.task != task:
        raise ReferenceError(f"{path}: the references of task {loaded.task!r}, not {task!r} (a dataset copied or "
                             "renamed under another task's name?)")
    return loaded


def save(references: TaskReferences, dataset_dir: Path) -> None:
    (Path(dataset_dir) / REFERENCES_FILE).write_text(json.dumps(references.to_json(), indent=1) + "\n")


def installed_versions(packages: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Package -> installed version ("not installed" when absent)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def check_versions(references: TaskReferences, installed: dict[str, str] | None = None) -> None:
    """Raises ReferenceError, one line naming the task and every package whose installed version
    differs from the one the references were measured with. `installed` defaults to this
    environment's versions of the packages in `references.versions`."""
    installed = installed_versions(tuple(references.versions)) if installed is None else installed
    differ = [f"{package} {measured} (installed: {installed.get(package, 'not installed')})"
              for package, measured in sorted(references.versions.items())
              if installed.get(package, "not installed") != measured]
    if differ:
        raise ReferenceError(f"{references.task}: references were measured with {', '.join(differ)}; "
                             f"evaluate with those versions or re-record the task")


def observation_stats(references: TaskReferences, size: int, where: str) -> ObservationStats:
    """The task's observation statistics for a model that standardises observations; ReferenceError
    (one line, naming `where`: the dataset or task) if they are missing, as in datasets recorded
    before they were stored, or do not have `size` dimensions."""
    stats = references.observation_stats
    if stats is None:
        raise ReferenceError(f"{where}: references.json has no observation statistics, which "
                             f"model.normalize_observations needs; re-record or re-import the task")
    if len(stats.mean) != size:
        raise ReferenceError(f"{where}: observation statistics of {len(stats.mean)} dimensions for "
                             f"observations of {size}")
    return stats


def normalized_score(score: float, references: TaskReferences) -> float:
    """(score - random) / (expert - random): 0 for the random policy, 1 for the dataset's expert.

    JAT (`jat/utils.py`) divides by |expert - random| and returns 1.0 when expert <= random; here
    such references raise ReferenceError instead, since they cannot tell a policy from chance.
    """
    if references.random is None:
        raise ReferenceError(f"{references.task}: no random reference stored; the score cannot be normalised")
    expert, random = references.expert.mean_return, references.random.mean_return
    if not (math.isfinite(expert) and math.isfinite(random)) or expert <= random:
        raise ReferenceError(f"{references.task}: expert return {expert} does not exceed random return {random}")
    return (score - random) / (expert - random)
