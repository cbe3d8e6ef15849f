"""mgdt-ada-eval: per-trial returns of a frozen AdA run, statistics with bootstrap intervals, the
report's files, one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from experiments import ada_tiny
from mgdt_jax.cli import ada_eval
from mgdt_jax.core import loop
from mgdt_jax.recipes.ada import evaluate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An arm-recall GRU run of one train step (a near-uniform policy), trial one-hot 6 wide."""
    workdir = tmp_path_factory.mktemp("run")
    config = ada_tiny.get_config()
    config.model.agent = "gru"
    config.env.num_trials = 3
    config.env.max_trials = 6
    config.train.update(num_steps=1, checkpoint_every=1, log_every=1, batch_size=8)
    loop.train(config, workdir)
    return workdir


def test_report_holds_per_trial_statistics_of_the_returns(run_dir, tmp_path):
    out = tmp_path / "report"
    assert ada_eval.main(["--workdir", str(run_dir), "--out", str(out), "--trials", "5", "--episodes", "200"]) == 0
    report = json.loads((out / "report.json").read_text())
    run = report["runs"][run_dir.name]
    assert (run["tasks"], run["episodes_per_task"], run["trials"]) == (2, 200, 5)
    assert run["settings"]["split"] == "all" and run["settings"]["checkpoint_step"] == 1
    assert run["settings"]["train_seed"] == ada_tiny.get_config().train.seed  # pooling needs no run folder
    task_scores = np.asarray(run["task_scores"])  # [2 arms, 5 trials]
    assert task_scores.shape == (2, 5)
    # By hand: a near-uniform policy over (wait, arm 1, arm 2) earns 1/3 on the pull and loses
    # 0.5 x 2/3 on the wait step: 0 per trial in expectation (sd of a 400-episode mean ~0.03).
    assert np.abs(task_scores.mean(axis=0)).max() < 0.15
    for name, reduce in (("mean", np.mean), ("median", np.median), ("p20", lambda v, axis: np.percentile(v, 20, axis=axis))):
        entry = run["scores"][name]
        np.testing.assert_allclose(entry["value"], reduce(task_scores, axis=0))
        assert np.all(np.asarray(entry["low"]) <= np.asarray(entry["value"]) + 1e-12)
        assert np.all(np.asarray(entry["high"]) >= np.asarray(entry["value"]) - 1e-12)
    # Two tasks: the bootstrap's resamples hold tasks (a, a), (a, b), (b, b), so the mean's 95%
    # interval spans the two tasks' scores.
    np.testing.assert_allclose(run["scores"]["mean"]["low"], task_scores.min(axis=0))
    np.testing.assert_allclose(run["scores"]["mean"]["high"], task_scores.max(axis=0))
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 5
    p20 = [float(row["value"]) for row in rows if row["statistic"] == "p20"]
    np.testing.assert_allclose(p20, run["scores"]["p20"]["value"])
    assert (out / "scores.png").stat().st_size > 0


def test_returns_count_each_trial_once_per_episode(run_dir):
    scores = evaluate.evaluate_run(run_dir, trials=2, episodes=64, seed=1)
    assert scores.returns.shape == (2, 64, 2)
    # A trial is a pull (0 or 1) and a wait (0 or -0.5): nothing else can be summed into it.
    assert set(np.unique(scores.returns)) <= {-0.5, 0.0, 0.5, 1.0}


def test_greedy_actions_repeat_where_sampled_ones_vary(run_dir):
    # Arm recall resets without randomness, so under the argmax every episode of a task is the same,
    # whatever the seed; the near-uniform policy's samples are not.
    greedy = [evaluate.evaluate_run(run_dir, trials=3, episodes=16, seed=seed, greedy=True) for seed in (1, 2)]
    np.testing.assert_array_equal(greedy[0].returns, greedy[1].returns)
    assert np.all(greedy[0].returns == greedy[0].returns[:, :1])
    assert greedy[0].settings["actions"] == "argmax of the policy"
    sampled = evaluate.evaluate_run(run_dir, trials=3, episodes=16, seed=1)
    assert np.any(sampled.returns != sampled.returns[:, :1])


@pytest.mark.parametrize("arguments, message", [
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--episodes", "0"], "--episodes must be at least 1, got 0"),
])
def test_bad_counts_are_one_line(run_dir, tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit):
        ada_eval.main(["--workdir", str(run_dir), "--out", str(tmp_path / "r"), *arguments])
    assert message in capsys.readouterr().err


def test_a_run_without_checkpoint_or_too_many_trials_is_one_line(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run_dir / "config.json").read_text())
    assert ada_eval.main(["--workdir", str(empty), "--out", str(tmp_path / "a")]) == 1
    assert ada_eval.main(["--workdir", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 1
    assert ada_eval.main(["--workdir", str(run_dir), "--trials", "7", "--out", str(tmp_path / "c")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("mgdt-ada-eval: error: ") for line in lines)
    assert "no complete checkpoint" in lines[0]
    assert "no config.json" in lines[1]
    assert "trial indices up to 6" in lines[2]
    assert not any((tmp_path / name / "report.json").exists() for name in "abc")

    relative = tmp_path / "relative"  # a run trained on a benchmark named relative to another folder
    relative.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["env"]["benchmark"] = "trivial_10k.pkl.bz2"
    (relative / "config.json").write_text(json.dumps(config))
    assert ada_eval.main(["--workdir", str(relative), "--out", str(tmp_path / "d")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"mgdt-ada-eval: error: trivial_10k.pkl.bz2: no such benchmark file here; {relative / 'config.json'} names it "
        "relative to the folder training ran in: evaluate from there, or give training an absolute path")


def test_a_config_without_its_model_section_is_named_not_the_checkpoint(run_dir, tmp_path, capsys):
    # The default agent was built and its weights reported missing: "the checkpoint lacks 16 of its arrays".
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    del config["model"]
    (run / "config.json").write_text(json.dumps(config))
    assert ada_eval.main(["--workdir", str(run), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"mgdt-ada-eval: error: {run / 'config.json'}: no model section: not the config a training run wrote")
