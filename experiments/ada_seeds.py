"""The meta-RL claim over several training seeds: per seed and pooled, from evaluation reports.

    python experiments/ada_seeds.py REPORT.json [REPORT.json ...] [--json OUT]

Each REPORT.json is a held-out evaluation written by ``ada_claims.py`` (``OUT/report/report.json``)
or ``mgdt-ada-eval``; every run in it is grouped by its agent (``trxl`` or ``gru``), and its training
seed is the report's own (``settings.train_seed``), or, in reports written before it was recorded,
read from the run's ``config.json`` (``train.seed``), so such a report needs its run folder. All
runs must be scored on the same benchmark and the same held-out tasks with the same number of episodes, or the script stops with a
one-line error. Prints (markdown, stdout) per agent and seed the mean trial-1 and trial-5 returns
and their ratio, then per agent the pooled estimate: each task's score averaged over seeds, the
ratio of the trial-5 to the trial-1 mean over tasks with a percentile bootstrap 95% interval
(tasks resampled), and the paired trial-5 difference of the Transformer-XL and the GRU over the
same resampled tasks. The claim (issue: trial 5 >= 1.5x trial 1; Transformer-XL >= GRU at trial 5)
is read from the pooled values, which average out the seed-to-seed spread a single run shows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import output_file_argument, path_argument, write_text
from mgdt_jax.recipes.ada import evaluate

AGENT_NAMES = {"trxl": "Transformer-XL", "gru": "GRU RL2"}
TRIAL_5 = 4  # the claim's last trial; a report of more trials (mgdt-ada-eval --trials 13) is read at trial 5


class SeedError(ValueError):
    """Reports that cannot be pooled (unreadable, or scored on different tasks)."""


def load_runs(paths: list[Path]) -> dict[str, dict[int, np.ndarray]]:
    """{agent: {training seed: task scores [tasks, K]}} from the reports; SeedError names the file and
    the fault (unreadable, a repeated agent and seed, other tasks, benchmark or episodes)."""
    runs: dict[str, dict[int, np.ndarray]] = {}
    reference: tuple | None = None
    for path in paths:
        try:
            text = path.read_text()
        except OSError as error:
            raise SeedError(f"{path}: cannot be read ({error.strerror or error})") from None
        try:
            entries = json.loads(text)["runs"].items()
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise SeedError(f"{path}: not an AdA evaluation report ({type(error).__name__}: {error})") from None
        if not entries:
            raise SeedError(f"{path}: holds no runs")
        for name, run in entries:
            try:
                settings = run["settings"]
                agent = settings["agent"]
                key = (settings["env"]["benchmark_sha256"], tuple(run["task_ids"]), run["episodes_per_task"],
                       run["trials"], settings["split"], settings.get("actions"))
                config_path = Path(settings["workdir"]) / "config.json"
                scores = np.asarray(run["task_scores"], np.float64)
            except (KeyError, TypeError, ValueError) as error:
                raise SeedError(f"{path}: run {name!r} is not an AdA evaluation run "
                                f"({type(error).__name__}: {error})") from None
            if scores.ndim != 2 or scores.shape[0] != len(key[1]) or scores.shape[1] < TRIAL_5 + 1:
                raise SeedError(f"{path}: run {name!r} has task_scores of shape {scores.shape}, not "
                                f"[{len(key[1])} tasks, >= {TRIAL_5 + 1} trials]")
            if reference is None:
                reference = key
            elif key != reference:
                raise SeedError(f"{path}: run {name!r} is scored on other held-out tasks, benchmark, episodes, trials "
                                "or actions than the first report's; pool runs of one protocol only")
            recorded = settings.get("train_seed")  # absent from reports written before it was recorded
            try:
                seed = int(json.loads(config_path.read_text())["train"]["seed"] if recorded is None else recorded)
            except (OSError, ValueError, KeyError, TypeError) as error:
                where = config_path if recorded is None else path
                raise SeedError(f"{where}: the training seed of run {name!r} is unreadable ({error})") from None
            seeds = runs.setdefault(agent, {})
            if seed in seeds:
                raise SeedError(f"{path}: a second {agent} run of training seed {seed}")
            seeds[seed] = scores
    return runs


def _ratio(last: float, first: float) -> float:
    return last / first if first > 0 else math.nan


def _cell(value: float) -> str:
    """A ratio for the table; "n/a" where it is undefined (a trial-1 mean of 0)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def ratio_interval(task_scores: np.ndarray, *, reps: int = evaluate.BOOTSTRAP_REPS, seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high): mean over tasks of trial 5 / of trial 1, ``task_scores`` [tasks, K >= 5],
    with a percentile bootstrap interval over tasks at ``evaluate.CONFIDENCE``. NaN where a ratio is
    undefined: the value when trial 1's mean is 0, the interval when a resample's is."""
    value = float(_ratio(task_scores[:, TRIAL_5].mean(), task_scores[:, 0].mean()))
    resamples = np.random.default_rng(seed).integers(0, len(task_scores), (reps, len(task_scores)))
    means = task_scores[resamples].mean(axis=1)  # [reps, K]
    if not (means[:, 0] > 0).all():
        return value, math.nan, math.nan
    tail = (1.0 - evaluate.CONFIDENCE) / 2 * 100
    low, high = np.percentile(means[:, TRIAL_5] / means[:, 0], [tail, 100 - tail])
    return value, float(low), float(high)


def difference_interval(a: np.ndarray, b: np.ndarray, *, reps: int = evaluate.BOOTSTRAP_REPS,
                        seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high): mean over tasks of ``a - b`` [tasks] (paired: the same tasks), with the
    evaluation report's percentile bootstrap interval over tasks (``evaluate.bootstrap``)."""
    mean = evaluate.bootstrap((a - b)[:, None], reps=reps, seed=seed)["mean"]
    return mean["value"][0], mean["low"][0], mean["high"][0]


