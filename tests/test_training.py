"""The train loop end to end on recorded ALE data (8 fake CPU devices): the loss falls; a run
preempted with SIGTERM, resumed, killed with SIGKILL and resumed again has the losses of an
uninterrupted run; checkpoints restore onto other meshes; a diverging run stops and keeps its last
good checkpoint; bad input ends the CLI cleanly."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mgdt_jax import checkpointing, sharding
from mgdt_jax.training import loop
from mgdt_jax.training.metric_writer import METRICS_FILE, TENSORBOARD_DIR
from mgdt_jax.training.train_step import Trainer

NUM_STEPS = 24
CHECKPOINT_EVERY = 6

# A config file, as a user writes one: the tiny experiment shrunk further, on the recorded dataset.
CONFIG_FILE = """
from experiments import tiny


def get_config():
    config = tiny.get_config()
    config.model.num_layers = 1
    config.model.d_model = 64
    config.model.num_heads = 2
    config.mesh.data = 1
    config.mesh.fsdp = -1  # parameters sharded 8 ways, so restoring onto 1 or 4 devices reshards them
    config.optimizer.warmup_steps = 4
    config.data.sources = [{source!r}]
    config.data.num_threads = 2
    config.train.batch_size = 16
    config.train.num_steps = {num_steps}
    config.train.log_every = 1
    config.train.checkpoint_every = {checkpoint_every}
    return config
