"""The AD recipe end to end: mgdt-ad-histories -> mgdt-train -> mgdt-ad-eval, and bad input in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import ad_histories
from mgdt_jax import envs
from mgdt_jax.cli import ad_eval
from mgdt_jax.recipes.ad import evaluate as ad_evaluate
from mgdt_jax.recipes.ad.recipe import ADRecipe
from experiments import ad_bandit, ad_darkroom, ad_key_to_door

REPOSITORY = Path(__file__).resolve().parents[1]


def write(tmp: Path, name: str, *args) -> Path:
    out = tmp / name
    assert ad_histories.main([*map(str, args), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(histories, workdir): 8 Dark Room goals x 6 Q-learning episodes, 3 steps of mgdt-train."""
    tmp = tmp_path_factory.mktemp("ad")
    histories = write(tmp, "dr_q", "--env", "darkroom", "--source", "q_learning", "--episodes", 6, "--num-train", 8)
    workdir = tmp / "run"
    overrides = {"data.sources": str(histories), "train.num_steps": 3, "train.batch_size": 8, "train.log_every": 1,
                 "model.num_layers": 1, "model.d_model": 32, "optimizer.warmup_steps": 1}
    command = [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(REPOSITORY / "experiments/ad_darkroom.py"),
               "--workdir", str(workdir), *(f"--config.{key}={value}" for key, value in overrides.items())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "recipe ad; data: 8 q_learning histories of 6 darkroom episodes on 8 tasks" in run.stdout
    return histories, workdir


def test_trained_run_evaluates_in_context_beside_its_source(trained, tmp_path, capsys):
    _, workdir = trained
    out = tmp_path / "report"
    assert ad_eval.main(["--workdir", str(workdir), "--ed-workdir", str(workdir), "--baselines", "q_learning",
                         "--episodes", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["runs"]) == {"AD sample", "AD argmax", "q_learning", "ED sample", "ED argmax"}
    for run in report["runs"].values():
        assert (run["tasks"], run["episodes"]) == (16, 3)  # Dark Room's 16 held-out goals
        assert 0 <= run["final"]["return"]["low"] <= run["final"]["return"]["mean"] <= run["final"]["return"]["high"] <= 20
    assert (out / "curves.png").stat().st_size > 0 and (out / "curves.csv").read_text().count("\n") == 1 + 5 * 3
    assert (report["settings"]["step"], report["settings"]["ed_step"]) == (3, 3)  # the report said no step
    printed = capsys.readouterr().out
    assert "darkroom: step 3 (ED step 3), 16 held-out tasks x 3" in printed and "AD sample" in printed


def test_an_ed_run_trained_on_the_ad_runs_held_out_tasks_is_refused(trained, tmp_path, capsys):
    # Its baseline was scored on tasks it had trained on (its histories of another split), silently.
    _, workdir = trained
    other_split = write(tmp_path, "dr_s1", "--env", "darkroom", "--source", "q_learning", "--episodes", 2,
                        "--num-train", 8, "--split-seed", 1)
    capsys.readouterr()  # the generator's progress bars
    ed = tmp_path / "ed"
    shutil.copytree(workdir, ed)
    config = json.loads((ed / "config.json").read_text())
    config["data"]["sources"] = [str(other_split)]
    (ed / "config.json").write_text(json.dumps(config))
    assert f"{ed} (the ED run): trained on " in bad_eval(capsys, "--workdir", workdir, "--ed-workdir", ed, "--out",
                                                         tmp_path / "r")


def bad_eval(capsys, *args) -> str:
    assert ad_eval.main([*map(str, args)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgdt-ad-eval: error: "), lines
    return lines[0]


def test_eval_refuses_an_overlapping_split_and_other_runs_in_one_line(trained, tmp_path, capsys):
    histories, workdir = trained
    train_ids = json.loads((histories / "metadata.json").read_text())["task_ids"]
    overlapping = next(seed for seed in range(1, 50)
                       if set(np.asarray(envs.get("darkroom").task_split(seed)[1].id).tolist()) & set(train_ids))
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    config = json.loads((moved / "config.json").read_text())
    config["evaluation"]["split_seed"] = overlapping
    (moved / "config.json").write_text(json.dumps(config))
    assert "the task split overlaps" in bad_eval(capsys, "--workdir", moved, "--out", tmp_path / "r1")

    # Trained on a relative path and evaluated from another folder: it was "no metadata.json: not a
    # dataset written by mgdt-ad-histories".
    config["data"]["sources"] = ["data/dr_q"]
    (moved / "config.json").write_text(json.dumps(config))
    assert bad_eval(capsys, "--workdir", moved, "--out", tmp_path / "r1") == (
        f"mgdt-ad-eval: error: data/dr_q: no such history directory here; {moved / 'config.json'} names it relative "
        "to the folder training ran in: evaluate from there, or give training an absolute path")

    config["recipe"] = "mgdt"
    (moved / "config.json").write_text(json.dumps(config))
    assert "'mgdt' recipe" in bad_eval(capsys, "--workdir", moved, "--out", tmp_path / "r2")
    (moved / "config.json").write_text("{}")  # was "a run of the 'mgdt' recipe"
    assert bad_eval(capsys, "--workdir", moved, "--out", tmp_path / "r2") == (
        f"mgdt-ad-eval: error: {moved / 'config.json'}: an empty config: not one a training run wrote")
    assert "no config.json" in bad_eval(capsys, "--workdir", tmp_path / "nothing", "--out", tmp_path / "r3")
    assert "unknown source" in bad_eval(capsys, "--workdir", workdir, "--baselines", "sarsa", "--out", tmp_path / "r4")
    with pytest.MonkeyPatch.context() as patch:  # refused before any (long) in-context evaluation
        patch.setattr(ad_evaluate, "evaluate_in_context", lambda *args, **kwargs: pytest.fail("evaluated first"))
        assert "needs a bandit" in bad_eval(capsys, "--workdir", workdir, "--baselines", "ucb1", "--out", tmp_path / "r5")
    assert not (tmp_path / "r1" / "report.json").exists()
    with pytest.raises(SystemExit) as exit_status:  # refused before anything is evaluated too
        ad_eval.main(["--workdir", str(workdir), "--baselines", "q_learning, q_learning", "--out", str(tmp_path / "r6")])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "mgdt-ad-eval: error: --baselines q_learning, q_learning: names q_learning more than once")


def test_training_refuses_histories_of_another_env_and_a_short_context(trained, tmp_path):
    histories, _ = trained
    config = ad_bandit.get_config()
    config.data.sources = (str(histories),)
    with pytest.raises(ValueError, match="histories of 'darkroom', and config.data.env is 'bandit'"):
        ADRecipe(config)
    config = ad_darkroom.get_config()
    config.data.sources = (str(histories),)
    config.model.context_steps = 10
    with pytest.raises(ValueError, match="context_steps 10 is shorter than one darkroom episode"):
        ADRecipe(config).training_data(process_index=0, process_count=1)
    config = ad_key_to_door.get_config()
    config.data.sources = (str(tmp_path / "missing"),)
    with pytest.raises(ValueError, match="missing: no such dataset directory$"):
        ADRecipe(config)
    (tmp_path / "missing").mkdir()  # a folder, but not a dataset
    with pytest.raises(ValueError, match="missing: no metadata.json: not a dataset written by mgdt-ad-histories$"):
        ADRecipe(config)
    (tmp_path / "missing").rmdir()
    other = tmp_path / "jat_task"  # another recipe's dataset, with a metadata.json of its own
    other.mkdir()
    (other / "metadata.json").write_text(json.dumps({"task": "metaworld-reach", "spec": {}}))
    config.data.sources = (str(other),)
    with pytest.raises(ValueError, match=rf"^{other}: its metadata.json is not one written by mgdt-ad-histories"):
        ADRecipe(config)
    config = ad_darkroom.get_config()
    config.data.sources = (str(histories), str(histories.parent / ".." / histories.parent.name / histories.name))
    with pytest.raises(ValueError, match=r"^config.data.sources: .* and .* are one folder; give it once$"):
        ADRecipe(config)  # read twice, each history weighed double


def test_the_data_identity_is_the_histories_content_not_their_paths(trained, tmp_path):
    # A folder spelt otherwise warned of changed data on resume; other histories under the same path did not.
    histories, _ = trained
    identities = []
    for source in (str(histories), f"{histories}/", str(histories.parent / ".." / histories.parent.name / histories.name)):
        config = ad_darkroom.get_config()
        config.data.sources = (source,)
        identities.append(ADRecipe(config).training_data(process_index=0, process_count=1).identity())
    assert identities[0] == identities[1] == identities[2] and "sources" not in identities[0]
    other = tmp_path / "other"
    shutil.copytree(histories, other)
    metadata = json.loads((other / "metadata.json").read_text())
    metadata["seed"] = metadata.get("seed", 0) + 1  # another recording's metadata under the path
    (other / "metadata.json").write_text(json.dumps(metadata))
    config = ad_darkroom.get_config()
    config.data.sources = (str(other),)
    assert ADRecipe(config).training_data(process_index=0, process_count=1).identity() != identities[0]


def test_mgdt_train_reports_histories_of_another_env_in_one_line(trained, tmp_path):
    histories, _ = trained
    command = [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(REPOSITORY / "experiments/ad_bandit.py"),
               "--workdir", str(tmp_path / "w"), f"--config.data.sources={histories}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"mgdt-train: error: {histories}: histories of 'darkroom', and config.data.env is 'bandit'"]
    assert not (tmp_path / "w").exists()
