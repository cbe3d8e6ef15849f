"""Writing TFDS/RLDS datasets as array_record shards, generic over the feature spec.

What every dataset writer here shares (mgdt-convert's Atari episodes, mgdt-ad-histories' learning
histories, JAT's tasks): records holding the Example `FeaturesDict.serialize_example` would, but
with the step fields passed as the stacked arrays they already are, and serialized in one order
(byte for byte the same in every process: a rerun's shards have the same digests); shards written under a temporary name and
renamed when complete; and `dataset_info.json`, which makes a directory loadable with
`tfds.builder_from_directory`, written last. None of it needs TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from tensorflow_datasets.core import dataset_info, naming, splits, utils
from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

from mgdt_jax.core import files

FILE_FORMAT = "array_record"
STEPS = "steps"


def file_template(out_dir: Path, dataset_name: str, split: str) -> naming.ShardedFileTemplate:
    return naming.ShardedFileTemplate(data_dir=out_dir, dataset_name=dataset_name, split=split,
                                      filetype_suffix=FILE_FORMAT)


def shard_path(out_dir: Path, dataset_name: str, split: str, index: int, num_shards: int) -> Path:
    """Path of shard `index` of `num_shards` (TFDS naming: <name>-<split>.array_record-0000i-of-0000n)."""
    template = file_template(out_dir, dataset_name, split)
    return Path(template.sharded_filepath(shard_index=index, num_shards=num_shards))


@contextlib.contextmanager
def shard_writer(path: Path) -> Iterator[Callable[[bytes], None]]:
    """Yields `write(record)`; the shard appears at `path` only when the block ends normally, and
    an exception leaves nothing behind. OSError naming `path` when it cannot be written."""
    partial = path.with_name(path.name + ".partial")
    writer = ShardFile(partial, name=path)
    try:
        yield writer.write
    except BaseException:
        with contextlib.suppress(OSError):  # the write failed (a full disk): its own error is the one to tell
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    try:
        writer.close()
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


class ShardFile:
    """An array_record file being written, one record per chunk (``group_size:1``, RLDS's episodes
    read by index). array_record's bare RuntimeError of a failed write or close (``write() failed:
    No space left on device``, a traceback before) is an OSError naming the shard (``name``)."""

    def __init__(self, path: Path, *, name: Path | None = None):
        self._name = name or path
        self._writer = ArrayRecordWriter(str(path), "group_size:1")

    def write(self, record: bytes) -> None:
        try:
            self._writer.write(record)
        except RuntimeError as error:
            raise self._fault(error) from None

    def close(self) -> None:
        try:
            self._writer.close()
        except RuntimeError as error:
            raise self._fault(error) from None

    def _fault(self, error: RuntimeError) -> OSError:
        return OSError(f"{self._name}: cannot be written ({files.first_line(error).split(';')[0]})")


class RecordSerializer:
    """example -> the Example `features.serialize_example(example)` gives, faster, as bytes that do
    not depend on the process.

    The `steps` fields must already be stacked arrays (encoded bytes for images), one value per
    step; the episode-level fields go through the features' own encoding. TFDS's serializer walks
    every step of a sequence feature in Python to support ragged nesting, which these datasets
    never use (a step field is a scalar or an image); here each field becomes its proto list in one
    call, with TFDS's conversions: bool and integers to int64_list, floats to float_list (after a
    cast to the spec's dtype), strings to bytes_list, in the spec's key order. Protobuf writes a map
    field (the Example's features) in an order of its own per process, so TFDS's bytes for one
    example differ from run to run; these are written in key order (``deterministic``).
    """

    def __init__(self, features: tfds.features.FeaturesDict):
        self._features = features
        specs = utils.flatten_nest_dict(features.get_serialized_info())
        nested = [key for key, info in specs.items() if info.sequence_rank > 1]
        if nested:
            raise ValueError(f"RecordSerializer: nested sequence features {nested} are not supported")
        self._fields = [(key, _list_kind(info.np_dtype), info.np_dtype, info.shape) for key, info in specs.items()]

    def __call__(self, example: dict) -> bytes:
        encoded = {key: self._features[key].encode_example(value) for key, value in example.items() if key != STEPS}
        flat = utils.flatten_nest_dict({**encoded, STEPS: example[STEPS]})
        feature = {}
        for key, kind, dtype, shape in self._fields:
            array = np.asarray(flat[key], object if kind == "bytes_list" else dtype)  # TFDS casts to the spec
            if array.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, array.shape)):
                raise ValueError(f"feature {key}: shape {array.shape} does not fit the spec's {shape}")
            if kind == "bytes_list":
                feature[key] = tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(
                    value=[v.encode() if isinstance(v, str) else v for v in array.ravel()]))
            elif kind == "int64_list":
                feature[key] = tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(
                    value=array.astype(np.int64).ravel().tolist()))
            else:
                feature[key] = tf_feature_pb2.Feature(float_list=tf_feature_pb2.FloatList(value=array.ravel().tolist()))
        return tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=feature)).SerializeToString(
            deterministic=True)


def _list_kind(dtype: np.dtype) -> str:
    """The tf.train.Feature list a dtype is stored in (as TFDS does: bool as int64)."""
    if dtype == np.object_ or np.issubdtype(dtype, np.bytes_) or np.issubdtype(dtype, np.str_):
        return "bytes_list"
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return "int64_list"
    return "float_list"


def write_dataset_info(out_dir: Path, *, name: str, version: str, module_name: str,
                       features: tfds.features.FeaturesDict, split: str, shard_lengths: Sequence[int],
                       num_bytes: int, description: str, homepage: str | None = None,
                       metadata: dict | None = None) -> None:
    """Writes the TFDS metadata (dataset_info.json, features.json and, given `metadata`,
    metadata.json); call it last, once every shard exists: it is what makes the dataset visible."""
    identity = dataset_info.DatasetIdentity(name=name, version=utils.Version(version), data_dir=str(out_dir),
                                            module_name=module_name)
    info = dataset_info.DatasetInfo(
        builder=identity, features=features, disable_shuffling=True, description=description, homepage=homepage,
        metadata=None if metadata is None else dataset_info.MetadataDict(metadata))
    info.set_file_format(FILE_FORMAT)
    info.set_splits(splits.SplitDict([splits.SplitInfo(
        name=split, shard_lengths=list(shard_lengths), num_bytes=num_bytes,
        filename_template=file_template(out_dir, name, split))]))
    # TFDS writes its files in place; written beside and renamed, dataset_info.json last, an
    # interrupt never leaves a half file, and a rerun never breaks a finished dataset's metadata.
    staging = out_dir / "metadata.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    info.write_to_directory(staging)
    for path in sorted(staging.iterdir(), key=lambda path: path.name == "dataset_info.json"):
        os.replace(path, out_dir / path.name)
    staging.rmdir()
