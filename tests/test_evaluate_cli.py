"""`mgdt-eval` on a tiny checkpoint: a real evaluation on two games, and bad input refused cleanly."""

import csv
import json
import shutil

import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mgdt_jax.core.commands import INTERRUPTED
from mgdt_jax.cli import evaluate as eval_cli
from mgdt_jax.recipes.mgdt.import_checkpoint import save_params
from mgdt_jax.recipes.mgdt.model import MultiGameDecisionTransformer
from mgdt_jax.recipes.mgdt import evaluate as mgdt_evaluate
from mgdt_jax.core.loop import CONFIG_FILE


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A workdir holding a tiny model's checkpoint at step 3 and its config."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    config = tiny.get_config()
    save_params(MultiGameDecisionTransformer(config.model, rngs=nnx.Rngs(0)), workdir, step=3)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort())
    return workdir


def test_mgdt_eval_plays_a_tiny_checkpoint_on_two_games(tiny_workdir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--workdir", str(tiny_workdir), "--games", "Pong,breakout", "--episodes", "2",
            "--max-episode-frames", "1000", "--out", str(out), "--video"]
    assert eval_cli.main(argv) == 0
    summary_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary_line.startswith("step 3 on 2 game(s) x 2 episodes: IQM") and str(out) in summary_line

    written = json.loads((out / "report.json").read_text())
    assert list(written["games"]) == ["Pong", "Breakout"]
    for game in written["games"].values():
        assert len(game["raw_scores"]) == 2 and all(0 < n <= 250 for n in game["episode_lengths"])
        assert game["human_normalised"]["low"] <= game["human_normalised"]["value"] <= game["human_normalised"]["high"]
    assert written["settings"]["step"] == 3 and written["settings"]["sampling"]["mode"] == "expert"
    assert written["settings"]["protocol"]["sticky_action_probability"] == 0.25
    assert len(list(csv.DictReader((out / "scores.csv").open()))) == 2
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["Breakout.mp4", "Pong.mp4"]
    assert (out / "scores.png").stat().st_size > 0
    # A second evaluation into the same --out would replace this report: refused before any playing.
    _fails_with(argv, capsys, f"--out {out}: already holds a report (report.json)")
    assert json.loads((out / "report.json").read_text()) == written


def test_an_out_another_evaluation_is_writing_to_is_refused_and_a_dead_ones_taken_over(tiny_workdir, tmp_path, capsys,
                                                                                      monkeypatch):
    # Two evaluations into one --out both passed the check before playing; the later report replaced the other.
    from mgdt_jax.cli.out_dir import CLAIM_FILE
    from tests.processes import another_process_holding

    out = tmp_path / "report"
    out.mkdir()
    argv = ["--workdir", str(tiny_workdir), "--games", "Pong", "--episodes", "1", "--max-episode-frames", "200",
            "--out", str(out)]
    with another_process_holding(out / CLAIM_FILE) as other:
        _fails_with(argv, capsys, f"{out}: another evaluation (process {other.pid}) is writing there; wait for it")
    assert (out / CLAIM_FILE).exists() and not (out / "report.json").exists()  # a killed one's claim stays
    assert eval_cli.main(argv) == 0  # its process gone, the claim is taken over
    assert (out / "report.json").exists() and not (out / CLAIM_FILE).exists()


def test_an_interrupted_evaluation_leaves_no_video_under_a_finished_name(tiny_workdir, tmp_path, monkeypatch):
    def play_then_interrupt(*args, on_frame, **kwargs):
        for _ in range(3):
            on_frame("Pong", np.zeros((84, 84, 1), np.uint8))
        raise KeyboardInterrupt

    monkeypatch.setattr(mgdt_evaluate.actor, "play", play_then_interrupt)
    argv = ["--workdir", str(tiny_workdir), "--games", "Pong", "--out", str(tmp_path / "report"), "--video"]
    assert eval_cli.main(argv) == INTERRUPTED
    assert list((tmp_path / "report" / "videos").iterdir()) == []
    assert not (tmp_path / "report" / "report.json").exists()


def test_videos_get_their_finished_names_only_after_the_report(tiny_workdir, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mgdt_evaluate.report, "write_report", interrupt)  # Ctrl-C while the report is written
    argv = ["--workdir", str(tiny_workdir), "--games", "Pong", "--episodes", "1", "--out", str(tmp_path / "report"),
            "--video", "--max-episode-frames", "400"]
    assert eval_cli.main(argv) == INTERRUPTED
    assert [p.name for p in (tmp_path / "report" / "videos").iterdir()] == []  # no report, no video
    monkeypatch.undo()
    (tmp_path / "report" / "videos" / "Breakout.partial.mp4").write_bytes(b"cut off")  # of a killed earlier run
    assert eval_cli.main(argv) == 0  # the rerun into the same folder writes over the partial video
    assert sorted(p.name for p in (tmp_path / "report" / "videos").iterdir()) == ["Pong.mp4"]  # and drops the stale one


