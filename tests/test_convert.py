"""mgdt-convert: the RLDS episodes it writes, resuming, and what it does with bad input."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import build_index, convert, replay_logs, replay_shards
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import step_store
from mgdt_jax.recipes.mgdt.rlds_source import DataError
from mgdt_jax.recipes.mgdt.step_store import open_index


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


@pytest.mark.parametrize("layout", replay_logs.LAYOUTS)
def test_time_limited_episodes_end_without_a_terminal_in_every_layout(tmp_path, capsys, write_time_limited_run,
                                                                       layout):
    # 4 Pong episodes of 30 (time limit), 10, 30 (time limit) and 12 rows, logged as Dopamine of
    # that layout writes them; the first time-limit end is the last row of dump 0 (capacity 34).
    fed = write_time_limited_run(tmp_path / "logs" / "Pong" / "1" / "replay_logs", layout, capacity=34)
    code, summary, _ = _run(capsys, "--logs", tmp_path / "logs", "--out", tmp_path / "data", "--max-episode-steps", 30)
    assert code == 0 and "converted 4 episodes (82 steps" in summary and "2 truncated by the time limit" in summary
    episodes = _episodes(tmp_path / "data")
    assert [(len(e["steps"]) - 1, bool(e["steps"][len(e["steps"]) - 1]["is_terminal"])) for e in episodes] == [
        (30, False), (10, True), (30, False), (12, True)]
    for episode, (_, (frames, actions, _)) in zip(episodes, fed):
        steps = list(episode["steps"])[:-1]
        np.testing.assert_array_equal(np.stack([s["observation"][..., 0] for s in steps]), frames)
        np.testing.assert_array_equal([s["action"] for s in steps], actions)
    totals = json.loads((tmp_path / "data" / convert.REPORT_FILE).read_text())["totals"]
    assert (totals["episodes"], totals["truncated_episodes"], totals["dropped_partial_episodes"]) == (4, 2, 1)


@pytest.mark.parametrize("layout, max_steps, expected", [
    ("2019", 20, "row 23 (slot 23) is not padding"),
    ("2022", 20, "runs past --max-episode-steps 20; pass the time limit these logs were written with"),
    ("2021", 27_000, "holds 3 padding rows (zero frames, action 0, reward 0) after 30 steps, where no end is "
                     "marked: an end by a time limit of 30 steps? (pass --max-episode-steps 30)"),
])
def test_logs_of_another_time_limit_stop_with_one_line(tmp_path, capsys, write_time_limited_run, layout, max_steps,
                                                        expected):
    write_time_limited_run(tmp_path / "logs" / "Pong" / "1" / "replay_logs", layout, capacity=40)
    code, _, err = _run(capsys, "--logs", tmp_path / "logs", "--out", tmp_path / "data",
                        "--max-episode-steps", max_steps)
    assert code == 1 and err.startswith("mgdt-convert: error: ") and expected in err
    assert not (tmp_path / "data" / "dataset_info.json").exists()


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
    job = out / replay_shards.PROGRESS_DIR / "job.json"
    job_text = job.read_text()
    job.write_text("{cut")
    code, _, err = _run(capsys, "--logs", logs, "--out", out)
    assert code == 1 and err.strip().startswith(f"mgdt-convert: error: {job}: unreadable (") and "\n" not in err.strip()
    job.write_text(job_text)
    first_report = sorted((out / replay_shards.PROGRESS_DIR).glob("00000_*.json"))[0]
    first_report.write_text("{cut")  # a damaged shard report: that shard is converted again
    code, summary, _ = _run(capsys, "--logs", logs, "--out", out)
    assert code == 0 and summary.count("\n") == 1 and f"into 8 shards at {out}" in summary
    shards = json.loads((out / convert.REPORT_FILE).read_text())["shards"]
    # Breakout's shards were complete but for the damaged report; the first run stopped at Pong's
    # checkpoint 0, whose only episode runs on into the broken checkpoint 2.
    assert [bool(s.get("resumed")) for s in shards] == [False] + [True] * 3 + [False] * 4
    assert len(_episodes(out)) == 7
    assert sum(part.episodes for part in step_store.open_index(out).parts) == 7
    code, summary, _ = _run(capsys, "--logs", logs, "--out", out)  # all done: the rate counts none of the skipped steps
    assert code == 0 and ", 0 steps/s," in summary


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


@pytest.mark.parametrize("store, value, fault", [
    ("action", 99, "action 99 outside Breakout's 4 actions (logs of another game?)"),
    ("action", -1, "action -1 outside Breakout's 4 actions (logs of another game?)"),
    ("reward", np.nan, "reward nan is not a finite number"),
])
def test_values_no_game_has_stop_the_conversion_naming_the_file(logs, tmp_path, capsys, store, value, fault):
    # An action of 99 was an IndexError traceback; -1 and a NaN reward were written (exit 0).
    log_dir = logs / "Breakout" / "1" / "replay_logs"
    checkpoint = replay_logs.load_checkpoint(log_dir, 1)
    path = replay_logs.log_file(log_dir, "$store$_" + store, 1)
    array = replay_logs._load_npy(path)
    array[checkpoint.slots[len(checkpoint.slots) // 2]] = value
    replay_logs._write_array(path, array)
    code, _, err = _run(capsys, "--logs", logs, "--out", tmp_path / "data")
    assert (code, err) == (1, f"mgdt-convert: error: {path}: {fault}")


@pytest.mark.parametrize("store, change, fault", [
    ("action", lambda a: a.astype(np.float64), "expected int32 [rows], found float64 [400]"),
    ("action", lambda a: a[:10], "expected float32 [10] (the rows of $store$_action_ckpt.1.gz), found float32 [400]"),
])
def test_arrays_of_another_type_or_length_are_named_with_what_was_expected(logs, tmp_path, capsys, store, change,
                                                                            fault):
    # A float action array was "expected int32 []" (read as a scalar); a short one blamed the
    # reward file without saying where its expected length came from.
    log_dir = logs / "Breakout" / "1" / "replay_logs"
    path = replay_logs.log_file(log_dir, "$store$_" + store, 1)
    replay_logs._write_array(path, change(replay_logs._load_npy(path)))
    named = path if "[rows]" in fault else replay_logs.log_file(log_dir, "$store$_reward", 1)
    code, _, err = _run(capsys, "--logs", logs, "--out", tmp_path / "data")
    assert (code, err) == (1, f"mgdt-convert: error: {named}: {fault}")


def test_one_run_under_two_spellings_is_refused_not_converted_twice(logs, tmp_path, capsys):
    shutil.copytree(logs / "Pong" / "1", logs / "PONG" / "01")  # game names are case-blind, run numbers numbers
    code, _, err = _run(capsys, "--logs", logs, "--out", tmp_path / "data")
    assert (code, err) == (1, f"mgdt-convert: error: {logs / 'Pong' / '1'}: the same run as {logs / 'PONG' / '01'} "
                              "(Pong run 1); its episodes would be converted twice")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("source", ["--logs", "--from-tfds"])
def test_a_second_conversion_into_the_same_out_at_once_is_refused(logs, rlds_dataset_dir, tmp_path, capsys, source):
    # The second wrote the same shards beside the first and ended in a raw rename error.
    out = tmp_path / "data"
    if source == "--logs":
        convert.prepare_output(out, replay_shards.discover_shards(logs), replay_logs.DEFAULT_MAX_EPISODE_STEPS)
    else:
        logs = tmp_path / "tfr"
        _write_tfrecord_copy(rlds_dataset_dir, logs)
        out.mkdir()
    with convert.converting_into(out):  # the first conversion, still running
        code, _, err = _run(capsys, source, logs, "--out", out)
        assert (code, err) == (1, f"mgdt-convert: error: {out}: another mgdt-convert (process {os.getpid()}) is "
                                  "writing there; wait for it or choose another folder")
    assert not (out / convert.CONVERTING_CLAIM).exists()
    # A claim naming this process's id that this process does not hold: left by a killed run whose
    # container restarted (the command is process 1 again), it read as a live holder for good.
    (out / convert.CONVERTING_CLAIM).write_text(f"{os.getpid()}\n")
    code, _, err = _run(capsys, source, logs, "--out", out)
    assert code == 0, err


def test_skip_records_bad_checkpoints(logs, tmp_path, capsys):
    corrupt = replay_logs.log_file(logs / "Breakout" / "1" / "replay_logs", "$store$_observation", 0)
    corrupt.write_bytes(corrupt.read_bytes()[:3000])
    code, summary, err = _run(capsys, "--logs", logs, "--out", tmp_path / "data", "--on-bad-checkpoint", "skip")
    assert code == 0 and "1 skipped checkpoints" in summary
    # Named on the console too: the summary said only how many (and a folder of nothing is removed).
    assert f"warning: Breakout run 1 checkpoint 0 skipped (--on-bad-checkpoint skip): {corrupt}: " in err
    shards = json.loads((tmp_path / "data" / convert.REPORT_FILE).read_text())["shards"]
    skipped = [s for s in shards if s["status"] == "skipped"]
    assert [(s["game"], s["checkpoint"]) for s in skipped] == [("Breakout", 0)]
    assert str(corrupt) in skipped[0]["error"]
    episodes = _episodes(tmp_path / "data")
    assert [(e["game"], e["checkpoint_id"]) for e in episodes] == [
        (b"Breakout", 1), (b"Breakout", 1), (b"Breakout", 2), (b"Breakout", 3), (b"Pong", 0)]
    parts = step_store.open_index(tmp_path / "data").parts
    assert [part.episodes for part in parts] == [0, 2, 1, 1, 1, 0, 0, 0]  # the skipped shard: empty


@pytest.mark.parametrize("case", ["unknown game", "empty", "another dataset", "not a run", "unknown runner",
                                  "dataflow as documented", "out inside logs", "negative workers", "bad workers",
                                  "misspelt option", "flag Beam cannot take", "value without a flag",
                                  "end of options", "single dash", "value of a flag without one", "runner", "help",
                                  "space in a name", "bad value as the next option"])
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
    elif case == "out inside logs":  # its folder would be read as a run of Pong at the next start
        out = logs / "Pong" / "data"
        expected = f"{out}: inside --logs {logs}"
    elif case in ("negative workers", "bad workers"):
        workers = "-3" if case == "negative workers" else "many"
        options = ["--runner", "DirectRunner", f"--beam-option=--direct_num_workers={workers}"]
        expected = ("--beam-option=--direct_num_workers=-3: must be >= 0" if case == "negative workers"
                    else "--beam-option: argument --direct_num_workers: invalid int value: 'many'")
    elif case == "misspelt option":  # Beam would drop it with a warning and run with the default (one worker a core)
        options = ["--runner", "DirectRunner", "--beam-option=--direct_num_worker=2"]
        expected = ("--beam-option=--direct_num_worker: the DirectRunner knows no such option "
                    "(did you mean --direct_num_workers?)")
    elif case == "flag Beam cannot take":  # Beam's argparse printed its whole usage
        options = ["--runner", "DirectRunner", "--beam-option=--save_main_session=True"]
        expected = "--beam-option: argument --save_main_session: ignored explicit argument 'True'"
    elif case == "value without a flag":  # Beam would drop it silently
        options = ["--runner", "DirectRunner", "--beam-option=--direct_num_workers=2", "--beam-option=4"]
        expected = "--beam-option=4: not a flag (write --beam-option=--NAME=VALUE)"
    elif case in ("end of options", "single dash"):  # Beam would drop it and what follows it
        options = ["--runner", "DirectRunner", "--beam-option=--" if case == "end of options" else "--beam-option=-x",
                   "--beam-option=foo"]
        expected = f"--beam-option={'--' if case == 'end of options' else '-x'}: not a flag"
    elif case in ("runner", "help", "space in a name"):  # another runner than checked; Beam's usage, exit 0; misread
        option = {"runner": "--runner=FlinkRunner", "help": "--help", "space in a name": "--direct_num_workers 2"}[case]
        options = ["--runner", "DirectRunner", f"--beam-option={option}"]
        expected = {"runner": "--beam-option=--runner: not for --beam-option (give mgdt-convert's --runner)",
                    "help": "--beam-option=--help: not for --beam-option",
                    "space in a name": "--beam-option=--direct_num_workers 2: a space in a flag's name"}[case]
    elif case == "bad value as the next option":  # Beam's own error, not advice to drop the value
        options = ["--runner", "DirectRunner", "--beam-option=--direct_num_workers", "--beam-option=abc"]
        expected = "--beam-option: argument --direct_num_workers: invalid int value: 'abc'"
    elif case == "value of a flag without one":  # --streaming false would stream: Beam drops the "false"
        options = ["--runner", "DirectRunner", "--beam-option=--streaming", "--beam-option=false"]
        expected = "--beam-option=false: dropped by Beam, --streaming takes no value (write --beam-option=--streaming alone)"
    elif case == "unknown runner":
        options = ["--runner", "SparkRunnr"]
        expected = "--runner SparkRunnr: Unexpected pipeline runner"
    else:
        # docs/data.md's Dataflow command with its placeholders: Beam would raise with a traceback
        # (no GCP extra in this install, or invalid project and bucket names).
        options = ["--runner", "DataflowRunner", "--beam-option=--project=PROJECT", "--beam-option=--region=REGION",
                   "--beam-option=--temp_location=gs://BUCKET/tmp"]
        expected = "--runner DataflowRunner: "
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    code, _, err = _run(capsys, "--logs", logs, "--out", out, *options)
    assert code == 1 and err.startswith("mgdt-convert: error: ")
    assert expected in err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_logs_without_a_complete_episode_are_refused_and_leave_no_output(tmp_path, capsys):
    from data_pipelines import record

    record.record("Pong", steps=300, out=tmp_path / "logs", capacity=200, seed=0, progress=False)  # no game ends
    out = tmp_path / "new" / "data"
    code, _, err = _run(capsys, "--logs", tmp_path / "logs", "--out", out)
    assert (code, err) == (1, f"mgdt-convert: error: {out}: the logs hold no complete episode (1 unfinished "
                              "episode(s) dropped); record until an episode ends")
    assert not (tmp_path / "new").exists()  # was shards, a progress folder and no dataset_info.json
    out.mkdir(parents=True)
    (out.parent / "notes").write_text("kept")
    code, _, err = _run(capsys, "--logs", tmp_path / "logs", "--out", out)  # an empty folder given: left empty
    assert code == 1 and list(out.iterdir()) == [] and (out.parent / "notes").read_text() == "kept"


def test_a_shorter_time_limit_shows_even_when_no_episode_is_marked_as_ended(tmp_path, capsys):
    # 2021 layout: a time-limited end is marked nowhere, so at the default limit every episode
    # read as one unfinished episode, dropped unchecked: "no complete episode" hid the cause.
    from data_pipelines import record

    record.record("Breakout", steps=300, out=tmp_path / "logs", capacity=400, seed=0, progress=False,
                  max_episode_steps=30, layout="2021")
    code, _, err = _run(capsys, "--logs", tmp_path / "logs", "--out", tmp_path / "data")
    assert code == 1 and err.endswith("holds 3 padding rows (zero frames, action 0, reward 0) after 30 steps, where no "
                                      "end is marked: an end by a time limit of 30 steps? (pass --max-episode-steps 30)")
    assert not (tmp_path / "data" / "dataset_info.json").exists()


def test_an_out_under_a_file_is_named_before_any_reading(logs, tmp_path, capsys):
    (tmp_path / "notes").write_text("kept")
    code, _, err = _run(capsys, "--logs", logs, "--out", tmp_path / "notes" / "data")
    assert (code, err) == (1, f"mgdt-convert: error: --out {tmp_path / 'notes' / 'data'}: cannot be created "
                              f"({tmp_path / 'notes'} is not a folder)")
    assert (tmp_path / "notes").read_text() == "kept"


def test_options_that_reach_the_runner_are_not_refused():
    from data_pipelines import beam_pipeline

    # Flink and Spark hand options Beam does not declare to their job server (Dataflow too).
    beam_pipeline.check_runner("FlinkRunner", ["--flink_master=localhost:8081", "--flink_submit_uber_jar",
                                               "--checkpointing_interval=1000"])
    beam_pipeline.check_runner("SparkRunner", ["--spark_submit_uber_jar", "--storage_level=MEMORY_ONLY"])
    beam_pipeline.check_runner("DirectRunner", ["--direct_num_workers", "2"])  # a flag's value as the next option
    beam_pipeline.check_runner("FlinkRunner", ["--flink_master", "localhost:8081", "--parallelism", "-1"])
    beam_pipeline.check_runner("PortableRunner", ["--job_endpoint", "localhost:8099", "--my_option", "on"])  # not Beam's


def test_the_direct_runner_is_found_by_any_spelling_and_gets_a_worker_per_core():
    import os

    from apache_beam.options.pipeline_options import DirectOptions

    from data_pipelines import beam_pipeline

    # "directrunner" ran Beam's own DirectRunner, in one process, with options unchecked.
    assert [beam_pipeline.runner_name(name) for name in ("directrunner", "direct", "FlinkRunner", "SparkRunnr")] == [
        "DirectRunner", "DirectRunner", "FlinkRunner", "SparkRunnr"]
    # With a running mode given, Beam's default was one worker, where the docs say one per core.
    options = beam_pipeline.pipeline_options("DirectRunner", ["--direct_running_mode=multi_threading"])
    assert options.view_as(DirectOptions).direct_num_workers == (os.cpu_count() or 1)
    assert options.view_as(DirectOptions).direct_running_mode == "multi_threading"


def test_beam_options_without_a_beam_runner_are_refused(logs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        convert.main(["--logs", str(logs), "--out", str(tmp_path / "data"), "--beam-option=--direct_num_workers=2"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mgdt-convert: error: --beam-option applies to a Beam --runner only, not --runner local")
    assert not (tmp_path / "data").exists()


def test_a_shard_replaced_by_one_of_another_length_is_named_by_mgdt_index(rlds_dataset_dir, tmp_path, capsys):
    # Episodes are read by index over all shards: an empty shard copied over a full one handed out
    # other shards' records ("unknown game 'None'").
    data = tmp_path / "data"
    shutil.copytree(rlds_dataset_dir, data)
    shutil.rmtree(step_store.index_dir(data))
    shards = sorted(data.glob("*.array_record-*"))
    lengths = [part.episodes for part in step_store.open_index(rlds_dataset_dir).parts]
    full, empty = lengths.index(max(lengths)), lengths.index(0)
    shutil.copyfile(shards[empty], shards[full])
    assert build_index.main([str(data), "--no-progress", "--workers", "1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mgdt-index: error: {shards[full]}: holds 0 episodes where dataset_info.json counts {max(lengths)}: replaced or "
        "damaged; convert the logs again")


@pytest.mark.parametrize("size", [0, 100_000])
def test_a_shard_cut_short_is_named_by_mgdt_index(rlds_dataset_dir, tmp_path, capsys, size):
    # array_record raised a bare RuntimeError (a traceback) on opening an empty file or closing a cut one.
    data = tmp_path / "data"
    shutil.copytree(rlds_dataset_dir, data)
    shutil.rmtree(step_store.index_dir(data))
    lengths = [part.episodes for part in step_store.open_index(rlds_dataset_dir).parts]
    shard = sorted(data.glob("*.array_record-*"))[lengths.index(max(lengths))]
    with open(shard, "r+b") as file:
        file.truncate(min(size, shard.stat().st_size // 2))
    assert build_index.main([str(data), "--no-progress", "--workers", "1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mgdt-index: error: {shard}: not a readable array_record shard (damaged or replaced); convert the logs again")


@pytest.mark.parametrize("info", ["", "{cut", '{"name": 5}'])
def test_a_damaged_dataset_info_is_one_line_from_mgdt_index(rlds_dataset_dir, tmp_path, capsys, info):
    data = tmp_path / "data"
    shutil.copytree(rlds_dataset_dir, data)
    (data / "dataset_info.json").write_text(info)
    assert build_index.main([str(data), "--no-progress"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"mgdt-index: error: {data}: cannot open as an RLDS dataset (") and "\n" not in error


def test_beam_direct_runner_writes_the_same_episodes(replay_logs_dir, rlds_dataset_dir, tmp_path, capsys, monkeypatch):
    import tempfile

    out = tmp_path / "data"
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code, summary, _ = _run(capsys, "--logs", replay_logs_dir, "--out", out, "--runner", "DirectRunner",
                            "--beam-option=--direct_num_workers=2")
    assert code == 0 and f"into 8 shards at {out}" in summary
    # Beam's DirectRunner first tried its Prism runner (a binary downloaded from GitHub at run time)
    # and, offline, left the empty folder of that attempt's job server.
    assert not list((tmp_path / "tmp").glob("beam-temp*"))

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
    from tensorflow.core.example.example_pb2 import Example

    assert Example.FromString(rlds_format.serialize_episode(episode, "Breakout", 1)) == Example.FromString(
        rlds_format.features().serialize_example(example))


def test_converting_and_reading_need_no_tensorflow(replay_logs_dir, rlds_dataset_dir, tmp_path, run_without_tensorflow):
    result = run_without_tensorflow(f"""
