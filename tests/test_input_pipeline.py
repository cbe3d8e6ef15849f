"""The input pipeline on real recorded ALE data: windows read through the window index against the
episodes as TFDS decodes them, the index's freshness checks, sampling, game mixing, determinism,
per-host parts, resume position, errors."""

from __future__ import annotations

import filecmp
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tensorflow_datasets.core import dataset_info, naming, splits

from data_pipelines import build_index
from data_pipelines.rlds_format import encode_png
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import pipeline, step_store, tokens, windows
from mgdt_jax.recipes.mgdt.pipeline import TrainingData, mix_games, parse_game_weights, training_data, uniform_draws
from mgdt_jax.recipes.mgdt.rlds_source import DataError, RldsDataset, find_datasets, stored_observation_shape

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


@pytest.fixture(scope="module")
def index(rlds_dataset_dir) -> step_store.WindowIndex:
    return step_store.open_index(rlds_dataset_dir)  # written by the conversion


def frame_key(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()


def copy_dataset(source: Path, target: Path, with_index: bool = True) -> Path:
    shutil.copytree(source, target, ignore=None if with_index else shutil.ignore_patterns(step_store.INDEX_DIR))
    return target


def assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_reference_windows_match_the_decoded_episodes(dataset, reference_episodes):
    """cut_windows on the episode reader, the reference for the index, against TFDS's decoding."""
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


def index_windows_of_every_step(index: step_store.WindowIndex, dataset: RldsDataset):
    """(episode, the windows ending at each of its steps read through the index), for every episode."""
    reader = step_store.StepReader()
    first_episode = 0
    for shard, part in enumerate(index.parts):
        first_step = 0
        for number in range(first_episode, first_episode + dataset.shard_lengths[shard]):
            episode = dataset[number]
            ends = np.arange(len(episode))
            yield episode, ends, reader.read([part] * len(ends), (first_step + ends).tolist(), STEPS)
            first_step += len(episode)
        assert first_step == part.steps
        first_episode += dataset.shard_lengths[shard]


def test_index_windows_equal_the_windows_cut_from_episodes(index, dataset, reference_episodes):
    """Every window of every episode, token for token, and each part holds its shard's game."""
    checked = 0
    for episode, ends, read in index_windows_of_every_step(index, dataset):
        assert_batches_equal(read, windows.cut_windows(episode, ends, STEPS))
        checked += len(ends)
    assert checked == sum(len(reference["actions"]) for reference in reference_episodes) > 2000
    games = [part.game for part in index.parts if part.steps]
    assert sorted(set(games)) == ["Breakout", "Pong"] and games == sorted(games)  # shards ordered by game
    assert index.num_episodes == len(reference_episodes)


def test_one_time_pass_builds_the_index_the_conversion_wrote(rlds_dataset_dir, tmp_path, capsys):
    """mgdt-index on a dataset without an index (two worker processes) writes the same bytes;
    a rerun finds every part up to date."""
    copy = copy_dataset(rlds_dataset_dir, tmp_path / "dqn_replay", with_index=False)
    assert build_index.main([str(copy), "--workers", "2", "--no-progress"]) == 0
    assert "8 parts built, 0 up to date" in capsys.readouterr().out
    comparison = filecmp.dircmp(step_store.index_dir(rlds_dataset_dir), step_store.index_dir(copy))
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    assert filecmp.cmpfiles(step_store.index_dir(rlds_dataset_dir), step_store.index_dir(copy),
                            comparison.common_files, shallow=False)[0] == sorted(comparison.common_files)
    assert build_index.main([str(copy), "--no-progress"]) == 0
    assert "0 parts built, 8 up to date" in capsys.readouterr().out


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


def test_rlu_atari_datasets_are_indexed_once_and_read_by_their_config_name(rlds_dataset_dir, reference_episodes, tmp_path):
    breakout = [i for i, reference in enumerate(reference_episodes) if reference["game"] == "Breakout"]
    write_rlu_atari_dataset(rlds_dataset_dir, breakout, tmp_path, "Breakout_run_1")
    [rlu] = find_datasets([tmp_path])  # found below a TFDS data dir
    for position, number in enumerate(breakout):
        episode, reference = rlu[position], reference_episodes[number]
        np.testing.assert_array_equal(episode.actions, reference["actions"])
        np.testing.assert_array_equal(episode.rewards, reference["rewards"])
        np.testing.assert_array_equal(episode.frames(range(len(episode))), reference["frames"])
    with pytest.raises(DataError, match=r"has no window index .* build it once with `mgdt-index "):
        step_store.open_index(rlu.directory)
    assert build_index.main([str(tmp_path), "--workers", "1", "--no-progress"]) == 0
    index = step_store.open_index(rlu.directory)
    assert [part.game for part in index.parts] == ["Breakout"]
    for episode, ends, read in index_windows_of_every_step(index, rlu):
        assert_batches_equal(read, windows.cut_windows(episode, ends, STEPS))


def config(*sources: Path, **data):
    import ml_collections

    return ml_collections.ConfigDict({
        "data": {"sources": [str(s) for s in sources], "seed": 0, "game_weights": "", "num_threads": 0,
                 "num_workers": 0, **data},
        "train": {"batch_size": 8}, "model": {"num_steps": STEPS},
    })


def test_a_missing_index_is_refused_in_one_line(rlds_dataset_dir, tmp_path):
    copy = copy_dataset(rlds_dataset_dir, tmp_path / "dqn_replay", with_index=False)
    with pytest.raises(DataError) as error:
        training_data(config(copy))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{copy}: has no window index")
    assert message.endswith(f"build it once with `mgdt-index {copy}`")


def test_another_recipes_dataset_is_named_as_such_not_sent_to_mgdt_index(darkroom_histories_dir, rlds_dataset_dir,
                                                                          capsys):
    # Training MGDT on an AD dataset said "build it once with mgdt-index", which then failed too.
    assert stored_observation_shape(rlds_dataset_dir) == tokens.FRAME_SHAPE
    expected = (f"{darkroom_histories_dir}: observations are (), expected (84, 84, 1) (84x84 grayscale Atari "
                "frames): not an MGDT dataset (another recipe's? its config sets config.recipe)")
    with pytest.raises(DataError) as error:
        training_data(config(darkroom_histories_dir))
    assert str(error.value) == expected
    assert build_index.main([str(darkroom_histories_dir)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"mgdt-index: error: {expected}"


def test_a_jat_dataset_is_named_as_another_recipes(jat_datasets):
    directory = next(iter(jat_datasets.values()))
    with pytest.raises(DataError, match=re.escape(f"{directory}: observations are a dict of features, expected "
                                                  "(84, 84, 1)")):
        training_data(config(directory))


def test_a_stale_index_is_refused_and_rebuilt_where_it_changed(rlds_dataset_dir, tmp_path, capsys):
    copy = copy_dataset(rlds_dataset_dir, tmp_path / "dqn_replay")
    step_store.open_index(copy)  # a copy keeps its index valid
    dataset = RldsDataset(copy)
    shard = next(i for i, length in enumerate(dataset.shard_lengths) if length >= 2)
    path = Path(dataset.shard_paths[shard])

    changed = bytearray(path.read_bytes())
    changed[-(1 << 16)] ^= 0xFF  # same size, other bytes in array_record's postscript
    path.write_bytes(bytes(changed))
    with pytest.raises(DataError, match=rf"the window index is stale \(shard {path.name} changed since it was "
                                        rf"built\); rebuild it with `mgdt-index {copy}`"):
        training_data(config(copy))

    reader = ArrayRecordReader(str(rlds_dataset_dir / path.name))
    records = reader.read_all()
    reader.close()
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in reversed(records):  # the shard rewritten with its episodes in the other order
        writer.write(record)
    writer.close()
    with pytest.raises(DataError, match=rf"shard {path.name} changed"):
        step_store.open_index(copy)
    orphan = copy / step_store.INDEX_DIR / "dqn_replay-train.array_record-00009-of-00010.steps"
    orphan.write_bytes(b"the part of a shard the dataset no longer has")
    assert build_index.main([str(copy), "--no-progress"]) == 0
    assert not orphan.exists()
    assert f"1 parts built, {len(dataset.shard_lengths) - 1} up to date" in capsys.readouterr().out
    for episode, ends, read in index_windows_of_every_step(step_store.open_index(copy), RldsDataset(copy)):
        assert_batches_equal(read, windows.cut_windows(episode, ends, STEPS))

    info = copy / "dataset_info.json"
    info.write_text(info.read_text().replace("Atari DQN Replay", "Other"))
    with pytest.raises(DataError, match=r"dataset_info.json changed since it was built"):
        step_store.open_index(copy)


def test_a_truncated_or_deleted_step_file_is_refused_with_the_command_that_rebuilds_it(rlds_dataset_dir, tmp_path):
    copy = copy_dataset(rlds_dataset_dir, tmp_path / "dqn_replay")
    index = step_store.open_index(copy)
    part = next(part for part in index.parts if part.steps)
    with open(part.path, "r+b") as file:
        file.truncate(part.file_size - 1)
    with pytest.raises(DataError, match=rf"{part.path}: {part.file_size - 1} bytes where the window index recorded"
                                        rf".*; rebuild it with `mgdt-index {copy}`$"):
        step_store.StepReader().read([part], [0], STEPS)
    Path(part.path).unlink()  # deleted after the index was opened: the line named no fix
    with pytest.raises(DataError, match=rf"^{re.escape(str(part.path))}: cannot read the window index \(.*No such file.*\); "
                                        rf"rebuild it with `mgdt-index {copy}`$"):
        step_store.StepReader().read([part], [0], STEPS)


def test_a_step_file_damaged_in_place_is_refused_naming_it(rlds_dataset_dir, tmp_path):
    # Of the right size, it was read: zstandard's "Destination buffer is too small" as a Grain traceback.
    copy = copy_dataset(rlds_dataset_dir, tmp_path / "dqn_replay")
    part = next(part for part in step_store.open_index(copy).parts if part.steps)
    with open(part.path, "r+b") as file:
        file.seek(4)  # inside the first frame's zstd header
        file.write(b"\xff\xff\xff\xff")
    with pytest.raises(DataError, match=rf"^{re.escape(str(part.path))}: a frame cannot be decompressed \(.*\): damaged; "
                                        rf"delete it and rebuild the window index with `mgdt-index {copy}`$"):
        step_store.StepReader().read([part], [0], STEPS)


def test_batches_follow_the_contract_and_the_game_weights(index, reference_episodes):
    game_of_frame = {frame_key(frame): ref["game"] for ref in reference_episodes for frame in ref["frames"]}

    def games(data: TrainingData, steps: range) -> list[str]:
        batches = [data.batch(step) for step in steps]
        # The newest frame of each window names its game.
        return [game_of_frame[frame_key(obs[-1])] for batch in batches for obs in batch["observations"]]

    uniform = TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=0)
    batch = uniform.batch(0)
    expected = {"observations": (np.uint8, (8, STEPS, 84, 84, 1)), "returns_to_go": (np.int32, (8, STEPS)),
                "actions": (np.int32, (8, STEPS)), "rewards": (np.int32, (8, STEPS)), "step_mask": (np.bool_, (8, STEPS))}
    assert {key: (value.dtype.type, value.shape) for key, value in batch.items()} == expected
    assert sorted(games(uniform, range(1))) == ["Breakout"] * 4 + ["Pong"] * 4  # every batch, not on average
    assert uniform.game_weights == {"Breakout": 1.0, "Pong": 1.0}

    weighted = TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=0, game_weights="Pong=3,Breakout=1")
    assert games(weighted, range(4)).count("Pong") == 24
    only_breakout = TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=0, game_weights={"Breakout": 1})
    assert set(games(only_breakout, range(2))) == {"Breakout"}
    # The start line's episode count is of the games batches are drawn from.
    breakout_episodes = sum(ref["game"] == "Breakout" for ref in reference_episodes)
    assert (only_breakout.num_episodes, uniform.num_episodes) == (breakout_episodes, len(reference_episodes))
    # What the sources hold per game, saved with checkpoints (data replaced under the same path warns on resume).
    assert {game: episodes for game, (episodes, _) in only_breakout.content.items()} == {
        "Breakout": breakout_episodes, "Pong": len(reference_episodes) - breakout_episodes}


