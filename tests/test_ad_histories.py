"""Learning histories as RLDS: exact round trips, the mgdt-ad-histories CLI, and bad input."""

import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader

from data_pipelines import ad_histories, rlds_writer
from mgdt_jax import envs
from mgdt_jax.recipes.ad import sources
from mgdt_jax.recipes.ad.histories import Histories, HistoryError, read_histories
from tests.processes import another_process_holding

EPISODES, PER_TASK, SEED = 4, 2, 5


@pytest.fixture(scope="module")
def darkroom_tasks():
    return jax.tree.map(lambda leaf: leaf[:4], envs.get("darkroom").task_split(0)[0])


@pytest.fixture(scope="module")
def darkroom_dir(tmp_path_factory, darkroom_tasks):
    """3 goals x 2 Q-learning histories x 4 episodes, 4 histories per shard (so 2 shards)."""
    out = tmp_path_factory.mktemp("histories") / "darkroom"
    three = jax.tree.map(lambda leaf: leaf[:3], darkroom_tasks)
    ad_histories.write_histories(envs.get("darkroom"), sources.make_source("q_learning"), three, out, seed=SEED,
                                 episodes_per_history=EPISODES, histories_per_task=PER_TASK, histories_per_shard=4,
                                 split={"side": "train"}, progress=False)
    return out


def _expected(darkroom_tasks):
    """The same histories straight from the generator, in the writer's chunks of 2 tasks."""
    env, source = envs.get("darkroom"), sources.make_source("q_learning")
    chunks = [sources.rollout(env, source, jax.tree.map(lambda leaf: leaf[i:i + 2], darkroom_tasks), SEED, EPISODES,
                              PER_TASK, first_history_id=PER_TASK * i) for i in (0, 2)]
    return sources.Rollout(*(np.concatenate([np.asarray(getattr(c, f)) for c in chunks])[:6]
                             for f in sources.Rollout._fields))


def test_histories_round_trip_exactly(darkroom_dir, darkroom_tasks):
    expected = _expected(darkroom_tasks)
    read = read_histories(darkroom_dir, env_name="darkroom", source="q_learning")
    want = sources.to_histories(expected, envs.get("darkroom"), sources.make_source("q_learning"))
    for field in ("observations", "actions", "rewards", "task_ids"):
        np.testing.assert_array_equal(getattr(read, field), getattr(want, field), err_msg=field)
        assert getattr(read, field).dtype == getattr(want, field).dtype
    assert read.observations.shape == (6, EPISODES * 20)
    assert (read.env_name, read.source, read.episode_length, read.num_actions, read.num_observations) == (
        "darkroom", "q_learning", 20, 5, 81)
    np.testing.assert_array_equal(read.metadata["history_ids"], np.arange(6))
    settings = read.metadata
    assert settings["source"] == {"name": "q_learning", "learning_rate": 0.5, "discount": 0.9, "epsilon": 0.1,
                                  "initial_value": 1.0}
    assert (settings["seed"], settings["episodes_per_history"], settings["histories_per_task"]) == (SEED, 4, 2)
    assert settings["env"]["size"] == 9 and settings["split"] == {"side": "train"}


def test_worker_processes_write_the_same_records(darkroom_dir, darkroom_tasks, tmp_path):
    out = tmp_path / "darkroom"
    three = jax.tree.map(lambda leaf: leaf[:3], darkroom_tasks)
    ad_histories.write_histories(envs.get("darkroom"), sources.make_source("q_learning"), three, out, seed=SEED,
                                 episodes_per_history=EPISODES, histories_per_task=PER_TASK, histories_per_shard=4,
                                 split={"side": "train"}, progress=False, workers=2)
    shards = sorted(path.name for path in darkroom_dir.glob("*.array_record-*"))
    assert len(shards) == 2 and sorted(path.name for path in out.glob("*.array_record-*")) == shards
    for name in shards:  # the examples, not the bytes: a proto map's order varies from process to process
        ours, theirs = ([tf.train.Example.FromString(record) for record in ArrayRecordReader(str(d / name)).read_all()]
                        for d in (darkroom_dir, out))
        assert ours and ours == theirs
    ours, theirs = read_histories(darkroom_dir), read_histories(out)
    for field in ("observations", "actions", "rewards", "task_ids"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))


