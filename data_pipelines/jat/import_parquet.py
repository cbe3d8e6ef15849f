"""`mgdt-jat-import`: the published JAT dataset's parquet files -> our RLDS layout (rlds.py).

The `jat-project/jat-dataset` files hold one episode a row, in the columns of fields.py:
`text_observations` list<string>, `discrete_observations` list<list<int64>>,
`continuous_observations` list<list<float32>>, `image_observations` list<struct<bytes, path>>
(Hugging Face `Image`, PNG bytes, channel last), `discrete_actions` list<int64>,
`continuous_actions` list<list<float32>>, `rewards` list<float32>; all of one episode's lists
have one entry per step. The final observation is not stored, so the imported episodes repeat the
last one in their final RLDS step (metadata.json says `final_observation: repeated`).

The expert reference is the mean return of the imported episodes (and, for continuous observations,
their per-dimension mean and std, as mgdt-jat-record stores them); no random reference can be
measured without the environment, so references.json holds none (JAT's own were measured on
other environment versions, see mgdt_jax/recipes/jat/references.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import tqdm

from data_pipelines.jat import rlds
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import check_folder, held, path_argument, removing_created_folders
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat.fields import DatasetError
from mgdt_jax.recipes.jat import references as jat_references

SOURCE = "jat-project/jat-dataset"
SCALAR_FIELDS = ("text_observations", "discrete_actions", "rewards")  # one value a step; the others a list


def _decode_image(value, where: str) -> np.ndarray:
    encoded = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(encoded, bytes):
        raise DatasetError(f"{where}: image_observations entry holds no image bytes")
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"{where}: image_observations entry is not a decodable image")
    if image.ndim == 2:
        return image[..., None]
    return image[..., [2, 1, 0, 3][:image.shape[-1]]]  # OpenCV's BGR(A) -> RGB(A)


def _holds_null(values: list) -> bool:
    return any(value is None or (isinstance(value, list) and _holds_null(value)) for value in values)


def _odd_entry(values: list) -> tuple[int, object] | None:
    """The step and value of the first entry (in nested lists) that is not a number (an int or a
    float; a bool is no number here), or None."""
    for step, value in enumerate(values):
        leaves = value if isinstance(value, list) else [value]
        for leaf in leaves:
            if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
                return step, leaf
    return None


def _numbers(values: list, name: str, where: str) -> np.ndarray:
    """A numeric column's entries as an array of the field's dtype.

    DatasetError (naming `where`, the column and the step) for entries of the wrong shape or type,
    non-finite floats (they would make the references and the observation statistics NaN), and
    integer fields holding fractions (never rounded silently) or, for discrete_actions, negatives.
    """
    field = jat_fields.FIELDS[name]
    per_step = "a number" if name in SCALAR_FIELDS else "a list of numbers"
    if not values:  # no steps: the length check names it
        return np.zeros((0,), field.dtype)
    try:
        given = np.asarray(values)
    except (ValueError, OverflowError):
        raise DatasetError(f"{where}: {name} entries differ in shape") from None
    if given.ndim != (1 if name in SCALAR_FIELDS else 2):
        raise DatasetError(f"{where}: {name} entries have shape {given.shape[1:]}, expected {per_step} a step")
    if given.dtype.kind not in "if":  # text, bytes, bools, or ints beyond int64
        odd = _odd_entry(values)
        if odd is None:
            raise DatasetError(f"{where}: {name} holds integers beyond the int64 range")
        raise DatasetError(f"{where}: {name} holds {odd[1]!r} at step {odd[0]}, not a number")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are caught just below
        array = given.astype(field.dtype)
        if field.modality == "continuous":
            bad, fault = ~np.isfinite(array), f"not a finite {np.dtype(field.dtype).name}"
        else:
            bad = (given != array) | ~np.isfinite(given) if given.dtype.kind == "f" else np.zeros(given.shape, bool)
            fault = "not an integer"
            if name == "discrete_actions" and not bad.any():
                bad, fault = array < 0, "not an action index (>= 0)"
    if bad.any():
        index = tuple(np.argwhere(bad)[0])
        raise DatasetError(f"{where}: {name} holds {given[index].item()!r} at step {index[0]}, {fault}")
    return array


def _text(values: list, where: str) -> list[str]:
    for step, value in enumerate(values):
        if not isinstance(value, str):
            raise DatasetError(f"{where}: text_observations holds {value!r} at step {step}, not text")
    return values


def _episode(row: dict, names: tuple[str, ...], where: str) -> rlds.Episode:
    columns = {}
    for name in names:
        values = row[name]
        if values is None:
            raise DatasetError(f"{where}: {name} is null")
        if not isinstance(values, list):  # e.g. a scalar column where the schema has a list
            raise DatasetError(f"{where}: {name} holds a single {type(values).__name__}, "
                               "not a list with one entry a step")
        if _holds_null(values):  # NumPy would read a null as NaN, or "None" as text
            raise DatasetError(f"{where}: {name} holds a null entry")
        if name == "text_observations":
            columns[name] = _text(values, where)
        elif name == "image_observations":
            images = [_decode_image(value, where) for value in values]
            try:
                columns[name] = np.asarray(images, np.uint8)
            except ValueError:
                raise DatasetError(f"{where}: {name} entries differ in shape") from None
        else:
            columns[name] = _numbers(values, name, where)
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) != 1 or not lengths["rewards"]:
        raise DatasetError(f"{where}: fields need one entry per step and at least one step, got lengths {lengths}")
    observations = {name: column + column[-1:] if isinstance(column, list) else np.concatenate([column, column[-1:]])
                    for name, column in columns.items() if name in jat_fields.OBSERVATION_FIELDS}
    action = next(name for name in names if name in jat_fields.ACTION_FIELDS)
    return rlds.Episode(observations, columns[action], columns["rewards"], terminated=False)


def _step_shapes(episode: rlds.Episode, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Each field's per-step shape in an episode (a TaskSpec's shapes)."""
    return {name: () if name in SCALAR_FIELDS
            else np.shape(episode.observations[name] if name in episode.observations else episode.actions)[1:]
            for name in names}


