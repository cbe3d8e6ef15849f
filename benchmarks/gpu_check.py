"""Every accelerator figure the project claims, in one command sized to finish within 10 minutes.

    bash benchmarks/gpu_check.sh [--out DIR] [--only NAMES] [--skip NAMES] [--total-s S] [--dry-run] [--wheels DIR]

Runs the sections of ``SECTIONS`` one after another, each in its own process
(benchmarks/gpu_check_sections.py): each then has its own peak device memory, an out-of-memory or a
crash in one loses nothing else, and one that overruns its time budget is stopped (what it measured
by then is kept). At the end it prints each figure beside the goal it serves and writes
``DIR/gpu_check.json`` (every figure) and ``DIR/gpu_check.md`` (the table). docs/performance.md
says what each figure means and holds the figures measured so far.

Budgets are seconds on an H200 (what each section took in the first run there, plus ``GRACE_S``
and a margin; estimates where it did not finish), and they are also shares: a section's process gets
the time left times its budget over the budgets of the sections still to run, so what a section
leaves unused goes to those after it and the last one still gets its share. It stops its own timed
loops a few seconds before that and is killed at it; a share under ``MIN_START_S`` is not started.

``--dry-run`` runs every section at toy sizes on whatever JAX finds (a CPU in the tests) in about
75 s, so the script is exercised between accelerator sessions; its sections have no budgets of
their own, only the total.

This process imports no JAX (it must not claim the accelerator's memory before the sections do);
the sections need jax, flax, optax and numpy only, run from the repository root with
``PYTHONPATH=.``: nothing needs installing on a machine that has those. A section that needs more
(``Section.requires``) is skipped, naming what is missing, unless ``--wheels DIR`` brings it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mgdt_jax.core.commands import Terminated, interruptible
from mgdt_jax.core.files import path_argument

SECTIONS_SCRIPT = Path(__file__).with_name("gpu_check_sections.py")
GRACE_S = 10.0  # a section stops its own work this long before its process is killed
MIN_START_S = 20.0  # a section given less than this is not started (toy sizes: 5)
DEFAULT_TOTAL_S = 580.0  # the 10 minutes of one accelerator command, less 20 s for start-up and the report
DRY_RUN_TOTAL_S = 400.0  # toy sizes take ~75 s on a shared 2-core CPU; this bounds a loaded or hung one
MFU_GOAL = 0.45  # DT-200M bf16 on an H200, against the datasheet peak
# ALE on the development machine: ~5,000 env steps/s on 2 cores (docs/evaluation.md), ~2,500 per core.
ALE_STEPS_PER_CORE = 2_500
ACTOR_GOAL = 0.85  # the actor loop's env steps/s over the slower of its two parts (docs/evaluation.md)


@dataclasses.dataclass(frozen=True)
class Section:
    """One measurement: the function registered under its name in gpu_check_sections.SECTION_FUNCTIONS."""

    name: str
    goal: str
    budget_s: float  # seconds on an H200: the first run's (2026-12-01) time + GRACE_S + a margin; see docs
    requires: tuple[str, ...] = ()  # modules it needs beyond jax, flax, optax and numpy


SECTIONS = (
    Section("matmul_peak", "the ceiling every MFU is read against: bf16 matmul measured vs the datasheet", 20),
    Section("train_200m", "DT-200M bf16 training at the largest batch that fits: MFU >= 45% on an H200", 140),
    Section("train_1b", "1B training on one device (fsdp mesh, remat): it fits and runs, at what MFU", 130),
    Section("policy", "policy env steps/s at 64/256/1,024 envs (200M, tiny): the actor's ceiling when "
            "the emulators keep up; goal: at least ALE's rate on the host's cores", 60),
    Section("actor", f"actor loop (200M, Breakout x 64 envs) vs the policy alone and the environments alone: "
            f">= {ACTOR_GOAL:.0%} of the slower part", 90, requires=("ale_py", "gymnasium", "cv2")),
    Section("input_pipeline", "input pipeline windows/s on all host cores >= the 200M step's consumption", 60,
            requires=("grain", "tensorflow_datasets", "cv2")),
    Section("ad_train", "AD training tokens/s at the ad_darkroom size", 40),
    Section("ad_eval", "AD KV-cached in-context evaluation steps/s at 81 x 100 episodes", 25),
    Section("jat_train", "JAT (768 wide, 12 layers, 512 tokens) bf16 training tokens/s and MFU per modality", 100),
    Section("ada_ppo", "AdA environment + Transformer-XL PPO steps/s at 8,192 envs", 85),
)
SECTIONS_BY_NAME = {section.name: section for section in SECTIONS}


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def run_section(section: Section, seconds: float, dry_run: bool, scratch: Path) -> dict:
    """Runs one section's process for at most ``seconds``; its result dict (status, figures...)."""
    result_path = scratch / f"{section.name}.json"
    started = time.time()
    command = [sys.executable, str(SECTIONS_SCRIPT), section.name, "--result", str(result_path),
               "--deadline", f"{started + seconds - GRACE_S:.3f}"] + (["--dry-run"] if dry_run else [])
    print(f"\n== {section.name} (budget {seconds:.0f} s): {section.goal}", flush=True)
    # Its own session, so that stopping it also stops the worker processes it started.
    environment = dict(os.environ)
    if dry_run:  # toy figures mean nothing: compile without LLVM's optimisations, ~40% less CPU time
        environment["XLA_FLAGS"] = f"{environment.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    process = subprocess.Popen(command, start_new_session=True, env=environment)
    stopped, interrupted = False, ""  # interrupted: what stopped it, "Ctrl-C" or "SIGTERM"
    try:
        try:
            returncode = process.wait(timeout=seconds)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as cause:
            # SIGTERM first: the section's process then removes its temporary folders (gpu_check_sections.main)
            stopped = True
            if isinstance(cause, KeyboardInterrupt):
                interrupted = "SIGTERM" if isinstance(cause, Terminated) else "Ctrl-C"
            os.killpg(process.pid, signal.SIGTERM)
            try:
                returncode = process.wait(timeout=5)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # inside XLA it may not hear SIGTERM; a second Ctrl-C
                os.killpg(process.pid, signal.SIGKILL)
                returncode = process.wait()
    finally:  # its own session gets no Ctrl-C: whatever ends the wait, nothing of it is left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    try:
        result = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError):
        result = {"status": "running", "figures": {}}
    if interrupted:  # the caller reports what finished, then ends as interrupted
        result.update(status="stopped", reason=f"interrupted ({interrupted}); figures are what it had measured",
                      interrupted=interrupted)
    elif stopped:
        result.update(status="stopped", reason=f"exceeded its {seconds:.0f} s budget; figures are what it had measured")
    elif result["status"] == "running":  # the process ended without finishing: killed or crashed
        result.update(status="failed", reason=f"its process ended with exit code {returncode} before finishing")
    result["seconds"] = round(time.time() - started, 1)
    result["budget_s"] = round(seconds, 1)
    return result