def summary(runs: dict[str, dict[int, np.ndarray]]) -> tuple[str, dict]:
    """The markdown tables and their values (per seed, pooled) of ``load_runs``'s output."""
    lines = ["| agent | seed | trial 1 | trial 5 | trial 5 / trial 1 |", "|---|---|---|---|---|"]
    values: dict = {"per_seed": {}, "pooled": {}}
    for agent, seeds in runs.items():
        for seed, scores in sorted(seeds.items()):
            first, last = scores[:, 0].mean(), scores[:, TRIAL_5].mean()
            lines.append(f"| {AGENT_NAMES.get(agent, agent)} | {seed} | {first:.3f} | {last:.3f} | {_cell(_ratio(last, first))} |")
            values["per_seed"].setdefault(agent, {})[seed] = {"trial_1": first, "trial_5": last}
    lines += ["", "| agent | seeds | trial 1 | trial 5 | trial 5 / trial 1 [95% CI] | ratio's spread over seeds |",
              "|---|---|---|---|---|---|"]
    # Reports of more trials than the claim's are cut to trial 5, so runs of 5 and of 13 trials pool.
    pooled = {agent: np.mean([scores[:, :TRIAL_5 + 1] for scores in seeds.values()], axis=0) for agent, seeds in runs.items()}
    for agent, scores in pooled.items():
        ratio = ratio_interval(scores)
        per_seed = [_ratio(v["trial_5"], v["trial_1"]) for v in values["per_seed"][agent].values()]
        lines.append(f"| {AGENT_NAMES.get(agent, agent)} | {', '.join(map(str, sorted(runs[agent])))} | "
                     f"{scores[:, 0].mean():.3f} | {scores[:, TRIAL_5].mean():.3f} | {_cell(ratio[0])} [{_cell(ratio[1])}, "
                     f"{_cell(ratio[2])}] | {_cell(min(per_seed))}-{_cell(max(per_seed))} |")
        values["pooled"][agent] = {"seeds": sorted(runs[agent]), "trial_1": scores[:, 0].mean(),
                                   "trial_5": scores[:, TRIAL_5].mean(), "ratio": ratio}
    if any(math.isnan(v) for entry in values["pooled"].values() for v in entry["ratio"]):
        lines += ["", "n/a: a trial-1 mean of 0 (in the data, or in a bootstrap resample of tasks) leaves the ratio undefined."]
    if {"trxl", "gru"} <= pooled.keys():
        difference = difference_interval(pooled["trxl"][:, TRIAL_5], pooled["gru"][:, TRIAL_5])
        lines += ["", f"Trial 5, Transformer-XL - GRU (pooled, paired over tasks): {difference[0]:+.3f} "
                      f"[{difference[1]:+.3f}, {difference[2]:+.3f}]"]
        values["trial_5_difference"] = difference
    return "\n".join(lines), values


def _undefined_as_null(value):
    """``value`` with every NaN (a ratio over a trial-1 return of 0) as None: JSON has no NaN, and
    strict parsers refuse the bare ``NaN`` Python writes."""
    if isinstance(value, dict):
        return {key: _undefined_as_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_undefined_as_null(item) for item in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


@interruptible("ada_seeds")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=path_argument, help="report.json of held-out evaluations")
    parser.add_argument("--json", type=output_file_argument, help="also write the values here")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.reports)
    except SeedError as error:
        print(f"ada_seeds: error: {error}", file=sys.stderr)
        return 1
    text, values = summary(runs)
    print(text)
    if args.json:
        try:
            write_text(args.json, json.dumps(_undefined_as_null(values), indent=1, default=float, allow_nan=False))
        except OSError as error:
            print(f"ada_seeds: error: --json {args.json}: {error.strerror or error}", file=sys.stderr)
            return 1
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