import tensorflow_datasets as tfds
from data_pipelines import convert
convert.convert({str(replay_logs_dir)!r}, {str(tmp_path / "data")!r}, progress=False)
for data_dir in ({str(rlds_dataset_dir)!r}, {str(tmp_path / "data")!r}):
    source = tfds.builder_from_directory(data_dir).as_data_source("train")
    print(len(source), source[6]["game"].decode(), len(source[6]["steps"]))
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["7 Pong 961"] * 2


def _write_tfrecord_copy(data_dir, out_dir):
    """Our dataset as TFDS writes one by default: the same records and shards, in TFRecord files."""
    import tensorflow as tf
    from tensorflow_datasets.core import dataset_info

    info = dataset_info.read_proto_from_builder_dir(data_dir)
    [split] = dataset_info.get_split_dict_from_proto(info, data_dir=data_dir).values()
    records = tfds.builder_from_directory(data_dir).as_data_source(
        "train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    out_dir.mkdir(parents=True)
    template = split.filename_template.replace(data_dir=out_dir, filetype_suffix="tfrecord")
    start = 0
    for index, length in enumerate(split.shard_lengths):
        path = template.sharded_filepath(shard_index=index, num_shards=len(split.shard_lengths))
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in range(start, start + length):
                writer.write(records[record])
        start += length
    shutil.copy(data_dir / "features.json", out_dir)
    info.file_format = "tfrecord"
    (out_dir / "dataset_info.json").write_text(dataset_info.get_dataset_info_json(info))


def test_the_command_recommended_for_tfrecord_datasets_runs_and_gives_them_back(rlds_dataset_dir, tmp_path):
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from mgdt_jax.recipes.mgdt.rlds_source import DataError, RldsDataset

    tfrecord_dir = tmp_path / "tensorflow_datasets" / "dqn_replay" / "1.0.0"
    _write_tfrecord_copy(rlds_dataset_dir, tfrecord_dir)
    with pytest.raises(DataError) as error:
        RldsDataset(tfrecord_dir)
    command = shlex.split(str(error.value).split("`")[1].replace("NEW_DIR", str(tmp_path / "converted")))
    assert command[0] == "mgdt-convert"
    # Run as installed: the console script next to this Python, or (in a bare checkout) the module
    # pyproject.toml names for it.
    script = Path(sys.executable).parent / "mgdt-convert"
    from mgdt_jax.cli import scripts
    assert scripts.mgdt_convert.module == "data_pipelines.convert"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "data_pipelines.convert"]
    root = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(program + command[1:], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f"converted {tfrecord_dir} (7 episodes, 8 shards) to array_record at "
                                     f"{tmp_path / 'converted'}, with its window index")
    converted, original = RldsDataset(tmp_path / "converted"), RldsDataset(rlds_dataset_dir)
    assert len(converted) == len(original) == 7
    assert open_index(tmp_path / "converted").num_episodes == open_index(rlds_dataset_dir).num_episodes == 7  # trainable
    for index in range(len(original)):
        got, want = converted[index], original[index]
        assert got.game == want.game
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        np.testing.assert_array_equal(got.frames(range(len(got))), want.frames(range(len(want))))


