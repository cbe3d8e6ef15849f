"""Every console script: Ctrl-C ends it with one line and exit status 130, not a traceback; and
what a real Ctrl-C in the middle of a recording leaves is marked unfinished."""

from __future__ import annotations

import argparse
import inspect
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import tomllib
from importlib import import_module
from pathlib import Path

import pytest
from absl import app

from mgdt_jax.core.commands import INTERRUPTED, ConsoleScript
from mgdt_jax.core.files import MAX_SEED, count_argument, output_file_argument, path_argument, seed_argument
from tests.processes import popen_as_from_a_terminal

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("program", sorted(SCRIPTS))
def test_ctrl_c_is_one_line_and_exit_status_130(program, monkeypatch, capsys):
    module, function = SCRIPTS[program].split(":")
    main = getattr(import_module(module), function)
    # The interrupt arrives where every command starts its work: parsing its arguments.
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _interrupt)
    monkeypatch.setattr(app, "run", _interrupt)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")  # mgdt-train would re-execute itself first
    status = main([]) if program != "mgdt-train" else main()
    assert status == INTERRUPTED
    captured = capsys.readouterr()
    assert captured.err == f"{program}: interrupted\n" and captured.out == ""


@pytest.mark.parametrize("program", sorted(SCRIPTS))
def test_every_console_script_runs_its_commands_main(program):
    module, function = SCRIPTS[program].split(":")
    script = getattr(import_module(module), function)
    assert isinstance(script, ConsoleScript) and script.program == program
    assert callable(import_module(script.module).main)