def _fails_with(argv, capsys, *fragments):
    assert eval_cli.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("mgdt-eval: error:") and "\n" not in error and "Traceback" not in error
    for fragment in fragments:
        assert fragment in error


def test_bad_input_is_one_line_errors(tiny_workdir, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    _fails_with(["--workdir", str(tiny_workdir), "--games", "Pong,Pacman", *out], capsys, "unknown game 'Pacman'")
    _fails_with(["--workdir", str(tmp_path / "nowhere"), "--games", "Pong", *out], capsys, "nowhere")
    _fails_with(["--workdir", str(tiny_workdir), "--step", "9", "--games", "Pong", *out], capsys, "step 9")

    wider = tmp_path / "wider"
    shutil.copytree(tiny_workdir, wider)
    config = json.loads((wider / CONFIG_FILE).read_text())
    config["model"]["d_model"] = 256
    (wider / CONFIG_FILE).write_text(json.dumps(config))
    _fails_with(["--workdir", str(wider), "--games", "Pong", *out], capsys, "does not fit the weights", "action_emb/embedding")

    other_recipe = tmp_path / "other_recipe"
    shutil.copytree(tiny_workdir, other_recipe)
    config = json.loads((other_recipe / CONFIG_FILE).read_text())
    config["recipe"] = "ad"
    (other_recipe / CONFIG_FILE).write_text(json.dumps(config))
    _fails_with(["--workdir", str(other_recipe), "--games", "Pong", *out], capsys, "a run of the 'ad' recipe, not an MGDT")
    del config["recipe"], config["model"]  # the default model's weights read as missing from the checkpoint
    (other_recipe / CONFIG_FILE).write_text(json.dumps(config))
    _fails_with(["--workdir", str(other_recipe), "--games", "Pong", *out], capsys,
                f"{other_recipe / CONFIG_FILE}: no model section: not the config a training run wrote")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_workdir, corrupt)
    for path in (corrupt / "checkpoints" / "3").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 8)
    _fails_with(["--workdir", str(corrupt), "--games", "Pong", *out], capsys, str(corrupt))
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(SystemExit) as exit:
        eval_cli.main(["--workdir", str(tiny_workdir), "--games", "Pong", "--kappa", "nan", *out])
    assert exit.value.code == 2 and "kappa must be a finite number, got nan" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        eval_cli.main(["--workdir", str(tiny_workdir), "--games", "Pong", "--kappa=-1", *out])
    assert exit.value.code == 2 and "kappa must be >= 0" in capsys.readouterr().err
    # A report written into the run's checkpoint folder mixed with what training rotates and hashes.
    for workdir, inside, fault in (
            (tiny_workdir, tiny_workdir / "checkpoints", "the run's own folder of checkpoints"),
            (tiny_workdir, tiny_workdir / "checkpoints" / "eval", "the run's own folder of checkpoints"),
            (tiny_workdir, tiny_workdir, "the run's own folder;"),
            (tiny_workdir / "checkpoints", tiny_workdir / "checkpoints" / "eval", "the run's own folder of checkpoints")):
        _fails_with(["--workdir", str(workdir), "--games", "Pong", "--out", str(inside)], capsys,
                    f"--out {inside}: {fault}", f"e.g. {tiny_workdir.resolve() / 'eval'}")
    assert not (tiny_workdir / "checkpoints" / "eval").exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    _fails_with(["--workdir", str(tiny_workdir), "--games", "Pong", "--out", str(a_file)], capsys,
                f"--out {a_file}: exists and is not a folder")


def test_mgdt_eval_passes_over_a_half_written_newest_checkpoint(tiny_workdir, half_write, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_workdir, workdir)
    save_params(MultiGameDecisionTransformer(tiny.get_config().model, rngs=nnx.Rngs(1)), workdir, step=5)
    half_write(workdir / "checkpoints" / "5", "no_array_files")
    out = tmp_path / "report"
    argv = ["--workdir", str(workdir), "--games", "Pong", "--episodes", "1", "--max-episode-frames", "200", "--out", str(out)]
    assert eval_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("step 3 on 1 game(s)")
    warnings = [line for line in captured.err.splitlines() if "warning" in line]  # the rest: a progress bar
    assert len(warnings) == 1 and "step 5 (params: no array files); using step 3" in warnings[0]
    assert json.loads((out / "report.json").read_text())["settings"]["step"] == 3
    # Asked for by number, the incomplete step is a one-line error.
    _fails_with([*argv[:2], "--step", "5", *argv[2:-1], str(tmp_path / "step5")], capsys, "checkpoints/5: incomplete checkpoint: params: no array files")