def select(names: str | None, exclude: str | None) -> list[Section]:
    chosen = [name.strip() for name in names.split(",") if name.strip()] if names else list(SECTIONS_BY_NAME)
    excluded = {name.strip() for name in exclude.split(",") if name.strip()} if exclude else set()
    unknown = sorted((set(chosen) | excluded) - set(SECTIONS_BY_NAME))
    if unknown:
        raise SystemExit(f"gpu_check: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS_BY_NAME)}")
    return [SECTIONS_BY_NAME[name] for name in chosen if name not in excluded]


# ---------------------------------------------------------------------------------------------
# The report: each figure beside its goal


def _tflops(value: float | None) -> str:
    return f"{value / 1e12:,.1f} TFLOP/s" if value else "-"


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


def _gib(value: float | None) -> str:
    return f"{value / 2**30:,.1f} GiB" if value else "not reported"


def peaks(results: dict[str, dict]) -> tuple[float | None, float | None]:
    """(measured bf16 matmul FLOP/s, datasheet bf16 FLOP/s) from the matmul_peak section."""
    figures = results.get("matmul_peak", {}).get("figures", {})
    return figures.get("measured_flops"), figures.get("datasheet_flops")


def add_mfu(results: dict[str, dict]) -> None:
    """MFU of each bf16 training section (and each JAT group) against both peaks (None where a peak is unknown)."""
    measured, datasheet = peaks(results)
    jat = results.get("jat_train", {}).get("figures", {})
    for figures in [results.get(name, {}).get("figures", {}) for name in ("train_200m", "train_1b", "jat_train")] + \
            jat.get("groups_measured", []):
        if figures.get("flops_per_s"):
            figures["mfu_vs_measured"] = figures["flops_per_s"] / measured if measured else None
            figures["mfu_vs_datasheet"] = figures["flops_per_s"] / datasheet if datasheet else None


