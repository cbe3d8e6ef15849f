"""JAT training batches from the recorded RLDS datasets (data_pipelines/jat), addressable by step.

**What a batch is.** Global batch ``k`` is drawn from ``numpy.random.default_rng([data.seed, k])``:
first one group (tokens.py: "discrete", "continuous", "image") with probability proportional to the
summed sampling weights of its tasks, then each row's task within that group by its sampling
weight, then each row's start step uniformly over the task's steps. So a batch is
modality-homogeneous (as JAT, whose ``interleave_datasets(n_contiguous=per_device_batch)`` makes
every device batch one task), while tasks of one group still mix within a batch. A batch carries
only its group's keys (tokens.batch_keys), so the train step compiles one program per group, each
with only that group's encoder and loss. This host gathers only its rows.

**Packing, not padding.** With ``data.packing`` (the default) a row is ``model.num_steps``
consecutive steps of the task's episodes laid end to end: an episode that ends inside a row is
followed by the next one, which starts a new ``segment`` (attention stays inside it) at position
0. Every step of a row is real. Without packing a row holds one episode's steps from its start step
to the episode's end or the row's, the rest padding (``segment`` -1) — what the naive scheme costs
on short episodes (BabyAI: ~10-60 steps) is measured by benchmarks/jat_packing.py.

Each row carries r_{t-1} at step t (0 at an episode's first step), as JAT's tokenize_stream.py.
With ``model.normalize_observations`` a continuous task's observations (inputs and next-observation
targets alike) are standardised with the statistics in its references.json (tokens.py); rewards
stay raw.

The datasets are read once, at construction, into host memory (``tfds`` data sources, so TFDS is
imported here and never by the model).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgdt_jax.core import files
from mgdt_jax.core.config_sections import read_section, section
from mgdt_jax.recipes.jat import references, tokens
from mgdt_jax.recipes.jat.fields import episode_fields, read_spec
from mgdt_jax.recipes.jat.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data`` config section of the JAT recipe.

    ``tasks``: one mapping per task, ``{"path": dataset directory (mgdt-jat-record's OUT/<task>),
    "sampling_weight": 1.0, "loss_weight": 1.0}`` (weights optional; JAT weights the MuJoCo loss
    x10 and Meta-World's x50, tokenize_stream.py L64-69).
    """

    tasks: tuple[Any, ...] = ()
    seed: int = 0
    packing: bool = True
    prefetch: int = 2  # batches built ahead by a background thread


@dataclasses.dataclass
class TaskData:
    """One task's steps, laid end to end over its episodes: the per-step arrays of its group's batch
    keys (tokens.step_arrays, tokens.batch_keys), T rows."""

    name: str
    path: str
    group: str
    sampling_weight: float
    loss_weight: float
    steps: dict[str, np.ndarray]
    episode_start: np.ndarray  # bool [T]: the step is its episode's first
    previous_reward: np.ndarray  # float32 [T]: r_{t-1} within the episode, 0 at its first step
    continuous_observation_size: int
    continuous_action_size: int
    num_discrete_actions: int
    num_episodes: int

    @property
    def num_steps(self) -> int:
        return len(self.episode_start)


def _task_entry(entry: Any, index: int) -> tuple[Path, float, float]:
    path = entry if isinstance(entry, (str, Path)) else section(entry, "path", None)
    if path is None:
        raise ValueError(f"data.tasks[{index}]: no 'path' (a JAT dataset directory)")
    if not str(path).strip():  # Path("") is the current folder
        raise ValueError(f"data.tasks[{index}]: an empty dataset path (an unset shell variable?)")
    if isinstance(entry, (str, Path)):
        return Path(entry), 1.0, 1.0
    sampling, loss = float(section(entry, "sampling_weight", 1.0)), float(section(entry, "loss_weight", 1.0))
    if not (sampling > 0 and loss >= 0):
        raise ValueError(f"data.tasks[{index}] {path}: sampling_weight must be > 0 and loss_weight >= 0")
    return Path(path), sampling, loss


