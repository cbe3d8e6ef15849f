"""JAT evaluation (mgdt_jax/recipes/jat/evaluate.py): the KV-cached vector policy equals the full
pass (across context refills), a standardising policy reads observations as its training rows do,
normalised scores and per-domain IQM against hand-computed values, BabyAI played by environments
stepped together, the report files and the CLI's version check."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from unittest import mock

import numpy as np
import pytest
from flax import nnx

from mgdt_jax.cli import jat_evaluate
from mgdt_jax.recipes.jat import evaluate, references, tokens
from mgdt_jax.recipes.jat.model import JatModel, ModelConfig

CONFIG = ModelConfig(num_layers=2, d_model=32, num_heads=2, num_steps=4, continuous_width=8, dropout_rate=0.0,
                     groups=("discrete", "continuous"))


@pytest.fixture(scope="module")
def model() -> JatModel:
    return JatModel(CONFIG, rngs=nnx.Rngs(0))


def test_cached_policy_equals_the_full_pass_over_its_context(model):
    num_envs, kept, steps = 2, CONFIG.num_steps // 2, 11
    task = evaluate.TaskInputs("continuous", continuous_observation_size=3, continuous_action_size=2,
                               num_discrete_actions=0)
    policy = evaluate.VectorPolicy(model, task, num_envs, image_shape=None)
    for env in range(num_envs):
        policy.reset(env)
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(steps, num_envs, 3)).astype(np.float32)
    rewards = rng.normal(size=(steps, num_envs)).astype(np.float32)  # rewards[t]: r_{t-1} given with o_t
    actions, start = [], 0
    for t in range(steps):
        actions.append(policy.act([{"continuous_observations": o} for o in observations[t]], rewards[t]))
        cached = policy.last_output
        if t - start >= CONFIG.num_steps:  # the policy rebuilt its context from the last `kept` steps
            start = t - kept
        window = np.arange(start, t + 1)
        expected = full_pass_actions(model, observations[window].transpose(1, 0, 2),
                                     np.stack([actions[s] for s in window], axis=1), rewards[window].T)
        np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-4, err_msg=f"step {t}")
    assert start > 0  # the context was rebuilt at least once


def full_pass_actions(model: JatModel, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray):
    """The full pass's continuous action head at the last o_t of one-episode rows of a continuous task:
    observations [N, S, D] (as the model reads them), actions [N, S, A], rewards [N, S] (r_{t-1} at t)."""
    (num, length, size), width = observations.shape, model.config.continuous_width
    batch = {
        "loss_weight": np.ones(num, np.float32), "segment": np.zeros((num, length), np.int32),
        "position": np.tile(np.arange(length, dtype=np.int32), (num, 1)),
        "rewards": rewards.astype(np.float32), "continuous_observation_size": np.full(num, size, np.int32),
        "continuous_action_size": np.full(num, actions.shape[-1], np.int32),
        "continuous_observations": np.zeros((num, length, width), np.float32),
        "continuous_actions": np.zeros((num, length, width), np.float32),
    }
    batch["continuous_observations"][..., :size] = observations
    batch["continuous_actions"][..., : actions.shape[-1]] = actions
    hidden = model(batch, deterministic=True)
    return model.continuous_actions(hidden[:, 2 * (length - 1)])


def test_a_standardising_policy_reads_observations_as_its_training_rows(jat_datasets, tmp_path):
    import tensorflow_datasets as tfds  # noqa: PLC0415  (the data side only)

    from mgdt_jax.recipes.jat import fields as jat_fields  # noqa: PLC0415
    from mgdt_jax.recipes.jat import data  # noqa: PLC0415

    config = dataclasses.replace(CONFIG, normalize_observations=True)
    model = JatModel(config, rngs=nnx.Rngs(1))
    path = tmp_path / "synthetic-continuous"
    shutil.copytree(jat_datasets["synthetic-continuous"], path)
    stats = references.ObservationStats(mean=(1.0, -2.0, 0.5, 0.0, 3.0), std=(0.5, 2.0, 1e-9, 1.0, 0.01), steps=1)
    references.save(references.TaskReferences("synthetic-continuous", "", references.Reference(0.0, 0.0, 40), None,
                                              {}, observation_stats=stats), path)
    task = data.load_task(path, config)
    raw = jat_fields.episode_fields(tfds.builder_from_directory(path).as_data_source("train")[0])
    length = int(np.argmax(task.episode_start[1:])) + 1  # the first episode's steps
    rows = task.steps["continuous_observations"][:length]
    scale = np.maximum(np.asarray(stats.std), tokens.STD_FLOOR)  # dimension 2's std is floored
    standardised = (raw["continuous_observations"] - np.asarray(stats.mean)) / scale
    np.testing.assert_allclose(rows[:, :5], standardised, rtol=1e-5)
    assert not rows[:, 5:].any()

    with pytest.raises(ValueError, match="no observation statistics were given"):
        evaluate.VectorPolicy(model, evaluate.TaskInputs("continuous", 5, 2, 0), 1, image_shape=None)
    policy = evaluate.VectorPolicy(model, evaluate.TaskInputs("continuous", 5, 2, 0), 1, image_shape=None,
                                   observation_stats=stats)
    policy.reset(0)
    actions = []
    for t in range(min(length, config.num_steps)):  # raw observations in, as an environment gives them
        actions.append(policy.act([{"continuous_observations": raw["continuous_observations"][t]}],
                                  task.previous_reward[t : t + 1])[0])
        expected = full_pass_actions(model, rows[None, : t + 1, :5], np.asarray(actions)[None],
                                     task.previous_reward[None, : t + 1])
        np.testing.assert_allclose(policy.last_output, expected, rtol=1e-4, atol=1e-4, err_msg=f"step {t}")


def test_play_task_refuses_references_without_statistics_for_a_standardising_model(tmp_path):
    pytest.importorskip("mujoco")
    model = JatModel(dataclasses.replace(CONFIG, normalize_observations=True), rngs=nnx.Rngs(0))
    refs = references.TaskReferences("mujoco-pendulum", "InvertedPendulum-v5", references.Reference(1000.0, 0.0, 20),
                                     references.Reference(5.0, 4.0, 20),
                                     references.installed_versions(("gymnasium", "mujoco")))
    with pytest.raises(references.ReferenceError, match="^mujoco-pendulum: references.json has no observation "
                                                        "statistics.*re-record or re-import the task$"):
        evaluate.play_task(model, "mujoco-pendulum", refs, episodes=10)


def result(task: str, normalized: list[float]) -> evaluate.TaskResult:
    return evaluate.TaskResult(task, evaluate.domain_of(task), list(normalized), list(normalized), 1, 1.0)


def test_domain_iqm_is_the_mean_of_the_middle_half():
    scores = np.arange(8) / 7.0
    aggregates = evaluate.domain_iqm([result("mujoco-pendulum", scores), result("metaworld-reach", scores[::-1] * 2)],
                                     reps=200)
    assert set(aggregates) == {"mujoco", "metaworld"}
    assert aggregates["mujoco"].value == pytest.approx(np.mean(np.sort(scores)[2:6]))
    assert aggregates["metaworld"].value == pytest.approx(2 * np.mean(np.sort(scores)[2:6]))
    assert aggregates["mujoco"].low <= aggregates["mujoco"].value <= aggregates["mujoco"].high
    assert evaluate.domain_of("babyai-rgb-go-to-local") == "babyai-rgb" and evaluate.domain_of("babyai-pickup-loc") == "babyai"


def babyai_references(versions: dict[str, str] | None = None) -> references.TaskReferences:
    installed = references.installed_versions(("gymnasium", "minigrid"))
    return references.TaskReferences("babyai-go-to-red-ball-grey", "BabyAI-GoToRedBallGrey-v0",
                                     expert=references.Reference(0.9, 0.05, 100, 1.0),
                                     random=references.Reference(0.1, 0.2, 100, 0.2),
                                     versions=versions or installed)


def test_babyai_played_together_and_one_at_a_time_scores_as_computed_by_hand(model, tmp_path):
    pytest.importorskip("minigrid")
    refs = babyai_references()
    together = evaluate.play_task(model, refs.task, refs, episodes=10, seed=3, greedy=True, max_steps=6)
    alone = evaluate.play_task(model, refs.task, refs, episodes=10, seed=3, greedy=True, max_steps=6, envs_per_task=1)
    assert together.returns == alone.returns
    assert 10 <= together.env_steps <= 60
    np.testing.assert_allclose(together.normalized, [(value - 0.1) / 0.8 for value in together.returns])

    aggregates = evaluate.domain_iqm([together], reps=100)
    evaluate.write_report([together], aggregates, tmp_path, {"seed": 3})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tasks"][refs.task]["normalized"] == together.normalized
    assert report["domains"]["babyai"]["value"] == pytest.approx(aggregates["babyai"].value)
    with open(tmp_path / "scores.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 10
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.partial"))

    # Ctrl-C while the plot is drawn left scores.csv.partial in --out, which then was not removed.
    def interrupted(*args):
        raise KeyboardInterrupt

    interrupted_out = tmp_path / "interrupted"
    interrupted_out.mkdir()
    with mock.patch.object(evaluate, "_plot", interrupted), pytest.raises(KeyboardInterrupt):
        evaluate.write_report([together], aggregates, interrupted_out, {"seed": 3})
    assert not list(interrupted_out.iterdir())


def test_cli_refuses_references_of_other_versions_in_one_line(tmp_path, capsys):
    refs = babyai_references({"gymnasium": "0.29.1", "minigrid": "2.3.1"})
    (tmp_path / "data" / refs.task).mkdir(parents=True)
    references.save(refs, tmp_path / "data" / refs.task)
    code = jat_evaluate.main(["--workdir", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                              "--tasks", refs.task, "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert error.startswith("mgdt-jat-eval: error: babyai-go-to-red-ball-grey: references were measured with gymnasium 0.29.1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments,message", [
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--envs-per-task", "-1"], "--envs-per-task must be >= 1, got -1"),
    (["--tasks", ","], "--tasks names no task: ','"),
    (["--seed", "-1"], "argument --seed: -1 is out of range: a seed is a whole number from 0 to 2147483647"),
    (["--tasks", "t,u, t"], "--tasks t,u, t: names t more than once (it would count twice in the IQM)"),
    (["--seed", "2147483640"], "--seed 2147483640 with --episodes 10: the last episode's seed would pass 2147483647"),
])
def test_cli_refuses_settings_that_would_score_nothing(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        jat_evaluate.main(["--workdir", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--tasks", "t",
                           "--out", str(tmp_path / "out"), *arguments])
    assert exit.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_says_which_tasks_the_run_never_trained_on(model, tmp_path, capsys):
    pytest.importorskip("minigrid")
    refs = babyai_references()
    (tmp_path / "data" / refs.task).mkdir(parents=True)
    references.save(refs, tmp_path / "data" / refs.task)
    config = {"data": {"tasks": [{"path": "data/jat/babyai-go-to-local", "sampling_weight": 1.0}]}}
    with mock.patch.object(evaluate, "load_model", return_value=(model, config, 7)):
        code = jat_evaluate.main(["--workdir", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--tasks",
                                  refs.task, "--max-steps", "6", "--out", str(tmp_path / "out")])
    assert code == 0
    assert capsys.readouterr().err.strip() == (f"mgdt-jat-eval: {refs.task}: not among the run's training tasks "
                                               "(babyai-go-to-local): scored zero-shot")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["settings"]["not_trained_on"] == [refs.task]


def test_references_of_another_task_are_refused(tmp_path, capsys):
    # A dataset copied under another task's name scored that task against its references, exit 0.
    refs = babyai_references()
    other = "babyai-go-to-red-ball" if refs.task != "babyai-go-to-red-ball" else "babyai-pickup-loc"
    (tmp_path / "data" / other).mkdir(parents=True)
    references.save(refs, tmp_path / "data" / other)
    with pytest.raises(references.ReferenceError, match=rf"references.json: the references of task {refs.task!r}, "
                                                        rf"not {other!r} \(a dataset copied or renamed"):
        references.load(tmp_path / "data" / other, task=other)
    assert references.load(tmp_path / "data" / other).task == refs.task  # without a task: as stored


def test_the_trained_tasks_are_named_by_their_datasets_not_their_folders(jat_datasets, tmp_path):
    task, folder = next(iter(jat_datasets.items()))
    shutil.copytree(folder, tmp_path / "renamed_v2")
    config = {"data": {"tasks": [{"path": str(tmp_path / "renamed_v2")}, str(tmp_path / "moved" / "babyai-pickup-loc")]}}
    assert jat_evaluate._trained_tasks(config) == {task, "babyai-pickup-loc"}  # moved since: its folder's name


def test_an_unknown_task_is_one_line_before_anything_else(model, tmp_path, capsys):
    # Its references read, it was first reported as "not among the run's training tasks: scored zero-shot".
    import dataclasses

    refs = dataclasses.replace(babyai_references(), task="babyai-foo")
    (tmp_path / "data" / refs.task).mkdir(parents=True)
    references.save(refs, tmp_path / "data" / refs.task)
    with mock.patch.object(evaluate, "load_model", return_value=(model, {"data": {"tasks": []}}, 7)):
        code = jat_evaluate.main(["--workdir", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--tasks",
                                  refs.task, "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1 and error.startswith("mgdt-jat-eval: error: babyai-foo: no BabyAI level 'foo'")
    assert not (tmp_path / "out").exists()
