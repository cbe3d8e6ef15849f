"""mgdt-record: what is played is what the logs, and the dataset converted from them, give back."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import convert, record, replay_logs, replay_shards
from mgdt_jax.envs import atari


@dataclasses.dataclass
class PlayedEpisode:
    frames: list
    actions: list
    rewards: list


class WatchingPolicy(record.RandomPolicy):
    """The random policy, also keeping every frame, action and reward it went through."""

    def __init__(self, num_actions, seed):
        super().__init__(num_actions, seed)
        self.episodes = []

    def begin_episode(self, observation):
        self.episodes.append(PlayedEpisode([observation.copy()], [super().begin_episode(observation)], []))
        return self.episodes[-1].actions[-1]

    def step(self, reward, observation):
        episode = self.episodes[-1]
        episode.rewards.append(reward)
        episode.frames.append(observation.copy())
        episode.actions.append(super().step(reward, observation))
        return episode.actions[-1]

    def end_episode(self, reward):
        self.episodes[-1].rewards.append(reward)


@pytest.fixture(scope="module", params=["2019", "2022"])
def played(tmp_path_factory, request):
    """Breakout recorded with a dump every 64 rows and a 150-step time limit, in the 2019 layout and
    in newer Dopamine's, plus what was played."""
    policies = []

    def watching(game, seed, ale):
        policies.append(WatchingPolicy(len(atari.MINIMAL_ACTION_SETS[game]), seed))
        return policies[-1]

    out = tmp_path_factory.mktemp("played")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(record.POLICIES, "watching", watching)
        result = record.record("Breakout", steps=900, out=out, capacity=64, max_episode_steps=150,
                               policy="watching", seed=3, progress=False, layout=request.param)
    finished = [e for e in policies[0].episodes if len(e.rewards) == len(e.actions)]
    return result.log_dir, finished


def test_reading_gives_back_every_finished_episode_exactly(played):
    log_dir, finished = played
    episodes = list(replay_logs.read_run(log_dir, max_episode_steps=150))
    assert len(episodes) == len(finished) >= 4
    for got, want in zip(episodes, finished):
        np.testing.assert_array_equal(got.observations, np.stack(want.frames))
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert got.truncated == (len(want.actions) == 150)
    assert any(e.truncated for e in episodes) and not all(e.truncated for e in episodes)
    # Episodes are longer than a dump, so they were stitched across several checkpoint files.
    assert all(e.last_checkpoint_id > e.checkpoint_id for e in episodes if e.num_steps > 64)


def test_dumps_follow_the_logging_trigger_and_end_with_a_partial_one(played):
    log_dir, _ = played
    suffixes = replay_logs.list_checkpoints(log_dir)
    add_counts = [replay_logs.load_checkpoint(log_dir, s).add_count for s in suffixes]
    # 900 rows plus 3 padding rows per episode: full dumps at 63, 127, ..., then the cursor.
    assert add_counts[:-1] == [64 * (k + 1) - 1 for k in range(len(suffixes) - 1)]
    assert 0 <= add_counts[-1] < 63


def test_each_checkpoint_yields_the_episodes_starting_in_it(played):
    log_dir, finished = played
    reader = replay_logs.RunReader(log_dir, max_episode_steps=150)
    per_checkpoint = {s: list(reader.episodes(s)) for s in reader.suffixes}
    lengths = [e.num_steps for s in reader.suffixes for e in per_checkpoint[s]]
    assert lengths == [len(e.actions) for e in finished]
    for suffix, episodes in per_checkpoint.items():
        assert [e.episode_id for e in episodes] == list(range(len(episodes)))
        assert all(e.checkpoint_id == suffix for e in episodes)




def test_record_convert_read_gives_back_what_was_played(played, tmp_path):
    log_dir, finished = played
    convert.convert(log_dir.parent.parent.parent, tmp_path / "data", max_episode_steps=150, progress=False)
    source = tfds.builder_from_directory(tmp_path / "data").as_data_source("train")
    assert len(source) == len(finished)
    for index, want in enumerate(finished):
        steps = list(source[index]["steps"])
        frames = np.stack([s["observation"] for s in steps])  # [T + 1, 84, 84, 1]
        np.testing.assert_array_equal(frames[:-1, :, :, 0], np.stack(want.frames))
        np.testing.assert_array_equal([s["action"] for s in steps[:-1]], want.actions)
        np.testing.assert_array_equal([s["reward"] for s in steps[:-1]], want.rewards)


def test_unknown_game_and_existing_logs_are_refused(played, capsys):
    log_dir, _ = played
    assert record.main(["--game", "Pongg", "--steps", "10", "--out", str(log_dir)]) == 2
    assert "unknown game 'Pongg'" in capsys.readouterr().err
    out = log_dir.parent.parent.parent
    assert record.main(["--game", "breakout", "--steps", "10", "--out", str(out)]) == 2
    assert f"{log_dir}: already holds replay logs" in capsys.readouterr().err


