"""mgdt-jat-record: the RLDS datasets it writes for BabyAI and Meta-World, the references stored
with them, resuming, and its one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.jat import experts, record, rlds
from mgdt_jax.envs import gym_tasks
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import references
from tests.processes import another_process_holding

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TASKS = ("babyai-go-to-local", "babyai-rgb-go-to-red-ball-grey", "metaworld-reach")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Each task recorded once: 6 bot episodes (2 for Meta-World's 500-step ones) and as many random."""
    out = tmp_path_factory.mktemp("jat")
    summaries = {}
    for task in TASKS:
        episodes = 2 if task.startswith("metaworld") else 6
        summaries[task] = record.record([task], out, episodes, seed=3, random_episodes=episodes, progress=False)[0]
    return out, summaries


def _read(dataset_dir):
    source = tfds.builder_from_directory(dataset_dir).as_data_source("train")
    return [source[i] for i in range(len(source))]


def test_babyai_symbolic_fields_and_steps(recorded):
    out, summaries = recorded
    episodes = _read(out / "babyai-go-to-local")
    assert len(episodes) == 6 == summaries["babyai-go-to-local"]["episodes"]
    for episode in episodes:
        fields = jat_fields.episode_fields(episode)
        assert set(fields) == {"discrete_observations", "text_observations", "discrete_actions", "rewards"}
        steps = len(fields["rewards"])
        assert fields["discrete_observations"].shape == (steps, 148)
        assert fields["discrete_observations"].dtype == np.int64
        assert set(fields["discrete_observations"][:, 0]) <= {0, 1, 2, 3}  # direction first
        assert fields["discrete_observations"][:, 1:].max() <= 10  # object, colour and state ids
        assert fields["discrete_actions"].dtype == np.int64 and set(fields["discrete_actions"]) <= set(range(7))
        assert len(set(fields["text_observations"])) == 1 and fields["text_observations"][0].startswith("go to ")
        assert episode["episode_return"] == pytest.approx(fields["rewards"].sum())
        last = episode["steps"][steps]
        assert last["is_last"] and last["is_terminal"] and last["reward"] == 0  # the bot reached the goal
        assert [bool(episode["steps"][t]["is_first"]) for t in range(steps + 1)] == [True] + [False] * steps


def test_babyai_rgb_is_the_image_task(recorded):
    out, _ = recorded
    fields = jat_fields.episode_fields(_read(out / "babyai-rgb-go-to-red-ball-grey")[0])
    assert set(fields) == {"image_observations", "text_observations", "discrete_actions", "rewards"}
    images = fields["image_observations"]
    assert images.shape == (len(fields["rewards"]), 84, 84, 3) and images.dtype == np.uint8
    # The agent is drawn red in the bottom-middle tile of its own view (on a highlighted grey floor).
    agent_tile = images[0, 72:84, 36:48].reshape(-1, 3).astype(int)
    assert ((agent_tile[:, 0] == 255) & (agent_tile[:, 1] < 100)).any()
    assert fields["text_observations"][0] == "go to the red ball"


def test_metaworld_fields_and_success(recorded):
    out, summaries = recorded
    for episode in _read(out / "metaworld-reach"):
        fields = jat_fields.episode_fields(episode)
        assert set(fields) == {"continuous_observations", "continuous_actions", "rewards"}
        assert fields["continuous_observations"].shape == (500, 39)
        assert fields["continuous_actions"].shape == (500, 4) and fields["continuous_actions"].dtype == np.float32
        assert np.abs(fields["continuous_actions"]).max() <= 1.0
        assert not episode["steps"][500]["is_terminal"]  # the 500-step limit cut it
    stored = references.load(out / "metaworld-reach")
    assert stored.expert.success_rate == 1.0 and stored.random.success_rate == 0.0
    assert set(stored.versions) == {"gymnasium", "metaworld", "mujoco"}