def pipeline_verdict(results: dict[str, dict]) -> list[dict]:
    """Per reader setting: its windows/s against the 200M training step's consumption."""
    consumption = results.get("train_200m", {}).get("figures", {}).get("windows_per_s")
    rows = []
    for setting in results.get("input_pipeline", {}).get("figures", {}).get("readers", []):
        rate = setting["windows_per_s"]
        if not consumption:
            verdict = "cannot compare: the 200M step was not measured in this run"
        elif rate >= consumption:
            verdict = f"keeps up ({rate / consumption:.2f}x what the step consumes)"
        else:
            verdict = f"falls short: {rate / consumption:.2f}x what the step consumes"
        rows.append({**setting, "consumption_windows_per_s": consumption, "verdict": verdict})
    return rows


def table_rows(results: dict[str, dict], cpus: int) -> list[tuple[str, str, str]]:
    """(goal, figure, verdict) rows, one or more per section, in section order."""
    rows = []
    measured, datasheet = peaks(results)
    for name, result in results.items():
        section, figures = SECTIONS_BY_NAME[name], result.get("figures", {})
        if result["status"] not in ("ok", "stopped") or not figures:
            rows.append((section.goal, f"{result['status']}: {result.get('reason', '')}", "-"))
            continue
        suffix = f" ({'interrupted' if result.get('interrupted') else 'stopped at its budget'}: partial)" \
            if result["status"] == "stopped" else ""
        if name == "matmul_peak" and measured:
            ratio = f"{measured / datasheet:.0%} of the datasheet" if datasheet else "no datasheet peak for this device"
            rows.append((section.goal, f"{_tflops(measured)} measured, {_tflops(datasheet)} datasheet{suffix}", ratio))
        elif name in ("train_200m", "train_1b") and figures.get("tokens_per_s"):
            capped = figures.get("batch") == figures.get("batch_cap") and figures.get("predicted_max_batch", 0) > figures["batch"]
            figure = (f"batch {figures['batch']}{' (the config batch; more would fit)' if capped else ''}: "
                      f"{figures['tokens_per_s']:,.0f} tokens/s, {_tflops(figures['flops_per_s'])}, "
                      f"MFU {_percent(figures.get('mfu_vs_measured'))} of measured / {_percent(figures.get('mfu_vs_datasheet'))} "
                      f"of datasheet, peak memory {_gib(figures.get('peak_bytes_in_use'))}{suffix}")
            verdict = "runs"
            if name == "train_200m":
                mfu = figures.get("mfu_vs_datasheet")
                verdict = ("no datasheet peak: goal not judged" if mfu is None
                           else f"{'meets' if mfu >= MFU_GOAL else 'misses'} MFU >= {MFU_GOAL:.0%} (datasheet)")
            rows.append((section.goal, figure, verdict))
        elif name == "ad_train" and figures.get("tokens_per_s"):
            rows.append((section.goal, f"batch {figures['batch']} x {figures['context_steps']} steps: "
                         f"{figures['tokens_per_s']:,.0f} tokens/s, {figures['tflops_per_s']:,.2f} TFLOP/s, "
                         f"MFU {_percent(figures.get('mfu'))} of datasheet{suffix}", "runs"))
        elif name == "ad_eval" and figures.get("rates"):
            for rate in figures["rates"]:
                rows.append((f"AD in-context evaluation, {rate['actions']} actions",
                             f"{rate['tasks']} goals x {rate['episodes']} episodes: {rate['env_steps_per_s']:,.0f} "
                             f"env steps/s (compiled in {rate['compile_s']:.0f} s){suffix}", "runs"))
        elif name == "jat_train" and figures.get("groups_measured"):
            for group in figures["groups_measured"]:
                memory = f", peak memory {_gib(figures.get('peak_bytes_in_use'))}" if group["group"] == figures["headline_group"] else ""
                rows.append((f"JAT {figures['num_layers']} layers x {figures['d_model']} training, {group['group']} rows",
                             f"batch {figures['batch']} x {figures['tokens_per_row']} tokens: {group['tokens_per_s']:,.0f} "
                             f"tokens/s, {_tflops(group['flops_per_s'])}, MFU {_percent(group.get('mfu_vs_measured'))} of "
                             f"measured / {_percent(group.get('mfu_vs_datasheet'))} of datasheet, loss "
                             f"{group['loss_first']:.3f} -> {group['loss_last']:.3f}{memory}{suffix}", "runs"))
        elif name == "ada_ppo" and figures.get("train_env_steps_per_s"):
            env_only = figures.get("env_only_steps_per_s")
            rows.append((section.goal,
                         f"{figures['env']} x {figures['envs']:,} envs, {figures['agent']} {figures['num_layers']} x "
                         f"{figures['d_model']} ({figures['params']:,} parameters): train step "
                         f"{figures['train_env_steps_per_s']:,.0f} env steps/s, environments alone "
                         f"{f'{env_only:,.0f}' if env_only else '-'} env steps/s, {_tflops(figures['flops_per_s'])} "
                         f"({figures['compute_dtype']}){suffix}",
                         f"the train step keeps {figures['train_over_env_only']:.1%} of the environments' speed"
                         if env_only else "environments alone not measured"))
        elif name == "policy" and figures.get("rates"):
            ale = ALE_STEPS_PER_CORE * cpus
            for rate in figures["rates"]:
                verdict = f"{'above' if rate['env_steps_per_s'] >= ale else 'below'} ~{ale:,} (ALE estimate, {cpus} cores)"
                rows.append((f"policy {rate['model']} x {rate['envs']} envs",
                             f"{rate['env_steps_per_s']:,.0f} env steps/s ({rate['dtype']}){suffix}", verdict))
        elif name == "actor" and figures.get("runs"):
            ratio = figures["actor_over_slower_part"]
            slower = "environments" if figures["raw_env_steps_per_s"] <= figures["policy_alone_env_steps_per_s"] else "policy"
            rows.append((section.goal,
                         f"{figures['model']} ({figures['dtype']}) x {figures['envs']} {figures['game']} envs, median of "
                         f"{len(figures['runs'])} run(s): loop {figures['actor_env_steps_per_s']:,.0f}, policy alone "
                         f"{figures['policy_alone_env_steps_per_s']:,.0f}, environments alone "
                         f"{figures['raw_env_steps_per_s']:,.0f} env steps/s ({figures['cores']} cores){suffix}",
                         f"{'meets' if ratio >= ACTOR_GOAL else 'misses'} >= {ACTOR_GOAL:.0%}: {ratio:.0%} of the "
                         f"slower part ({slower})"))
        elif name == "input_pipeline" and figures.get("readers"):
            for setting in pipeline_verdict(results):
                consumption = setting["consumption_windows_per_s"]
                rows.append((f"input pipeline, {setting['workers']} workers",
                             f"{setting['windows_per_s']:,.0f} windows/s vs {f'{consumption:,.0f}' if consumption else '-'} "
                             f"consumed by the 200M step{suffix}", setting["verdict"]))
        else:  # partial figures, or a section with no row of its own yet
            rows.append((section.goal, f"{result['status']}: {result.get('reason') or 'figures in gpu_check.json'}", "-"))
    return rows


