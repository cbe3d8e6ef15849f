"""Writing and reading the DQN Replay format: the temporal order, padding, stitching and gaps that
naive loaders get wrong, on frames of real ALE games."""

import gzip
import os
import pickle

import numpy as np
import pytest

from data_pipelines import replay_logs

TIME_LIMITED = [(30, True), (10, False), (30, True), (12, False)]  # (steps, truncated) as logged


@pytest.mark.parametrize("layout", replay_logs.LAYOUTS)
def test_a_skipped_chunk_is_never_stitched_over(tmp_path, pong_frames, feed, layout):
    rng = np.random.default_rng(0)
    buffer = replay_logs.LoggedReplayBuffer(tmp_path, capacity=20, layout=layout)
    # Episode 2's padding is added at add_count 37..39, so the trigger at 39 is never seen.
    episodes = [feed(buffer, pong_frames, length, rng) for length in (34, 30, 10, 40)]
    feed(buffer, pong_frames, 5, rng, end=None)
    buffer.log_final_buffer()
    reader = replay_logs.RunReader(tmp_path)
    assert [reader.checkpoint(s).add_count for s in reader.suffixes] == [19, 59, 79, 99, 119, 14]
    reports = {s: replay_logs.CheckpointReport(s) for s in reader.suffixes}
    got = [e for s in reader.suffixes for e in reader.episodes(s, reports[s])]
    # Episode 1 runs into the lost chunk and episode 2 starts in it: only 3 and 4 are whole.
    assert [(e.checkpoint_id, e.last_checkpoint_id) for e in got] == [(2, 3), (3, 5)]
    for episode, want in zip(got, episodes[2:]):
        _assert_episode(episode, want)
    assert [s for s, r in reports.items() if r.discontinuous_with_previous] == [1]
    assert sum(r.dropped_partial_episodes for r in reports.values()) == 3  # 1's tail, 2's head, the last


def test_a_chunk_skipped_just_before_the_final_dump_is_detected(tmp_path, pong_frames, feed):
    rng = np.random.default_rng(2)
    buffer = replay_logs.LoggedReplayBuffer(tmp_path, capacity=20)
    # Episode 3's padding is added at add_count 36..38: the dump at 39 never happens, and the final
    # dump (cursor 16) holds rows 39..55, not the rows that followed the dump at 19.
    first = feed(buffer, pong_frames, 5, rng)
    for length in (25, 10):
        feed(buffer, pong_frames, length, rng)
    feed(buffer, pong_frames, 4, rng, end=None)
    buffer.log_final_buffer()
    reader = replay_logs.RunReader(tmp_path)
    assert [reader.checkpoint(s).add_count for s in reader.suffixes] == [19, 16]
    assert not reader.contiguous_with_previous(1)  # the stale slots 16..18 were overwritten
    got = list(replay_logs.read_run(tmp_path))
    assert len(got) == 1
    _assert_episode(got[0], first)


def test_the_final_dump_ignores_its_stale_rows(tmp_path, pong_frames, feed):
    rng = np.random.default_rng(1)
    buffer = replay_logs.LoggedReplayBuffer(tmp_path, capacity=30)
    episodes = [feed(buffer, pong_frames, length, rng) for length in (20, 12, 8)]
    buffer.log_final_buffer()  # rows 29..48 are new; slots 19..28 still hold the first dump's rows
    got = list(replay_logs.read_run(tmp_path))
    assert [e.num_steps for e in got] == [20, 12, 8]
    _assert_episode(got[-1], episodes[-1])


def _assert_episode(episode, fed):
    frames, actions, rewards = fed
    np.testing.assert_array_equal(episode.observations, frames)
    np.testing.assert_array_equal(episode.actions, actions)
    np.testing.assert_array_equal(episode.rewards, rewards)


@pytest.mark.parametrize("fault", ["truncated", "not gzip", "wrong length", "wrong dtype", "missing", "frames' crc",
                                   "rewards' crc"])