def test_one_folder_by_two_paths_is_read_once_and_spellings_of_one_stream_are_one_identity(
        rlds_dataset_dir, monkeypatch):
    # A relative and an absolute path of one folder read its episodes twice, and resuming with the
    # other spelling (or with weights Pong=2,Breakout=1 written as a mapping) warned that the data changed.
    monkeypatch.chdir(rlds_dataset_dir.parent)
    relative = Path(rlds_dataset_dir.name)
    once = training_data(config(rlds_dataset_dir))
    twice = training_data(config(relative, rlds_dataset_dir))
    assert twice.num_episodes == once.num_episodes and twice.content == once.content
    as_text = config(relative, game_weights="Pong=2,Breakout=1")
    as_mapping = config(rlds_dataset_dir, game_weights={"Breakout": 2.0, "Pong": 4.0})
    identities = [pipeline.stream_identity(c, training_data(c)) for c in (as_text, as_mapping)]
    assert identities[0] == identities[1]
    assert identities[0]["proportions"] == {"Breakout": 100, "Pong": 200}  # what the mix draws per cycle
    # Weights that draw other proportions are another identity, however close (1.7:0.1 and 5.1:0.3 drew 1700 and 1699).
    for weights, drawn in [("Pong=3,Breakout=1", 300), ("Pong=1.7,Breakout=0.1", 1700), ("Pong=5.1,Breakout=0.3", 1699)]:
        other = config(rlds_dataset_dir, game_weights=weights)
        assert pipeline.stream_identity(other, training_data(other))["proportions"]["Pong"] == drawn
    # A checkpoint saved before the identity held proportions held the weights as written: still compared.
    older = {key: value for key, value in identities[0].items() if key != "proportions"}
    upgraded = pipeline.upgrade_identity({**older, "game_weights": "Breakout=1,Pong=2"}, ["Pong", "Breakout"])
    assert upgraded == {**identities[0], "game_weights": "Breakout=1,Pong=2"}
    assert pipeline.upgrade_identity({**older, "game_weights": {"Pong": 1.0}}, [])["proportions"] == {"Pong": 100}
    assert pipeline.upgrade_identity({"seed": 0, "game_weights": ""}, ["Pong", "Breakout"])["proportions"] == {
        "Breakout": 100, "Pong": 100}  # no games saved: today's


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [3.0, 1.0], [1.5, 1.0, 0.25, 7.0]])
def test_games_are_mixed_as_grain_mixes_them(weights):
    """The stream's game order is that of Grain's MapDataset.mix, what the stream used before."""
    tagged = [grain.MapDataset.range(10**6).map(lambda j, g=g: (g, j)) for g in range(len(weights))]
    mixed = grain.MapDataset.mix(tagged, weights)
    positions = np.concatenate([np.arange(500), np.arange(10**5, 10**5 + 200)])
    smallest = min(weights)
    games, draws = mix_games(positions, [int(w * 100 / smallest) for w in weights])
    assert list(zip(games.tolist(), draws.tolist())) == [mixed[int(i)] for i in positions]


