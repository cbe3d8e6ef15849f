"""The input pipeline on real recorded ALE data: windows and returns-to-go against the episodes as
TFDS decodes them, game mixing, determinism, per-host parts, resume position, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from tensorflow_datasets.core import dataset_info, naming, splits

from data_pipelines.rlds_format import encode_png
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import tokens
from mgdt_jax.recipes.mgdt import windows
from mgdt_jax.recipes.mgdt.pipeline import TrainingData, parse_game_weights
from mgdt_jax.recipes.mgdt.rlds_source import DataError, RldsDataset, find_datasets

STEPS = tokens.DEFAULT_NUM_STEPS


@pytest.fixture(scope="module")
def reference_episodes(rlds_dataset_dir) -> list[dict]:
    """Every episode decoded by TFDS itself: the independent reference for the reader."""
    source = tfds.builder_from_directory(rlds_dataset_dir).as_data_source("train")
    episodes = []
    for index in range(len(source)):
        episode = source[index]
        steps = [episode["steps"][t] for t in range(len(episode["steps"]))]
        assert steps[-1]["is_last"] and not any(step["is_last"] for step in steps[:-1])
        logged = steps[:-1]  # the last step is the final observation only
        game = episode["game"].decode()
        episodes.append({
            "game": game,
            "return": float(episode["episode_return"]),
            "frames": np.stack([step["observation"] for step in logged]),
            "actions": np.array([atari.minimal_to_full(game)[step["action"]] for step in logged]),
            "rewards": np.array([step["reward"] for step in logged], np.float32),
        })
    return episodes


@pytest.fixture(scope="module")
def dataset(rlds_dataset_dir) -> RldsDataset:
    return RldsDataset(rlds_dataset_dir)


def frame_key(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()


def test_reader_groups_episodes_by_game(dataset, reference_episodes):
    games_by_index = {i: ref["game"] for i, ref in enumerate(reference_episodes)}
    assert set(dataset.game_ranges) == {"Pong", "Breakout"}
    for game, index_ranges in dataset.game_ranges.items():
        indices = [i for index_range in index_ranges for i in index_range]
        assert indices and all(games_by_index[i] == game for i in indices)
    assert sorted(i for rs in dataset.game_ranges.values() for r in rs for i in r) == list(range(len(dataset)))


def test_every_window_matches_its_episode(dataset, reference_episodes):
    for index, reference in enumerate(reference_episodes):
        episode = dataset[index]
        assert episode.game == reference["game"] and len(episode) == len(reference["actions"])
        returns_to_go = np.cumsum(reference["rewards"][::-1])[::-1]
        assert returns_to_go[0] == pytest.approx(reference["return"])  # the whole episode's return
        ends = sorted({0, 1, 2, 3, len(episode) // 2, len(episode) - 1} & set(range(len(episode))))
        cut = windows.cut_windows(episode, np.array(ends), STEPS)
        for i, end in enumerate(ends):
            window = {key: value[i] for key, value in cut.items()}
            real = np.arange(max(0, end - STEPS + 1), end + 1)
            padding = STEPS - len(real)
            assert window["step_mask"].tolist() == [False] * padding + [True] * len(real)
            np.testing.assert_array_equal(window["observations"][padding:], reference["frames"][real])
            np.testing.assert_array_equal(window["actions"][padding:], reference["actions"][real])
            np.testing.assert_array_equal(
                window["returns_to_go"][padding:], tokens.encode_return(returns_to_go[real])
            )
            np.testing.assert_array_equal(window["rewards"][padding:], tokens.encode_reward(reference["rewards"][real]))
            assert not window["observations"][:padding].any() and not window["actions"][:padding].any()


def write_rlu_atari_dataset(source_dir: Path, indices: list[int], data_dir: Path, config_name: str) -> None:
    """Episodes of our dataset rewritten as TFDS rlu_atari 1.3.0 stores them: its features only (no
    game metadata), under <data_dir>/rlu_atari/<config_name>/1.3.0."""
    source = tfds.builder_from_directory(source_dir).as_data_source("train")
    scalar = tfds.features.Scalar
    features = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.Image(shape=(84, 84, 1), dtype=np.uint8, encoding_format="png"),
            "action": scalar(np.int64), "reward": scalar(np.float32), "discount": scalar(np.float32),
            "is_first": scalar(np.bool_), "is_last": scalar(np.bool_), "is_terminal": scalar(np.bool_),
        }),
        "checkpoint_id": scalar(np.int64), "episode_id": scalar(np.int64), "episode_return": scalar(np.float32),
    })
    directory = data_dir / "rlu_atari" / config_name / "1.3.0"
    directory.mkdir(parents=True)
    template = naming.ShardedFileTemplate(data_dir=directory, dataset_name="rlu_atari", split="train", filetype_suffix="array_record")
    writer = ArrayRecordWriter(str(template.sharded_filepath(shard_index=0, num_shards=1)), "group_size:1")
    for index in indices:
        episode = source[index]
        steps = [episode["steps"][t] for t in range(len(episode["steps"]))]
        writer.write(features.serialize_example({
            "steps": [{**step, "observation": encode_png(step["observation"][..., 0])} for step in steps],
            "checkpoint_id": episode["checkpoint_id"], "episode_id": episode["episode_id"],
            "episode_return": episode["episode_return"],
        }))
    writer.close()
    identity = dataset_info.DatasetIdentity(
        name="rlu_atari", version="1.3.0", data_dir=str(directory), module_name="rlu_atari", config_name=config_name)
    info = dataset_info.DatasetInfo(builder=identity, features=features)
    info.set_file_format("array_record")
    info.set_splits(splits.SplitDict([splits.SplitInfo(
        name="train", shard_lengths=[len(indices)], num_bytes=0, filename_template=template)]))
    info.write_to_directory(directory)


def test_reads_rlu_atari_datasets_by_their_config_name(rlds_dataset_dir, reference_episodes, tmp_path):
    breakout = [i for i, reference in enumerate(reference_episodes) if reference["game"] == "Breakout"]
    write_rlu_atari_dataset(rlds_dataset_dir, breakout, tmp_path, "Breakout_run_1")
    [dataset] = find_datasets([tmp_path])  # found below a TFDS data dir
    assert dataset.game_ranges == {"Breakout": [range(len(breakout))]}
    for position, index in enumerate(breakout):
        episode, reference = dataset[position], reference_episodes[index]
        np.testing.assert_array_equal(episode.actions, reference["actions"])
        np.testing.assert_array_equal(episode.rewards, reference["rewards"])
        np.testing.assert_array_equal(episode.frames(range(len(episode))), reference["frames"])


def test_batches_follow_the_contract_and_the_game_weights(dataset, reference_episodes):
    game_of_frame = {frame_key(frame): ref["game"] for ref in reference_episodes for frame in ref["frames"]}

    def games(data: TrainingData, steps: range) -> list[str]:
        batches = [data.batch(step) for step in steps]
        # The newest frame of each window names its game.
        return [game_of_frame[frame_key(obs[-1])] for batch in batches for obs in batch["observations"]]

    uniform = TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=0)
    batch = uniform.batch(0)
    expected = {"observations": (np.uint8, (8, STEPS, 84, 84, 1)), "returns_to_go": (np.int32, (8, STEPS)),
                "actions": (np.int32, (8, STEPS)), "rewards": (np.int32, (8, STEPS)), "step_mask": (np.bool_, (8, STEPS))}
    assert {key: (value.dtype.type, value.shape) for key, value in batch.items()} == expected
    assert sorted(games(uniform, range(1))) == ["Breakout"] * 4 + ["Pong"] * 4  # every batch, not on average

    weighted = TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=0, game_weights="Pong=3,Breakout=1")
    assert games(weighted, range(4)).count("Pong") == 24
    only_breakout = TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=0, game_weights={"Breakout": 1})
    assert set(games(only_breakout, range(2))) == {"Breakout"}


def test_batch_k_is_a_function_of_seed_and_k(dataset):
    def data(seed: int, **kwargs) -> TrainingData:
        return TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=seed, **kwargs)

    first, second = data(seed=3), data(seed=3)
    for step in (0, 5):
        assert_batches_equal(first.batch(step), second.batch(step))
    assert not np.array_equal(data(seed=4).batch(0)["observations"], first.batch(0)["observations"])


@pytest.mark.parametrize("readers", [{"num_threads": 2}, {"num_threads": 1, "num_workers": 2}])
def test_resumed_stream_sees_the_batches_of_an_uninterrupted_one(dataset, readers):
    """Iterating from step k (threads or worker processes) gives batch k, k + 1, ... exactly."""
    reference = TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=3)
    resumed = iter(TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=3, **readers).iterate(start_step=5))
    try:
        for step in (5, 6, 7):
            assert_batches_equal(next(resumed), reference.batch(step))
    finally:
        getattr(resumed, "close", lambda: None)()


@pytest.mark.parametrize("process_count, group", [(2, 1), (4, 1), (2, 2)])
def test_host_parts_partition_the_global_batch(dataset, process_count, group):
    def data(**kwargs) -> TrainingData:
        return TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=1, windows_per_episode=group, **kwargs)

    whole = data().batch(2)
    parts = [data(process_index=p, process_count=process_count).batch(2) for p in range(process_count)]
    for p, part in enumerate(parts):
        assert part["actions"].shape[0] == 8 // process_count
        for key in whole:  # host p holds the global batch's groups p, p + P, p + 2P, ...
            groups = whole[key].reshape(-1, group, *whole[key].shape[1:])
            np.testing.assert_array_equal(part[key], groups[p::process_count].reshape(part[key].shape))


def test_groups_of_windows_come_from_one_episode(dataset, reference_episodes):
    episode_of_frame = {frame_key(frame): i for i, ref in enumerate(reference_episodes) for frame in ref["frames"]}
    batch = TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=0, windows_per_episode=4).batch(0)
    episodes = [episode_of_frame[frame_key(obs[-1])] for obs in batch["observations"]]
    assert len(set(episodes[:4])) == 1 and len(set(episodes[4:])) == 1 and episodes[0] != episodes[4]
    last_frames = {frame_key(obs[-1]) for obs in batch["observations"][:4]}
    assert len(last_frames) == 4  # four distinct end steps


def test_bad_sources_fail_with_a_clear_message(dataset, tmp_path):
    with pytest.raises(DataError, match="no such dataset directory"):
        find_datasets([tmp_path / "missing"])
    with pytest.raises(DataError, match="holds no RLDS dataset"):
        find_datasets([tmp_path])
    with pytest.raises(DataError, match=r"game_weights names \['Qbert'\]"):
        TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=0, game_weights={"Qbert": 1.0})
    with pytest.raises(DataError, match="not Game=weight"):
        parse_game_weights("Pong:2")
    with pytest.raises(DataError, match="does not split into groups of 3"):
        TrainingData([dataset], global_batch_size=8, num_steps=STEPS, seed=0, windows_per_episode=3)


def test_reading_batches_imports_no_tensorflow(rlds_dataset_dir):
    script = (
        "import sys\n"
        "from mgdt_jax.recipes.mgdt.pipeline import TrainingData\n"
        "from mgdt_jax.recipes.mgdt.rlds_source import find_datasets\n"
        f"TrainingData(find_datasets([{str(rlds_dataset_dir)!r}]), global_batch_size=4, num_steps=4, seed=0).batch(0)\n"
        "print(sorted(name for name in sys.modules if name == 'tensorflow' or name.startswith('tensorflow.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