def load_task(path: Path, model: ModelConfig, *, sampling_weight: float = 1.0, loss_weight: float = 1.0) -> TaskData:
    """Reads a recorded JAT dataset into host memory; ValueError (one line, naming ``path``) if the
    model cannot read it (unknown field, vector wider than the tiling width, group not built, no
    observation statistics for a model that standardises observations ...)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415  (data only: the model never imports TFDS)

    spec = read_spec(path)  # DatasetError (a ValueError) for unknown fields or a missing dataset
    try:
        group = tokens.task_group(spec.task, spec.shapes)
        tokens.check_widths(spec.task, spec.shapes, continuous_width=model.continuous_width,
                            discrete_width=model.discrete_width)
    except tokens.InputError as error:
        raise ValueError(f"{path}: {error}") from None
    if group not in model.groups:
        raise ValueError(f"{path}: task {spec.task} is a {group} task but model.groups is {list(model.groups)}")
    if "image_observations" in spec.shapes and tuple(spec.shapes["image_observations"]) != model.image_shape:
        raise ValueError(f"{path}: images of shape {tuple(spec.shapes['image_observations'])}, model.image_shape "
                         f"is {model.image_shape}")
    observation_size = int(spec.shapes.get("continuous_observations", (0,))[0])
    stats = None
    if model.normalize_observations and group == "continuous":
        stats = references.observation_stats(references.load(path), observation_size, str(path))
    try:
        source = tfds.builder_from_directory(str(path)).as_data_source("train")
    except Exception as error:  # noqa: BLE001  (TFDS raises many types for an unreadable directory)
        raise ValueError(f"{path}: cannot open the dataset ({type(error).__name__}: {error})") from None
    parts: list[dict[str, np.ndarray]] = []
    starts, previous = [], []
    for index in range(len(source)):
        try:
            episode = source[index]
        except Exception as error:  # noqa: BLE001  (array_record's RuntimeError; a record cut short fails TFDS's decoding with any type)
            split = source.dataset_info.splits["train"]
            raise ValueError(files.unreadable_episodes(path, split.filepaths, split.shard_lengths, index, index,
                                                       error)) from None
        fields = episode_fields(episode)
        length = len(fields["rewards"])
        if length == 0:
            continue
        parts.append(tokens.step_arrays(fields, length, continuous_width=model.continuous_width,
                                        discrete_width=model.discrete_width, text_length=model.text_length,
                                        image_shape=model.image_shape if group == "image" else None,
                                        observation_stats=stats))
        starts.append(np.arange(length) == 0)
        previous.append(np.concatenate([[0.0], fields["rewards"][:-1]]).astype(np.float32))
    if not parts:
        raise ValueError(f"{path}: no episodes with steps")
    steps = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]
             if name in tokens.batch_keys(group)}
    if group in ("discrete", "image"):
        symbols = steps.get("discrete_observations", np.zeros(0, np.int32))  # image tasks carry none
        if symbols.min(initial=0) < 0 or symbols.max(initial=0) >= model.max_discrete_value:
            raise ValueError(f"{path}: discrete_observations outside [0, model.max_discrete_value="
                             f"{model.max_discrete_value})")
        num_actions = int(steps["discrete_actions"].max()) + 1
        if steps["discrete_actions"].min() < 0 or num_actions > model.num_discrete_actions:
            raise ValueError(f"{path}: discrete_actions outside [0, model.num_discrete_actions="
                             f"{model.num_discrete_actions})")
    else:
        num_actions = 0
    return TaskData(
        name=spec.task, path=str(path), group=group, sampling_weight=sampling_weight, loss_weight=loss_weight,
        steps=steps, episode_start=np.concatenate(starts), previous_reward=np.concatenate(previous),
        continuous_observation_size=observation_size,
        continuous_action_size=int(spec.shapes.get("continuous_actions", (0,))[0]),
        num_discrete_actions=num_actions, num_episodes=len(parts))


def row_steps(task: TaskData, start: int, num_steps: int, packing: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step indices [S], segment [S], position [S]) of a row starting at step ``start`` of the task.

    Packing: consecutive steps, wrapping from the last to the first episode; a new segment begins at
    each episode's first step. Without packing: the steps to the episode's end, then padding
    (index 0, segment -1, position 0).
    """
    index = (start + np.arange(num_steps)) % task.num_steps
    begins = task.episode_start[index].copy()
    begins[0] = True
    segment = np.cumsum(begins) - 1
    first = np.maximum.accumulate(np.where(begins, np.arange(num_steps), 0))
    position = np.arange(num_steps) - first
    if not packing:
        padding = segment > 0
        index, segment, position = np.where(padding, 0, index), np.where(padding, -1, segment), np.where(padding, 0, position)
    return index, segment.astype(np.int32), position.astype(np.int32)


ROW_FIELDS = {"loss_weight": np.float32, "continuous_observation_size": np.int32,
              "continuous_action_size": np.int32, "num_discrete_actions": np.int32}  # one value per row


def empty_batch(model: ModelConfig, rows: int, group: str) -> dict[str, np.ndarray]:
    """Zeros of every key of a ``group`` training batch of ``rows`` rows (tokens.batch_keys), as
    `JatBatches` fills them: the per-step fields of ``tokens.step_arrays`` [rows, num_steps, ...];
    ``segment`` and ``position`` int32 and ``rewards`` (r_{t-1}) float32 [rows, num_steps];
    `ROW_FIELDS` [rows].

    The arrays a benchmark fills with synthetic rows of the real shapes and dtypes.
    """
    keys = tokens.batch_keys(group)
    per_step = tokens.step_arrays({}, 1, continuous_width=model.continuous_width, discrete_width=model.discrete_width,
                                  text_length=model.text_length, image_shape=model.image_shape if group == "image" else None)
    out = {name: np.zeros((rows, model.num_steps, *array.shape[1:]), array.dtype) for name, array in per_step.items()
           if name in keys}
    out.update(segment=np.zeros((rows, model.num_steps), np.int32), position=np.zeros((rows, model.num_steps), np.int32),
               rewards=np.zeros((rows, model.num_steps), np.float32))
    out.update({name: np.zeros(rows, dtype) for name, dtype in ROW_FIELDS.items() if name in keys})
    return out