def test_window_ends_are_uniform_over_each_games_steps(index):
    """Across many batches every step of a game ends windows equally often, whatever its episode's
    length: the count per part follows its step count and the ends within parts are uniform."""
    data = TrainingData([index], global_batch_size=64, num_steps=STEPS, seed=0, game_weights={"Pong": 1})
    pong = [part for part in index.parts if part.game == "Pong" and part.steps]
    counts = {part.path: 0 for part in pong}
    fractions = []
    for step in range(300):
        parts, ends = data.window_ends(step)
        for part, end in zip(parts, ends):
            counts[part.path] += 1
            fractions.append((end + 0.5) / part.steps)
    draws = 300 * 64
    expected = np.array([part.steps for part in pong]) / sum(part.steps for part in pong) * draws
    chi_square = (((np.array(list(counts.values())) - expected) ** 2) / expected).sum()
    assert chi_square < 20  # 99.9th percentile for the few degrees of freedom here is below 20
    histogram = np.histogram(fractions, bins=10, range=(0, 1))[0]
    assert np.abs(histogram - draws / 10).max() < 5 * np.sqrt(draws / 10)
    assert np.abs(np.diff(uniform_draws(7, np.arange(10**5), 3))).sum() > 0
    assert np.bincount(uniform_draws(7, np.arange(3 * 10**5), 3)).min() > 99_000