def test_broken_files_are_named_in_one_line_errors(tmp_path, replay_logs_dir, fault):
    import shutil

    log_dir = tmp_path / "replay_logs"
    shutil.copytree(replay_logs_dir / "Breakout" / "1" / "replay_logs", log_dir)
    path = replay_logs.log_file(log_dir, "$store$_reward", 1)
    if fault == "truncated":
        path = replay_logs.log_file(log_dir, "$store$_observation", 1)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif fault.endswith("crc"):  # the data inflate as written; only the CRC-32 read at the end tells
        if fault.startswith("frames"):
            path = replay_logs.log_file(log_dir, "$store$_observation", 1)
        data = bytearray(path.read_bytes())
        data[-8] ^= 0xFF
        path.write_bytes(bytes(data))
    elif fault == "not gzip":
        path.write_bytes(b"definitely not gzip")
    elif fault == "wrong length":
        replay_logs._write_array(path, np.zeros(399, np.float32))
    elif fault == "wrong dtype":
        replay_logs._write_array(path, np.zeros(400, np.float64))
    else:
        path.unlink()
    with pytest.raises(replay_logs.ReplayLogError) as error:
        reader = replay_logs.RunReader(log_dir)
        for _ in reader.episodes(1):
            pass
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _read(log_dir, max_episode_steps):
    reader = replay_logs.RunReader(log_dir, max_episode_steps)
    reports = {s: replay_logs.CheckpointReport(s) for s in reader.suffixes}
    return reader, [e for s in reader.suffixes for e in reader.episodes(s, reports[s])], reports


def test_each_layout_writes_episode_ends_as_dopamine_did(tmp_path, write_time_limited_run):
    # Capacity 40: dump 0 holds global rows 0..38: padding 0..2, the first episode 3..32 (cut by the
    # time limit), padding 33..35, the second episode 36..38 of 10.
    for layout in replay_logs.LAYOUTS:
        write_time_limited_run(tmp_path / layout, layout, capacity=40)
        checkpoint = replay_logs.load_checkpoint(tmp_path / layout, 0)
        assert np.flatnonzero(checkpoint.terminals).tolist() == ([32] if layout == "2019" else [])
        padding_after_time_limit = np.arange(33, 36)
        assert checkpoint.blank[padding_after_time_limit].all()
        end_indices = replay_logs.log_file(tmp_path / layout, "episode_end_indices", 0)
        assert end_indices.exists() == (layout == "2022")
    with gzip.open(replay_logs.log_file(tmp_path / "2022", "episode_end_indices", 0), "rb") as f:
        slots = pickle.load(f)  # the writer's own file, as Dopamine pickles it: a set of NumPy int64
    assert slots == {32} and {type(slot) for slot in slots} == {np.int64}