def markdown_table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| goal | figure | verdict |", "|---|---|---|"]
    lines += [f"| {goal} | {figure} | {verdict} |" for goal, figure, verdict in rows]
    return "\n".join(lines) + "\n"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@interruptible("benchmarks/gpu_check.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="benchmarks/gpu_check.sh also takes --wheels DIR: the .whl files in DIR "
                                            "(benchmarks/gpu_check_wheels.sh fetches ale-py's) installed for this run only")
    parser.add_argument("--out", type=path_argument, default=Path(".bench/gpu_check"), help="where gpu_check.json and .md go")
    parser.add_argument("--only", help=f"comma list of sections to run: {','.join(SECTIONS_BY_NAME)}")
    parser.add_argument("--skip", help="comma list of sections to leave out")
    parser.add_argument("--total-s", type=float, help=f"time for all sections (default {DEFAULT_TOTAL_S:.0f}; "
                        f"dry run {DRY_RUN_TOTAL_S:.0f})")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on whatever JAX finds (a CPU): ~75 s")
    args = parser.parse_args(argv)
    sections = select(args.only, args.skip)
    if not sections:
        raise SystemExit("gpu_check: no section selected (--only and --skip leave none)")
    total = args.total_s if args.total_s is not None else (DRY_RUN_TOTAL_S if args.dry_run else DEFAULT_TOTAL_S)
    if not math.isfinite(total) or total <= 0:
        raise SystemExit(f"gpu_check: --total-s must be a positive number of seconds, got {total}")
    min_start = 5.0 if args.dry_run else MIN_START_S
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / ".gpu_check_writable").touch()  # found out now, not after the whole run
        (args.out / ".gpu_check_writable").unlink()
    except OSError as error:
        raise SystemExit(f"gpu_check: cannot write into --out {args.out}: {error.strerror}") from None

    started_at = datetime.datetime.now(datetime.timezone.utc)
    start = time.time()
    results: dict[str, dict] = {}
    interrupted = ""  # what stopped a section: "Ctrl-C" or "SIGTERM"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        missing = {s.name: [m for m in s.requires if not module_exists(m)] for s in sections}
        runnable = [s for s in sections if not missing[s.name]]
        for section in sections:
            if interrupted:
                results[section.name] = {"status": "skipped", "reason": f"interrupted ({interrupted}) before it started"}
                continue
            left = total - (time.time() - start)
            if section not in runnable:
                results[section.name] = {"status": "skipped",
                                         "reason": f"cannot run here: no module {', '.join(missing[section.name])}"}
            # Toy sizes on a shared CPU take what they take; the total still bounds them.
            elif (share := left if args.dry_run else left * section.budget_s / sum(s.budget_s for s in runnable)) \
                    < min_start:
                runnable.remove(section)
                results[section.name] = {"status": "skipped", "reason": f"no time left: its share of the {left:.0f} s "
                                         f"left is {share:.0f} s, under the {min_start:.0f} s a section needs"}
            else:
                runnable.remove(section)
                seconds = share
                results[section.name] = run_section(section, seconds, args.dry_run, Path(scratch))
                interrupted = results[section.name].get("interrupted", "")  # what finished is still reported
            if results[section.name]["status"] != "ok":
                print(f"-- {section.name}: {results[section.name]['status']}: {results[section.name].get('reason', '')}",
                      flush=True)

    add_mfu(results)
    environment = next((r["environment"] for r in results.values() if r.get("environment")), {})
    rows = table_rows(results, os.cpu_count() or 1)
    report = {
        "date": started_at.isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "machine": {"host_cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    **environment},
        # gpu_check.sh --wheels: the packages installed for this run only
        "carried_wheels": [name for name in os.environ.get("GPU_CHECK_WHEELS", "").split(",") if name],
        "commit": git_commit(),
        "total_s": round(time.time() - start, 1),
        "total_budget_s": total,
        "goals": {name: SECTIONS_BY_NAME[name].goal for name in results},
        "sections": results,
        "input_pipeline_vs_training": pipeline_verdict(results),
        "table": [dict(zip(("goal", "figure", "verdict"), row)) for row in rows],
    }
    table = markdown_table(rows)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(
        f"{report['date']}, {environment.get('device_kind', 'unknown device')} "
        f"({'dry run, toy sizes' if args.dry_run else 'full sizes'}), {report['total_s']:.0f} s\n\n{table}")
    print(f"\n{table}\n{report['total_s']:.0f} s in all; wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    if interrupted:
        # the report holds what finished; the command still ends as stopped
        raise Terminated if interrupted == "SIGTERM" else KeyboardInterrupt
    failed = [name for name, result in results.items() if result["status"] in ("failed", "stopped")]
    if failed:
        print(f"gpu_check: {', '.join(failed)} did not finish (see above)", file=sys.stderr)
    if not any(result["status"] in ("ok", "stopped", "failed") for result in results.values()):
        print("gpu_check: no section ran (each was skipped; see the reasons above)", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