def test_each_rl_episode_is_one_rlds_episode(darkroom_dir, darkroom_tasks):
    expected = _expected(darkroom_tasks)
    records = tfds.builder_from_directory(darkroom_dir).as_data_source("train")
    assert len(records) == 6 * EPISODES
    for i in range(len(records)):
        episode = records[i]
        h, e = divmod(i, EPISODES)
        assert (episode["history_id"], episode["episode_index"], episode["task_id"]) == (
            h, e, expected.task_ids[h])
        assert (episode["env_name"], episode["source"]) == (b"darkroom", b"q_learning")
        steps = episode["steps"]
        observations = [s["observation"] for s in steps]
        assert len(observations) == 21
        np.testing.assert_array_equal(observations[:20], expected.observations[h, e])
        assert observations[20] == expected.final_observations[h, e]
        assert [s["is_first"] for s in steps] == [True] + [False] * 20
        assert [s["is_last"] for s in steps] == [False] * 20 + [True]
        assert not any(s["is_terminal"] for s in steps)  # Dark Room episodes end at the time limit
        assert (steps[20]["action"], steps[20]["reward"], steps[20]["discount"]) == (0, 0.0, 0.0)
        assert episode["episode_return"] == pytest.approx(expected.rewards[h, e].sum())


def test_records_are_what_tfds_would_serialize(darkroom_tasks):
    from tensorflow.core.example.example_pb2 import Example

    rollout = sources.Rollout(*(np.asarray(leaf) for leaf in _expected(darkroom_tasks)))
    serialize = rlds_writer.RecordSerializer(ad_histories.features())
    for example in list(ad_histories.episode_examples(rollout, "darkroom", "q_learning"))[:8]:
        assert Example.FromString(serialize(example)) == Example.FromString(
            ad_histories.features().serialize_example(example))


def _cli(capsys, *args):
    code = ad_histories.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.rstrip("\n").split("\n")[-1].split("\r")[-1]


def test_cli_writes_bandit_histories_end_to_end(tmp_path, capsys):
    out = tmp_path / "bandit"
    code, summary, _ = _cli(capsys, "--env", "bandit", "--source", "thompson", "--episodes", 10, "--num-train", 8,
                            "--num-heldout", 8, "--histories-per-task", 2, "--histories-per-shard", 4, "--seed", 1,
                            "--workers", 1, "--out", out)  # workers: test_worker_processes_write_the_same_records
    assert code == 0 and summary.count("\n") == 1
    assert summary.startswith("wrote 16 histories x 10 episodes (160 steps, 4 shards") and str(out) in summary
    histories = read_histories(out, env_name="bandit", source="thompson")
    assert histories.observations.shape == (16, 10) and not histories.observations.any()
    np.testing.assert_array_equal(histories.task_ids, np.repeat(np.arange(8), 2))
    assert set(np.unique(histories.rewards)) <= {0.0, 1.0}
    assert histories.metadata["split"] == {"side": "train", "seed": 0, "num_train": 8, "num_heldout": 8}
    assert not list(tmp_path.glob("*.partial"))


def test_cli_marks_terminal_episodes(tmp_path, capsys):
    out = tmp_path / "k2d"
    code, summary, _ = _cli(capsys, "--env", "key_to_door", "--source", "expert", "--episodes", 2, "--split",
                            "heldout", "--num-heldout", 2, "--out", out)
    assert code == 0 and "last episode 2.000" in summary
    heldout = envs.get("key_to_door").task_split(0, num_heldout=2)[1]
    histories = read_histories(out, exclude_task_ids=envs.get("key_to_door").task_split(0, num_heldout=2)[0].id)
    np.testing.assert_array_equal(histories.task_ids, heldout.id)
    for episode in tfds.builder_from_directory(out).as_data_source("train"):
        steps = episode["steps"]
        assert steps[len(steps) - 1]["is_terminal"] and steps[len(steps) - 1]["observation"] == 162


@pytest.mark.parametrize("args, message", [
    (["--env", "darkroom", "--source", "thompson"], "thompson: needs a bandit"),
    (["--env", "darkroom", "--source", "q_learning", "--num-train", 70], "overlaps (only 81 tasks exist)"),
    (["--env", "darkroom", "--source", "q_learning", "--param", "alpha=1"], "unknown setting(s) ['alpha']"),
    (["--env", "darkroom", "--source", "q_learning", "--param", "epsilon"], "expected KEY=VALUE"),
    (["--env", "darkroom", "--source", "q_learning", "--param", "learning_rate=nan"],
     "source q_learning: learning_rate nan is outside (0, 1]"),
    (["--env", "bandit", "--source", "thompson", "--param", "prior_alpha=-1"],
     "source thompson: prior_alpha -1.0 is outside (0, inf)"),
    (["--env", "darkroom", "--source", "ad_epsilon", "--param", "start_epsilon=1.5"],
     "source ad_epsilon: start_epsilon 1.5 is outside [0, 1]"),
])
def test_cli_bad_requests_fail_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    code, _, err = _cli(capsys, *args, "--episodes", 2, "--out", tmp_path / "out")
    assert code == 1 and err.startswith("mgdt-ad-histories: error: ") and message in err
    assert not list(tmp_path.iterdir())