@pytest.mark.parametrize("layout", replay_logs.LAYOUTS)
def test_time_limit_ends_are_episode_ends_at_every_dump_boundary(tmp_path, write_time_limited_run, layout):
    tested = []
    for capacity in range(14, 50):
        log_dir = tmp_path / str(capacity)
        fed = write_time_limited_run(log_dir, layout, capacity)
        reader, got, reports = _read(log_dir, max_episode_steps=30)
        # 102 rows in all (5 x 3 padding + 87): without a skipped chunk, a full dump at every C-1.
        full = [reader.checkpoint(s).add_count for s in reader.suffixes[:-1]]
        if full != [(k + 1) * capacity - 1 for k in range(103 // capacity)]:
            continue  # a skipped chunk loses episodes; see the skipped-chunk tests
        tested.append(capacity)
        assert [(e.num_steps, e.truncated) for e in got] == TIME_LIMITED, capacity
        for episode, (_, want) in zip(got, fed):
            _assert_episode(episode, want)
        assert sum(r.truncated_episodes for r in reports.values()) == 2
        assert sum(r.dropped_partial_episodes for r in reports.values()) == 1  # the one still running
    # 34: the first time-limit end is the last row of dump 0 and its padding opens dump 1;
    # 40: the second is the last row of dump 1; 20: it is dump 3's; elsewhere episodes span dumps.
    assert {20, 34, 40} <= set(tested) and len(tested) >= 20


def test_without_the_logs_time_limit_each_layout_tells_what_it_can(tmp_path, write_time_limited_run):
    for layout in replay_logs.LAYOUTS:
        write_time_limited_run(tmp_path / layout, layout, capacity=40)
    # episode_end_indices marks every end, and terminal=0 there is a time limit whatever the option.
    _, got, _ = _read(tmp_path / "2022", max_episode_steps=27_000)
    assert [(e.num_steps, e.truncated) for e in got] == TIME_LIMITED
    # 2019 logs mark every end as terminal: the episodes are right, but only the length tells a
    # time limit apart, so with another limit they read as game over.
    _, got, _ = _read(tmp_path / "2019", max_episode_steps=27_000)
    assert [(e.num_steps, e.truncated) for e in got] == [(30, False), (10, False), (30, False), (12, False)]
    # In 2021 logs nothing marks a time-limit end but the padding after it: never read into an episode.
    with pytest.raises(replay_logs.ReplayLogError, match=r"checkpoint 0: the episode starting at row 3 holds 3 "
                       r"padding rows .* after 30 steps, where no end is marked.*--max-episode-steps 30\)$"):
        _read(tmp_path / "2021", max_episode_steps=27_000)


@pytest.mark.parametrize("layout", replay_logs.LAYOUTS)
def test_an_episode_longer_than_max_episode_steps_is_an_error(tmp_path, write_time_limited_run, layout):
    write_time_limited_run(tmp_path, layout, capacity=40)
    # Row 23 is the first episode's 21st step, where a 20-step limit would have put padding.
    with pytest.raises(replay_logs.ReplayLogError) as error:
        _read(tmp_path, max_episode_steps=20)
    assert str(error.value).startswith(f"{tmp_path} checkpoint 0: row 23 (slot 23) is not padding (action ")
    assert "runs past --max-episode-steps 20" in str(error.value) and "\n" not in str(error.value)


def _write_pickle(path, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(payload)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("case", ["code", "list", "float", "out of range", "not a pickle"])
def test_episode_end_indices_admit_only_a_set_of_slots(tmp_path, write_time_limited_run, case):
    write_time_limited_run(tmp_path, "2022", capacity=40)
    path = replay_logs.log_file(tmp_path, "episode_end_indices", 1)
    marker = tmp_path / "code_ran"
    payload, expected = {
        "code": (pickle.dumps({_RunsCode(marker)}), "refusing posix.system"),
        "list": (pickle.dumps([np.int64(5)]), "expected a pickled set of integer slots, found list"),
        "float": (pickle.dumps({np.float64(5.0)}), "refusing dtype 'f8'"),
        "out of range": (pickle.dumps({np.int64(40)}), "slot 40 is outside [0, 40)"),
        "not a pickle": (b"\x80\x04garbage", "not a pickled set of slots"),
    }[case]
    _write_pickle(path, payload)
    with pytest.raises(replay_logs.ReplayLogError) as error:
        _read(tmp_path, max_episode_steps=30)
    assert str(error.value).startswith(f"{path}: ") and expected in str(error.value)
    assert not marker.exists()


def test_episode_end_indices_written_by_numpy_1_or_as_ints_read_the_same(tmp_path, write_time_limited_run):
    write_time_limited_run(tmp_path, "2022", capacity=40)
    path = replay_logs.log_file(tmp_path, "episode_end_indices", 1)
    with gzip.open(path, "rb") as f:
        slots = pickle.load(f)
    # NumPy 1 pickled its scalars as numpy.core.multiarray.scalar (protocol 3 spells the name out).
    numpy_1 = pickle.dumps(slots, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\nscalar" in numpy_1
    for payload in (numpy_1, pickle.dumps({int(slot) for slot in slots}, protocol=5)):
        _write_pickle(path, payload)
        _, got, _ = _read(tmp_path, max_episode_steps=27_000)
        assert [(e.num_steps, e.truncated) for e in got] == TIME_LIMITED


def test_a_checkpoint_without_the_episode_end_indices_of_its_run_is_incomplete(tmp_path, write_time_limited_run):
    write_time_limited_run(tmp_path, "2022", capacity=40)
    missing = replay_logs.log_file(tmp_path, "episode_end_indices", 1)
    missing.unlink()
    with pytest.raises(replay_logs.ReplayLogError, match=f"^{missing}: missing .checkpoint 1 is incomplete; "
                       "checkpoint 0 has one.$"):
        replay_logs.RunReader(tmp_path)