@pytest.mark.parametrize("flags, expected", [
    (["--max-episode-frames", "2147483648"], "--max-episode-frames must be <= 2147483647"),
    (["--mode", "target", "--kappa", "3"], "--kappa applies to --mode expert only, not --mode target"),
    (["--target-return", "50"], "--target-return applies to --mode target only, not --mode expert"),
])
def test_flags_the_evaluation_cannot_use_are_refused_before_playing(tiny_workdir, tmp_path, capsys, flags, expected):
    with pytest.raises(SystemExit) as exit:
        eval_cli.main(["--workdir", str(tiny_workdir), "--games", "Pong", "--out", str(tmp_path / "out"), *flags])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"mgdt-eval: error: {expected}")
    assert not (tmp_path / "out").exists()


def test_a_run_config_of_a_model_without_layers_is_one_line(tiny_workdir, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_workdir, workdir)
    config = json.loads((workdir / CONFIG_FILE).read_text())
    config["model"]["num_layers"] = 0
    (workdir / CONFIG_FILE).write_text(json.dumps(config))
    _fails_with(["--workdir", str(workdir), "--games", "Pong", "--out", str(tmp_path / "out")], capsys,
                f"{workdir / CONFIG_FILE}: not a readable run config (model.num_layers must be at least 1, got 0)")
    assert not (tmp_path / "out").exists()


def test_the_random_baseline_takes_a_protocol_by_name_as_evaluate_does():
    import dataclasses

    from mgdt_jax.recipes.mgdt import actor

    summary = mgdt_evaluate.evaluate_random(["Breakout"], episodes=1, protocol="paper")  # was an AttributeError
    assert summary.settings["protocol"] == dataclasses.asdict(actor.PROTOCOLS["paper"])
    assert summary.games[0].game == "Breakout"
    with pytest.raises(ValueError, match="^unknown protocol 'papr': expected one of paper, colab$"):
        mgdt_evaluate.evaluate_random(["Breakout"], episodes=1, protocol="papr")


def test_sigterm_ends_an_evaluation_in_one_line_and_lets_its_out_go(tiny_workdir, tmp_path):
    # Python's default action for SIGTERM (a scheduler's stop) ended it silently, leaving the claim.
    import os
    import signal
    import subprocess
    import sys
    import time

    from mgdt_jax.cli.out_dir import CLAIM_FILE

    out = tmp_path / "report"
    process = subprocess.Popen(
        [sys.executable, "-m", "mgdt_jax.cli.evaluate", "--workdir", str(tiny_workdir), "--games", "Pong",
         "--episodes", "64", "--out", str(out)],
        env={**os.environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 120
    while not (out / CLAIM_FILE).exists():  # evaluating
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no evaluation started after 120 s"
        time.sleep(0.1)
    time.sleep(3)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "mgdt-eval: terminated (SIGTERM)" and "Traceback" not in stderr
    assert not out.exists()  # the folder it made for the report, removed with its claim


def test_a_file_where_the_videos_go_is_refused_before_playing(tiny_workdir, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "videos").write_text("not a folder")
    argv = ["--workdir", str(tiny_workdir), "--games", "Pong", "--episodes", "1", "--out", str(out), "--video"]
    _fails_with(argv, capsys, f"--out {out / 'videos'}: exists and is not a folder")
    assert sorted(path.name for path in out.iterdir()) == ["videos"]


def test_a_full_disk_while_the_report_is_written_leaves_no_results_and_is_one_line(tiny_workdir, tmp_path, monkeypatch,
                                                                                  capsys):
    # The CSV was left complete beside no report, the videos as .partial.mp4, and an error naming no file.
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")  # as a flush raises it: no file named

    monkeypatch.setattr(mgdt_evaluate.report, "_plot", full_disk)
    out = tmp_path / "report"
    out.mkdir()
    argv = ["--workdir", str(tiny_workdir), "--games", "Pong", "--episodes", "1", "--max-episode-frames", "200",
            "--out", str(out), "--video"]
    assert eval_cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.splitlines()[-1] == f"mgdt-eval: error: [Errno 28] No space left on device: '{out / 'scores.png'}'"
    assert "Traceback" not in error and [path for path in out.rglob("*") if path.is_file()] == []