class JatBatches:
    """The JAT training stream: global batch ``k`` a function of (data.seed, k); this host's rows."""

    def __init__(self, tasks: Sequence[TaskData], model: ModelConfig, data: DataConfig, *, global_batch_size: int,
                 process_index: int, process_count: int):
        if global_batch_size % process_count:
            raise ValueError(f"train.batch_size {global_batch_size} does not split over {process_count} hosts")
        self.tasks, self.model, self.data = list(tasks), model, data
        self.global_batch_size = global_batch_size
        local = global_batch_size // process_count
        self._rows = range(process_index * local, (process_index + 1) * local)
        self._groups = [group for group in model.groups if any(task.group == group for task in self.tasks)]
        group_weight = np.array([sum(t.sampling_weight for t in self.tasks if t.group == g) for g in self._groups])
        self._group_probability = group_weight / group_weight.sum()
        self._members = {g: [i for i, t in enumerate(self.tasks) if t.group == g] for g in self._groups}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.data.seed, step])
        group = self._groups[rng.choice(len(self._groups), p=self._group_probability)]
        members = self._members[group]
        weights = np.array([self.tasks[i].sampling_weight for i in members])
        row_tasks = np.asarray(members)[rng.choice(len(members), size=self.global_batch_size, p=weights / weights.sum())]
        unit = rng.random(self.global_batch_size)  # start = floor(unit * task steps): one draw per row
        out = empty_batch(self.model, len(self._rows), group)
        row_fields = ROW_FIELDS.keys() & out.keys()
        for row, global_row in enumerate(self._rows):
            task = self.tasks[row_tasks[global_row]]
            start = int(unit[global_row] * task.num_steps)
            index, segment, position = row_steps(task, start, self.model.num_steps, self.data.packing)
            for name, array in task.steps.items():
                out[name][row] = array[index]
            out["segment"][row], out["position"][row] = segment, position
            out["rewards"][row] = np.where(segment >= 0, task.previous_reward[index], 0.0)
            for name in row_fields:
                out[name][row] = getattr(task, name)
        return out

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        return _Prefetch(self, start_step, self.data.prefetch)

    def describe(self) -> str:
        tasks = ", ".join(f"{t.name} ({t.group}, {t.num_episodes} episodes, {t.num_steps} steps)" for t in self.tasks)
        return f"{len(self.tasks)} tasks: {tasks}; {'packed' if self.data.packing else 'padded'} rows of {self.model.num_steps} steps"

    def identity(self) -> dict[str, Any]:
        return {"seed": self.data.seed, "global_batch_size": self.global_batch_size, "packing": self.data.packing,
                "num_steps": self.model.num_steps,
                # tasks by name and content, not path: a folder spelt otherwise is the same stream
                "task_content": [[t.name, t.num_episodes, t.num_steps, t.sampling_weight, t.loss_weight] for t in self.tasks]}


class _Prefetch:
    """Batches start, start + 1, ... built by one background thread, ``depth`` ahead."""

    def __init__(self, data: JatBatches, start: int, depth: int):
        import queue  # noqa: PLC0415

        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()

        def produce() -> None:
            step = start
            while not self._stop.is_set():
                try:
                    item = data.batch(step)
                except Exception as error:  # noqa: BLE001  (re-raised in the consumer)
                    item = error
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if isinstance(item, Exception):
                    return
                step += 1

        self._thread = threading.Thread(target=produce, daemon=True)
        self._thread.start()

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def training_data(config: Any, *, process_index: int, process_count: int) -> JatBatches:
    """The stream ``config`` describes (sections ``model``, ``data``, ``train``); ValueError on bad input."""
    model = ModelConfig.from_config(section(config, "model", {}))
    data = read_section(DataConfig, section(config, "data", {}))
    if not data.tasks:
        raise ValueError("data.tasks is empty: give the JAT dataset directories to train on")
    entries = [_task_entry(entry, i) for i, entry in enumerate(data.tasks)]  # every entry checked before reading
    files.check_each_folder_once([path for path, _, _ in entries], "config.data.tasks")
    tasks = [load_task(path, model, sampling_weight=sampling, loss_weight=loss) for path, sampling, loss in entries]
    batch_size = int(section(section(config, "train", {}), "batch_size", 32))
    return JatBatches(tasks, model, data, global_batch_size=batch_size, process_index=process_index,
                      process_count=process_count)