def test_batch_k_is_a_function_of_seed_and_k(index):
    def data(seed: int, **kwargs) -> TrainingData:
        return TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=seed, **kwargs)

    first, second = data(seed=3), data(seed=3)
    for step in (0, 5):
        assert_batches_equal(first.batch(step), second.batch(step))
    assert not np.array_equal(data(seed=4).batch(0)["observations"], first.batch(0)["observations"])


@pytest.mark.parametrize("readers", [{"num_threads": 2}, {"num_threads": 1, "num_workers": 2}])
def test_resumed_stream_sees_the_batches_of_an_uninterrupted_one(index, readers):
    """Iterating from step k (threads or worker processes) gives batch k, k + 1, ... exactly."""
    reference = TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=3)
    resumed = iter(TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=3, **readers).iterate(start_step=5))
    try:
        for step in (5, 6, 7):
            assert_batches_equal(next(resumed), reference.batch(step))
    finally:
        getattr(resumed, "close", lambda: None)()


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_parts_partition_the_global_batch(index, process_count):
    def data(**kwargs) -> TrainingData:
        return TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=1, **kwargs)

    whole = data().batch(2)
    parts = [data(process_index=p, process_count=process_count).batch(2) for p in range(process_count)]
    rows = 8 // process_count
    for p, part in enumerate(parts):  # host p holds rows [p * B / P, (p + 1) * B / P) of the global batch
        assert_batches_equal(part, {key: value[p * rows:(p + 1) * rows] for key, value in whole.items()})