def _rows(path: Path) -> Iterator[tuple[dict, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=16):
            for row in batch.to_pylist():
                yield row, index
                index += 1
    except (OSError, pa.ArrowException) as error:  # a damaged data page: the schema read, the rows do not
        raise DatasetError(f"{path}: row {index}: unreadable ({str(error).splitlines()[0]})") from None


def _columns(path: Path) -> tuple[str, ...]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as error:
        raise DatasetError(f"{path}: not a readable parquet file ({str(error).splitlines()[0]})") from None
    return jat_fields.check_fields(names, str(path))


def episodes(files: list[Path]) -> tuple[tuple[str, ...], Iterator[rlds.Episode]]:
    """Checks every file's columns (all alike, all JAT fields) and returns them (in fields.py
    order) with an iterator over the files' episodes."""
    names = None
    for path in files:
        found = _columns(path)
        if names is not None and found != names:
            raise DatasetError(f"{path}: columns {list(found)} differ from {list(names)} of {files[0]}")
        names = found

    def stream() -> Iterator[rlds.Episode]:
        first = shapes = None
        for path in files:
            for row, index in _rows(path):
                where = f"{path} row {index}"
                episode = _episode(row, names, where)
                found = _step_shapes(episode, names)
                if shapes is None:
                    first, shapes = where, found
                    if empty := [name for name, shape in found.items() if 0 in shape]:  # unreadable once written
                        raise DatasetError(f"{where}: {empty[0]} entries of shape {found[empty[0]]} hold no values")
                for name in names:  # checked here, where the file and row are known
                    if found[name] != shapes[name]:
                        raise DatasetError(f"{where}: {name} entries have shape {found[name]}, "
                                           f"expected {shapes[name]} as in {first}")
                yield episode

    return names, stream()


def check_task_name(task: str) -> None:
    """DatasetError unless `task` is a plain folder name (the import writes OUT/<task>)."""
    if task in ("", ".", "..") or any(bad and bad in task for bad in (os.sep, os.altsep, "\0")):
        raise DatasetError(f"task name {task!r}: not a plain name (it names the folder OUT/<task>: "
                           "no path separators, not '.' or '..')")
    if task.endswith(".partial"):  # the name of an unfinished import or recording, which reruns remove
        raise DatasetError(f"task name {task!r}: ends in .partial, the mark of an unfinished dataset")


def import_files(files: list[Path], task: str, out_dir: Path, episodes_per_shard: int = 1000,
                 progress: bool = True) -> dict:
    """Imports the files into OUT/<task> (written as OUT/<task>.partial, renamed when complete).

    Raises UnknownFieldError for a column that is not a JAT field and DatasetError for other bad
    input (a task name that is no plain folder name, unreadable files, entries of the wrong shape or
    type, non-finite values, ragged episodes, an existing OUT/<task>); OUT is left as it was then.
    """
    check_task_name(task)
    files = [Path(f) for f in files]
    seen: dict[Path, Path] = {}
    for path in files:
        if (same := seen.setdefault(path.resolve(), path)) is not path:
            raise DatasetError(f"{path}: named more than once (as {same} too): its episodes would be imported twice")
    final, partial = Path(out_dir) / task, Path(out_dir) / f"{task}.partial"
    if final.exists():
        raise DatasetError(f"{final}: already exists; choose another --out or remove it")
    names, stream = episodes(files)
    first = next(stream, None)
    if first is None:
        raise DatasetError(f"{files[0]}: no episodes")
    spec = jat_fields.TaskSpec(task, _step_shapes(first, names))
    returns, moments = [], rlds.ObservationMoments()

    def chained() -> Iterator[rlds.Episode]:
        yield first
        yield from stream

    with removing_created_folders(out_dir), tqdm.tqdm(unit="episode", desc=task, disable=not progress) as bar:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        # a second import or recording of the task into OUT at once would delete this one's .partial
        with held(rlds.writing_claim(Path(out_dir), task), f"{rlds.WRITERS} of {task}"):
            if final.exists():  # written meanwhile by a command that held the folder
                raise DatasetError(f"{final}: already exists; choose another --out or remove it")
            shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier import's

            def count(episode: rlds.Episode) -> None:
                returns.append(episode.episode_return)
                moments.add(episode)
                bar.update()

            try:
                summary = rlds.write_dataset(
                    partial, spec, chained(), {"source": SOURCE, "files": [f.name for f in files],
                                               "final_observation": "repeated"},
                    episodes_per_shard, description=f"JAT task {task} imported from {SOURCE}.", on_episode=count)
                expert = jat_references.Reference(mean_return=float(np.mean(returns)), std_return=float(np.std(returns)),
                                                  episodes=len(returns))
                jat_references.save(jat_references.TaskReferences(task=task, env_id="", expert=expert, random=None,
                                                                  versions={}, observation_stats=moments.stats()), partial)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            partial.rename(final)
    return summary


@interruptible("mgdt-jat-import")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-jat-import", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=path_argument, help="parquet files of one task (one episode a row)")
    parser.add_argument("--out", type=path_argument, required=True, help="writes OUT/<task>/")
    parser.add_argument("--task", default=None,
                        help="task name (default: the folder of the first file, as in the dataset's layout)")
    args = parser.parse_args(argv)
    task = args.task if args.task is not None else args.files[0].resolve().parent.name
    started = time.perf_counter()
    try:
        check_folder(args.out, "--out")
        summary = import_files(args.files, task, args.out)
    except (jat_fields.UnknownFieldError, DatasetError, OSError) as error:
        print(f"mgdt-jat-import: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    print(f"imported {summary['episodes']} episodes ({summary['steps']:,} steps, {summary['shards']} shards) of "
          f"{task} in {time.perf_counter() - started:.1f}s into {args.out / task}; "
          f"mean return {summary['mean_return']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
