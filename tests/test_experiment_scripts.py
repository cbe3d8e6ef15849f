"""The experiment scripts: bad variants are refused before anything is recorded or trained, a
preempted or interrupted training stops a script before it evaluates or reports (a Ctrl-C ends it
as interrupted), a rerun with the same --out redoes only unfinished stages and counts every
attempt's time, and the AdA trial-outcome decomposition agrees with hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import numpy as np
import pytest

from experiments import common, expert_inference, mgdt_expert_inference
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import loop


def test_bad_epsilon_schedule_is_one_line_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = mgdt_expert_inference.main(["--workdir", str(workdir), "--epsilon", "cycle:1,2"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "cycle:1,2" in error and "outside [0, 1]" in error
    assert not workdir.exists()


def test_negative_seed_is_one_line_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_status:
        mgdt_expert_inference.main(["--workdir", str(workdir), "--seed", "-1"])
    assert exit_status.value.code == 2
    assert "argument --seed: -1 is out of range" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not workdir.exists()


@pytest.mark.parametrize("script, args, message", [
    ("mgdt_expert_inference", ["--quick", "--docs", "docs/results.md"], "--docs: a --quick run is no claim"),
    ("expert_scores", ["--processes", "0"], "argument --processes: 0: must be at least 1"),  # was a traceback
    ("expert_scores", ["--json", "{tmp}/missing/x.json"], "its folder {tmp}/missing does not exist"),  # after every game
])
def test_arguments_that_would_overwrite_a_claim_or_fail_at_the_end_are_refused_first(tmp_path, capsys, script, args,
                                                                                       message):
    from importlib import import_module

    main = import_module(f"experiments.{script}").main
    args = [arg.format(tmp=tmp_path) for arg in args]
    with pytest.raises(SystemExit) as stopped:
        main(["--workdir", str(tmp_path / "run"), *args] if script == "mgdt_expert_inference" else args)
    assert stopped.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_recordings_of_another_schedule_cap_or_seed_are_not_reused(tmp_path):
    exp = expert_inference.get_config().experiment
    recorded = {game: {"part": "pretrain", "steps": 10, "returns": [0.0], "epsilons": [1.0], "schedule": exp.epsilon,
                       "max_episode_steps": exp.max_episode_steps, "experiment_seed": exp.seed}
                for game in [*exp.games, exp.heldout_game]}
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    assert mgdt_expert_inference.record_stage(exp, tmp_path) == recorded
    exp.seed = 1
    with pytest.raises(SystemExit, match="recorded with --seed 0, not 1"):
        mgdt_expert_inference.record_stage(exp, tmp_path)
    exp.seed = 0
    exp.max_episode_steps = 1000
    with pytest.raises(SystemExit, match="recorded with --max-episode-steps 2000, not 1000"):
        mgdt_expert_inference.record_stage(exp, tmp_path)
    exp.epsilon = "linear:1.0:0.0"
    with pytest.raises(SystemExit, match="recorded with --epsilon cycle:1,0.1, not linear:1.0:0.0"):
        mgdt_expert_inference.record_stage(exp, tmp_path)


def test_a_stopped_training_stops_the_script_before_any_report(tmp_path, monkeypatch, capsys):
    config = expert_inference.get_config()
    preempted = loop.TrainResult(tmp_path, first_step=0, last_step=7, last_checkpoint=7, stopped_by="preempted")
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: preempted)
    with pytest.raises(SystemExit, match=r"training preempted at step 7 of 8000; its checkpoint is kept"):
        common.train_to_end(config, tmp_path)
    # The loop takes a Ctrl-C to save; the script still ends as interrupted (130), not as a failure.
    interrupted = dataclasses.replace(preempted, stopped_by="interrupted")
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: interrupted)
    script = interruptible("experiment")(lambda: common.train_to_end(config, tmp_path) and 0)
    assert script() == 130
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path}: training interrupted at step 7 of 8000; its checkpoint is kept, nothing was evaluated or reported",
        "experiment: interrupted"]
    finished = loop.TrainResult(tmp_path, first_step=0, last_step=8000, last_checkpoint=8000, stopped_by="")
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: finished)
    assert common.train_to_end(config, tmp_path) is finished


def test_an_out_is_reused_only_by_the_same_settings(tmp_path, capsys):
    out = tmp_path / "out"
    assert common.check_settings(out, {"claim": "kappa", "setting": {"tasks": ("a", "b")}}, "jat_claims") is False
    assert common.check_settings(out, {"claim": "kappa", "setting": {"tasks": ("a", "b")}}, "jat_claims") is True
    with pytest.raises(SystemExit, match=r"jat_claims: error: --out .*: made with other settings \(setting.tasks\)"):
        common.check_settings(out, {"claim": "kappa", "setting": {"tasks": ("a",)}}, "jat_claims")
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("someone's\n")
    with pytest.raises(SystemExit, match="exists and is not a folder of this experiment"):
        common.check_settings(other, {"claim": "kappa"}, "jat_claims")
    assert sorted(p.name for p in other.iterdir()) == ["results.csv"]  # nothing written into it
    (out / "settings.json").write_text("{")
    with pytest.raises(SystemExit, match="settings.json: unreadable"):
        common.check_settings(out, {"claim": "kappa"}, "jat_claims")
    (out / "settings.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="settings.json: not an object of settings"):
        common.check_settings(out, {"claim": "kappa"}, "jat_claims")
    with pytest.raises(SystemExit, match=r"--out .*results.csv/sub: cannot be written \(Not a directory\)"):
        common.check_settings(other / "results.csv" / "sub", {"claim": "kappa"}, "jat_claims")


def test_a_rerun_redoes_only_unfinished_stages_and_counts_every_attempt(tmp_path, monkeypatch):
    clock = iter([0.0, 0.0, 5.0, 10.0, 10.0, 17.0, 100.0, 100.0, 101.0])  # perf_counter: each start, its record, end
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    calls = []
    assert common.stage(tmp_path, "data", lambda: calls.append("data"))["seconds"] == 5.0

    def stopped():
        calls.append("training")
        raise SystemExit("training preempted at step 3 of 10")

    with pytest.raises(SystemExit):
        common.stage(tmp_path, "training", stopped)
    assert json.loads((tmp_path / "stages.json").read_text())["training"]["unfinished"] is True
    again = common.stage(tmp_path, "data", lambda: calls.append("data again"))
    assert (again["seconds"], again["attempts"]) == (5.0, 1)
    done = common.stage(tmp_path, "training", lambda: calls.append("training resumed"))
    assert calls == ["data", "training", "training resumed"]
    assert (done["seconds"], done["attempts"], "unfinished" in done) == (7.0 + 1.0, 2, False)
    assert common.stage_seconds(tmp_path) == 13.0 and common.within(tmp_path, 13.0, 13.0)
    assert common.stage_times({"training": done}).startswith("training 8 s (load ")
    assert common.stage_times({"training": done}).endswith(", 2 attempts)")
    for damaged in ("{bad", "[]", '{"data": 3}', '{"data": {"unfinished": true}}', '{"data": {"seconds": 1}}',
                    '{"data": {"seconds": NaN, "load_average": 0, "attempts": 1}}', "[" * 100_000,
                    '{"data": {"seconds": 1, "load_average": 0, "attempts": "2", "unfinished": true}}'):
        (tmp_path / "stages.json").write_text(damaged)
        with pytest.raises(SystemExit, match="stages.json: unreadable .*; remove it to redo the stages .*"
                                             "time limits read \"not measured\""):
            common.stage(tmp_path, "data", lambda: calls.append("never"))
    assert calls[-1] == "training resumed"
    (tmp_path / "stages.json").write_text('{"data": {"seconds": 3.0, "load_average": 1.0}}')  # as jat_claims wrote before attempts
    assert common.stage(tmp_path, "data", lambda: calls.append("never"))["seconds"] == 3.0


def test_a_stage_run_inside_another_keeps_its_record(tmp_path):
    outer = common.stage(tmp_path, "claim", lambda: common.stage(tmp_path, "training", lambda: None))
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert set(stages) == {"claim", "training"} and stages["claim"] == outer
    assert not stages["training"].get("unfinished")


def test_a_stage_whose_output_is_gone_is_redone_and_an_untimed_attempt_is_flagged(tmp_path, capsys):
    out, run = tmp_path / "out", tmp_path / "out" / "ad"
    out.mkdir()

    def train(steps: str):
        run.mkdir(parents=True, exist_ok=True)
        (run / "checkpoint").write_text(steps)

    common.stage(out, "ad", lambda: train("10"), output=run)
    common.stage(out, "ad", lambda: train("never"), output=run)
    assert (run / "checkpoint").read_text() == "10"  # done, its run there: skipped
    shutil.rmtree(run)
    redone = common.stage(out, "ad", lambda: train("10 again"), output=run)
    assert (run / "checkpoint").read_text() == "10 again" and redone["attempts"] == 1
    assert "gone, though" in capsys.readouterr().err and common.within(out, 0.0, 1.0)
    shutil.rmtree(run)
    run.mkdir()  # emptied: as gone
    assert common.stage(out, "ad", lambda: train("10, a third time"), output=run)["attempts"] == 1

    # A stopped stage whose run is removed starts over: the stopped attempt's time is not its time.
    run = out / "bc"
    with pytest.raises(KeyboardInterrupt):
        common.stage(out, "bc", lambda: (train("5"), time.sleep(0.2), _raise(KeyboardInterrupt)), output=run)
    shutil.rmtree(run)
    fresh = common.stage(out, "bc", lambda: train("10"), output=run)
    assert fresh["attempts"] == 1 and fresh["seconds"] < 0.2

    # What a SIGKILL leaves: the attempt's first record ("running"), never its last.
    stages = json.loads((out / "stages.json").read_text())
    stages["ed"] = {"seconds": 0.0, "load_average": 0.0, "attempts": 1, "unfinished": True, "running": True}
    (out / "stages.json").write_text(json.dumps(stages))
    after_kill = common.stage(out, "ed", lambda: None)
    assert after_kill["untimed"] and common.within(out, 0.0, 1.0) is None
    assert common.stage_times({"ed": after_kill}).startswith("ed 0 s+ (load")
    assert common.verdict(None).startswith("not measured") and common.verdict(False) == "NO"

    # stages.json removed (as its error advises) while a run it timed stays: that run's time is lost.
    (out / "stages.json").unlink()
    assert common.stage(out, "ad", lambda: None, output=run)["untimed"] and common.within(out, 0.0, 1.0) is None
    assert common.stage(out, "new", lambda: None, output=out / "new")["seconds"] >= 0 and "untimed" not in \
        json.loads((out / "stages.json").read_text())["new"]


def _raise(error: type[BaseException]) -> None:
    raise error


def test_trial_outcomes_decompose_xland_returns_by_hand():
    from experiments import ada_trial_outcomes

    # Two episodes of 3 trials, 30-step trials: 1 - 0.9 t / 30 is 0.7 at t = 10 and 0.4 at t = 20.
    returns = np.array([[[0.0, 0.7, 0.7], [0.4, 0.0, 0.7]]])
    result = ada_trial_outcomes.outcomes(returns, max_steps=30)
    np.testing.assert_allclose(result["return"], [0.2, 0.35, 0.7])
    np.testing.assert_allclose(result["reached"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(result["steps"], [20.0, 10.0, 10.0])
    assert np.isnan(result["kept"][0])
    np.testing.assert_allclose(result["kept"][1:], [0.0, 1.0])  # trial 2 after episode 2's reached trial 1: missed
    np.testing.assert_allclose(result["kept_steps"][2], 10.0)


def _five(rows):
    """Per-task [trial 1, trial 5] -> five trials, trials 2-4 zero."""
    return [[first, 0.0, 0.0, 0.0, last] for first, last in rows]


def _seed_report(tmp_path, name, agent, seed, task_scores, tasks=(3, 5), sha="abc", seed_in_report=False):
    """An evaluation report of one run; its training seed in the run's config.json (reports written
    before the seed was recorded) or, with ``seed_in_report``, in the report alone (no run folder)."""
    workdir = tmp_path / name
    if not seed_in_report:
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps({"train": {"seed": seed}}))
    report = {"runs": {name: {
        "settings": {"workdir": str(workdir), "agent": agent, "env": {"benchmark_sha256": sha}, "split": "held-out",
                     "actions": "sampled from the policy", **({"train_seed": seed} if seed_in_report else {})},
        "episodes_per_task": 8, "trials": len(task_scores[0]), "task_ids": list(tasks), "task_scores": task_scores}}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_ada_seeds_pools_task_scores_over_seeds(tmp_path, capsys):
    from experiments import ada_seeds

    # Two tasks. Transformer-XL seed 0: trial means 0.2 -> 0.4 (trial 1 -> 5); seed 1: 0.4 -> 0.5.
    # Pooled per task: [[0.3, 0.4], [0.3, 0.5]] -> trial 1 0.3, trial 5 0.45, ratio 1.5.
    reports = [_seed_report(tmp_path, "t0", "trxl", 0, _five([[0.1, 0.3], [0.3, 0.5]])),
               _seed_report(tmp_path, "t1", "trxl", 1, _five([[0.5, 0.5], [0.3, 0.5]]), seed_in_report=True),
               _seed_report(tmp_path, "g0", "gru", 0, _five([[0.3, 0.4], [0.3, 0.4]]))]
    out = tmp_path / "pooled.json"
    assert ada_seeds.main([*map(str, reports), "--json", str(out)]) == 0
    values = json.loads(out.read_text())
    pooled = values["pooled"]["trxl"]
    np.testing.assert_allclose([pooled["trial_1"], pooled["trial_5"], pooled["ratio"][0]], [0.3, 0.45, 1.5])
    assert pooled["ratio"][1] <= 1.5 <= pooled["ratio"][2]
    np.testing.assert_allclose(values["trial_5_difference"][0], 0.05)  # 0.45 - 0.4, paired over the same tasks
    assert "| Transformer-XL | 1 | 0.400 | 0.500 | 1.25 |" in capsys.readouterr().out
    # Scored over 13 trials (mgdt-ada-eval --trials 13), a run is still read at trial 5.
    thirteen = [row + [0.9] * 8 for row in _five([[0.5, 0.5], [0.3, 0.5]])]
    assert ada_seeds.main([str(_seed_report(tmp_path, "k13", "trxl", 1, thirteen))]) == 0
    assert "| Transformer-XL | 1 | 0.400 | 0.500 | 1.25 |" in capsys.readouterr().out
    # A trial-1 return of 0 leaves the ratio undefined: null in the JSON (a bare NaN is no JSON).
    zero = _seed_report(tmp_path, "z0", "trxl", 0, _five([[0.0, 0.3], [0.0, 0.5]]))
    assert ada_seeds.main([str(zero), "--json", str(out)]) == 0
    assert "NaN" not in out.read_text() and json.loads(out.read_text())["pooled"]["trxl"]["ratio"][0] is None


def test_ada_seeds_refuses_runs_on_other_tasks_or_a_repeated_seed(tmp_path, capsys):
    from experiments import ada_seeds

    first = _seed_report(tmp_path, "t0", "trxl", 0, _five([[0.1, 0.3], [0.3, 0.5]]))
    other_tasks = _seed_report(tmp_path, "t1", "trxl", 1, _five([[0.1, 0.3], [0.3, 0.5]]), tasks=(3, 6))
    repeated = _seed_report(tmp_path, "t2", "trxl", 0, _five([[0.1, 0.3], [0.3, 0.5]]))
    two_trials = _seed_report(tmp_path, "t3", "trxl", 3, [[0.1, 0.3], [0.3, 0.5]])
    text_scores = _seed_report(tmp_path, "t4", "trxl", 4, "abc")
    text_seed = _seed_report(tmp_path, "t5", "trxl", "five", _five([[0.1, 0.3], [0.3, 0.5]]), seed_in_report=True)
    malformed = []
    for name, text in (("list", "[]"), ("null", "null"), ("no_runs", '{"runs": {}}'), ("truncated", '{"runs": {')):
        malformed.append(tmp_path / f"{name}.json")
        malformed[-1].write_text(text)
    for bad in (other_tasks, repeated, two_trials, text_scores, text_seed, *malformed, tmp_path / "missing.json"):
        assert ada_seeds.main([str(first), str(bad)]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and str(bad) in error
    for bad_json in (tmp_path, tmp_path / "no_such_dir" / "pooled.json"):
        with pytest.raises(SystemExit):
            ada_seeds.main([str(first), "--json", str(bad_json)])
        assert "--json" in capsys.readouterr().err
    assert not list(tmp_path.glob("**/*.partial"))


def test_ada_seeds_says_a_ratio_over_a_zero_trial_1_is_undefined(tmp_path, capsys):
    from experiments import ada_seeds

    # Task 3 scores 0 in trial 1, so a bootstrap resample of it alone has no ratio; task 5 has none at all.
    assert ada_seeds.main([str(_seed_report(tmp_path, "t0", "trxl", 0, _five([[0.0, 0.3], [0.2, 0.5]])))]) == 0
    out = capsys.readouterr().out
    assert "| Transformer-XL | 0 | 0.100 | 0.400 | 4.00 |" in out and "4.00 [n/a, n/a]" in out and "undefined" in out
    assert ada_seeds.main([str(_seed_report(tmp_path, "t1", "trxl", 1, _five([[0.0, 0.3], [0.0, 0.5]])))]) == 0
    assert "| Transformer-XL | 1 | 0.000 | 0.400 | n/a |" in capsys.readouterr().out


def test_an_ad_claim_reruns_only_with_its_own_settings(tmp_path):
    from experiments import ad_claims

    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"claim": "darkroom"}))
    with pytest.raises(SystemExit, match=r"ad_claims: error: --out .*: made with other settings \(claim, .*quick"):
        ad_claims.main(["bandit", "--quick", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]


@pytest.mark.parametrize("args, message", [
    (["bandit", "--train-steps", "0"], "argument --train-steps: 0: must be at least 1"),
    (["darkroom", "--source", "ucb1"], "--source ucb1:"),
    (["bandit", "--observation-embedding", "coordinates"], "bandit: observation_embedding 'coordinates' needs a grid"),
])
def test_an_ad_claim_refuses_bad_arguments_as_argparse_does(tmp_path, capsys, args, message):
    from experiments import ad_claims

    with pytest.raises(SystemExit) as raised:
        ad_claims.main([*args, "--out", str(tmp_path / "out")])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
