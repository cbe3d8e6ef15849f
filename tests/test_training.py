"""The train loop end to end on 8 fake CPU devices, for every recipe (tests/recipe_cases.py: the MGDT
on recorded ALE data, AD, JAT and AdA): the loss falls; throughput and MFU follow the
recipe's step cost; a run preempted with SIGTERM (or stopped by Ctrl-C), resumed, killed with SIGKILL and resumed again has
the losses of an uninterrupted run, bit for bit (and, launched as two hosts, within rounding); checkpoints restore onto other meshes; a diverging
run stops and keeps its last good checkpoint; another recipe's checkpoints are refused; bad input
ends the CLI cleanly."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from mgdt_jax.core import checkpointing, sharding
from mgdt_jax.core.recipe import load_recipe
from mgdt_jax.core import loop
from mgdt_jax.core.metric_writer import EARLIER_RUNS_DIR, METRICS_FILE, TENSORBOARD_DIR, MetricWriter, read_metrics
from mgdt_jax.core import train_step
from mgdt_jax.core.train_step import Trainer
from tests.processes import another_process_holding, popen_as_from_a_terminal
from tests.recipe_cases import CASES, MGDT_CONFIG_FILE

NUM_STEPS = 24
CHECKPOINT_EVERY = 6
PEAK_FLOPS = 1e9  # the device peak the reference run is told, so that it reports an MFU on CPUs
REPOSITORY = Path(__file__).resolve().parents[1]  # on the path of subprocesses, for tests.* config modules


@pytest.fixture(scope="module")
def config_path(recipe_case, request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / f"tiny_{recipe_case.name}.py"
    path.write_text(recipe_case.config_file(request, num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY))
    return path


def load_config(path: Path):
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def losses(workdir: Path) -> dict[int, float]:
    """Step -> loss from the metrics log; a resumed run's own entry wins over one logged before a kill."""
    return {entry["step"]: entry["train/loss"] for entry in read_metrics(workdir) if "train/loss" in entry}


@pytest.fixture(scope="module")
def uninterrupted_run(config_path, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    peaks_asked = []

    def peak_flops_per_device(device, compute_dtype: str) -> float:
        peaks_asked.append(compute_dtype)
        return PEAK_FLOPS

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.flops, "peak_flops_per_device", peak_flops_per_device)
        result = loop.train(load_config(config_path), workdir)
    assert (result.first_step, result.last_step, result.last_checkpoint) == (0, NUM_STEPS, NUM_STEPS)
    assert peaks_asked == [load_recipe(load_config(config_path)).step_cost(16).compute_dtype]
    return workdir