def test_cli_writes_the_logged_format(tmp_path, capsys):
    assert record.main(["--game", "Pong", "--steps", "50", "--capacity", "20", "--run", "2",
                        "--sticky-actions", "0", "--out", str(tmp_path)]) == 0
    log_dir = tmp_path / "Pong" / "2" / "replay_logs"
    assert capsys.readouterr().out.strip().endswith(f"to {log_dir}")
    # 3 padding rows + 50 steps: full dumps at add_count 19 and 39, then the final one (cursor 13).
    assert replay_logs.list_checkpoints(log_dir) == [0, 1, 2]
    checkpoint = replay_logs.load_checkpoint(log_dir, 2)
    assert checkpoint.add_count == 13 and checkpoint.num_rows == 14
    assert set(checkpoint.actions) <= set(range(len(atari.MINIMAL_ACTION_SETS["Pong"])))


def test_an_interrupted_recording_leaves_no_logs_that_look_finished(tmp_path, monkeypatch):
    add = replay_logs.LoggedReplayBuffer.add
    rows = []

    def add_then_interrupt(self, *args, **kwargs):
        rows.append(None)
        if len(rows) == 45:  # after two dumps of 20 rows, each complete on its own
            raise KeyboardInterrupt
        return add(self, *args, **kwargs)

    monkeypatch.setattr(replay_logs.LoggedReplayBuffer, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        record.record("Pong", steps=60, out=tmp_path, capacity=20, progress=False)
    log_dir = tmp_path / "Pong" / "1" / "replay_logs"
    assert not log_dir.exists()
    assert replay_logs.list_checkpoints(log_dir.with_name("replay_logs.partial")) == [0, 1]
    with pytest.raises(replay_shards.ConversionError, match="1: holds an interrupted mgdt-record"):
        replay_shards.discover_shards(tmp_path)
    monkeypatch.setattr(replay_logs.LoggedReplayBuffer, "add", add)
    result = record.record("Pong", steps=60, out=tmp_path, capacity=20, progress=False)  # a rerun starts over
    assert result.log_dir == log_dir and replay_logs.list_checkpoints(log_dir) == [0, 1, 2, 3]
    assert not log_dir.with_name("replay_logs.partial").exists()


def test_a_capacity_beyond_memory_is_refused_in_one_line(tmp_path, capsys):
    args = ["--game", "Pong", "--capacity", "1000000000", "--out", str(tmp_path)]
    assert record.main([*args, "--steps", "1000000000"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mgdt-record: error: capacity 1000000000 needs 6") and error.endswith("lower the capacity")
    assert not any(tmp_path.rglob("*.gz"))


@pytest.mark.parametrize("flags, expected", [
    (["--max-episode-steps", "536870912"], "--max-episode-steps 536870912: ALE takes episode caps of 1 to 536870911"),
    (["--run", "-1"], "--run must be >= 0, got -1"),
    (["--out", "notes/logs"], "--out {tmp}/notes/logs: cannot be created ({tmp}/notes is not a folder)"),
])
def test_an_episode_cap_run_or_output_no_run_can_use_is_refused_in_one_line(tmp_path, capsys, flags, expected):
    (tmp_path / "notes").write_text("kept")
    flags = [str(tmp_path / flag) if flag == "notes/logs" else flag for flag in flags]
    expected = expected.format(tmp=tmp_path)
    assert record.main(["--game", "Pong", "--steps", "10", "--out", str(tmp_path / "logs"), *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"mgdt-record: error: {expected}")
    assert not (tmp_path / "logs").exists()


def test_a_buffer_the_address_space_refuses_leaves_no_folder(tmp_path, capsys, monkeypatch):
    # The check against free memory passes a capacity that only reserving its address space finds
    # too large (10**11 rows here); the empty .partial it left was later reported by mgdt-convert as
    # an interrupted recording. The refusal is simulated: some kernels overcommit any size.
    def refused(log_dir, *args, **kwargs):  # as the real one: its folder made, then the arrays refused
        log_dir.mkdir(parents=True)
        raise MemoryError

    monkeypatch.setattr(replay_logs, "LoggedReplayBuffer", refused)
    assert record.main(["--game", "Pong", "--steps", "500", "--out", str(tmp_path / "logs"),
                        "--capacity", str(10**11)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "mgdt-record: error: capacity 100000000000: cannot allocate its buffer of")
    assert not (tmp_path / "logs").exists()



def test_a_second_recording_of_a_run_at_once_is_refused_and_leaves_the_first_alone(tmp_path, capsys):
    # It restarted the first one's replay_logs.partial under it: one failed, and the other's logs replaced it.
    from data_pipelines.record import RECORDING_CLAIM
    from tests.processes import another_process_holding

    run = tmp_path / "logs" / "Boxing" / "1"
    (run / "replay_logs.partial").mkdir(parents=True)
    (run / "replay_logs.partial" / "dump").write_text("the first one's")
    with another_process_holding(run / RECORDING_CLAIM) as first:
        assert record.main(["--game", "Boxing", "--steps", "300", "--out", str(tmp_path / "logs")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mgdt-record: error: {run / 'replay_logs'}: another mgdt-record of Boxing run 1 (process {first.pid}) is "
        "writing there; wait for it or choose another folder")
    assert (run / "replay_logs.partial" / "dump").read_text() == "the first one's"