def test_the_metaworld_expert_adds_seeded_noise_to_the_scripted_action(recorded):
    from metaworld.policies import ENV_POLICY_MAP

    out, _ = recorded
    episode = next(iter(_read(out / "metaworld-reach")))
    fields = jat_fields.episode_fields(episode)
    observations, actions = fields["continuous_observations"], fields["continuous_actions"]  # o_t, a_t
    scripted = np.stack([ENV_POLICY_MAP["reach-v3"]().get_action(o) for o in observations])
    noise = (actions - scripted)[np.abs(actions).max(axis=1) < 1.0]  # rows the clip left alone
    assert len(noise) > 100 and abs(noise.std() - experts.METAWORLD_ACTION_NOISE) < 0.03
    first, again = (experts.ScriptedMetaWorldPolicy("reach", seed=5) for _ in range(2))
    assert np.array_equal([first.act(o) for o in observations[:5]], [again.act(o) for o in observations[:5]])
    # The recording's --seed seeds the noise (every seed drew seed 0's before)
    task = gym_tasks.get_task("metaworld-reach")
    policies = {seed: record.expert(task, None, seed) for seed in (0, 5)}
    by_seed = {seed: [policy.act(o) for o in observations[:5]] for seed, policy in policies.items()}
    fresh = experts.ScriptedMetaWorldPolicy("reach", seed=5)
    assert np.array_equal(by_seed[5], [fresh.act(o) for o in observations[:5]])
    assert not np.array_equal(by_seed[0], by_seed[5])


def test_observation_stats_are_numpys_over_the_recorded_expert_steps(recorded):
    out, _ = recorded
    observations = np.concatenate([jat_fields.episode_fields(e)["continuous_observations"]
                                   for e in _read(out / "metaworld-reach")]).astype(np.float64)
    stats = references.load(out / "metaworld-reach").observation_stats
    assert stats.steps == len(observations) == 1000
    np.testing.assert_allclose(stats.mean, observations.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.std, observations.std(axis=0), rtol=1e-7, atol=1e-12)
    assert references.load(out / "babyai-go-to-local").observation_stats is None  # no continuous observations


@pytest.mark.parametrize("task", TASKS)
def test_expert_beats_random_in_the_stored_references(recorded, task):
    out, summaries = recorded
    stored = references.load(out / task)
    returns = [float(e["episode_return"]) for e in _read(out / task)]
    assert stored.expert.mean_return == pytest.approx(np.mean(returns), rel=1e-5)
    assert stored.expert.mean_return > stored.random.mean_return
    assert references.normalized_score(stored.expert.mean_return, stored) == pytest.approx(1.0)
    assert references.normalized_score(stored.random.mean_return, stored) == pytest.approx(0.0)
    if task.startswith("babyai"):
        assert stored.expert.success_rate == 1.0 > stored.random.success_rate
    references.check_versions(stored)  # measured here, so the installed versions match


def test_rerun_skips_recorded_tasks_and_redoes_partial_ones(recorded, tmp_path):
    out, summaries = recorded
    again = record.record(["babyai-go-to-local"], out, 6, seed=3, random_episodes=6, progress=False)[0]
    assert again["resumed"] and again["references"] == summaries["babyai-go-to-local"]["references"]
    (tmp_path / "babyai-go-to-local.partial").mkdir()
    (tmp_path / "babyai-go-to-local.partial" / "shard00000.partial").write_text("cut off by a crash")
    fresh = record.record(["babyai-go-to-local"], tmp_path, 6, seed=3, random_episodes=6, progress=False)[0]
    assert not fresh["resumed"] and not (tmp_path / "babyai-go-to-local.partial").exists()
    assert fresh["references"] == summaries["babyai-go-to-local"]["references"]  # same seed, same data