def test_loss_falls_and_everything_is_logged(recipe_case, uninterrupted_run):
    by_step = losses(uninterrupted_run)
    assert sorted(by_step) == list(range(1, NUM_STEPS + 1))
    first, last = np.mean([by_step[s] for s in (1, 2, 3)]), np.mean([by_step[s] for s in range(NUM_STEPS - 2, NUM_STEPS + 1)])
    assert last < 0.85 * first, (first, last)
    entry = json.loads((uninterrupted_run / METRICS_FILE).read_text().splitlines()[-1])
    for name in (*recipe_case.metrics, "learning_rate", "grad_norm"):
        assert np.isfinite(entry[f"train/{name}"]), name
    assert any((uninterrupted_run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert saved_steps(uninterrupted_run) == [12, 18, 24]  # every 6 steps, the newest 3 kept
    assert json.loads((uninterrupted_run / loop.CONFIG_FILE).read_text())["recipe"] == recipe_case.recipe


def test_throughput_and_mfu_follow_the_recipes_step_cost(config_path, uninterrupted_run):
    config = load_config(config_path)
    cost = load_recipe(config).step_cost(config.train.batch_size)
    entries = [json.loads(line) for line in (uninterrupted_run / METRICS_FILE).read_text().splitlines()]
    timed = [entry for entry in entries if "perf/steps_per_second" in entry]
    assert len(timed) >= NUM_STEPS - 2  # every log step but the first (compilation is not timed)
    for entry in timed:
        steps_per_second = entry["perf/steps_per_second"]
        assert steps_per_second > 0
        assert entry["perf/tokens_per_second"] == pytest.approx(cost.tokens * steps_per_second, rel=1e-9)
        flops_per_device = entry["perf/tflops_per_second_per_device"] * 1e12
        assert flops_per_device == pytest.approx(cost.flops * steps_per_second / jax.device_count(), rel=1e-9)
        assert entry["perf/mfu"] == pytest.approx(flops_per_device / PEAK_FLOPS, rel=1e-9)


def run_cli(config_path: Path, workdir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(config_path), "--workdir", str(workdir)]
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    return popen_as_from_a_terminal(
        command, env={**os.environ, "PYTHONPATH": python_path}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


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


def stop_once_saved(config_path: Path, workdir: Path, signum: int, reason: str, returncode: int) -> int:
    """Runs the CLI until its first checkpoint exists, sends ``signum`` and returns the step it then
    saved and stopped at, checking that it said so (``reason`` at that step) and ended with
    ``returncode`` (negative: killed by that signal)."""
    process = run_cli(config_path, workdir)
    wait_for_checkpoint(process, workdir, CHECKPOINT_EVERY)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    stopped_at = max(losses(workdir))
    assert process.returncode == returncode and "Traceback" not in output, output
    assert any(f"({reason} at step {stopped_at})" in line for line in output.splitlines()[-2:]), output
    assert saved_steps(workdir)[-1] == stopped_at
    return stopped_at


def test_preempted_and_killed_run_resumes_with_the_losses_of_an_uninterrupted_run(
    config_path, uninterrupted_run, tmp_path
):
    workdir = tmp_path / "run"
    # SIGTERM (a preemption notice) once the first checkpoint exists: the run saves where it is and exits.
    preempted_at = stop_once_saved(config_path, workdir, signal.SIGTERM, "preempted", 128 + signal.SIGTERM)

    # Resumed, then SIGKILL once its next interval checkpoint exists: nothing is saved on the way out.
    next_checkpoint = (preempted_at // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
    assert next_checkpoint < NUM_STEPS
    process = run_cli(config_path, workdir)
    wait_for_checkpoint(process, workdir, next_checkpoint)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert next_checkpoint <= max(losses(workdir)) < NUM_STEPS

    resumed = run_cli(config_path, workdir)
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    assert "resumed from" in output and f"checkpoints in {workdir / checkpointing.CHECKPOINTS}" in output.splitlines()[-1]
    resumed_losses, reference = losses(workdir), losses(uninterrupted_run)
    assert sorted(resumed_losses) == sorted(reference)
    np.testing.assert_array_equal([resumed_losses[s] for s in sorted(reference)], [reference[s] for s in sorted(reference)])


def run_cli_on_two_hosts(config_path: Path, workdir: Path, *, second_host_args: tuple[str, ...] = ()
                         ) -> list[subprocess.Popen]:
    """The CLI as a two-host job on this machine: two processes of 4 CPU devices each (8 in all, as
    the reference run), launched as docs/training.md says outside SLURM; the second process gets
    ``second_host_args`` too."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "mgdt_jax.cli.train", "--config", str(config_path), "--workdir", str(workdir)]
    return [
        popen_as_from_a_terminal(command + list(second_host_args) * index, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={
            **os.environ, "PYTHONPATH": python_path, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(index),
        })
        for index in range(2)
    ]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, list[str]]]:
    """Each process's exit code and output lines (the collective library's connection lines left out);
    all are killed if one is not done within 300 s (a host left waiting in a collective)."""
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [(process.returncode, [line for line in output.splitlines() if not line.startswith("[Gloo]")])
            for process, output in zip(processes, outputs)]


def test_a_two_host_job_preempted_on_one_host_resumes_with_the_losses_of_one_host(recipe_case, request, tmp_path):
    if recipe_case.name not in ("ad", "ada"):
        pytest.skip("one offline and one online recipe: each recipe's split of a batch over hosts has its own tests")
    config_path, uninterrupted_run = (request.getfixturevalue(name) for name in ("config_path", "uninterrupted_run"))
    workdir = tmp_path / "run"
    processes = run_cli_on_two_hosts(config_path, workdir)
    wait_for_checkpoint(processes[0], workdir, CHECKPOINT_EVERY)
    processes[1].send_signal(signal.SIGTERM)  # one host's preemption notice: every host saves the same step
    finished = finish(processes)
    stopped_at = max(losses(workdir))
    for returncode, lines in finished:  # saved, not finished: `mgdt-train ... && next` must not go on
        assert returncode == 128 + signal.SIGTERM and "Traceback" not in "\n".join(lines), lines
        assert f"(preempted at step {stopped_at})" in lines[-1], lines
    assert CHECKPOINT_EVERY <= stopped_at < NUM_STEPS and saved_steps(workdir)[-1] == stopped_at

    for returncode, lines in finish(run_cli_on_two_hosts(config_path, workdir)):
        assert returncode == 0 and f"trained steps {stopped_at}..{NUM_STEPS}" in lines[-1], lines
    resumed, reference = losses(workdir), losses(uninterrupted_run)
    assert sorted(resumed) == sorted(reference)
    # Not bit for bit: the cross-process all-reduce adds in another order than one process does.
    np.testing.assert_allclose([resumed[s] for s in sorted(reference)], [reference[s] for s in sorted(reference)],
                               rtol=1e-5)

    # The hosts share the hashing of a checkpoint's files; a damaged file that only the second host
    # hashes must stop both, in the same line. Verification is the same for every recipe: one checks it.
    if recipe_case.name != "ad":
        return
    newest = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    names = sorted(json.loads((newest / checkpointing.DIGESTS).read_text())["sha256"])
    damaged = newest / next(name for index, name in enumerate(names) if index % 2 and name.startswith("params/"))
    flip_a_bit(damaged)
    for returncode, lines in finish(run_cli_on_two_hosts(config_path, workdir)):
        assert (returncode, lines[-1]) == (1, f"mgdt-train: error: {damaged}: damaged, its bytes differ from those "
                                              "saved (SHA-256 mismatch)"), lines

    # Process 0 alone tidies the checkpoint folder; a move that fails there stopped only process 0,
    # and the other host waited at the next barrier.
    flip_a_bit(damaged)  # undone
    stray, aside = workdir / checkpointing.CHECKPOINTS / "999", workdir / checkpointing.INCOMPLETE
    stray.write_text("my notes")
    shutil.rmtree(aside, ignore_errors=True)
    aside.write_text("not a folder")
    finished = finish(run_cli_on_two_hosts(config_path, workdir))
    assert [returncode for returncode, _ in finished] == [1, 1], finished
    # (refused at the start since, on every host: not a folder where the run keeps its incomplete steps)
    for _, lines in finished:
        assert lines[-1] == (f"mgdt-train: error: {aside}: is a file, where the run keeps its folder of that name; "
                             "move it away"), lines
    assert stray.read_text() == "my notes"


def test_a_workdir_another_training_is_writing_to_is_refused_and_a_killed_ones_taken_over(request, tmp_path):
    # Two runs started in one workdir: the second moved the first's logs aside and their checkpoints mixed.
    config_path = tmp_path / "tiny_ad.py"
    config_path.write_text(CASES["ad"].config_file(request, num_steps=2, checkpoint_every=1))
    config = load_config(config_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    with another_process_holding(workdir / loop.TRAINING_CLAIM) as other:
        with pytest.raises(OSError, match=rf"^{re.escape(str(workdir))}: another training \(process {other.pid}\) is "
                                          "writing there; wait for it or choose another folder$"):
            loop.train(config, workdir)
    assert [path.name for path in workdir.iterdir()] == [loop.TRAINING_CLAIM]  # nothing written beside it
    assert loop.train(config, workdir).last_step == 2  # its holder gone, the claim is taken over
    assert not (workdir / loop.TRAINING_CLAIM).exists()


@pytest.mark.skipif(jax.devices()[0].platform != "cpu", reason="checks the host memory of CPU devices")
def test_a_step_that_cannot_fit_in_memory_is_refused_before_it_runs(request, tmp_path, monkeypatch):
    # A window or batch far too large (MGDT model.num_steps 2000) got the process killed by the kernel.
    config_path = tmp_path / "tiny_ad.py"  # the loop's check, the same for every recipe: the fastest checks it
    config_path.write_text(CASES["ad"].config_file(request, num_steps=2, checkpoint_every=1))
    free = []
    monkeypatch.setattr(train_step.host_memory, "available_bytes", lambda: free[-1])
    free.append(2**20)  # 1 MiB for 8 CPU devices
    with pytest.raises(ValueError, match=r"^the compiled train step needs [0-9.]+ [KMG]iB more memory and 8 CPU device\(s\) "
                                         r"share the host's memory, which has 1.0 MiB free \(XLA's memory analysis\): "
                                         r"lower config.train.batch_size.*grad_accum_steps$"):  # no remat: on CPU it saves nothing
        loop.train(load_config(config_path), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before its first step: no run folder left
    free.append(2**40)
    assert loop.train(load_config(config_path), tmp_path / "run").last_step == 2


def test_an_accelerator_without_room_for_the_step_is_named():
    class Device:  # what an accelerator's memory_stats reports; CPUs report none
        device_kind, platform = "NVIDIA H200", "gpu"

        def __init__(self, limit: int):
            self.limit = limit

        def memory_stats(self):
            return {"bytes_limit": self.limit, "bytes_in_use": 1000}

    compiled = jax.jit(lambda x: jnp.outer(x, x)).lower(jax.ShapeDtypeStruct((1024,), jnp.float32)).compile()
    train_step.check_step_fits(compiled, [Device(2**30)])
    with pytest.raises(ValueError, match=r"needs 4.0 MiB more memory and a NVIDIA H200 has 0 bytes free .*"
                                         r"grad_accum_steps \(or the model's remat, where it has one\)$"):
        train_step.check_step_fits(compiled, [Device(1000)])


def test_a_file_named_like_a_step_is_moved_aside_not_replaced(request, tmp_path, capsys):
    # The save of that step replaced the user's file.
    config_path = tmp_path / "tiny_ad.py"
    config_path.write_text(CASES["ad"].config_file(request, num_steps=2, checkpoint_every=1))
    workdir = tmp_path / "run"
    assert loop.train(load_config(config_path), workdir).last_step == 2
    stray = workdir / checkpointing.CHECKPOINTS / "4"
    stray.write_text("my notes")
    config = load_config(config_path)
    config.train.num_steps = 4
    assert loop.train(config, workdir).last_checkpoint == 4
    assert (workdir / checkpointing.CHECKPOINTS / "4").is_dir()
    assert (workdir / checkpointing.INCOMPLETE / "4").read_text() == "my notes"
    assert f"warning: {stray}: a file where checkpoint step 4 would be saved; moved to " in capsys.readouterr().err


def test_a_host_whose_data_is_bad_stops_every_host_of_the_job_in_one_line(request, tmp_path):
    # Each host reads its own copy of the data; one copy missing used to leave the other host to
    # time out in its next collective with a traceback.
    config_path = tmp_path / "tiny_ad.py"  # the loop's behaviour, the same for every recipe: the fastest checks it
    config_path.write_text(CASES["ad"].config_file(request, num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY))
    missing = tmp_path / "missing"
    finished = finish(run_cli_on_two_hosts(config_path, tmp_path / "run",
                                           second_host_args=(f"--config.data.sources={missing}",)))
    reason = f"{missing}: no such dataset directory"
    assert [(returncode, lines[-1]) for returncode, lines in finished] == [
        (1, f"mgdt-train: error: process 1 of 2 failed: {reason}"), (1, f"mgdt-train: error: {reason}")]
    assert not (tmp_path / "run").exists()


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
    config.model.d_model *= 2
    trainer = Trainer(config, sharding.make_mesh(config.mesh))
    with pytest.raises(checkpointing.CheckpointError, match=r"its parameters do not fit this model: \S+ is \([\d, ]+\) in the checkpoint, \([\d, ]+\) here$"):
        checkpointing.load_params(uninterrupted_run, target=trainer.abstract_state.params)


def test_a_saved_checkpoint_whose_data_folder_vanished_is_damaged_not_an_imported_one(uninterrupted_run, tmp_path):
    # Read as an imported (parameters-only) MGDT checkpoint: another recipe's evaluation said "a
    # checkpoint of the 'mgdt' recipe", the MGDT's evaluated it without a word.
    workdir = copy_of_run(uninterrupted_run, tmp_path / "damaged")
    step = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    shutil.rmtree(step / checkpointing.DATA)
    with pytest.raises(checkpointing.CheckpointError, match=rf"^{re.escape(str(step / checkpointing.DATA))}/\S+: "
                                                            r"missing \(recorded when the checkpoint was saved\)$"):
        checkpointing.load_checkpoint(workdir, step=NUM_STEPS)


def test_deleted_array_files_are_one_line_to_every_reader(config_path, uninterrupted_run, tmp_path):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "damaged", sealed=False)
    step = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    data = [path for path in (step / checkpointing.PARAMS).rglob("*") if path.is_file() and "ocdbt.process_0" in path.parts]
    assert data, "no array files found to delete"
    for path in data:
        path.unlink()
    config = load_config(config_path)
    trainer = Trainer(config, sharding.make_mesh(config.mesh))
    cause = rf"\(.*{step / checkpointing.PARAMS}.*\)$"  # TensorStore's line, naming the folder, not Orbax's wrapper
    with pytest.raises(checkpointing.CheckpointError, match=rf"^{step}: its parameters cannot be read, a file is missing or damaged {cause}"):
        checkpointing.load_params(workdir, target=trainer.abstract_state.params)
    checkpointer = checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    try:  # resuming training reads the same files
        with pytest.raises(checkpointing.CheckpointError, match=rf"^{step}: its training state cannot be read, a file is missing or damaged {cause}"):
            checkpointer.restore(trainer.abstract_state)
    finally:
        checkpointer.close()


@pytest.mark.parametrize("text, fault", [
    ("not json", r"cannot be read, a file is missing or damaged \(JSONDecodeError: .*\)"),
    ("[1, 2]", r"is a list, not a JSON object; the file is damaged"),
])
def test_a_damaged_data_position_is_one_line_to_every_reader(uninterrupted_run, tmp_path, text, fault):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "damaged", sealed=False)
    step = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    (step / checkpointing.DATA / "metadata").write_text(text)
    expected = rf"^{step}: its data position {fault}$"
    with pytest.raises(checkpointing.CheckpointError, match=expected):
        checkpointing.load_params(workdir)
    checkpointer = checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    try:  # resuming training checks the saved recipe in the data position first
        with pytest.raises(checkpointing.CheckpointError, match=expected):
            checkpointer.data_position(NUM_STEPS)
    finally:
        checkpointer.close()


def test_reading_a_checkpoint_logs_no_read_only_warning(uninterrupted_run, caplog):
    # Orbax warned "Given directory is read only" for every evaluation's deliberately read-only read.
    with caplog.at_level("WARNING"):
        checkpointing.load_params(uninterrupted_run)
    assert not [record for record in caplog.records if "read only" in record.getMessage()]


def test_a_step_folder_is_read_and_a_step_removed_while_read_is_passed_over(uninterrupted_run, tmp_path, monkeypatch):
    # init_from RUN/checkpoints/18 said "holds no complete checkpoint"; mgdt-eval beside a running
    # training whose keep policy removed the step being read called the checkpoint damaged.
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    steps = workdir / checkpointing.CHECKPOINTS
    by_step = {step: jax.tree.leaves(checkpointing.load_params(workdir, step=step)) for step in (18, NUM_STEPS)}
    for saved, read in zip(by_step[18], jax.tree.leaves(checkpointing.load_params(steps / "18"))):
        np.testing.assert_array_equal(saved, read)
    with pytest.raises(checkpointing.CheckpointError, match="the folder of step 18, and step 12 was asked for"):
        checkpointing.load_params(steps / "18", step=12)
    (steps / "30").mkdir()  # an empty step folder was "holds no complete checkpoint", the reason left out
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/30: incomplete checkpoint: "):
        checkpointing.load_params(steps / "30")
    (steps / "30").rmdir()

    read = checkpointing._read_checkpoint
    newest = steps / str(NUM_STEPS)
    newest.rename(tmp_path / "not_yet_saved")

    def rotated_while_read(directory, step, *args):
        if step == 18 and not newest.exists():  # step 24's save finishes; the keep policy starts removing 18
            (tmp_path / "not_yet_saved").rename(newest)
            shutil.rmtree(directory / str(step) / checkpointing.PARAMS)
        return read(directory, step, *args)

    monkeypatch.setattr(checkpointing, "_read_checkpoint", rotated_while_read)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: reported.append(str(report.exc_value)))  # Python's printing
    for saved, read_now in zip(by_step[NUM_STEPS], jax.tree.leaves(checkpointing.load_params(workdir))):
        np.testing.assert_array_equal(saved, read_now)
    # The abandoned read's TensorStore callbacks, firing later into the event loop Orbax closed,
    # printed ~190 lines of tracebacks after a read that was right; other reports still show.
    for fault in (RuntimeError("Event loop is closed"), ValueError("a fault of its own")):
        _Reports(fault)
    assert reported == ["a fault of its own"]
    with pytest.raises(checkpointing.CheckpointError, match="/18/params/_METADATA: missing"):  # asked for by number
        checkpointing.load_params(workdir, step=18)
    # The removal met inside Orbax: its own errors escaped the retry (seen beside a training keeping one step).
    for orbax_error in (FileNotFoundError(2, "No such file or directory"), KeyError("Unknown key: params")):
        newest.rename(tmp_path / "not_yet_saved")

        def removed_inside_orbax(directory, step, *args, error=orbax_error):
            if step == 18 and not newest.exists():
                (tmp_path / "not_yet_saved").rename(newest)
                raise error
            return read(directory, step, *args)

        monkeypatch.setattr(checkpointing, "_read_checkpoint", removed_inside_orbax)
        for saved, read_now in zip(by_step[NUM_STEPS], jax.tree.leaves(checkpointing.load_params(workdir))):
            np.testing.assert_array_equal(saved, read_now)
    monkeypatch.setattr(checkpointing, "_read_checkpoint", lambda *args: (_ for _ in ()).throw(KeyError("Unknown key")))
    with pytest.raises(checkpointing.CheckpointError, match=r"/24: unreadable \(KeyError: 'Unknown key'\)$"):  # no newer step
        checkpointing.load_params(workdir)


class _Reports:
    """An object whose finalizer raises ``fault``: Python reports it through ``sys.unraisablehook``."""

    def __init__(self, fault: Exception):
        self.fault = fault

    def __del__(self):
        raise self.fault


def test_damaged_array_metadata_is_one_line_when_resuming(config_path, uninterrupted_run, tmp_path):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "damaged", sealed=False)
    step = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    (step / checkpointing.TRAINER / "_METADATA").write_text("{}")
    trainer = Trainer(load_config(config_path), sharding.make_mesh(load_config(config_path).mesh))
    checkpointer = checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    try:
        with pytest.raises(checkpointing.CheckpointError, match=rf"^{step}: its metadata cannot be read, a file is missing or damaged \(KeyError: .*\)$"):
            checkpointer.restore(trainer.abstract_state)
    finally:
        checkpointer.close()


def test_only_orbax_step_names_count_as_steps(uninterrupted_run, tmp_path):
    directory = copy_of_run(uninterrupted_run, tmp_path / "strays") / checkpointing.CHECKPOINTS
    steps = checkpointing.checkpoint_steps(directory)
    for stray in ("02000", "\u00b2", "\u0662\u0660\u0660\u0660"):  # a leading zero, a superscript two, Arabic-Indic digits
        shutil.copytree(directory / str(NUM_STEPS), directory / stray)
    assert checkpointing.checkpoint_steps(directory) == steps
    assert checkpointing.pick_checkpoint(directory)[1] == NUM_STEPS


def test_step_metadata_without_its_items_is_an_incomplete_step(uninterrupted_run, tmp_path):
    directory = copy_of_run(uninterrupted_run, tmp_path / "no_items", sealed=False) / checkpointing.CHECKPOINTS
    metadata = directory / str(NUM_STEPS) / checkpointing.STEP_METADATA
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "item_handlers": None}))
    assert "no readable" in checkpointing.incomplete_reason(directory / str(NUM_STEPS))
    assert checkpointing.pick_checkpoint(directory)[1] < NUM_STEPS


def test_checkpoints_of_another_recipe_are_refused_in_one_line(config_path, uninterrupted_run, tmp_path):
    workdir = tmp_path / "other_recipe"
    shutil.copytree(uninterrupted_run, workdir, ignore=shutil.ignore_patterns(TENSORBOARD_DIR))
    run_config = (workdir / loop.CONFIG_FILE).read_text()
    files = sorted(workdir.rglob("*"))
    config = load_config(config_path)
    config.train.num_steps = NUM_STEPS + 2
    recipe = load_recipe(config)

    class Renamed(type(recipe)):  # the same model, so only the recipe's name tells them apart
        name = "renamed"

    with pytest.raises(
        checkpointing.CheckpointError,
        match=rf"^{workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)}: a checkpoint of the '{recipe.name}' recipe, "
        r"and this config trains 'renamed' \(config.recipe\); use another workdir$",
    ):
        loop.train(config, workdir, recipe=Renamed(config))
    assert (workdir / loop.CONFIG_FILE).read_text() == run_config  # the run's config is left as it was
    assert sorted(workdir.rglob("*")) == files  # and nothing else is written
    # Fine-tuning from it said only that parameters were missing (another recipe's names them otherwise).
    config.train.init_from = str(workdir)
    with pytest.raises(checkpointing.CheckpointError, match=rf"^{workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)}: "
                                                            rf"a checkpoint of the '{recipe.name}' recipe, not 'renamed'$"):
        loop.train(config, tmp_path / "fine_tuned", recipe=Renamed(config))
    assert not (tmp_path / "fine_tuned").exists()


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(config_path, uninterrupted_run, tmp_path):
    workdir = tmp_path / "diverging"
    shutil.copytree(uninterrupted_run / checkpointing.CHECKPOINTS, workdir / checkpointing.CHECKPOINTS)
    config = load_config(config_path)
    config.train.num_steps = NUM_STEPS + CHECKPOINT_EVERY  # the next save would be the last step
    config.optimizer.learning_rate = 3e38  # the first update makes the parameters overflow
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
        return {"parameter_norm": float(np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree.leaves(nnx.state(model)))))}

    result = loop.train(config, tmp_path / "finetune", evaluate=evaluate)
    assert result.first_step == 0 and result.last_checkpoint == 2  # a new run: step and optimizer start fresh
    scratch_loss, pretrained_loss = losses(uninterrupted_run)[1], losses(tmp_path / "finetune")[1]
    assert pretrained_loss < 0.85 * scratch_loss  # the same first batch, the trained parameters
    assert evaluated == [1, 2]
    logged = [json.loads(line) for line in (tmp_path / "finetune" / METRICS_FILE).read_text().splitlines()]
    assert [entry["step"] for entry in logged if "eval/parameter_norm" in entry] == [1, 2]


def test_a_run_starting_over_sets_the_earlier_runs_logs_aside(config_path, uninterrupted_run, tmp_path, capsys):
    workdir = tmp_path / "checkpoints_deleted"  # the uninterrupted run's logs, none of its checkpoints
    workdir.mkdir()
    for name in (METRICS_FILE, TENSORBOARD_DIR):
        (shutil.copytree if name == TENSORBOARD_DIR else shutil.copyfile)(uninterrupted_run / name, workdir / name)
    config = load_config(config_path)
    config.train.num_steps = 2
    loop.train(config, workdir)
    moved = workdir / EARLIER_RUNS_DIR / "1"
    assert f"no checkpoint to resume from, so this run starts at step 0; the logs of the earlier run here were moved to {moved}" in capsys.readouterr().out
    assert (moved / METRICS_FILE).read_text() == (uninterrupted_run / METRICS_FILE).read_text()
    assert sorted(path.name for path in (moved / TENSORBOARD_DIR).iterdir()) == sorted(path.name for path in (uninterrupted_run / TENSORBOARD_DIR).iterdir())
    assert [entry["step"] for entry in read_metrics(workdir)] == [1, 2]  # only the new run's steps


def test_each_start_over_gets_its_own_earlier_runs_folder(tmp_path):
    for run in (1, 2, 3):
        writer = MetricWriter(tmp_path)
        writer.start_over()
        writer.write(1, {"train/loss": float(run)})
        writer.close()
    (tmp_path / EARLIER_RUNS_DIR / "notes").mkdir()  # not a run's number: passed over
    assert [read_metrics(tmp_path / EARLIER_RUNS_DIR / str(n))[0]["train/loss"] for n in (1, 2)] == [1.0, 2.0]
    assert read_metrics(tmp_path)[0]["train/loss"] == 3.0
    resumed = MetricWriter(tmp_path)  # resumed from a checkpoint: appends, moves nothing
    resumed.write(2, {"train/loss": 4.0})
    resumed.close()
    assert [entry["train/loss"] for entry in read_metrics(tmp_path)] == [3.0, 4.0]


@pytest.mark.parametrize("entry, kind", [("checkpoints", "file"), ("metrics.jsonl", "folder")])
def test_a_run_entry_of_the_other_kind_is_refused_before_the_first_step(request, tmp_path, entry, kind):
    # A file named checkpoints was found at the first save, every step before it lost (after a
    # traceback from Orbax's thread); a folder named metrics.jsonl at the first log.
    config_path = tmp_path / "tiny_ad.py"
    config_path.write_text(CASES["ad"].config_file(request, num_steps=2, checkpoint_every=1))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / entry).mkdir() if kind == "folder" else (workdir / entry).write_text("")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(workdir / entry))}: is a {kind}, where the run keeps its "):
        loop.train(load_config(config_path), workdir)
    assert sorted(path.name for path in workdir.iterdir()) == [entry]


def test_a_workdir_linking_to_nothing_is_one_line(request, tmp_path):
    config_path = tmp_path / "tiny_ad.py"
    config_path.write_text(CASES["ad"].config_file(request, num_steps=2, checkpoint_every=1))
    (tmp_path / "run").symlink_to(tmp_path / "gone")  # was "[Errno 17] File exists"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'run'))}: a symbolic link to .*gone, which does "
                                         "not exist$"):
        loop.train(load_config(config_path), tmp_path / "run")


def test_metrics_that_cannot_be_written_are_one_line_and_close_cleanly(tmp_path):
    # The event file was open and the metrics file not: close() failed on it with an AttributeError
    # traceback after the one line, and mgdt-train printed no line of its own.
    (tmp_path / METRICS_FILE).mkdir()
    writer = MetricWriter(tmp_path)
    with pytest.raises(OSError, match=rf"^{re.escape(str(tmp_path))}: cannot write the run's metrics \(Is a directory\)$"):
        writer.write(1, {"train/loss": 1.0})
    writer.close()


def test_cli_reports_a_bad_mgdt_data_source_in_one_line(tmp_path):
    config_path = tmp_path / "config.py"
    missing = tmp_path / "no_such_dataset"
    config_path.write_text(MGDT_CONFIG_FILE.format(source=str(missing), num_steps=2, checkpoint_every=1))
    process = run_cli(config_path, tmp_path / "run")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1] == f"mgdt-train: error: {missing}: no such dataset directory"
    assert not (tmp_path / "run").exists()  # the run folder it created is gone, not left empty
    existing = tmp_path / "existing"  # a folder the user made is left as it was
    existing.mkdir()
    with pytest.raises(ValueError, match="no such dataset directory"):
        loop.train(load_config(config_path), existing)
    assert existing.is_dir() and not any(existing.iterdir())
    for name, value in (("num_steps", 0), ("batch_size", 0), ("log_every", 0), ("eval_every", -1)):
        config = load_config(config_path)
        config.train[name] = value
        with pytest.raises(ValueError, match=rf"^config.train.{name} must be an integer >= \d, got {value}$"):
            loop.train(config, tmp_path / name)
        assert not (tmp_path / name).exists()
    for name, value, interval in (("learning_rate", float("nan"), r"\(0, inf\)"), ("b2", 1.0, r"\[0, 1\)")):
        config = load_config(config_path)
        config.optimizer[name] = value  # refused before the first step, not found as a diverged loss after it
        with pytest.raises(ValueError, match=rf"^config.optimizer.{name} must be a number in {interval}, got {value}$"):
            loop.train(config, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_cli_reports_a_bad_config_file_override_or_workdir_in_one_line(tmp_path):
    config_path = tmp_path / "config.py"
    config_path.write_text(MGDT_CONFIG_FILE.format(source=str(tmp_path / "unused"), num_steps=2, checkpoint_every=1))
    a_file = tmp_path / "a_file"
    a_file.write_text("notes")
    cases = [
        (["--config", str(tmp_path / "nosuch.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'nosuch.py'}: no such file"),
        (["--config", "experiments/nosuch.py", "--config.train.num_steps=3", "--workdir", str(tmp_path / "run")],
         "--config experiments/nosuch.py: no such file"),  # with an override: was two tracebacks
        (["--config", str(config_path), "--config.train.num_stepz=3", "--workdir", str(tmp_path / "run")],
         """--config.train.num_stepz names no field of the config ('num_stepz' Did you mean "num_steps" instead of "num_stepz"?)"""),
        # ml_collections names the last part alone: 'model', which the config also has (config.model).
        (["--config", str(config_path), "--config.mesh.model=2", "--workdir", str(tmp_path / "run")],
         "--config.mesh.model names no field of the config ('model')"),
        (["--config", str(config_path), "--workdir", str(a_file)], f"{a_file}: is a file, not a run folder"),
        # absl's own report of these was two lines under "FATAL Flags parsing error".
        (["--config", str(config_path), "--config.train.batch_size=abc", "--workdir", str(tmp_path / "run")],
         "flag --config.train.batch_size=abc: invalid literal for int() with base 10: 'abc'"),
        (["--config", str(config_path)], "flag --workdir=None: Flag --workdir must have a value other than None."),
    ]
    for name, text in (("no_get_config", "def config():\n    return 1\n"), ("a_dict", "def get_config():\n    return {}\n"),
                       ("broken", "def get_config(:\n"), ("raising", "def get_config():\n    return None.train\n"),
                       ("importing", "from my_recipes.bc import get_config\n"),
                       ("valueerror", "def get_config():\n    raise ValueError('no preset tiny')\n"),
                       ("runtimeerror", "def get_config():\n    raise RuntimeError('boom')\n"),
                       ("toplevel", "raise ValueError('top\\nlevel')\ndef get_config():\n    return 1\n")):
        (tmp_path / f"{name}.py").write_text(text)
    (tmp_path / "dataset_info.json").write_text('{"name": true}')  # a JSON file given for the config: run as Python
    (tmp_path / "binary.py").write_bytes(b"x\0y")
    cases += [
        (["--config", str(tmp_path / "no_get_config.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'no_get_config.py'}: defines no get_config() (an experiment config is a Python file "
         "whose get_config() returns an ml_collections ConfigDict)"),
        (["--config", str(tmp_path / "a_dict.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'a_dict.py'}: get_config() returned a dict, not an ml_collections ConfigDict"),
        (["--config", str(tmp_path / "a_dict.py"), "--config.train.num_steps=3", "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'a_dict.py'}: get_config() returned a dict, not an ml_collections ConfigDict"),
        (["--config", str(tmp_path / "broken.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'broken.py'}: line 1: invalid syntax"),
        (["--config", str(tmp_path / "raising.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'raising.py'}: get_config() failed: AttributeError: 'NoneType' object has no "
         "attribute 'train'"),
        (["--config", str(tmp_path / "importing.py"), "--workdir", str(tmp_path / "run")],  # was a traceback
         f"--config {tmp_path / 'importing.py'}: its imports failed: ModuleNotFoundError: No module named 'my_recipes' "
         "(a package not installed, or a recipe of your own whose folder is not on PYTHONPATH)"),
        (["--config", str(config_path), "--workdir", ""], "the workdir is empty: name a run folder"),
        # ml_collections re-raises a TypeError or ValueError of get_config() with its traceback in the message.
        (["--config", str(tmp_path / "valueerror.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'valueerror.py'}: get_config() failed: ValueError: no preset tiny"),
        # FILE:ARGUMENT passes ARGUMENT to get_config (jat_tiny's data folder); the file check was of "FILE:ARGUMENT".
        (["--config", f"{REPOSITORY / 'experiments' / 'jat_tiny.py'}:{tmp_path / 'jat'}", "--workdir", str(tmp_path / "run")],
         f"{tmp_path / 'jat' / 'babyai-go-to-local'}: no such dataset directory"),
        (["--config", str(tmp_path / "dataset_info.json"), "--workdir", str(tmp_path / "run")],  # was a traceback
         f"--config {tmp_path / 'dataset_info.json'}: cannot be loaded as an experiment config: NameError: name 'true' "
         "is not defined"),
        (["--config", str(tmp_path / "runtimeerror.py"), "--workdir", str(tmp_path / "run")],
         f"--config {tmp_path / 'runtimeerror.py'}: get_config() failed: RuntimeError: boom"),
        (["--config", str(tmp_path / "toplevel.py"), "--workdir", str(tmp_path / "run")],  # the file, not get_config
         f"--config {tmp_path / 'toplevel.py'}: cannot be loaded as an experiment config: ValueError: top level"),
        (["--config", str(tmp_path / "binary.py"), "--workdir", str(tmp_path / "run")],  # was "--config None: line None"
         f"--config {tmp_path / 'binary.py'}: source code string cannot contain null bytes"),
        (["--config", f"{config_path}:small", "--config.train.num_steps=3", "--workdir", str(tmp_path / "run")],
         f"--config {config_path}:small: get_config() failed: TypeError: get_config() takes 0 positional arguments "
         "but 1 was given (FILE:ARGUMENT passes ARGUMENT to get_config)"),
    ]
    # A multi-host launch outside SLURM (docs/training.md) with a bad process count or index.
    run_args = ["--config", str(config_path), "--workdir", str(tmp_path / "run")]
    cases += [
        (run_args, "cannot join the multi-host job: JAX_PROCESS_ID=2 is outside 0..1 (JAX_NUM_PROCESSES=2)",
         {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}),
        (run_args, "cannot join the multi-host job: JAX_PROCESS_ID='first' is not a whole number",
         {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "first"}),
        (run_args, "cannot join the multi-host job: set both JAX_NUM_PROCESSES and JAX_PROCESS_ID (or neither, "
         "where the launcher is detected)", {"JAX_NUM_PROCESSES": "2"}),
    ]
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    for args, message, *launch in cases:
        launch_env = {"JAX_COORDINATOR_ADDRESS": "localhost:1", **launch[0]} if launch else {}
        done = subprocess.run([sys.executable, "-m", "mgdt_jax.cli.train", *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": python_path, **launch_env}, timeout=120)
        assert (done.returncode, done.stderr.strip()) == (1, f"mgdt-train: error: {message}")
    assert not (tmp_path / "run").exists() and a_file.read_text() == "notes"


def test_a_new_run_that_fails_after_its_first_step_keeps_its_folder(request, tmp_path):
    path = tmp_path / "tiny_ad.py"  # the loop's behaviour, the same for every recipe: the fastest checks it
    path.write_text(CASES["ad"].config_file(request, num_steps=NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY))
    config = load_config(path)
    config.optimizer.learning_rate = 3e38  # the first update makes the parameters overflow
    with pytest.raises(loop.TrainingDiverged):
        loop.train(config, tmp_path / "new")
    assert (tmp_path / "new" / loop.CONFIG_FILE).is_file()  # what it wrote is there to read


def test_ctrl_c_saves_the_step_it_is_at_and_stops(request, tmp_path):
    path = tmp_path / "tiny_ad.py"  # the loop's behaviour, the same for every recipe: the fastest checks it
    path.write_text(CASES["ad"].config_file(request, num_steps=10 * NUM_STEPS, checkpoint_every=CHECKPOINT_EVERY))
    # Saved, so rerunning the command resumes there, as after SIGTERM (the test above); but the
    # command was stopped, so it ends as Ctrl-C ends a program (a calling shell stops too).
    assert stop_once_saved(path, tmp_path / "run", signal.SIGINT, "interrupted", -signal.SIGINT) < 10 * NUM_STEPS


def test_the_loop_keeps_at_most_two_steps_in_flight(request, tmp_path, monkeypatch):
    # Steps are dispatched asynchronously; a loop running ahead of the device reads a SIGTERM or a
    # Ctrl-C only at its next wait (a log interval later) and saves that many steps late. AdA: its
    # steps read no host data, so nothing else holds the loop back. Counted at each dispatch: the
    # dispatched steps whose metrics are not ready yet.
    path = tmp_path / "tiny_ada.py"
    path.write_text(CASES["ada"].config_file(request, num_steps=16, checkpoint_every=16))
    config = load_config(path)
    config.train.log_every = 16
    dispatched, in_flight = [], []

    class CountingStep:
        def __init__(self, compiled):
            self._compiled = compiled

        def __call__(self, state, batch):
            state, metrics = self._compiled(state, batch)
            dispatched.append(metrics)
            in_flight.append(sum(not all(leaf.is_ready() for leaf in jax.tree.leaves(m)) for m in dispatched))
            return state, metrics

        def __getattr__(self, name):  # cost_analysis, for the loop's FLOPs line
            return getattr(self._compiled, name)

    lower_step = Trainer.lower_step
    monkeypatch.setattr(Trainer, "lower_step", lambda self, batch: type("Lowered", (), {
        "compile": lambda _: CountingStep(lower_step(self, batch).compile())})())
    loop.train(config, tmp_path / "run")
    assert len(in_flight) == 16 and max(in_flight) <= 2, in_flight


def test_metrics_of_a_killed_and_resumed_run_read_one_entry_per_step(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
    from tensorboard.util import tensor_util

    killed = MetricWriter(tmp_path)
    killed.start_over()
    for step in (1, 2, 3):
        killed.write(step, {"train/loss": float(step)})
    killed.close()
    with open(tmp_path / METRICS_FILE, "a") as file:
        file.write('{"step": 4, "train/lo')  # the kill came mid-line
    time.sleep(1.1)  # event files are named by the second: the resumed run's sorts after
    resumed = MetricWriter(tmp_path)
    resumed.resume(2)  # from the checkpoint of step 2
    for step in (3, 4):
        resumed.write(step, {"train/loss": 10.0 * step})
    resumed.close()
    expected = [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert [(e["step"], e["train/loss"]) for e in read_metrics(tmp_path)] == expected
    # TensorBoard's loaders both: step 3 once, the resumed run's (it showed both runs' step 3)
    legacy = event_accumulator.EventAccumulator(str(tmp_path / TENSORBOARD_DIR)).Reload()
    assert [(event.step, event.value) for event in legacy.Scalars("train/loss")] == expected
    plugin = plugin_event_accumulator.EventAccumulator(str(tmp_path / TENSORBOARD_DIR)).Reload()
    assert [(event.step, float(tensor_util.make_ndarray(event.tensor_proto))) for event in plugin.Tensors("train/loss")] == expected


def copy_of_run(run: Path, workdir: Path, *, sealed: bool = True) -> Path:
    """A workdir holding a copy of ``run``'s checkpoints (steps 12, 18, 24) and its config.json.

    ``sealed=False`` drops their digests, as in checkpoints saved before digests existed: their
    damaged files reach Orbax and TensorStore, whose errors must still be one line.
    """
    shutil.copytree(run / checkpointing.CHECKPOINTS, workdir / checkpointing.CHECKPOINTS)
    shutil.copy(run / loop.CONFIG_FILE, workdir / loop.CONFIG_FILE)
    if not sealed:
        for digests in (workdir / checkpointing.CHECKPOINTS).glob(f"*/{checkpointing.DIGESTS}"):
            digests.unlink()
    return workdir


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def largest_file(directory: Path) -> Path:
    return max((path for path in directory.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)


def test_every_saved_checkpoint_is_sealed(uninterrupted_run):
    directory = uninterrupted_run / checkpointing.CHECKPOINTS
    assert saved_steps(uninterrupted_run) == [12, 18, 24]
    for step in saved_steps(uninterrupted_run):
        digests = json.loads((directory / str(step) / checkpointing.DIGESTS).read_text())
        items = {name.split("/")[0] for name in digests["sha256"] if "/" in name}
        assert digests["step"] == step and items >= {checkpointing.PARAMS, checkpointing.TRAINER, checkpointing.DATA}
        assert checkpointing.STEP_METADATA in digests["sha256"]
        checkpointing.verify(directory / str(step), sorted(items))


@pytest.mark.parametrize("item", [checkpointing.PARAMS, checkpointing.TRAINER, checkpointing.DATA])
def test_a_flipped_bit_is_refused_by_every_reader_naming_the_file(config_path, uninterrupted_run, tmp_path, item):
    # Without digests a flipped bit in the compressed array data restores as wrong numbers, silently.
    workdir = copy_of_run(uninterrupted_run, tmp_path / "flipped")
    damaged = largest_file(workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS) / item)
    flip_a_bit(damaged)
    expected = rf"^{damaged}: damaged, its bytes differ from those saved \(SHA-256 mismatch\)$"
    if item != checkpointing.TRAINER:  # evaluation and init_from read the parameters and data position
        with pytest.raises(checkpointing.CheckpointError, match=expected):
            checkpointing.load_params(workdir)
    trainer = Trainer(load_config(config_path), sharding.make_mesh(load_config(config_path).mesh))
    checkpointer = checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3)
    try:
        with pytest.raises(checkpointing.CheckpointError, match=expected):
            checkpointer.restore(trainer.abstract_state)
        if item == checkpointing.DATA:
            with pytest.raises(checkpointing.CheckpointError, match=expected):
                checkpointer.data_position(NUM_STEPS)
    finally:
        checkpointer.close()
    # The older steps are untouched and still read.
    checkpointing.load_params(workdir, step=NUM_STEPS - CHECKPOINT_EVERY)


def test_a_run_seals_the_unsealed_checkpoints_it_finds(uninterrupted_run, tmp_path):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "old", sealed=False)
    newest = workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    assert not checkpointing.is_sealed(newest)
    checkpointing.load_params(workdir)  # read unchecked, and not written to by a reader
    assert not checkpointing.is_sealed(newest)
    checkpointing.Checkpointer(workdir, save_every=CHECKPOINT_EVERY, keep=3).close()
    assert all(checkpointing.is_sealed(workdir / checkpointing.CHECKPOINTS / str(step)) for step in saved_steps(workdir))
    flip_a_bit(largest_file(newest / checkpointing.PARAMS))
    with pytest.raises(checkpointing.CheckpointError, match="SHA-256 mismatch"):
        checkpointing.load_params(workdir)


@pytest.mark.parametrize("damage, fault", [
    ("list", r"damaged \(TypeError: .*\); remove it to read the checkpoint unchecked"),
    ("no params", r"damaged \(records no file of params\); remove it"),
    ("directory", r"damaged \(OSError: not a file: .*\); remove it"),
    ("renamed step", r"damaged \(ValueError: the digests of step 24, not of step 30\); remove it"),
])
def test_damaged_digests_are_one_line(uninterrupted_run, tmp_path, damage, fault):
    step = copy_of_run(uninterrupted_run, tmp_path / "digests") / checkpointing.CHECKPOINTS / str(NUM_STEPS)
    digests = step / checkpointing.DIGESTS
    recorded = json.loads(digests.read_text())
    if damage == "list":
        digests.write_text("[1, 2]")
    elif damage == "no params":
        recorded["sha256"] = {name: d for name, d in recorded["sha256"].items() if not name.startswith("params/")}
        digests.write_text(json.dumps(recorded))
    elif damage == "directory":
        digests.unlink()
        digests.mkdir()
    else:  # a step directory renamed to a later step: resuming would start from the wrong state
        step = step.rename(step.parent / "30")
    with pytest.raises(checkpointing.CheckpointError, match=rf"^{step / checkpointing.DIGESTS}: {fault}"):
        checkpointing.load_params(step.parent)


@pytest.mark.parametrize("damage", ["deleted", "emptied", "stray empty file"])
def test_a_sealed_step_missing_a_file_is_refused_not_passed_over(uninterrupted_run, tmp_path, damage):
    # A sealed save had finished: a file gone since is damage to report, not an interrupted save to skip.
    directory = copy_of_run(uninterrupted_run, tmp_path / "sealed") / checkpointing.CHECKPOINTS
    step = directory / str(NUM_STEPS)
    target = step / checkpointing.PARAMS / "_METADATA"
    if damage == "deleted":
        target.unlink()
    elif damage == "emptied":
        target.write_bytes(b"")
    else:
        (step / checkpointing.PARAMS / ".nfs0001").touch()
    assert checkpointing.incomplete_reason(step) is None
    if damage == "stray empty file":
        checkpointing.load_params(directory)  # nothing saved has changed
        return
    expected = "missing (recorded" if damage == "deleted" else "SHA-256 mismatch"
    with pytest.raises(checkpointing.CheckpointError, match=rf"^{target}: .*{re.escape(expected)}"):
        checkpointing.load_params(directory)
    checkpointing.Checkpointer(directory.parent, save_every=CHECKPOINT_EVERY, keep=3).close()
    assert saved_steps(directory.parent) == [12, 18, 24]  # not moved aside as incomplete


def test_each_save_is_sealed_before_the_next_starts(recipe_case, config_path, tmp_path, monkeypatch):
    # With keep_checkpoints=1 the next save's finalize thread deletes the previous step: sealing
    # it then raced the deletion (a FileNotFoundError, or a digests file left in a deleted step).
    if recipe_case.name != "ad":
        pytest.skip("the checkpointer is the same for every recipe")
    config = load_config(config_path)
    config.train.update(num_steps=4, checkpoint_every=1, keep_checkpoints=1)
    sealed, original = [], checkpointing.seal

    def seal(step_directory: Path) -> None:
        assert not in_flight[0]._manager.is_saving_in_progress(), f"{step_directory} sealed during a save"
        sealed.append(int(step_directory.name))
        original(step_directory)

    in_flight, checkpointer = [], checkpointing.Checkpointer
    monkeypatch.setattr(checkpointing, "seal", seal)
    monkeypatch.setattr(checkpointing, "Checkpointer", lambda *a, **k: in_flight.append(checkpointer(*a, **k)) or in_flight[-1])
    loop.train(config, tmp_path / "keep1")
    assert sealed == [1, 2, 3, 4] and saved_steps(tmp_path / "keep1") == [4]
    checkpointing.verify(tmp_path / "keep1" / checkpointing.CHECKPOINTS / "4", checkpointing.TRAINING_ITEMS)


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


def test_jat_evaluation_loads_the_newest_complete_checkpoint(recipe_case, uninterrupted_run, half_write, tmp_path):
    if recipe_case.name != "jat":
        pytest.skip("the JAT evaluation's loader")
    from mgdt_jax.recipes.jat import evaluate  # noqa: PLC0415

    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    shutil.copy(uninterrupted_run / loop.CONFIG_FILE, workdir / loop.CONFIG_FILE)
    half_write(workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS), "no_array_files")
    assert evaluate.load_model(workdir)[2] == NUM_STEPS - CHECKPOINT_EVERY
    with pytest.raises(checkpointing.CheckpointError, match=rf"{NUM_STEPS}: incomplete checkpoint: "):
        evaluate.load_model(workdir, step=NUM_STEPS)


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
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run", sealed=False)
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
    config_path, uninterrupted_run, half_write, tmp_path
):
    workdir = copy_of_run(uninterrupted_run, tmp_path / "run")
    half_write(workdir / checkpointing.CHECKPOINTS / str(NUM_STEPS), "empty")
    process = run_cli(config_path, workdir)
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
