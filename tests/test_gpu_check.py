"""benchmarks/gpu_check.sh: the dry run of every section as a bare accelerator machine would run it
(no ml_collections, no emulator; no TensorFlow or Grain for the input pipeline), the time budgets,
and the verdicts printed beside each goal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu_check, trace_summary

REPO = Path(__file__).resolve().parents[1]
BUILT = ("matmul_peak", "train_200m", "train_1b", "policy", "input_pipeline", "ad_train", "ad_eval", "jat_train",
         "ada_ppo")  # and "actor", which needs the emulator


def hide_modules(root: Path, names: tuple[str, ...]) -> Path:
    """A directory that, first on PYTHONPATH, makes importing each of ``names`` fail as if absent."""
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return root


def run_check(tmp_path: Path, hidden: tuple[str, ...], *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    environment = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # one device, as on the GPU
    environment.update(PYTHON=sys.executable, PYTHONPATH=str(hide_modules(tmp_path / "hidden", hidden)))
    out = tmp_path / "out"
    completed = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out), *args],
                               capture_output=True, text=True, env=environment, timeout=600)
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else {}
    return completed, report


@pytest.mark.slow
def test_dry_run_measures_every_built_section_without_ml_collections_or_an_emulator(tmp_path):
    completed, report = run_check(tmp_path, ("ml_collections", "ale_py", "gymnasium"))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    sections = report["sections"]
    assert {name: sections[name]["status"] for name in BUILT} == dict.fromkeys(BUILT, "ok"), sections

    peak = sections["matmul_peak"]["figures"]["measured_flops"]
    assert peak > 0
    fitted = sections["train_200m"]["figures"]
    # The probe's memory predicted a larger batch, which was compiled and timed.
    assert fitted["batch"] > fitted["probe_batch"]
    for name in ("train_200m", "train_1b"):
        figures = sections[name]["figures"]
        assert figures["tokens_per_s"] > 0 and np.isfinite(figures["loss_last"])
        assert figures["mfu_vs_measured"] == pytest.approx(figures["flops_per_s"] / peak)
        assert figures["tokens_per_s"] == pytest.approx(figures["tokens_per_step"] / figures["step_s"])
    assert sections["train_1b"]["figures"]["remat"] is True
    trace = sections["train_200m"]["figures"]["trace"]  # where the MFU goal's step spends its time
    assert trace["steps"] == 3 and trace["busy_s_per_step"] > 0 and 0 <= trace["matmul_share"] <= 1
    assert trace["top"] and sum(op["share"] for op in trace["top"]) <= 1 + 1e-9
    assert {rate["model"] for rate in sections["policy"]["figures"]["rates"]} == {"200m", "tiny"}
    assert all(rate["env_steps_per_s"] > 0 for rate in sections["policy"]["figures"]["rates"])
    jat = sections["jat_train"]["figures"]
    assert [group["group"] for group in jat["groups_measured"]] == ["continuous", "discrete"]  # toy: no images
    for group in jat["groups_measured"]:
        assert group["tokens_per_s"] > 0
        assert group["tokens_per_s"] == pytest.approx(jat["tokens_per_step"] / group["step_s"])
        assert np.isfinite(group["loss_first"]) and np.isfinite(group["loss_last"])
        assert group["mfu_vs_measured"] == pytest.approx(group["flops_per_s"] / peak)
    ada = sections["ada_ppo"]["figures"]
    assert ada["env"] == "arm_recall" and any("arm recall" in note for note in sections["ada_ppo"]["notes"])
    assert ada["train_env_steps_per_s"] > 0 and ada["env_only_steps_per_s"] > 0 and ada["params"] > 0
    assert ada["train_over_env_only"] == pytest.approx(ada["train_env_steps_per_s"] / ada["env_only_steps_per_s"])
    assert sections["actor"]["status"] == "skipped"
    assert sections["actor"]["reason"] == "the actor loop cannot run here: No module named 'ale_py'"
    (comparison,) = report["input_pipeline_vs_training"]
    assert comparison["windows_per_s"] > 0
    assert comparison["consumption_windows_per_s"] == pytest.approx(fitted["windows_per_s"])
    assert "keeps up" in comparison["verdict"] or "falls short" in comparison["verdict"]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "env steps/s" in table and "windows/s" in table and "JAT 1 layers x 64 training, continuous rows" in table
    assert "of the environments' speed" in table and "figures in gpu_check.json" not in table  # every section has rows


def test_the_actor_section_times_the_loop_against_its_parts_where_the_emulator_is(tmp_path):
    completed, report = run_check(tmp_path, ("ml_collections",), "--only", "actor")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    figures = report["sections"]["actor"]["figures"]
    assert (figures["game"], figures["envs"], len(figures["runs"])) == ("Breakout", 2, 1)
    (run,) = figures["runs"]
    for part in ("actor", "policy_alone", "raw"):
        assert run[f"{part}_env_steps_per_s"] > 0 and figures[f"{part}_env_steps_per_s"] == run[f"{part}_env_steps_per_s"]
    slower = min(run["policy_alone_env_steps_per_s"], run["raw_env_steps_per_s"])
    assert figures["actor_over_slower_part"] == pytest.approx(run["actor_env_steps_per_s"] / slower)
    (row,) = report["table"]
    assert row["verdict"].startswith(("meets >= 85%", "misses >= 85%")), row


def a_wheel(folder: Path, module: str) -> Path:
    """A pure-Python wheel of one module, as pip download would save it."""
    folder.mkdir()
    path = folder / f"{module}-1.0-py3-none-any.whl"
    info = f"{module}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{module}.py", "CARRIED = True\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", f"{module}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_wheels_brought_along_are_importable_by_the_check_and_removed_after(tmp_path):
    # A machine with no package index: --wheels installs them for the run only.
    wheel = a_wheel(tmp_path / "wheels", "carried_probe")
    python = tmp_path / "python"  # the interpreter the check runs, which first imports the carried module
    python.write_text(f'#!/bin/sh\nif [ "$1" = benchmarks/gpu_check.py ]; then "{sys.executable}" -c '
                      f'"import carried_probe" || exit 7; fi\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    environment.update(PYTHON=str(python), TMPDIR=str(scratch))
    check = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--only", "matmul_peak"]
    completed = subprocess.run(check + ["--out", str(tmp_path / "out"), "--wheels", str(wheel.parent)],
                               capture_output=True, text=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["carried_wheels"] == [wheel.name] and report["sections"]["matmul_peak"]["status"] == "ok"
    assert not list(scratch.glob("gpu_check_site.*"))

    wheel.write_bytes(b"not a zip")
    for folder, fault in ((tmp_path / "none", "no .whl files there"),
                          (wheel.parent, "pip could not install them (its message is above)")):
        folder.mkdir(exist_ok=True)
        completed = subprocess.run(check + ["--wheels", str(folder)], capture_output=True, text=True, env=environment,
                                   timeout=300)
        assert completed.returncode == 2 and completed.stderr.splitlines()[-1] == f"gpu_check: --wheels {folder}: {fault}"
    assert not list(scratch.glob("gpu_check_site.*"))


def test_a_section_with_no_function_is_reported_skipped_by_name(tmp_path):
    from benchmarks import gpu_check_sections

    result_file = tmp_path / "result.json"
    assert gpu_check_sections.main(["no_such_section", "--result", str(result_file), "--deadline",
                                    str(time.time() + 60), "--dry-run"]) == 0
    result = json.loads(result_file.read_text())
    assert result["status"] == "skipped" and result["figures"] == {}
    assert "no measurement is written for it yet (a function no_such_section" in result["reason"]


def test_input_pipeline_is_skipped_with_its_reason_where_its_packages_are_missing(tmp_path):
    hidden = ("ml_collections", "tensorflow", "tensorflow_datasets", "grain", "array_record")
    completed, report = run_check(tmp_path, hidden, "--only", "input_pipeline")
    assert completed.returncode == 1 and "no section ran" in completed.stderr, completed.stderr[-3000:]
    result = report["sections"]["input_pipeline"]
    assert result["status"] == "skipped"
    assert "cannot run here" in result["reason"] and "No module named" in result["reason"]
    assert report["input_pipeline_vs_training"] == []
    assert "skipped: the MGDT input pipeline cannot run here" in (tmp_path / "out" / "gpu_check.md").read_text()


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an orphan's exit may wait to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_a_section_over_its_budget_is_stopped_with_its_workers_and_keeps_its_figures(tmp_path, monkeypatch):
    script = tmp_path / "slow_section.py"
    script.write_text(
        "import json, subprocess, sys, time\n"
        "result = sys.argv[sys.argv.index('--result') + 1]\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "json.dump({'status': 'running', 'figures': {'tokens_per_s': 5.0, 'worker': worker.pid}}, open(result, 'w'))\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setattr(gpu_check, "SECTIONS_SCRIPT", script)
    start = time.time()
    result = gpu_check.run_section(gpu_check.Section("slow", "a goal", 3), 3, dry_run=True, scratch=tmp_path)
    assert time.time() - start < 15
    assert result["status"] == "stopped" and "3 s budget" in result["reason"]
    assert result["figures"]["tokens_per_s"] == 5.0
    time.sleep(0.5)
    assert not running(result["figures"]["worker"])  # the section's own worker went with it


def test_a_section_that_dies_is_reported_failed(tmp_path, monkeypatch):
    script = tmp_path / "dying_section.py"
    script.write_text("import sys; sys.exit(3)\n")
    monkeypatch.setattr(gpu_check, "SECTIONS_SCRIPT", script)
    result = gpu_check.run_section(gpu_check.Section("dies", "a goal", 30), 30, dry_run=True, scratch=tmp_path)
    assert result["status"] == "failed" and "exit code 3" in result["reason"]


def test_full_sizes_are_refused_on_a_cpu(tmp_path):
    result_file = tmp_path / "result.json"
    environment = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    environment["PYTHONPATH"] = str(REPO)  # as gpu_check.sh sets it
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check_sections.py"), "train_200m",
                                "--result", str(result_file), "--deadline", str(time.time() + 60)],
                               capture_output=True, text=True, env=environment, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(result_file.read_text())
    assert result["status"] == "skipped" and "no accelerator" in result["reason"]
    assert result["environment"]["backend"] == "cpu"


def test_sections_that_would_overrun_the_total_are_not_started(tmp_path):
    assert gpu_check.main(["--only", "train_200m,policy", "--total-s", "1", "--out", str(tmp_path)]) == 1  # none ran
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for name in ("train_200m", "policy"):
        assert report["sections"][name]["status"] == "skipped"
        assert report["sections"][name]["reason"].startswith("no time left")


def test_unknown_sections_are_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="unknown section.*trian_200m"):
        gpu_check.main(["--only", "trian_200m", "--out", str(tmp_path)])


def results_with(mfu_flops: float, pipeline_windows_per_s: float) -> dict[str, dict]:
    return {
        "matmul_peak": {"status": "ok", "figures": {"measured_flops": 800e12, "datasheet_flops": 1000e12}},
        "train_200m": {"status": "ok", "figures": {"batch": 512, "tokens_per_s": 1.0, "flops_per_s": mfu_flops,
                                                   "windows_per_s": 2000.0, "peak_bytes_in_use": 2**30}},
        "input_pipeline": {"status": "ok", "figures": {"readers": [
            {"workers": 16, "windows_per_s": pipeline_windows_per_s}]}},
    }


@pytest.mark.parametrize("flops_per_s, verdict", [(450e12, "meets"), (449e12, "misses")])
def test_the_mfu_goal_is_judged_against_the_datasheet_peak(flops_per_s, verdict):
    results = results_with(flops_per_s, 1.0)
    gpu_check.add_mfu(results)
    figures = results["train_200m"]["figures"]
    assert figures["mfu_vs_datasheet"] == pytest.approx(flops_per_s / 1000e12)
    assert figures["mfu_vs_measured"] == pytest.approx(flops_per_s / 800e12)
    (row,) = [row for row in gpu_check.table_rows(results, cpus=16) if row[0].startswith("DT-200M")]
    assert row[2].startswith(verdict)


@pytest.mark.parametrize("rate, verdict", [(2500.0, "keeps up (1.25x"), (1000.0, "falls short: 0.50x")])
def test_the_pipeline_is_compared_with_what_the_200m_step_consumes(rate, verdict):
    (comparison,) = gpu_check.pipeline_verdict(results_with(450e12, rate))
    assert comparison["consumption_windows_per_s"] == 2000.0
    assert comparison["verdict"].startswith(verdict)


def test_the_batch_prediction_errs_small_from_one_step_and_is_exact_from_two():
    from benchmarks.gpu_check_sections import predict_batch

    state, fixed, per_window = 10_000, 3_000, 250  # step bytes = state + fixed temporaries + per window
    budget = 100_000
    exact = (budget - state - fixed) // per_window // 8 * 8
    one = predict_batch([(16, state + fixed + 16 * per_window)], state, budget, granule=8)
    assert one <= exact and one % 8 == 0
    two = predict_batch([(16, state + fixed + 16 * per_window), (one, state + fixed + one * per_window)], state,
                        budget, granule=8)
    assert two == exact


def test_trace_summary_times_the_traced_steps_and_refuses_a_file_that_is_not_a_trace(tmp_path, capsys):
    step = jax.jit(lambda state, batch: (state + 1, {"loss": jnp.tanh(batch @ batch).sum()}))
    batch = jnp.ones((512, 512))
    state, summary = trace_summary.traced_steps(step, jnp.zeros(()), batch, steps=3)
    assert float(state) == 3  # the steps ran, and the state came back
    assert summary["steps"] == 3 and summary["busy_s_per_step"] > 0 and summary["wall_s_per_step"] > 0
    assert abs(sum(op["share"] for op in summary["top"]) - 1) < 1e-6  # every op of so small a step is listed

    not_a_trace = tmp_path / "notes.xplane.pb"
    not_a_trace.write_text("not a trace")
    with pytest.raises(SystemExit, match="notes.xplane.pb: not a readable profiler trace"):
        trace_summary.main([str(not_a_trace)])


def test_the_peer_runs_in_bfloat16_only_through_the_gpu_hook():
    from benchmarks.peer_on_cuda import peer_command

    script = REPO / "peer.py"
    assert peer_command("python3", script, on_gpu=False) == ["python3", str(script)]
    with pytest.raises(ValueError, match="bfloat16 on a GPU only"):
        peer_command("python3", script, on_gpu=False, precision="bfloat16")
    hook = str(REPO / "benchmarks" / "peer_on_cuda.py")
    assert peer_command("python3", script, on_gpu=True) == ["python3", hook, str(script)]
    assert peer_command("python3", script, on_gpu=True, precision="bfloat16") == [
        "python3", hook, "--autocast", "bfloat16", str(script)]
    with pytest.raises(ValueError, match="float16"):
        peer_command("python3", script, on_gpu=True, precision="float16")


def test_a_ctrl_c_stops_the_running_section_keeping_its_figures(tmp_path, monkeypatch, request):
    import signal
    import threading

    script = tmp_path / "slow_section.py"
    script.write_text(
        "import json, signal, sys, time\n"
        "result = sys.argv[sys.argv.index('--result') + 1]\n"
        "json.dump({'status': 'running', 'figures': {'tokens_per_s': 5.0}}, open(result, 'w'))\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # as a section inside an XLA call
        "time.sleep(60)\n"
    )
    monkeypatch.setattr(gpu_check, "SECTIONS_SCRIPT", script)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist's workers ignore SIGINT
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # a second one, while it ignores SIGTERM
    result = gpu_check.run_section(gpu_check.Section("slow", "a goal", 30), 30, dry_run=True, scratch=tmp_path)
    assert result["status"] == "stopped" and result["interrupted"] and "Ctrl-C" in result["reason"]
    assert result["figures"]["tokens_per_s"] == 5.0
    row = gpu_check.table_rows({"matmul_peak": {**result, "figures": {"measured_flops": 1e12}}}, cpus=2)[0]
    assert "(interrupted: partial)" in row[1]


def test_a_stopped_section_removes_its_temporary_folders(tmp_path):
    # gpu_check.py stops a section with SIGTERM (its budget spent, or a Ctrl-C there): a section
    # inside a temporary folder (a profiler trace's) unwinds and removes it.
    marker = tmp_path / "folder.txt"
    code = (
        "import sys, tempfile, time\n"
        "from benchmarks import gpu_check_sections as sections\n"
        "def section(run):\n"
        "    with tempfile.TemporaryDirectory(dir=sys.argv[2]) as folder:\n"
        "        open(sys.argv[1], 'w').write(folder)\n"
        "        time.sleep(60)\n"
        "sections.SECTION_FUNCTIONS['held'] = section\n"
        "sys.exit(sections.main(['held', '--result', sys.argv[3], '--deadline', str(time.time() + 60), '--dry-run']))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(marker), str(tmp_path), str(tmp_path / "result.json")],
                               cwd=REPO)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    folder = Path(marker.read_text())
    assert folder.is_dir()
    process.terminate()
    assert process.wait(timeout=30) == 1
    assert not folder.exists()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "running"  # gpu_check.py says stopped


def test_a_peer_is_checked_before_any_work_and_its_report_read_back(tmp_path):
    from benchmarks.peers import check_peer, run_peer

    peer = tmp_path / "peer.py"
    peer.write_text("import json, sys\n"
                    "if '--fail' in sys.argv: sys.exit('peer: error: no such size')\n"
                    "json.dump({'results': [{'argv': sys.argv[1:-2]}]}, open(sys.argv[-1], 'w'))\n")
    check_peer(sys.executable, peer, "json", on_gpu=False, precision="float32")
    assert run_peer([sys.executable, str(peer), "--sizes", "tiny@8"]) == {"results": [{"argv": ["--sizes", "tiny@8"]}]}
    with pytest.raises(RuntimeError, match="peer benchmark failed .*peer: error: no such size"):
        run_peer([sys.executable, str(peer), "--fail"])
    for args, message in [((sys.executable, tmp_path / "none.py", "json"), "--peer-script: .*none.py is not a file"),
                          ((str(tmp_path / "python"), peer, "json"), "--peer-python .*python: cannot import json"),
                          ((sys.executable, peer, "no_such_module"), "cannot import no_such_module \\(ModuleNotFound")]:
        with pytest.raises(SystemExit, match=message):
            check_peer(*args, on_gpu=False)
    with pytest.raises(SystemExit, match="--precision: precision bfloat16: the peer runs in bfloat16 on a GPU only"):
        check_peer(sys.executable, peer, "json", on_gpu=False, precision="bfloat16")
