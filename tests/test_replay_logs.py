"""Writing and reading the DQN Replay format: the temporal order, padding, stitching and gaps that
naive loaders get wrong, on frames of real ALE games."""

import dataclasses

import numpy as np
import pytest

from data_pipelines import replay_logs


@dataclasses.dataclass
class FedEpisode:
    frames: list
    actions: list
    rewards: list


def _feed(buffer, frames, length, rng, terminal=True):
    """Adds one episode of `length` real frames; returns what was added."""
    start = rng.integers(len(frames) - length)
    episode = FedEpisode(list(frames[start:start + length]), list(rng.integers(0, 4, length)),
                            list(rng.choice([-1.0, 0.0, 1.0], length)))
    for t in range(length):
        buffer.add(episode.frames[t], episode.actions[t], episode.rewards[t], terminal and t == length - 1)
    return episode


def test_a_skipped_chunk_is_never_stitched_over(tmp_path, replay_logs_dir):
    frames = next(replay_logs.read_run(replay_logs_dir / "Pong" / "1" / "replay_logs")).observations
    rng = np.random.default_rng(0)
    buffer = replay_logs.LoggedReplayBuffer(tmp_path, capacity=20)
    # Episode 2's padding is added at add_count 37..39, so the trigger at 39 is never seen.
    episodes = [_feed(buffer, frames, length, rng) for length in (34, 30, 10, 40)]
    _feed(buffer, frames, 5, rng, terminal=False)
    buffer.log_final_buffer()
    reader = replay_logs.RunReader(tmp_path)
    assert [reader.checkpoint(s).add_count for s in reader.suffixes] == [19, 59, 79, 99, 119, 14]
    reports = {s: replay_logs.CheckpointReport(s) for s in reader.suffixes}
    got = [e for s in reader.suffixes for e in reader.episodes(s, reports[s])]
    # Episode 1 runs into the lost chunk and episode 2 starts in it: only 3 and 4 are whole.
    assert [(e.checkpoint_id, e.last_checkpoint_id) for e in got] == [(2, 3), (3, 5)]
    for episode, want in zip(got, episodes[2:]):
        np.testing.assert_array_equal(episode.observations, np.stack(want.frames))
        np.testing.assert_array_equal(episode.actions, want.actions)
        np.testing.assert_array_equal(episode.rewards, want.rewards)
    assert [s for s, r in reports.items() if r.discontinuous_with_previous] == [1]
    assert sum(r.dropped_partial_episodes for r in reports.values()) == 3  # 1's tail, 2's head, the last


def test_a_chunk_skipped_just_before_the_final_dump_is_detected(tmp_path, replay_logs_dir):
    frames = next(replay_logs.read_run(replay_logs_dir / "Pong" / "1" / "replay_logs")).observations
    rng = np.random.default_rng(2)
    buffer = replay_logs.LoggedReplayBuffer(tmp_path, capacity=20)
    # Episode 3's padding is added at add_count 36..38: the dump at 39 never happens, and the final
    # dump (cursor 16) holds rows 39..55, not the rows that followed the dump at 19.
    first = _feed(buffer, frames, 5, rng)
    for length in (25, 10):
        _feed(buffer, frames, length, rng)
    _feed(buffer, frames, 4, rng, terminal=False)
    buffer.log_final_buffer()
    reader = replay_logs.RunReader(tmp_path)
    assert [reader.checkpoint(s).add_count for s in reader.suffixes] == [19, 16]
    assert not reader.contiguous_with_previous(1)  # the stale slots 16..18 were overwritten
    got = list(replay_logs.read_run(tmp_path))
    assert len(got) == 1
    np.testing.assert_array_equal(got[0].observations, np.stack(first.frames))


def test_the_final_dump_ignores_its_stale_rows(tmp_path, replay_logs_dir):
    frames = next(replay_logs.read_run(replay_logs_dir / "Pong" / "1" / "replay_logs")).observations
    rng = np.random.default_rng(1)
    buffer = replay_logs.LoggedReplayBuffer(tmp_path, capacity=30)
    episodes = [_feed(buffer, frames, length, rng) for length in (20, 12, 8)]
    buffer.log_final_buffer()  # rows 29..48 are new; slots 19..28 still hold the first dump's rows
    got = list(replay_logs.read_run(tmp_path))
    assert [e.num_steps for e in got] == [20, 12, 8]
    np.testing.assert_array_equal(got[-1].observations, np.stack(episodes[-1].frames))


@pytest.mark.parametrize("fault", ["truncated", "not gzip", "wrong length", "wrong dtype", "missing"])
def test_broken_files_are_named_in_one_line_errors(tmp_path, replay_logs_dir, fault):
    import shutil

    log_dir = tmp_path / "replay_logs"
    shutil.copytree(replay_logs_dir / "Breakout" / "1" / "replay_logs", log_dir)
    path = replay_logs.log_file(log_dir, "$store$_reward", 1)
    if fault == "truncated":
        path = replay_logs.log_file(log_dir, "$store$_observation", 1)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
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