def test_an_output_under_a_file_is_named_by_its_flag_before_any_rollout(tmp_path, capsys):
    (tmp_path / "notes").write_text("kept")
    out = tmp_path / "notes" / "histories"
    code, _, err = _cli(capsys, "--env", "darkroom", "--source", "q_learning", "--episodes", 2, "--out", out)
    assert (code, err) == (1, f"mgdt-ad-histories: error: --out {out}: cannot be created ({tmp_path / 'notes'} is not a folder)")
    assert [path.name for path in tmp_path.iterdir()] == ["notes"] and (tmp_path / "notes").read_text() == "kept"


def test_a_negative_split_size_is_named_by_its_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        _cli(capsys, "--env", "darkroom", "--source", "q_learning", "--num-heldout", -1, "--episodes", 2,
             "--out", tmp_path / "out")
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "mgdt-ad-histories: error: --num-heldout -1: must not be negative"
    assert not list(tmp_path.iterdir())


def test_cli_refuses_an_existing_output(darkroom_dir, capsys):
    code, _, err = _cli(capsys, "--env", "darkroom", "--source", "q_learning", "--episodes", 2, "--out", darkroom_dir)
    assert code == 1 and err == f"mgdt-ad-histories: error: {darkroom_dir}: already exists; choose a new --out"


def test_a_second_run_into_the_same_out_at_once_is_refused_and_leaves_the_first_alone(tmp_path, capsys):
    # It deleted the first run's OUT.partial: both failed, one with a traceback.
    claim = tmp_path / ".bandit.writing"
    (tmp_path / "bandit.partial").mkdir()
    (tmp_path / "bandit.partial" / "shard").write_text("the first run's")
    with another_process_holding(claim) as first:  # a run writing tmp_path/bandit
        code, _, err = _cli(capsys, "--env", "bandit", "--source", "thompson", "--episodes", 2, "--out",
                            tmp_path / "bandit")
    assert code == 1 and err == (f"mgdt-ad-histories: error: {tmp_path / 'bandit'}: another mgdt-ad-histories (process "
                                 f"{first.pid}) is writing there; wait for it or choose another folder")
    assert (tmp_path / "bandit.partial" / "shard").read_text() == "the first run's" and claim.exists()


def test_a_full_disk_is_one_line_naming_the_shard_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    # array_record's write() raised a bare RuntimeError: a traceback (through concurrent.futures with workers).
    class FullDisk:
        def __init__(self, path, options):
            self.path = path

        def write(self, record):
            raise RuntimeError(f"write() failed: No space left on device; writing {self.path}")

        def close(self):
            raise RuntimeError("Failed to close chunk_writer")

    monkeypatch.setattr(rlds_writer, "ArrayRecordWriter", FullDisk)
    code, _, err = _cli(capsys, "--env", "bandit", "--source", "thompson", "--episodes", 2, "--workers", 1,
                        "--out", tmp_path / "bandit")
    shard = tmp_path / "bandit.partial" / "ad_histories-train.array_record-00000-of-00040"  # 10,000 tasks, 256 a shard
    assert code == 1 and err == (f"mgdt-ad-histories: error: {shard}: cannot be written (write() failed: No space "
                                 "left on device)")
    assert not list(tmp_path.iterdir())


