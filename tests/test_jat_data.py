"""JAT training batches (mgdt_jax/recipes/jat/data.py): packed rows, batch k a function of (seed, k)
and host, and bad datasets (also one without the observation statistics a standardising model
needs) refused in one line."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from mgdt_jax.recipes.jat import data, references, tokens
from mgdt_jax.recipes.jat.model import ModelConfig

MODEL = ModelConfig(num_steps=16, groups=("discrete", "continuous"))


def task_with_episodes(lengths: list[int]) -> data.TaskData:
    starts = np.concatenate([np.arange(length) == 0 for length in lengths])
    return data.TaskData("t", "t", "continuous", 1.0, 1.0, {}, starts, np.zeros(len(starts), np.float32), 1, 1, 0,
                         len(lengths))


def test_packed_rows_start_a_segment_at_each_episode_and_padded_rows_stop_at_its_end():
    task = task_with_episodes([3, 5, 2])  # steps 0-2, 3-7, 8-9
    index, segment, position = data.row_steps(task, 1, 8, packing=True)
    np.testing.assert_array_equal(index, [1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(segment, [0, 0, 1, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(position, [0, 1, 0, 1, 2, 3, 4, 0])
    index, segment, position = data.row_steps(task, 8, 5, packing=True)  # wraps to the first episode
    np.testing.assert_array_equal(index, [8, 9, 0, 1, 2])
    np.testing.assert_array_equal(segment, [0, 0, 1, 1, 1])
    index, segment, position = data.row_steps(task, 4, 6, packing=False)
    np.testing.assert_array_equal(segment, [0, 0, 0, 0, -1, -1])
    np.testing.assert_array_equal(position, [0, 1, 2, 3, 0, 0])


def stream(jat_datasets, **fields):
    tasks = [data.load_task(path, MODEL) for path in jat_datasets.values()]
    return data.JatBatches(tasks, MODEL, data.DataConfig(**fields), global_batch_size=8, process_index=0,
                           process_count=1)


def test_batches_are_functions_of_seed_and_step_and_packing_leaves_no_padding(jat_datasets):
    packed, padded = stream(jat_datasets), stream(jat_datasets, packing=False)
    first, again = packed.batch(5), stream(jat_datasets).batch(5)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert set(first) == set(tokens.batch_keys(tokens.batch_group(first)))  # modality-homogeneous
    real = [np.mean(packed.batch(k)["segment"] >= 0) for k in range(10)]
    naive = [np.mean(padded.batch(k)["segment"] >= 0) for k in range(10)]
    assert min(real) == 1.0 and max(naive) < 0.9  # episodes of 3-20 steps in rows of 16
    host = data.JatBatches(packed.tasks, MODEL, packed.data, global_batch_size=8, process_index=1, process_count=2)
    np.testing.assert_array_equal(host.batch(5)["segment"], first["segment"][4:])
    # r_{t-1} is folded into step t: 0 where an episode starts.
    starts = (first["position"] == 0) & (np.arange(16) > 0)
    assert (first["rewards"][starts] == 0).all()


def test_the_empty_batch_has_the_keys_shapes_and_dtypes_of_a_real_one(jat_datasets):
    batches = stream(jat_datasets)
    real = {tokens.batch_group(batch): batch for batch in map(batches.batch, range(16))}
    assert set(real) == {"discrete", "continuous"}
    for group, batch in real.items():
        empty = data.empty_batch(MODEL, 8, group)
        assert {name: (a.shape, a.dtype) for name, a in empty.items()} == {name: (a.shape, a.dtype) for name, a in batch.items()}
    with_images = ModelConfig(num_steps=4, image_shape=(8, 8, 3))
    images = data.empty_batch(with_images, 2, "image")
    assert set(images) == set(tokens.batch_keys("image")) and tokens.batch_group(images) == "image"
    assert images["image_observations"].shape == (2, 4, 8, 8, 3) and images["image_observations"].dtype == np.uint8


def test_tasks_and_batches_carry_only_their_groups_fields(jat_datasets):
    with_images = ModelConfig(num_steps=4, image_shape=(8, 8, 3))
    tasks = [data.load_task(path, with_images) for path in jat_datasets.values()]
    assert all(set(task.steps) == set(tokens.GROUP_KEYS[task.group]) - set(data.ROW_FIELDS) for task in tasks)
    batches = data.JatBatches(tasks, with_images, data.DataConfig(), global_batch_size=2, process_index=0,
                              process_count=1)
    for batch in map(batches.batch, range(8)):
        assert "image_observations" not in batch and set(batch) == set(tokens.batch_keys(tokens.batch_group(batch)))


def test_a_field_of_an_unknown_modality_is_refused_in_one_line(jat_datasets, tmp_path):
    copy = tmp_path / "task"
    shutil.copytree(jat_datasets["synthetic-continuous"], copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["spec"]["shapes"]["audio_observations"] = [16]
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"'audio_observations' is not a JAT field of a known modality") as error:
        data.load_task(copy, MODEL)
    assert str(copy) in str(error.value) and "\n" not in str(error.value)


def test_a_dataset_of_another_recipe_is_refused_naming_what_its_metadata_lacks(tmp_path):
    other = tmp_path / "darkroom"  # as mgdt-ad-histories writes it: a metadata.json without a JAT task spec
    other.mkdir()
    (other / "metadata.json").write_text(json.dumps({"env": "darkroom", "source": "q_learning"}))
    with pytest.raises(ValueError) as error:
        data.load_task(other, MODEL)
    assert str(error.value) == (f"{other / 'metadata.json'}: not a JAT dataset's metadata (no 'spec' field: not written "
                                "by mgdt-jat-record or mgdt-jat-import)")
    (other / "metadata.json").unlink()
    with pytest.raises(ValueError, match=r"metadata.json: missing: not a JAT dataset \(mgdt-jat-record and "):
        data.load_task(other, MODEL)
    with pytest.raises(ValueError, match=r"/elsewhere: no such dataset directory$"):
        data.load_task(tmp_path / "elsewhere", MODEL)


@pytest.mark.parametrize("entry", ["", " ", {"path": "", "sampling_weight": 2.0}])
def test_an_empty_dataset_path_is_refused_not_read_as_the_current_folder(entry):
    config = {"model": {}, "data": {"tasks": ["unused", entry]}}
    with pytest.raises(ValueError, match=r"^data.tasks\[1\]: an empty dataset path \(an unset shell variable\?\)$"):
        data.training_data(config, process_index=0, process_count=1)


def test_one_dataset_given_twice_by_two_paths_is_refused(jat_datasets, monkeypatch):
    # Read twice, it weighed double in the mix without a word.
    directory = next(iter(jat_datasets.values()))
    monkeypatch.chdir(directory.parent)
    config = {"model": {}, "data": {"tasks": [str(directory), {"path": f"./{directory.name}", "sampling_weight": 2.0}]}}
    with pytest.raises(ValueError, match=rf"^config.data.tasks: {re.escape(str(directory))} and {directory.name} are "
                                         r"one folder; give it once$"):
        data.training_data(config, process_index=0, process_count=1)


@pytest.mark.parametrize("damage", ["cut short", "garbage", "deleted"])
def test_a_damaged_shard_is_refused_in_one_line_naming_it(jat_datasets, tmp_path, damage):
    copy = tmp_path / "task"
    shutil.copytree(jat_datasets["synthetic-continuous"], copy)
    shard = sorted(copy.glob("*.array_record*"))[-1]
    if damage == "cut short":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "garbage":
        shard.write_bytes(np.random.default_rng(0).bytes(shard.stat().st_size))
    else:
        shard.unlink()
    with pytest.raises(ValueError, match=rf"^{copy}: episodes? [0-9.]+ cannot be read, a shard is missing or damaged "
                                         rf"\(.*{shard.name}.*\)$") as error:
        data.load_task(copy, MODEL)
    assert "\n" not in str(error.value)


def test_an_observation_wider_than_the_tiling_width_is_refused_in_one_line(jat_datasets):
    narrow = ModelConfig(continuous_width=4, groups=("discrete", "continuous"))
    with pytest.raises(ValueError, match=r"continuous_observations of shape \(5,\) is wider than the tiling width "
                                         r"model.continuous_width=4$") as error:
        data.load_task(jat_datasets["synthetic-continuous"], narrow)
    assert str(jat_datasets["synthetic-continuous"]) in str(error.value)


def test_a_model_that_standardises_refuses_a_dataset_without_statistics_in_one_line(jat_datasets, tmp_path):
    copy = tmp_path / "task"
    shutil.copytree(jat_datasets["synthetic-continuous"], copy)
    old = references.TaskReferences("synthetic-continuous", "", references.Reference(0.0, 0.0, 40), None, {})
    content = old.to_json()
    del content["observation_stats"]  # references.json of a dataset recorded before the statistics existed
    (copy / references.REFERENCES_FILE).write_text(json.dumps(content))
    assert data.load_task(copy, MODEL).num_episodes == 40  # old datasets stay readable without the flag
    standardising = dataclasses.replace(MODEL, normalize_observations=True)
    with pytest.raises(ValueError) as error:
        data.load_task(copy, standardising)
    message = str(error.value)
    assert message.startswith(f"{copy}: references.json has no observation statistics") and "\n" not in message
    assert "re-record or re-import" in message
    assert data.load_task(jat_datasets["synthetic-discrete"], standardising).num_episodes == 40  # not continuous


@pytest.mark.parametrize("field, value, fault", [
    ("std", float("nan"), "a mean or std that is not a finite number"),
    ("mean", float("inf"), "a mean or std that is not a finite number"),
    ("std", -1.0, "or a negative std"),
])
def test_observation_statistics_that_would_standardise_to_nan_are_refused_naming_the_file(jat_datasets, tmp_path, field,
                                                                                       value, fault):
    copy = tmp_path / "task"
    shutil.copytree(jat_datasets["synthetic-continuous"], copy)
    path = copy / references.REFERENCES_FILE
    content = json.loads(path.read_text())
    content["observation_stats"][field][0] = value
    path.write_text(json.dumps(content))  # NaN and Infinity as Python's json writes them
    with pytest.raises(references.ReferenceError) as error:
        references.load(copy)
    assert str(error.value).startswith(f"{path}: unreadable references (observation_stats: ")
    assert str(error.value).endswith(f"{fault})") and "\n" not in str(error.value)


def test_an_image_task_loads_and_its_batches_carry_frames_and_mission_only(tmp_path):
    from data_pipelines.jat import rlds
    from mgdt_jax.recipes.jat import fields as jat_fields

    rng = np.random.default_rng(0)
    spec = jat_fields.TaskSpec("synthetic-image", {"image_observations": (8, 8, 3), "text_observations": (),
                                             "discrete_actions": (), "rewards": ()})

    def episode() -> rlds.Episode:
        length = int(rng.integers(3, 9))
        frames = rng.integers(0, 256, size=(length + 1, 8, 8, 3)).astype(np.uint8)
        return rlds.Episode({"image_observations": frames, "text_observations": ["go to the red ball"] * (length + 1)},
                            rng.integers(0, 7, length).astype(np.int64), np.zeros(length, np.float32), terminated=True)

    rlds.write_dataset(tmp_path / spec.task, spec, (episode() for _ in range(6)), {"task": spec.task})
    with_images = ModelConfig(num_steps=4, image_shape=(8, 8, 3))
    task = data.load_task(tmp_path / spec.task, with_images)
    assert task.group == "image" and set(task.steps) == {"image_observations", "text_observations", "discrete_actions"}
    batch = data.JatBatches([task], with_images, data.DataConfig(), global_batch_size=2, process_index=0,
                            process_count=1).batch(0)
    assert set(batch) == set(tokens.batch_keys("image")) and batch["image_observations"].shape == (2, 4, 8, 8, 3)