@pytest.mark.parametrize("stop, line", [(signal.SIGINT, "mgdt-x: interrupted"),
                                        (signal.SIGTERM, "mgdt-x: terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_while_a_command_still_imports_is_one_line(tmp_path, stop, line):
    # JAX and TensorFlow take seconds to import, before any command's main is running: a Ctrl-C
    # then was a KeyboardInterrupt traceback, and raised inside a C extension's initialisation it
    # crashed the process (or gave an ImportError traceback). A module that stands for those
    # imports says when it has started, then takes its time; the imports finish, main never runs.
    started, ran = tmp_path / "started", tmp_path / "ran"
    imported = tmp_path / "imported"
    (tmp_path / "slow_imports.py").write_text(
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(3)\n"
        f"pathlib.Path({str(imported)!r}).touch()\n"
        f"def main(): pathlib.Path({str(ran)!r}).touch()\n")
    code = "import sys; from mgdt_jax.core.commands import ConsoleScript; sys.exit(ConsoleScript('mgdt-x', 'slow_imports')())"
    python_path = os.pathsep.join(filter(None, [str(tmp_path), str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    process = popen_as_from_a_terminal([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": python_path},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the import did not start within 60 s"
        time.sleep(0.05)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == -stop, stderr
    assert stderr == f"{line}\n" and stdout == "" and imported.exists() and not ran.exists()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_as_a_finished_command_exits_ends_it_with_its_own_status(tmp_path, stop):
    # A Ctrl-C in a command's last moments (Python's shutdown) gave its success line and exit status
    # 130 with no line of its own (a scheduler counts the run failed), and once hung it for good.
    # Here the shutdown waits a minute on a thread main left running.
    script = tmp_path / "finishing.py"
    script.write_text(
        "import sys, threading, time\n"
        "from mgdt_jax.core.commands import interruptible\n"
        "@interruptible('finishing')\n"
        "def main():\n"
        "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "    print('done', flush=True)\n"
        "    return 0\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n")
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    process = popen_as_from_a_terminal([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": python_path},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "done\n"
    time.sleep(0.5)  # main has returned: the process waits for the thread
    started = time.monotonic()
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=30)
    assert (process.returncode, stdout, stderr) == (0, "", "") and time.monotonic() - started < 10


def test_a_console_script_imports_nothing_heavy_before_its_ctrl_c_handling():
    # The console scripts import mgdt_jax.cli.scripts, hence the mgdt_jax.cli package, before
    # ConsoleScript watches for Ctrl-C: JAX imported there made an early Ctrl-C a traceback (and one
    # dropped in JAX's garbage-collector callback let the command run on and exit 0).
    code = ("import sys; from mgdt_jax.cli import scripts; "
            "print(sorted(m for m in ('jax', 'numpy', 'tensorflow', 'orbax') if m in sys.modules))")
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": python_path},
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def caught_parser(main, monkeypatch, *args) -> tuple[argparse.ArgumentParser, int | None]:
    """The argument parser ``main(*args)`` builds, caught as it starts to parse (a Ctrl-C there),
    and main's exit status."""
    parsers = []

    def capture(parser, *args, **kwargs):
        parsers.append(parser)
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # not the script: interruptible would end this process
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")  # else some re-execute themselves first
    status = main(*args)
    (parser,) = parsers
    return parser, status


def parser_of(program: str, monkeypatch, capsys) -> argparse.ArgumentParser:
    """The argument parser of a console script."""
    module, function = SCRIPTS[program].split(":")
    parser, _ = caught_parser(getattr(import_module(module), function), monkeypatch, [])
    capsys.readouterr()
    return parser


@pytest.mark.parametrize("program", sorted(set(SCRIPTS) - {"mgdt-train"}))  # absl: see test_training.py
def test_an_empty_path_flag_is_refused_in_one_line(program, monkeypatch, capsys):
    """``--out "$OUT"`` with OUT unset must not read or write the current folder."""
    parser = parser_of(program, monkeypatch, capsys)
    assert not [action.dest for action in parser._actions if action.type is Path]  # every path flag checks
    for action in parser._actions:
        if action.type is not path_argument:
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest  # a positional: its name
        with pytest.raises(SystemExit) as exit_status:
            parser.parse_known_args([name, ""] if action.option_strings else [""])
        assert exit_status.value.code == 2
        assert f"argument {name}: an empty path (an unset shell variable?)" in capsys.readouterr().err


@pytest.mark.parametrize("program", sorted(set(SCRIPTS) - {"mgdt-train"}))
def test_a_seed_no_generator_takes_is_refused_in_one_line(program, monkeypatch, capsys):
    # -1 seeded NumPy's generators as 2**32 - 1 without a word; 2**64 - 1 was a JAX overflow traceback.
    parser = parser_of(program, monkeypatch, capsys)
    for action in parser._actions:
        if not any("seed" in name for name in action.option_strings):
            continue
        assert action.type is seed_argument, action.option_strings
        name = action.option_strings[-1]
        for value, fault in (("-1", "-1 is out of range"), (str(2**64 - 1), f"{2**64 - 1} is out of range"),
                             ("1e3", "'1e3' is not a whole number")):
            with pytest.raises(SystemExit) as exit_status:
                parser.parse_known_args([name, value])
            assert exit_status.value.code == 2
            assert f"argument {name}: {fault}" in capsys.readouterr().err.splitlines()[-1]
        assert action.type(str(MAX_SEED)) == MAX_SEED and action.type("0") == 0


BENCHMARKS = sorted(path.stem for path in (REPOSITORY / "benchmarks").glob("*.py")
                    if path.stem not in ("gpu_check_sections", "peer_on_cuda", "peers", "__init__"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_scripts_check_their_arguments_before_measuring(name, monkeypatch, capsys, tmp_path):
    # A --json in a missing folder failed only when the figures were written, at the end; a count of
    # 0 divided by zero or measured nothing; a bad seed wrapped around.
    parser, status = caught_parser(import_module(f"benchmarks.{name}").main, monkeypatch)
    assert status == INTERRUPTED  # interruptible: Ctrl-C is one line here too
    assert capsys.readouterr().err == f"benchmarks/{name}.py: interrupted\n"
    for action in parser._actions:
        assert action.type is not int, f"{action.option_strings}: a count says its least (files.count_argument)"
        if "--json" in action.option_strings:
            assert action.type is output_file_argument
        if "--seed" in action.option_strings:
            assert action.type is seed_argument
    for action in parser._actions:
        if "--json" in action.option_strings:
            with pytest.raises(SystemExit):
                parser.parse_known_args(["--json", str(tmp_path / "missing" / "figures.json")])
            assert f"its folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_count_and_output_file_arguments_name_the_fault(tmp_path):
    count = count_argument(1)
    assert count("3") == 3
    for text, fault in (("0", "0: must be at least 1"), ("abc", "'abc' is not a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(fault)):
            count(text)
    assert count_argument(0)("0") == 0
    assert output_file_argument(str(tmp_path / "out.json")) == tmp_path / "out.json"
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        output_file_argument(str(tmp_path))


def test_ctrl_c_while_recording_leaves_the_logs_named_unfinished(tmp_path):
    out = tmp_path / "logs"
    command = [sys.executable, "-m", "data_pipelines.record", "--game", "Pong", "--steps", "200000",
               "--out", str(out), "--capacity", "1000"]
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    process = popen_as_from_a_terminal(command, env={**os.environ, "PYTHONPATH": python_path},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished, partial = out / "Pong" / "1" / "replay_logs", out / "Pong" / "1" / "replay_logs.partial"
    deadline = time.monotonic() + 120
    while not partial.is_dir() or not any(partial.iterdir()):  # the first dump is written
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "nothing recorded after 120 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGINT, stderr  # as Python ends on Ctrl-C: a calling shell loop stops too
    assert stderr.strip().splitlines()[-1] == "mgdt-record: interrupted" and "Traceback" not in stderr
    assert not finished.exists() and partial.is_dir()  # mgdt-convert names it as an interrupted recording


@pytest.mark.parametrize("program, argv, expected", [
    ("mgdt-demo", ["--max-episode-steps", "536870912"], "--max-episode-steps must be <= 536870911"),
    ("mgdt-import-checkpoint", ["--pickle", "released.pkl", "--step", "-1"], "--step must be >= 0, got -1"),
])
def test_values_no_run_can_use_are_refused_before_anything_is_written(program, argv, expected, tmp_path, capsys):
    module, function = SCRIPTS[program].split(":")
    with pytest.raises(SystemExit) as exit:
        getattr(import_module(module), function)([*argv, "--workdir", str(tmp_path / "run")])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"{program}: error: {expected}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("program, argv", [("mgdt-demo", []), ("mgdt-import-checkpoint", ["--pickle", "released.pkl"])])
def test_a_file_given_as_workdir_is_refused_in_one_line(program, argv, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.write_text("mine")
    module, function = SCRIPTS[program].split(":")
    with pytest.raises(SystemExit) as exit:
        getattr(import_module(module), function)([*argv, "--workdir", str(notes)])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"{program}: error: --workdir {notes}: is a file, not a folder"
    assert notes.read_text() == "mine"


def test_a_pickle_without_the_released_parameters_is_named_in_its_error(tmp_path, capsys):
    from mgdt_jax.cli import import_checkpoint

    pickled = tmp_path / "empty.pkl"
    pickled.write_bytes(pickle.dumps(({}, {})))
    assert import_checkpoint.main(["--pickle", str(pickled), "--workdir", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"mgdt-import-checkpoint: error: {pickled}: missing parameter ") and "\n" not in error
    assert not (tmp_path / "run").exists()


def test_a_failed_atomic_write_leaves_neither_file_nor_partial(tmp_path):
    from mgdt_jax.core import files  # noqa: PLC0415

    target = tmp_path / "report.json"
    target.mkdir()  # the rename onto it fails, after the partial file was written
    with pytest.raises(OSError):
        files.write_json(target, {"done": True})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"] and target.is_dir()
    files.write_json(tmp_path / "ok.json", [1])
    assert (tmp_path / "ok.json").read_text() == "[\n 1\n]\n" and not (tmp_path / "ok.json.partial").exists()


@pytest.mark.parametrize("name, args, message", [
    ("train", ["--warmup", "0"], "argument --warmup: 0: must be at least 1"),  # the first step compiles: untimed
    ("ad", ["--warmup", "0"], "argument --warmup: 0: must be at least 1"),
    ("actor", ["--steps", "1"], "argument --steps: 1: must be at least 2"),  # timed from the first step's end
    ("input_pipeline", ["--seconds", "nan"], "--seconds nan: must be a positive finite number"),
    ("input_pipeline", ["--train-steps", "1"], "--train-steps 1: give 0 (skip the end-to-end run) or at least 2"),
    ("ad", ["--modes", ","], "argument --modes: ',' names nothing; choose from train, eval, layout"),  # ran nothing, exit 0
    ("ada", ["--agents", "trxl,lstm"], "argument --agents: unknown lstm; choose from trxl, gru"),  # after trxl's run
    ("ada", ["--peak-tflops", "nan"], "--peak-tflops nan: must be a positive finite number"),  # MFU nan%
    ("train", ["--json", str(REPOSITORY / "README.md" / "x.json")], "README.md is a file, not a folder"),
])
def test_benchmark_settings_that_would_measure_nothing_are_refused(name, args, message, monkeypatch, capsys):
    # Each was accepted, then ended in a traceback (UnboundLocalError, a None formatted, ZeroDivisionError)
    # or, for nan seconds, figures of two batches.
    module = import_module(f"benchmarks.{name}")
    monkeypatch.setattr(sys, "argv", ["pytest", *args])
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_the_ada_benchmark_refuses_tiny_only_flags_in_the_claim_setting(monkeypatch, capsys):
    # --d-model with --setting claim was silently ignored: the figures were of another width.
    module = import_module("benchmarks.ada")
    monkeypatch.setattr(sys, "argv", ["pytest", "--setting", "claim", "--d-model", "32"])
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 2
    assert "--d-model applies to --setting tiny only" in capsys.readouterr().err


EXPERIMENT_SCRIPTS = sorted(path.stem for path in (REPOSITORY / "experiments").glob("*.py")
                            if "\ndef main(" in path.read_text())
COMMANDS = ([f"console:{program}" for program in sorted(set(SCRIPTS) - {"mgdt-train"})]  # absl flags have help by law
            + [f"benchmarks.{name}" for name in BENCHMARKS] + [f"experiments.{name}" for name in EXPERIMENT_SCRIPTS])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_says_what_it_does_in_help(command, monkeypatch, capsys):
    if command.startswith("console:"):
        parser = parser_of(command.removeprefix("console:"), monkeypatch, capsys)
    else:
        main = import_module(command).main
        parser, status = caught_parser(main, monkeypatch, *([[]] if inspect.signature(main).parameters else []))
        assert status == INTERRUPTED  # interruptible: Ctrl-C is one line here too
        capsys.readouterr()
    silent = [action.option_strings[-1] if action.option_strings else action.dest for action in parser._actions
              if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not silent, f"{command}: no --help text for {', '.join(silent)}"


def test_mgdt_train_out_of_device_memory_is_one_line_offering_remat_only_off_cpu(tmp_path):
    # XLA's RESOURCE_EXHAUSTED at run time; on CPU remat saves nothing, so the line must not offer it there.
    code = ("import sys, jax; from mgdt_jax.core import loop; "
            "loop.train = lambda *a, **k: (_ for _ in ()).throw(jax.errors.JaxRuntimeError("
            "'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 bytes.')); "
            f"sys.argv = ['mgdt-train', '--config', {str(REPOSITORY / 'tests' / 'toy_recipe.py')!r}, "
            f"'--workdir', {str(tmp_path / 'run')!r}]; "
            "from mgdt_jax.cli import train; sys.exit(train.main())")
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": python_path, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "mgdt-train: error: the step does not fit in device memory (RESOURCE_EXHAUSTED: Out of memory while trying to "
        "allocate 9 bytes.); lower train.batch_size, raise train.grad_accum_steps or shard with mesh.fsdp")
