"""`mgdt-convert --from-tfds`: a TFDS dataset stored as TFRecord -> the same dataset as array_record.

Training reads episodes by index, which TFDS offers only for array_record (and parquet) files, but
TFDS prepares datasets such as `rlu_atari` as TFRecord by default. TFDS's own `tfds convert_format`
does not run from this install (the `tfds` command imports mlcroissant, which nothing here needs),
and its Python API (tensorflow-datasets 4.9.10) writes the shards into another directory but then
fails looking for them under the input directory. So this copies the records itself, shard by
shard: TFRecord is read with TensorFlow (imported only here), records are written unchanged with
array_record, and the metadata is copied with the file format changed.

A shard is written under a temporary name and renamed when it holds the number of records its
`dataset_info.json` gives; the new `dataset_info.json` is written last, so until then the output
is not a loadable dataset, and a rerun keeps the shards already complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tensorflow_datasets.core import dataset_info, file_adapters

from data_pipelines.rlds_writer import ShardFile
from mgdt_jax.core import files
from mgdt_jax.recipes.mgdt.rlds_source import shard_num_records

DATASET_INFO = "dataset_info.json"
_TFRECORD = file_adapters.FileFormat.TFRECORD
_ARRAY_RECORD = file_adapters.FileFormat.ARRAY_RECORD


class TfdsFormatError(ValueError):
    """A dataset that cannot be converted; the message names the path and the fault."""


@dataclasses.dataclass(frozen=True)
class Converted:
    source: Path
    out: Path
    shards: int
    records: int


def find_version_dirs(source: Path) -> list[Path]:
    """`source` if it holds dataset_info.json, else every directory below it that does (a TFDS
    data dir such as ~/tensorflow_datasets/rlu_atari), sorted."""
    source = Path(source)
    if not source.is_dir():
        raise TfdsFormatError(f"{source}: no such directory")
    if (source / DATASET_INFO).is_file():
        return [source]
    found = sorted(info.parent for info in source.rglob(DATASET_INFO)
                   if not any(part.endswith(".partial") for part in info.relative_to(source).parts))
    if not found:
        raise TfdsFormatError(f"{source}: holds no TFDS dataset (no {DATASET_INFO} in it or below it)")
    return found


def convert_to_array_record(source: Path, out: Path,
                            on_converted: Callable[[Converted], None] = lambda converted: None) -> list[Converted]:
    """Every TFRecord dataset in or below `source` -> the same relative path under `out`, calling
    `on_converted` on each as it is done (so what follows a conversion is not left undone for the
    earlier datasets when a later one fails).

    Raises TfdsFormatError for a dataset that is not TFRecord (array_record already, or another
    format), unreadable metadata or shards, a shard with another number of records than its
    metadata says, or an output directory that already holds another dataset or lies inside one. A dataset already
    converted there by an earlier, interrupted run is kept as it is (and passed to ``on_converted``).
    """
    source, out = Path(source), Path(out)
    plan = [(version_dir, out / version_dir.relative_to(source)) for version_dir in find_version_dirs(source)]
    infos = [_read_info(version_dir) for version_dir, _ in plan]  # every input is checked before writing
    targets = {out_dir for _, out_dir in plan}
    for folder in (out, *out.parents):  # readers stop at the first dataset_info.json: one below it is never found
        if folder not in targets and (folder / DATASET_INFO).is_file():
            raise TfdsFormatError(f"{folder}: holds a dataset ({DATASET_INFO}), and datasets written below it would "
                                  "not be found; choose another --out")
    done = []
    for info, (version_dir, out_dir) in zip(infos, plan):
        existing = out_dir / DATASET_INFO
        if existing.exists() and existing.read_text() != _converted_info_json(info):
            raise TfdsFormatError(f"{out_dir}: already holds another dataset; choose another --out")
        done.append(existing.exists())
    converted = []
    for info, (version_dir, out_dir), already in zip(infos, plan, done):
        converted.append(_count(info, version_dir, out_dir) if already else _convert_version_dir(info, version_dir, out_dir))
        on_converted(converted[-1])
    return converted


def _read_info(version_dir: Path):
    try:
        info = dataset_info.read_proto_from_builder_dir(version_dir)
    except Exception as error:  # TFDS raises its own file and JSON errors; all mean the same here
        raise TfdsFormatError(f"{version_dir / DATASET_INFO}: unreadable ({str(error).splitlines()[0]})") from None
    stored = info.file_format or _TFRECORD.value  # TFDS leaves it empty for its default, TFRecord
    if stored == _ARRAY_RECORD.value or _ARRAY_RECORD.value in info.alternative_file_formats:
        raise TfdsFormatError(f"{version_dir}: already stored as array_record; train on it as it is")
    if stored != _TFRECORD.value:
        raise TfdsFormatError(f"{version_dir}: stored as {stored}; only tfrecord datasets are converted")
    return info


def _converted_info_json(info) -> str:
    """The dataset_info.json the conversion of ``info`` writes: the same, stored as array_record."""
    converted = type(info)()
    converted.CopyFrom(info)
    converted.file_format = _ARRAY_RECORD.value
    del converted.alternative_file_formats[:]
    return dataset_info.get_dataset_info_json(converted)


def _splits(info, version_dir: Path):
    return dataset_info.get_split_dict_from_proto(info, data_dir=version_dir, file_format=_TFRECORD).values()


def _count(info, version_dir: Path, out_dir: Path) -> Converted:
    """A dataset converted before: its shards and records, from the metadata."""
    lengths = [length for split in _splits(info, version_dir) for length in split.shard_lengths]
    return Converted(version_dir, out_dir, len(lengths), sum(lengths))


def _convert_version_dir(info, version_dir: Path, out_dir: Path) -> Converted:
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = records = 0
    source_files = set()
    for split in _splits(info, version_dir):
        num_shards = len(split.shard_lengths)
        out_template = split.filename_template.replace(data_dir=out_dir, filetype_suffix=_ARRAY_RECORD.file_suffix)
        for index, expected in enumerate(split.shard_lengths):
            in_path = Path(split.filename_template.sharded_filepath(shard_index=index, num_shards=num_shards))
            out_path = Path(out_template.sharded_filepath(shard_index=index, num_shards=num_shards))
            source_files.add(in_path.name)
            if not (out_path.exists() and shard_num_records(out_path) == expected):
                _copy_shard(in_path, out_path, expected)
            shards += 1
            records += expected
    for path in version_dir.iterdir():  # features.json, label files, ...
        if path.is_file() and path.name != DATASET_INFO and path.name not in source_files:
            shutil.copy2(path, out_dir / path.name)
    files.write_text(out_dir / DATASET_INFO, _converted_info_json(info))
    return Converted(version_dir, out_dir, shards, records)


def _copy_shard(in_path: Path, out_path: Path, expected: int) -> None:
    if not in_path.is_file():
        raise TfdsFormatError(f"{in_path}: missing (listed in {DATASET_INFO})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is not ours to print
    try:
        import tensorflow as tf
    except ImportError:
        raise TfdsFormatError(f"{in_path}: reading TFRecord needs TensorFlow (pip install mgdt_jax[data])") from None
    partial = out_path.with_name(out_path.name + ".partial")
    writer = ShardFile(partial, name=out_path)  # a full disk: OSError naming the shard
    count = 0
    try:  # whatever stops the copy (a damaged file, a wrong count, an interrupt) leaves no partial shard
        try:
            for record in tf.data.TFRecordDataset(str(in_path)).as_numpy_iterator():
                writer.write(record)
                count += 1
        except tf.errors.OpError as error:
            raise TfdsFormatError(f"{in_path}: unreadable ({error.message.splitlines()[0]})") from None
        finally:
            writer.close()
        if count != expected:
            raise TfdsFormatError(f"{in_path}: holds {count} records, {DATASET_INFO} says {expected}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out_path)