@pytest.mark.parametrize("case", ["array_record already", "corrupt shard", "out holds a dataset", "not a dataset",
                                  "out inside a dataset"])
def test_from_tfds_bad_input_fails_with_one_line(rlds_dataset_dir, tmp_path, capsys, case):
    tfrecord_dir = tmp_path / "tfr"
    _write_tfrecord_copy(rlds_dataset_dir, tfrecord_dir)
    source, out = tfrecord_dir, tmp_path / "out"
    if case == "out inside a dataset":  # written, exit 0, but never found: readers stop at the outer dataset_info.json
        shutil.copytree(rlds_dataset_dir, tmp_path / "outer")
        out = tmp_path / "outer" / "nested"
        expected = f"{tmp_path / 'outer'}: holds a dataset (dataset_info.json), and datasets written below it"
    elif case == "array_record already":
        source, expected = rlds_dataset_dir, f"{rlds_dataset_dir}: already stored as array_record"
    elif case == "corrupt shard":
        shard = sorted(tfrecord_dir.glob("*.tfrecord-00003-of-00008"))[0]
        shard.write_bytes(shard.read_bytes()[:100])
        expected = f"{shard}: unreadable ("
    elif case == "out holds a dataset":
        shutil.copytree(rlds_dataset_dir, out)  # the same dataset would be taken as converted: make it another
        info = json.loads((out / "dataset_info.json").read_text())
        (out / "dataset_info.json").write_text(json.dumps({**info, "description": "another dataset"}))
        expected = f"{out}: already holds another dataset; choose another --out"
    else:
        source, expected = tmp_path / "empty", f"{tmp_path / 'empty'}: holds no TFDS dataset"
        source.mkdir()
    code, _, err = _run(capsys, "--from-tfds", source, "--out", out)
    assert code == 1 and err.startswith("mgdt-convert: error: ") and expected in err
    if case not in ("out holds a dataset", "out inside a dataset"):
        assert not list(out.rglob("dataset_info.json"))  # nothing that looks like a dataset