def test_memory_does_not_grow_with_the_number_of_steps(reference_episodes, tmp_path):
    """Reading from an index of 60,000 steps allocates what reading from one of 600 does: nothing
    is held per step or per episode (a table of one byte per step would add 59 KB)."""
    frames = reference_episodes[0]["frames"]

    def index_of(num_steps: int, episode_steps: int) -> step_store.WindowIndex:
        directory = epath.Path(tmp_path / str(num_steps))
        directory.mkdir()
        writer = step_store.PartWriter(directory / "part.steps")
        for start in range(0, num_steps, episode_steps):
            steps = np.arange(start, start + episode_steps)
            writer.add_episode("Pong", steps % 6, np.sign(np.sin(steps)), frames[steps % len(frames)])
        part = writer.close()
        return step_store.WindowIndex(directory, (step_store.Part(
            str(directory / "part.steps"), "Pong", part["episodes"], part["steps"], part["frame_bytes"],
            part["file_size"]),))

    def peak_bytes(index: step_store.WindowIndex) -> int:
        tracemalloc.start()
        data = TrainingData([index], global_batch_size=16, num_steps=STEPS, seed=0, num_threads=0)
        for step in range(20):
            data.batch(step)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = index_of(600, 200), index_of(60_000, 20_000)
    peak_bytes(small)  # first-use allocations (imports, caches) out of the way
    assert abs(peak_bytes(large) - peak_bytes(small)) < 10_000