@pytest.mark.parametrize("damage, fault", [
    (lambda shard: shard.unlink(), "shard {name} is missing"),
    (lambda shard: os.truncate(shard, 1000), "its shards hold 1,000 bytes, {size:,} were written"),
    (lambda shard: shard.write_bytes(shard.read_bytes()[:3000] + b"\xff\xff\xff\xff" + shard.read_bytes()[3004:]),
     "shard {name} is not the one written: its SHA-256 differs"),  # in place, same size: was "already recorded"
])
def test_a_rerun_does_not_count_a_damaged_recording_as_recorded(recorded, tmp_path, capsys, damage, fault):
    out, _ = recorded
    shutil.copytree(out / "babyai-go-to-local", tmp_path / "babyai-go-to-local")
    (shard,) = (tmp_path / "babyai-go-to-local").glob("*.array_record-*")
    size = shard.stat().st_size
    damage(shard)
    assert record.main(["babyai-go-to-local", "--episodes", "6", "--random-episodes", "6", "--seed", "3",
                        "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mgdt-jat-record: error: {tmp_path / 'babyai-go-to-local'}: damaged since it was recorded "
        f"({fault.format(name=shard.name, size=size)}); remove it to record babyai-go-to-local again")


def test_a_second_recording_of_a_task_into_the_same_out_at_once_is_refused(tmp_path, capsys):
    # It deleted the first one's OUT/<task>.partial, and the two wrote into each other's files: a
    # finished dataset labelled with one seed held the other's episodes.
    claim = rlds.writing_claim(tmp_path, "babyai-go-to-local")
    with another_process_holding(claim) as first:  # recording that task there
        assert record.main(["babyai-go-to-local", "--episodes", "2", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mgdt-jat-record: error: {tmp_path}: another mgdt-jat-record or mgdt-jat-import of babyai-go-to-local "
        f"(process {first.pid}) is writing there; wait for it or choose another folder")
    assert sorted(path.name for path in tmp_path.iterdir()) == [claim.name]


def test_cli_errors_are_one_line(recorded, capsys, tmp_path):
    out, _ = recorded
    assert record.main(["babyai-go-to-local", "--episodes", "7", "--random-episodes", "6", "--seed", "3",
                        "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().endswith("recorded with other episodes; choose another --out or remove it")
    assert record.main(["atari-pong", "--episodes", "1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "atari-pong: unknown task" in err
    assert not any(tmp_path.iterdir())
    damaged = tmp_path / "damaged"
    shutil.copytree(out / "babyai-go-to-local", damaged / "babyai-go-to-local")
    (damaged / "babyai-go-to-local" / "references.json").write_text("{not json")
    assert record.main(["babyai-go-to-local", "--episodes", "6", "--random-episodes", "6", "--seed", "3",
                        "--out", str(damaged)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith(f"mgdt-jat-record: error: {damaged / 'babyai-go-to-local'}: "
                                                    "recorded, but its summary or references are unreadable (")


def test_cli_records_and_prints_a_summary(tmp_path, capsys):
    assert record.main(["babyai-go-to-red-ball-grey", "--episodes", "2", "--random-episodes", "2",
                        "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("recorded 1 tasks (2 expert episodes") and "babyai-go-to-red-ball-grey expert" in line
    assert json.loads((tmp_path / "babyai-go-to-red-ball-grey" / "references.json").read_text())["random"]


def test_episodes_the_bot_cannot_plan_are_replaced(tmp_path, monkeypatch):
    act, calls = experts.BabyAIBotPolicy.act, {"begin": 0}
    begin = experts.BabyAIBotPolicy.begin

    def counting_begin(self, env):
        calls["begin"] += 1
        begin(self, env)

    def failing_act(self, observation):
        if calls["begin"] == 2:  # the second episode's bot fails
            raise experts.PlanningError("ValueError: no path")
        return act(self, observation)

    monkeypatch.setattr(experts.BabyAIBotPolicy, "begin", counting_begin)
    monkeypatch.setattr(experts.BabyAIBotPolicy, "act", failing_act)
    summary = record.record(["babyai-go-to-red-ball-grey"], tmp_path, 3, random_episodes=1, progress=False)[0]
    metadata = json.loads((tmp_path / "babyai-go-to-red-ball-grey" / jat_fields.METADATA_FILE).read_text())
    assert summary["episodes"] == 3 and summary["skipped_expert_episodes"] == 1
    assert metadata["skipped_expert_episodes"] == ["ValueError: no path"]
    assert references.load(tmp_path / "babyai-go-to-red-ball-grey").expert.success_rate == 1.0


@pytest.mark.parametrize("arguments,message", [
    (["babyai-go-to-local", "--seed", "-1"], "mgdt-jat-record: error: argument --seed: -1 is out of range: a seed is a whole number from 0 to 2147483647"),
    (["babyai-go-to-local", "metaworld-reach", "babyai-go-to-local"],
     "mgdt-jat-record: error: babyai-go-to-local: named more than once (a task is recorded once)"),
])
def test_cli_refuses_settings_before_recording(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        record.main([*arguments, "--episodes", "2", "--out", str(tmp_path / "out")])
    assert exit.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--out", "--experts"])
def test_cli_refuses_a_file_as_out_or_experts_before_training_or_recording(option, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(record, "record", lambda *args, **kwargs: pytest.fail("recorded despite the bad folder"))
    (tmp_path / "a-file").write_text("keep me")
    paths = {"--out": str(tmp_path / "out"), "--experts": str(tmp_path / "experts"), option: str(tmp_path / "a-file")}
    assert record.main(["mujoco-pendulum", "--episodes", "2", *(x for item in paths.items() for x in item)]) == 1
    err = capsys.readouterr().err
    assert err == f"mgdt-jat-record: error: {option} {tmp_path / 'a-file'}: exists and is not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("name, fault", [("a" * 300, "cannot be used (File name too long)"),
                                         ("new/deeper", None)])
def test_an_out_that_cannot_be_made_is_refused_before_recording_and_a_probe_leaves_nothing(name, fault, tmp_path,
                                                                                         capsys, monkeypatch):
    monkeypatch.setattr(record, "record", lambda *args, **kwargs: {})  # nothing is played either way
    out = tmp_path / name
    status = record.main(["babyai-go-to-local", "--episodes", "2", "--out", str(out)])
    if fault:
        assert (status, capsys.readouterr().err) == (1, f"mgdt-jat-record: error: --out {out}: {fault}\n")
    assert not any(tmp_path.iterdir())  # the folders made to find out are gone


def test_a_failed_recording_removes_the_out_it_created(tmp_path, monkeypatch):
    def failing(task, out_dir, *args, **kwargs):
        raise record.RecordError(f"{task.name}: fails")

    monkeypatch.setattr(record, "record_task", failing)
    with pytest.raises(record.RecordError):
        record.record(["babyai-go-to-local"], tmp_path / "new" / "out", 1, progress=False)
    assert not (tmp_path / "new").exists()


SERIALIZE_AN_EPISODE = """
import hashlib
import numpy as np
from tensorflow.core.example.example_pb2 import Example
from data_pipelines.jat import rlds
from mgdt_jax.recipes.jat.fields import TaskSpec
spec = TaskSpec("babyai-go-to-local", {"discrete_observations": (148,), "text_observations": (), "discrete_actions": (),
                                       "rewards": ()})
episode = rlds.Episode({"discrete_observations": np.arange(4 * 148).reshape(4, 148) % 11,
                        "text_observations": ["go to the red ball"] * 4}, np.array([0, 1, 2]), np.array([0, 0, 1.0]),
                       terminated=True, success=True)
record = rlds.serialize_episode(spec, episode, 7)
tfds_record = rlds.features(spec).serialize_example(rlds.episode_to_example(spec, episode, 7))
assert Example.FromString(record) == Example.FromString(tfds_record)
print(hashlib.sha256(record).hexdigest())
"""


def test_a_record_is_the_same_bytes_in_every_process():
    # Protobuf writes the Example's feature map in an order of its own per process: identical
    # recordings had shards of other digests, and a shard copied from a rerun was refused as damaged.
    digests = {subprocess.run([sys.executable, "-c", SERIALIZE_AN_EPISODE], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(3)}
    assert len(digests) == 1


def test_the_recording_speed_leaves_out_the_time_spent_making_the_expert(tmp_path, monkeypatch, capsys):
    # A MuJoCo task's PPO expert trains for minutes first: that time was divided into the steps/s.
    import time

    made = record.expert

    def slow_expert(*args, **kwargs):
        time.sleep(2.0)  # as training one would
        return made(*args, **kwargs)

    monkeypatch.setattr(record, "expert", slow_expert)
    [summary] = record.record(["babyai-go-to-red-ball-grey"], tmp_path, 2, random_episodes=2, progress=False)
    assert summary["expert_seconds"] >= 2.0 and summary["seconds"] < 2.0
    line = record.summary_line([summary], tmp_path)
    steps_per_s = float(line.split(" steps/s")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert steps_per_s == pytest.approx(summary["played_steps"] / summary["seconds"], abs=0.51)  # printed as a whole number
    assert ", after 2 s making experts)" in line


def test_a_failure_names_the_tasks_recorded_before_it(tmp_path, capsys):
    # The line named only the failing task: the one recorded before it, kept, went unmentioned.
    claim = rlds.writing_claim(tmp_path, "babyai-go-to-local")
    with another_process_holding(claim) as other:
        assert record.main(["babyai-go-to-red-ball-grey", "babyai-go-to-local", "--episodes", "2", "--random-episodes",
                            "2", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mgdt-jat-record: error: {tmp_path}: another mgdt-jat-record or mgdt-jat-import of babyai-go-to-local "
        f"(process {other.pid}) is writing there; wait for it or choose another folder; babyai-go-to-red-ball-grey "
        "recorded before it (kept)")
    assert (tmp_path / "babyai-go-to-red-ball-grey" / "references.json").exists()