def test_from_tfds_indexes_each_dataset_as_it_is_converted(rlds_dataset_dir, tmp_path, capsys):
    data = tmp_path / "tensorflow_datasets"
    _write_tfrecord_copy(rlds_dataset_dir, data / "a")
    _write_tfrecord_copy(rlds_dataset_dir, data / "b")
    shard = sorted((data / "b").glob("*.tfrecord-00003-of-00008"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    code, _, err = _run(capsys, "--from-tfds", data, "--out", tmp_path / "out")
    assert code == 1 and f"{shard}: unreadable (" in err
    # The dataset converted before the failure is whole: shards, metadata and the index training reads.
    assert (tmp_path / "out" / "a" / step_store.INDEX_DIR / step_store.MANIFEST).exists()
    assert not (tmp_path / "out" / "b" / "dataset_info.json").exists()
    # Once the damaged source is replaced, the same command finishes: "a" is kept, "b" converted.
    shutil.rmtree(data / "b")
    _write_tfrecord_copy(rlds_dataset_dir, data / "b")
    kept = sorted(p.stat().st_mtime_ns for p in (tmp_path / "out" / "a").glob("*.array_record-*"))
    code, _, err = _run(capsys, "--from-tfds", data, "--out", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "out" / "a").glob("*.array_record-*")) == kept
    for name in ("a", "b"):
        assert (tmp_path / "out" / name / step_store.INDEX_DIR / step_store.MANIFEST).exists()


def test_other_recordings_of_the_same_checkpoints_are_converted_again_unless_finished(tmp_path, capsys):
    # The job named games, runs and checkpoints only: the earlier shards were kept, "converted", exit 0;
    # then a finished dataset was replaced by the other logs' conversion without a word.
    from data_pipelines import record

    for seed, logs in ((0, "first"), (1, "second")):
        record.record("Breakout", steps=600, out=tmp_path / logs, capacity=200, seed=seed, progress=False)
    for logs, out in (("first", "data"), ("second", "fresh")):
        assert _run(capsys, "--logs", tmp_path / logs, "--out", tmp_path / out)[0] == 0

    def actions(data_dir):
        return [[int(step["action"]) for step in episode["steps"]] for episode in _episodes(data_dir)]

    finished = actions(tmp_path / "data")
    code, _, err = _run(capsys, "--logs", tmp_path / "second", "--out", tmp_path / "data")
    assert code == 1 and err == (f"mgdt-convert: error: {tmp_path / 'data'}: a finished conversion of other logs "
                                 "(Breakout_run1_ckpt000's log files have other sizes than those it was converted "
                                 "from); choose an empty --out, or remove it to convert these logs there")
    assert actions(tmp_path / "data") == finished
    for last in (convert.REPORT_FILE, "dataset_info.json"):  # as a conversion stopped before its end leaves it
        (tmp_path / "data" / last).unlink()
    assert _run(capsys, "--logs", tmp_path / "second", "--out", tmp_path / "data")[0] == 0
    assert actions(tmp_path / "data") == actions(tmp_path / "fresh") != finished
    reports = json.loads((tmp_path / "data" / convert.REPORT_FILE).read_text())["shards"]
    assert not any(report.get("resumed") for report in reports)


def test_training_on_a_tfrecord_dataset_says_to_convert_it(rlds_dataset_dir, tmp_path):
    # It said "has no window index ... build it with mgdt-index", which then said to convert it first.
    _write_tfrecord_copy(rlds_dataset_dir, tmp_path / "tfr")
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'tfr'))}: not stored as array_record \(training "
                                        r"reads episodes by index\); convert it with `mgdt-convert --from-tfds "):
        step_store.open_index(tmp_path / "tfr")