"""


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """Tiny models on CPU: XLA's optimisation passes cost more than they save. Yields the
    environment giving subprocesses the same setting, hence the same numerics."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield {"JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def config_path(rlds_dataset_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny_on_recorded_data.py"
    path.write_text(CONFIG_FILE.format(source=str(rlds_dataset_dir), num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY))
    return path


def load_config(path: Path):
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def losses(workdir: Path) -> dict[int, float]:
    """Step -> loss from the metrics log; a resumed run's own entry wins over one logged before a kill."""
    entries = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    return {entry["step"]: entry["train/loss"] for entry in entries if "train/loss" in entry}


@pytest.fixture(scope="module")
def uninterrupted_run(config_path, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = loop.train(load_config(config_path), workdir)
    assert (result.first_step, result.last_step, result.last_checkpoint) == (0, NUM_STEPS, NUM_STEPS)
    return workdir


def test_loss_falls_and_everything_is_logged(uninterrupted_run):
    by_step = losses(uninterrupted_run)
    assert sorted(by_step) == list(range(1, NUM_STEPS + 1))
    first, last = np.mean([by_step[s] for s in (1, 2, 3)]), np.mean([by_step[s] for s in range(NUM_STEPS - 2, NUM_STEPS + 1)])
    assert last < 0.85 * first, (first, last)
    entry = json.loads((uninterrupted_run / METRICS_FILE).read_text().splitlines()[-1])
    for name in ("return_loss", "action_loss", "reward_loss", "action_accuracy", "learning_rate", "grad_norm"):
        assert np.isfinite(entry[f"train/{name}"]), name
    assert entry["perf/tokens_per_second"] > 0 and entry["perf/tflops_per_second_per_device"] > 0
    assert any((uninterrupted_run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert saved_steps(uninterrupted_run) == [12, 18, 24]  # every 6 steps, the newest 3 kept


def run_cli(config_path: Path, workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(config_path), "--workdir", str(workdir)]
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def saved_steps(workdir: Path) -> list[int]:
    directory = workdir / checkpointing.CHECKPOINTS
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def wait_for_checkpoint(process: subprocess.Popen, workdir: Path, step: int) -> None:
    """Returns once checkpoint ``step`` is complete, with the process still running."""
    deadline = time.monotonic() + 120
    while not (workdir / checkpointing.CHECKPOINTS / str(step)).is_dir():
        assert process.poll() is None, "the run ended early:\n" + process.stdout.read()
        assert time.monotonic() < deadline, f"no checkpoint {step} after 120 s"
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be stopped:\n" + process.stdout.read()


def test_preempted_and_killed_run_resumes_with_the_losses_of_an_uninterrupted_run(
    config_path, uninterrupted_run, fast_compiles, tmp_path
):
    workdir = tmp_path / "run"
    # SIGTERM (a preemption notice) once the first checkpoint exists: the run saves where it is and exits.
    process = run_cli(config_path, workdir, fast_compiles)
    wait_for_checkpoint(process, workdir, CHECKPOINT_EVERY)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    preempted_at = max(losses(workdir))
    assert process.returncode == 0 and f"preempted at step {preempted_at}" in output.splitlines()[-1], output
    assert saved_steps(workdir)[-1] == preempted_at

    # Resumed, then SIGKILL once its next interval checkpoint exists: nothing is saved on the way out.
    next_checkpoint = (preempted_at // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
    assert next_checkpoint < NUM_STEPS
    process = run_cli(config_path, workdir, fast_compiles)
    wait_for_checkpoint(process, workdir, next_checkpoint)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert next_checkpoint <= max(losses(workdir)) < NUM_STEPS

    resumed = run_cli(config_path, workdir, fast_compiles)
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    assert "resumed from" in output and f"checkpoints in {workdir / checkpointing.CHECKPOINTS}" in output.splitlines()[-1]
    resumed_losses, reference = losses(workdir), losses(uninterrupted_run)
    assert sorted(resumed_losses) == sorted(reference)
    # Equal up to float32 rounding (a different batch or state would differ by far more than 1e-6).
    np.testing.assert_allclose(
        [resumed_losses[s] for s in sorted(reference)], [reference[s] for s in sorted(reference)], rtol=1e-6, atol=0
    )


@pytest.mark.parametrize(
    "num_devices, mesh", [(1, {"data": 1, "fsdp": 1, "tensor": 1}), (4, {"data": 1, "fsdp": 2, "tensor": 2})]
)
def test_checkpoint_restores_onto_another_mesh(config_path, uninterrupted_run, num_devices, mesh):
    config = load_config(config_path)
    config.mesh.update(mesh)
    trainer = Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:num_devices]))
    checkpointer = checkpointing.Checkpointer(uninterrupted_run, save_every=CHECKPOINT_EVERY, keep=3)
    try:
        state, position = checkpointer.restore(trainer.abstract_state)
    finally:
        checkpointer.close()
    assert int(state.step) == NUM_STEPS and position["next_batch"] == NUM_STEPS
    restored = jax.tree.leaves(state.params)
    assert all(leaf.sharding.mesh.devices.size == num_devices for leaf in restored)
    saved = jax.tree.leaves(checkpointing.load_params(uninterrupted_run))  # host arrays, same leaf order
    assert len(saved) == len(restored)
    for saved_leaf, restored_leaf in zip(saved, restored):
        np.testing.assert_array_equal(saved_leaf, np.asarray(restored_leaf))
    assert np.isfinite(np.asarray(jax.tree.leaves(state.opt_state)[-1])).all()


def test_checkpoint_of_another_model_is_refused_in_one_line(config_path, uninterrupted_run):
    config = load_config(config_path)
    config.model.d_model = 128
    trainer = Trainer(config, sharding.make_mesh(config.mesh))
    with pytest.raises(checkpointing.CheckpointError, match=r"params do not fit this model: \S+ is \(\d+, 64\) in the checkpoint, \(\d+, 128\) here"):
        checkpointing.load_params(uninterrupted_run, target=trainer.abstract_state.params)


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(config_path, uninterrupted_run, tmp_path):
    workdir = tmp_path / "diverging"
    shutil.copytree(uninterrupted_run / checkpointing.CHECKPOINTS, workdir / checkpointing.CHECKPOINTS)
    config = load_config(config_path)
    config.train.num_steps = NUM_STEPS + CHECKPOINT_EVERY  # the next save would be the last step
    config.optimizer.learning_rate = float("inf")  # the first update makes the parameters infinite
    with pytest.raises(loop.TrainingDiverged, match=rf"at step {NUM_STEPS + 2}.*last good checkpoint is step {NUM_STEPS}"):
        loop.train(config, workdir)
    kept = checkpointing.load_params(workdir)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(kept))


def test_fine_tuning_starts_from_the_pretrained_parameters(config_path, uninterrupted_run, tmp_path):
    config = load_config(config_path)
    config.train.num_steps = 2
    config.train.init_from = str(uninterrupted_run)
    config.train.eval_every = 1
    evaluated = []

    def evaluate(model, step: int) -> dict[str, float]:  # the periodic evaluation hook
        evaluated.append(step)
        return {"return_head_norm": float(np.linalg.norm(np.asarray(model.return_head.kernel[...])))}

    result = loop.train(config, tmp_path / "finetune", evaluate=evaluate)
    assert result.first_step == 0 and result.last_checkpoint == 2  # a new run: step and optimizer start fresh
    scratch_loss, pretrained_loss = losses(uninterrupted_run)[1], losses(tmp_path / "finetune")[1]
    assert pretrained_loss < 0.85 * scratch_loss  # the same first batch, the trained parameters
    assert evaluated == [1, 2]
    logged = [json.loads(line) for line in (tmp_path / "finetune" / METRICS_FILE).read_text().splitlines()]
    assert [entry["step"] for entry in logged if "eval/return_head_norm" in entry] == [1, 2]


def test_cli_reports_a_bad_data_source_in_one_line(fast_compiles, tmp_path):
    config_path = tmp_path / "config.py"
    missing = tmp_path / "no_such_dataset"
    config_path.write_text(CONFIG_FILE.format(source=str(missing), num_steps=2, checkpoint_every=1))
    process = run_cli(config_path, tmp_path / "run", fast_compiles)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1] == f"mgdt-train: error: {missing}: no such dataset directory"
    assert not (tmp_path / "run" / checkpointing.CHECKPOINTS).exists()