def test_an_interrupted_write_leaves_nothing(tmp_path, darkroom_tasks, monkeypatch):
    calls = []

    def failing(self, example):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return b"x"

    monkeypatch.setattr(rlds_writer.RecordSerializer, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        ad_histories.write_histories(envs.get("darkroom"), sources.make_source("q_learning"), darkroom_tasks,
                                     tmp_path / "out", seed=0, episodes_per_history=EPISODES,
                                     histories_per_task=PER_TASK, histories_per_shard=4, progress=False)
    assert not list(tmp_path.iterdir())


def test_read_refuses_data_it_was_not_asked_for(darkroom_dir, tmp_path):
    cases = [
        (dict(directory=tmp_path / "missing"), "no such directory"),
        (dict(directory=tmp_path), "cannot open as a learning-history dataset"),
        (dict(directory=darkroom_dir, env_name="key_to_door"), "histories of 'darkroom', not of the 'key_to_door'"),
        (dict(directory=darkroom_dir, source="a2c"), "source 'q_learning', not of the 'a2c'"),
        (dict(directory=darkroom_dir, exclude_task_ids=[80, 0, 36]), "tasks [0, 36]: the task split overlaps"),
    ]
    for kwargs, message in cases:
        with pytest.raises(HistoryError) as error:
            read_histories(**kwargs)
        assert message in str(error.value) and "\n" not in str(error.value)
        assert str(kwargs["directory"]) in str(error.value)
    with pytest.raises(HistoryError, match=r"^an empty dataset path \(an unset shell variable\?\)$"):
        read_histories("")  # not the current folder
    other = tmp_path / "other"
    other.mkdir()
    rlds_writer.write_dataset_info(other, name="dqn_replay", version="1.0.0", module_name=__name__,
                                   features=ad_histories.features(), split="train", shard_lengths=[], num_bytes=0,
                                   description="")
    with pytest.raises(HistoryError, match="holds the 'dqn_replay' dataset, not 'ad_histories'"):
        read_histories(other)


@pytest.mark.parametrize("damage", ["shard cut short", "shard garbage", "shard deleted", "dataset_info.json empty"])
def test_a_damaged_dataset_is_one_line_naming_what_is_damaged(darkroom_dir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(darkroom_dir, copy)
    shard = sorted(copy.glob("*.array_record*"))[-1]
    if damage == "shard cut short":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "shard garbage":
        shard.write_bytes(np.random.default_rng(0).bytes(shard.stat().st_size))
    elif damage == "shard deleted":
        shard.unlink()
    else:
        (copy / "dataset_info.json").write_text("")
    with pytest.raises(HistoryError) as error:
        read_histories(copy)
    message = str(error.value)
    assert "\n" not in message
    if damage == "dataset_info.json empty":
        assert message.startswith(f"{copy}: ") and "cannot open as a learning-history dataset (ParseError: " in message
    elif damage == "shard deleted":
        assert message.startswith(f"{shard}: unreadable (No such file")
    else:  # the damaged shard alone, by its digest (the reader's error listed every shard of the episodes read)
        assert message == (f"{shard}: not the shard mgdt-ad-histories wrote here (its SHA-256 differs from "
                           "metadata.json's): replaced or damaged; regenerate the dataset")


def test_a_shard_of_another_recording_swapped_in_is_refused(darkroom_dir, darkroom_tasks, tmp_path):
    # Another seed's shard of the same environment and source passed every other check and was trained on.
    other = tmp_path / "seed1"
    three = jax.tree.map(lambda leaf: leaf[:3], darkroom_tasks)
    ad_histories.write_histories(envs.get("darkroom"), sources.make_source("q_learning"), three, other, seed=SEED + 1,
                                 episodes_per_history=EPISODES, histories_per_task=PER_TASK, histories_per_shard=4,
                                 split={"side": "train"}, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(darkroom_dir, copy)
    shard = sorted(copy.glob("*.array_record*"))[-1]
    shutil.copy(other / shard.name, shard)
    with pytest.raises(HistoryError, match=rf"^{re.escape(str(shard))}: not the shard mgdt-ad-histories wrote here "
                                           r"\(its SHA-256 differs from metadata.json's\): replaced or damaged"):
        read_histories(copy)


def test_histories_check_their_layout():
    ok = dict(observations=np.zeros((2, 40)), actions=np.zeros((2, 40)), rewards=np.zeros((2, 40)),
              task_ids=[0, 1], env_name="darkroom", episode_length=20, num_actions=5, num_observations=81,
              source="q_learning")
    histories = Histories(**ok)
    assert histories.observations.dtype == np.int32 and histories.episodes_per_history == 2
    for change, message in [(dict(rewards=np.zeros((2, 39))), "share one"),
                            (dict(task_ids=[0]), "task_ids has shape"),
                            (dict(episode_length=30), "whole number of 30-step episodes"),
                            (dict(actions=np.full((2, 40), 5)), "actions outside [0, 5)")]:
        with pytest.raises(HistoryError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            Histories(**{**ok, **change})


def test_reading_and_writing_need_no_tensorflow(darkroom_dir, run_without_tensorflow):
    result = run_without_tensorflow(f"""
from data_pipelines import ad_histories
from mgdt_jax.recipes.ad.histories import read_histories
print(read_histories({str(darkroom_dir)!r}).observations.shape)
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(6, 80)"


def test_sigterm_stops_the_workers_and_leaves_nothing(tmp_path):
    # Python's default action for SIGTERM (a scheduler's stop) left OUT.partial, the claim and the workers.
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "data_pipelines.ad_histories", "--env", "darkroom", "--source", "q_learning",
         "--episodes", "3000", "--workers", "2", "--histories-per-shard", "4", "--out", str(tmp_path / "darkroom")],
        env={**os.environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 120
    while not any((tmp_path / "darkroom.partial").glob("*.array_record-*")):  # both workers writing shards
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "nothing written after 120 s"
        time.sleep(0.1)
    process.terminate()
    _, stderr = process.communicate(timeout=60)  # returns once the workers, which share its stderr, are gone too
    assert process.returncode == -signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "mgdt-ad-histories: terminated (SIGTERM)" and "Traceback" not in stderr
    assert not list(tmp_path.iterdir())