def test_bad_sources_fail_with_a_clear_message(index, tmp_path, capsys):
    with pytest.raises(DataError, match="no such dataset directory"):
        training_data(config(tmp_path / "missing"))
    with pytest.raises(DataError, match="holds no RLDS dataset"):
        training_data(config(tmp_path))
    with pytest.raises(DataError, match=r"^config.data.sources: 5 is not a dataset path"):  # etils' TypeError traceback
        training_data(config(tmp_path, sources=(5,)))
    junk = tmp_path / "junk"  # said "has no window index; build it with mgdt-index", which could not read it either
    junk.mkdir()
    (junk / "dataset_info.json").write_text("{cut")
    with pytest.raises(DataError, match=rf"^{re.escape(str(junk / 'dataset_info.json'))}: unreadable \(.*\): not an RLDS "):
        training_data(config(junk))
    with pytest.raises(DataError, match=r"game_weights names \['Qbert'\]"):
        TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=0, game_weights={"Qbert": 1.0})
    with pytest.raises(DataError, match="not Game=weight"):
        parse_game_weights("Pong:2")
    # Each was a traceback or a line naming no field ("cannot convert float NaN to integer"), or silent (twice).
    for weights, fault in (("Pong=inf", "must be finite and >= 0"), ("Pong=1e300,Breakout=1e-300", "more than 1e+06 times"),
                           ("Pong=1,Pong=3", "Pong is given twice"),
                           # a number or a text weight given on the command line: TypeError tracebacks
                           (5, "5 is neither 'Game=weight,...'"), ({"Pong": "2"}, "must be finite and >= 0")):
        with pytest.raises(DataError, match=re.escape(fault)):
            TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=0, game_weights=weights)
    with pytest.raises(DataError, match=r"^data.seed -1: must be a whole number >= 0$"):
        TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=-1)
    with pytest.raises(DataError, match="does not split evenly over 3 host"):
        TrainingData([index], global_batch_size=8, num_steps=STEPS, seed=0, process_count=3)
    assert build_index.main([str(tmp_path / "missing"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert error == f"mgdt-index: error: {tmp_path / 'missing'}: no such dataset directory\n"
    (tmp_path / "notes").write_text("a file")
    assert build_index.main([str(tmp_path / "notes"), "--no-progress"]) == 1
    assert capsys.readouterr().err == f"mgdt-index: error: {tmp_path / 'notes'}: a file, not a dataset directory\n"
    assert build_index.main(["", "--no-progress"]) == 1  # not the current folder
    assert capsys.readouterr().err == "mgdt-index: error: an empty dataset path (an unset shell variable?)\n"


def test_reading_batches_imports_no_tensorflow(rlds_dataset_dir):
    script = (
        "import sys\n"
        "import ml_collections\n"
        "from mgdt_jax.recipes.mgdt.pipeline import training_data\n"
        f"config = ml_collections.ConfigDict({json.dumps(config(rlds_dataset_dir).to_dict())})\n"
        "training_data(config).batch(0)\n"
        "print(sorted(name for name in sys.modules if name == 'tensorflow' or name.startswith('tensorflow.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_dataset_iterates_over_its_episodes_and_indexes_from_the_end(dataset):
    episodes = list(dataset)  # stops at the end, as any sequence does
    assert len(episodes) == len(dataset) > 1
    assert [e.game for e in episodes] == [dataset[i].game for i in range(len(dataset))]
    np.testing.assert_array_equal(dataset[-1].actions, episodes[-1].actions)
    with pytest.raises(IndexError, match=f"episode {len(dataset)} of {len(dataset)}"):
        dataset[len(dataset)]