def copy_of_run(run: Path, workdir: Path) -> Path:
    """A workdir holding a copy of ``run``'s checkpoints (steps 12, 18, 24) and nothing else."""
    shutil.copytree(run / checkpointing.CHECKPOINTS, workdir / checkpointing.CHECKPOINTS)
    return workdir


def test_every_reader_passes_over_a_half_written_newest_checkpoint(
    config_path, uninterrupted_run, half_write, half_written_kind, tmp_path, capsys
):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    newest = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    half_write(newest, half_written_kind)
    previous = NUM_STEPS - CHECKPOINT_EVERY
    assert checkpointing.incomplete_reason(newest) is not None
    assert checkpointing.incomplete_reason(newest.parent / str(previous)) is None

    # Reading parameters (evaluation, train.init_from): the newest complete step, one warning line.
    expected = jax.tree.leaves(checkpointing.load_params(uninterrupted_run, step=previous))
    capsys.readouterr()
    for got, want in zip(jax.tree.leaves(checkpointing.load_params(workdir)), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    warning = capsys.readouterr().err.strip()
    assert "\n" not in warning and warning.startswith("warning: skipped incomplete checkpoint")
    assert f"step {NUM_STEPS} (" in warning and f"using step {previous}" in warning
    # A step asked for by number is an error, in one line.
    with pytest.raises(checkpointing.CheckpointError, match=rf"{NUM_STEPS}: incomplete checkpoint: "):
        checkpointing.load_params(workdir, step=NUM_STEPS)

    # Resuming training: the same step; the incomplete one is moved aside so the run can save it again.
    checkpointer = checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    try:
        assert checkpointer.latest_step() == previous
        trainer = Trainer(load_config(config_path), sharding.make_mesh(load_config(config_path).mesh))
        state, position = checkpointer.restore(trainer.abstract_state)
    finally:
        checkpointer.close()
    assert int(state.step) == previous and position["next_batch"] == previous
    assert f"step {NUM_STEPS} (" in capsys.readouterr().err
    assert saved_steps(workdir) == [12, 18]
    assert (workdir / checkpointing.INCOMPLETE / str(NUM_STEPS)).is_dir()


def test_no_complete_checkpoint_left_is_one_error_naming_each_step(uninterrupted_run, half_write, tmp_path, capsys):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    for step, how in ((12, "empty"), (18, "no_step_metadata"), (24, "no_array_files")):
        half_write(workdir / checkpointing.CHECKPOINTS / str(step), how)
    with pytest.raises(checkpointing.CheckpointError, match="holds no complete checkpoint; step 24: .*; step 18: .*; step 12: "):
        checkpointing.load_params(workdir)
    # A run in this workdir starts afresh; the three are moved aside, not deleted.
    checkpointer = checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    checkpointer.close()
    assert checkpointer.latest_step() is None and saved_steps(workdir) == []
    assert sorted(p.name for p in (workdir / checkpointing.INCOMPLETE).iterdir()) == ["12", "18", "24"]
    assert "no complete checkpoint is left" in capsys.readouterr().err


def test_a_parameters_only_checkpoint_cannot_be_resumed(config_path, uninterrupted_run, tmp_path):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    step_dir = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    for item in (checkpointing.TRAINER, checkpointing.DATA):
        shutil.rmtree(step_dir / item)
    metadata = json.loads((step_dir / checkpointing.STEP_METADATA).read_text())
    metadata["item_handlers"] = {checkpointing.PARAMS: metadata["item_handlers"][checkpointing.PARAMS]}
    (step_dir / checkpointing.STEP_METADATA).write_text(json.dumps(metadata))  # as mgdt-import-checkpoint writes
    assert checkpointing.incomplete_reason(step_dir) is None  # evaluation and init_from read it
    with pytest.raises(checkpointing.CheckpointError, match="holds params but not trainer, data .*train.init_from"):
        checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    assert saved_steps(workdir) == [12, 18, 24]  # nothing moved


def test_cli_resumes_next_to_a_half_written_checkpoint_with_the_losses_of_an_uninterrupted_run(
    config_path, uninterrupted_run, fast_compiles, half_write, tmp_path
):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    half_write(workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS), "empty")
    process = run_cli(config_path, workdir, fast_compiles)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "Event loop" not in output, output
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and f"step {NUM_STEPS} (the directory is empty)" in warnings[0], output
    assert f"resumed from {workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS - CHECKPOINT_EVERY)}" in output
    assert saved_steps(workdir) == [12, 18, 24]  # step 24 written again, complete
    assert checkpointing.incomplete_reason(workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)) is None
    resumed, reference = losses(workdir), losses(uninterrupted_run)
    assert sorted(resumed) == list(range(NUM_STEPS - CHECKPOINT_EVERY + 1, NUM_STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [reference[s] for s in sorted(resumed)], rtol=1e-6)