def test_a_full_disk_is_one_line_naming_where_it_wrote(tmp_path, monkeypatch):
    # array_record's bare RuntimeError at a shard's close was a traceback; an OSError of a flush named no file.
    from data_pipelines import rlds_writer
    from mgdt_jax.core import files

    class FullDisk:
        def __init__(self, path, options):
            self.path = path

        def write(self, record):
            pass

        def close(self):
            raise RuntimeError("write() failed: No space left on device; writing x.partial; Failed to close chunk_writer")

    monkeypatch.setattr(rlds_writer, "ArrayRecordWriter", FullDisk)
    shard = tmp_path / "shard-00000-of-00001"
    with pytest.raises(OSError, match=rf"^{re.escape(str(shard))}: cannot be written \(write\(\) failed: No space left "
                                      r"on device\)$"):
        with rlds_writer.shard_writer(shard) as write:
            write(b"episode")
    assert not list(tmp_path.iterdir())
    assert files.error_line(OSError(28, "No space left on device"), tmp_path) == (
        f"{tmp_path}: cannot be written (No space left on device)")
    assert files.error_line(OSError(2, "No such file or directory", "/x"), tmp_path).endswith("'/x'")
    # A metadata file written on a full disk: the flush's error named no file.
    monkeypatch.setattr(Path, "write_text", lambda self, text: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match=rf"No space left on device: '{re.escape(str(tmp_path / 'metadata.json'))}'$"):
        files.write_text(tmp_path / "metadata.json", "{}")
