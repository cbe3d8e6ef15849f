"""mgdt-convert: the RLDS episodes it writes, resuming, and what it does with bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import convert, replay_logs
from mgdt_jax import atari
from mgdt_jax.data import step_store


def _episodes(data_dir):
    source = tfds.builder_from_directory(data_dir).as_data_source("train")
    return [source[i] for i in range(len(source))]


def test_episodes_follow_rlds_step_semantics(rlds_dataset_dir, replay_logs_dir):
    episodes = _episodes(rlds_dataset_dir)
    logged = {game: list(replay_logs.read_run(replay_logs_dir / game / "1" / "replay_logs"))
              for game in ("Breakout", "Pong")}
    assert [e["game"].decode() for e in episodes] == ["Breakout"] * len(logged["Breakout"]) + ["Pong"]
    for episode, want in zip(episodes, logged["Breakout"] + logged["Pong"]):
        game = episode["game"].decode()
        steps = list(episode["steps"])
        assert len(steps) == want.num_steps + 1
        np.testing.assert_array_equal(np.stack([s["observation"][..., 0] for s in steps[:-1]]), want.observations)
        np.testing.assert_array_equal([s["action"] for s in steps[:-1]], want.actions)
        np.testing.assert_array_equal([s["is_first"] for s in steps], [True] + [False] * want.num_steps)
        np.testing.assert_array_equal([s["is_last"] for s in steps], [False] * want.num_steps + [True])
        np.testing.assert_array_equal([s["discount"] for s in steps], [1.0] * want.num_steps + [0.0])
        last = steps[-1]
        np.testing.assert_array_equal(last["observation"], steps[-2]["observation"])
        assert (last["action"], last["reward"], bool(last["is_terminal"])) == (0, 0.0, True)  # game over
        assert episode["episode_return"] == pytest.approx(want.rewards.sum())
        assert (episode["checkpoint_id"], episode["last_checkpoint_id"], episode["episode_id"]) == (
            want.checkpoint_id, want.last_checkpoint_id, want.episode_id)
        assert episode["run"] == 1
        assert tuple(episode["minimal_action_set"]) == atari.MINIMAL_ACTION_SETS[game]
    report = json.loads((rlds_dataset_dir / convert.REPORT_FILE).read_text())["totals"]
    assert report["episodes"] == len(episodes) and report["shards"] == 8
    assert report["dropped_partial_episodes"] == 2  # each recording stops mid-episode


def test_truncated_episodes_end_without_a_terminal(replay_logs_dir, tmp_path):
    shutil.copytree(replay_logs_dir / "Breakout", tmp_path / "logs" / "Breakout")
    convert.convert(tmp_path / "logs", tmp_path / "data", max_episode_steps=175, progress=False)
    lengths = [(len(e["steps"]) - 1, bool(e["steps"][len(e["steps"]) - 1]["is_terminal"]))
               for e in _episodes(tmp_path / "data")]
    assert (175, False) in lengths and all(terminal == (n != 175) for n, terminal in lengths)


@pytest.fixture
def logs(replay_logs_dir, tmp_path):
    """A copy of the recorded logs that a test may break."""
    shutil.copytree(replay_logs_dir, tmp_path / "logs")
    return tmp_path / "logs"


def _run(capsys, *args):
    """Exit code, stdout, and the last line of stderr (above it: the progress bar)."""
    code = convert.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.rstrip("\n").split("\n")[-1].split("\r")[-1]


def test_rerun_converts_only_missing_shards(logs, tmp_path, capsys):
    out = tmp_path / "data"
    bad = replay_logs.log_file(logs / "Pong" / "1" / "replay_logs", "$store$_terminal", 2)
    good = bad.read_bytes()
    bad.write_bytes(good[:10])
    code, _, err = _run(capsys, "--logs", logs, "--out", out)
    assert code == 1 and err.startswith("mgdt-convert: error: ") and f"{bad}: unreadable" in err
    assert not (out / "dataset_info.json").exists()  # not loadable: not every shard is there
    assert not (out / step_store.INDEX_DIR / step_store.MANIFEST).exists()
    with pytest.raises(Exception):
        tfds.builder_from_directory(out)
    bad.write_bytes(good)
    code, summary, _ = _run(capsys, "--logs", logs, "--out", out)
    assert code == 0 and summary.count("\n") == 1 and f"into 8 shards at {out}" in summary
    shards = json.loads((out / convert.REPORT_FILE).read_text())["shards"]
    # Breakout's shards were complete; the first run stopped at Pong's checkpoint 0, whose only
    # episode runs on into the broken checkpoint 2.
    assert [bool(s.get("resumed")) for s in shards] == [True] * 4 + [False] * 4
    assert len(_episodes(out)) == 7
    assert sum(part.episodes for part in step_store.open_index(out).parts) == 7


def test_rerun_builds_the_index_of_shards_converted_without_one(replay_logs_dir, rlds_dataset_dir, tmp_path, capsys):
    """A dataset converted before the window index existed gets it from a rerun of the same command."""
    out = tmp_path / "data"
    shutil.copytree(rlds_dataset_dir, out, ignore=shutil.ignore_patterns(step_store.INDEX_DIR))
    code, summary, _ = _run(capsys, "--logs", replay_logs_dir, "--out", out)
    assert code == 0 and f"window index: {out / step_store.INDEX_DIR}" in summary
    assert all(s["resumed"] for s in json.loads((out / convert.REPORT_FILE).read_text())["shards"])
    for part in step_store.open_index(out).parts:
        assert Path(part.path).read_bytes() == (Path(step_store.index_dir(rlds_dataset_dir)) / Path(part.path).name).read_bytes()


def test_a_missing_file_stops_before_anything_is_written(logs, tmp_path, capsys):
    missing = replay_logs.log_file(logs / "Breakout" / "1" / "replay_logs", "$store$_action", 3)
    missing.unlink()
    code, _, err = _run(capsys, "--logs", logs, "--out", tmp_path / "data")
    assert code == 1 and f"{missing}: missing" in err and not (tmp_path / "data").exists()


def test_skip_records_bad_checkpoints(logs, tmp_path, capsys):
    corrupt = replay_logs.log_file(logs / "Breakout" / "1" / "replay_logs", "$store$_observation", 0)
    corrupt.write_bytes(corrupt.read_bytes()[:3000])
    code, summary, _ = _run(capsys, "--logs", logs, "--out", tmp_path / "data", "--on-bad-checkpoint", "skip")
    assert code == 0 and "1 skipped checkpoints" in summary
    shards = json.loads((tmp_path / "data" / convert.REPORT_FILE).read_text())["shards"]
    skipped = [s for s in shards if s["status"] == "skipped"]
    assert [(s["game"], s["checkpoint"]) for s in skipped] == [("Breakout", 0)]
    assert str(corrupt) in skipped[0]["error"]
    episodes = _episodes(tmp_path / "data")
    assert [(e["game"], e["checkpoint_id"]) for e in episodes] == [
        (b"Breakout", 1), (b"Breakout", 1), (b"Breakout", 2), (b"Breakout", 3), (b"Pong", 0)]
    parts = step_store.open_index(tmp_path / "data").parts
    assert [part.episodes for part in parts] == [0, 2, 1, 1, 1, 0, 0, 0]  # the skipped shard: empty


@pytest.mark.parametrize("case", ["unknown game", "empty", "another dataset", "not a run", "unknown runner"])
def test_bad_input_fails_with_one_line_and_writes_nothing(logs, rlds_dataset_dir, tmp_path, capsys, case):
    out, options = tmp_path / "data", []
    if case == "unknown game":
        (logs / "Pongg").mkdir()
        expected = f"{logs / 'Pongg'}: unknown game 'Pongg'"
    elif case == "empty":
        logs = tmp_path / "empty"
        logs.mkdir()
        expected = f"{logs}: no replay logs found"
    elif case == "another dataset":
        out = tmp_path / "other"
        shutil.copytree(rlds_dataset_dir, out)
        shutil.rmtree(logs / "Pong")
        expected = f"{out}: holds a conversion of other logs"
    elif case == "not a run":
        (logs / "Pong" / "latest").mkdir()
        expected = f"{logs / 'Pong' / 'latest'}: expected a run number"
    else:
        options = ["--runner", "SparkRunnr"]
        expected = "--runner SparkRunnr: Unexpected pipeline runner"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    code, _, err = _run(capsys, "--logs", logs, "--out", out, *options)
    assert code == 1 and err.startswith("mgdt-convert: error: ")
    assert expected in err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_beam_direct_runner_writes_the_same_episodes(replay_logs_dir, rlds_dataset_dir, tmp_path, capsys):
    out = tmp_path / "data"
    code, summary, _ = _run(capsys, "--logs", replay_logs_dir, "--out", out, "--runner", "DirectRunner",
                            "--beam-option=--direct_num_workers=2")
    assert code == 0 and f"into 8 shards at {out}" in summary

    def contents(data_dir):
        return [(e["game"], e["checkpoint_id"], e["episode_id"], np.stack([s["observation"] for s in e["steps"]]),
                 [s["action"] for s in e["steps"]], [s["reward"] for s in e["steps"]]) for e in _episodes(data_dir)]

    for beam_episode, local_episode in zip(contents(out), contents(rlds_dataset_dir), strict=True):
        assert beam_episode[:3] == local_episode[:3] and beam_episode[4:] == local_episode[4:]
        np.testing.assert_array_equal(beam_episode[3], local_episode[3])
    # The same window index, but for the fingerprints of the shards (their bytes differ, not their episodes).
    beam_index, local_index = (json.loads(Path(step_store.index_dir(d), step_store.MANIFEST).read_text())
                               for d in (out, rlds_dataset_dir))
    for beam_part, local_part in zip(beam_index.pop("parts"), local_index.pop("parts"), strict=True):
        assert beam_part.pop("shard")["name"] == local_part.pop("shard")["name"] and beam_part == local_part
        files = [Path(step_store.index_dir(d), beam_part["file"]) for d in (out, rlds_dataset_dir)]
        assert files[0].read_bytes() == files[1].read_bytes()
    assert beam_index == local_index


def test_records_are_what_tfds_would_serialize(replay_logs_dir):
    from data_pipelines import rlds_format

    episode = next(replay_logs.read_run(replay_logs_dir / "Breakout" / "1" / "replay_logs"))
    example = rlds_format.episode_to_example(episode, "Breakout", 1)
    assert rlds_format.serialize_episode(episode, "Breakout", 1) == rlds_format.features().serialize_example(example)


def test_converting_and_reading_need_no_tensorflow(replay_logs_dir, rlds_dataset_dir, tmp_path):
    import subprocess
    import sys

    script = f"""
import importlib.util, sys
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] == "tensorflow" else find_spec(name, package))
class HideTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, HideTensorFlow())
import tensorflow_datasets as tfds
from data_pipelines import convert
convert.convert({str(replay_logs_dir)!r}, {str(tmp_path / "data")!r}, progress=False)
for data_dir in ({str(rlds_dataset_dir)!r}, {str(tmp_path / "data")!r}):
    source = tfds.builder_from_directory(data_dir).as_data_source("train")
    print(len(source), source[6]["game"].decode(), len(source[6]["steps"]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["7 Pong 961"] * 2
