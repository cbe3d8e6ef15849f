"""Where an AdA agent's return per trial comes from: how often it reaches the goal, and how fast.

    python experiments/ada_trial_outcomes.py RUN [RUN ...] [--episodes 8] [--seed 0]

For each trained XLand run (an ``ada_claims.py`` run's ``trxl`` or ``gru`` folder), evaluates its
held-out tasks as ``mgdt-ada-eval`` does, with actions sampled and with the policy's argmax, and
prints per trial k: the mean return, the share of trials that reached the goal, the steps taken
when they did, and P(goal in trial k | goal in trial k-1) with the steps then. An XLand trial pays
``1 - 0.9 t / max_steps`` on reaching the goal at step t and 0 otherwise (xminigrid's reward), so
a positive return is a reached goal and ``t = (1 - r) max_steps / 0.9``. This says whether trials
2-5 fall short of a direct walk by failing to find a remembered object again or by walking to it
slowly. Writes nothing: the table (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, path_argument, seed_argument
from mgdt_jax.recipes.ada import evaluate


def outcomes(returns: np.ndarray, max_steps: int) -> dict[str, np.ndarray]:
    """``returns`` float [tasks, episodes, K] of XLand trials -> per trial k (arrays [K]): ``return``,
    ``reached`` (share with a positive return), ``steps`` (mean steps of the trials that reached the
    goal), ``kept`` (P(reached in k | reached in k-1); NaN at k = 1) and ``kept_steps``."""
    flat = returns.reshape(-1, returns.shape[-1])
    reached = flat > 0
    steps = np.where(reached, (1.0 - flat) * max_steps / 0.9, np.nan)
    kept = np.full(flat.shape[1], np.nan)
    kept_steps = np.full(flat.shape[1], np.nan)
    for k in range(1, flat.shape[1]):
        before = reached[:, k - 1]
        if before.any():
            kept[k] = reached[before, k].mean()
            both = before & reached[:, k]
            kept_steps[k] = steps[both, k].mean() if both.any() else np.nan
    with np.errstate(all="ignore"):
        mean_steps = np.nanmean(steps, axis=0)
    return {"return": flat.mean(0), "reached": reached.mean(0), "steps": mean_steps, "kept": kept,
            "kept_steps": kept_steps}


@interruptible("ada_trial_outcomes", errors=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=path_argument, nargs="+", help="trained XLand runs (an ada_claims run's trxl or gru folder)")
    parser.add_argument("--episodes", type=count_argument(), default=8, help="meta-episodes per held-out task (default 8)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="evaluation seed (the claims' is 0)")
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        for greedy in (False, True):
            print(f"evaluating {run} ({'argmax' if greedy else 'sampled'} actions)", file=sys.stderr, flush=True)
            scores = evaluate.evaluate_run(run, episodes=args.episodes, seed=args.seed, greedy=greedy)
            max_steps = scores.settings["env"].get("trial_length")
            if not max_steps:
                print(f"ada_trial_outcomes: error: {run}: not an XLand run (no trial_length)", file=sys.stderr)
                return 1
            rows.append((f"{run.name}, {'argmax' if greedy else 'sampled'}", outcomes(scores.returns, max_steps)))
    trials = len(rows[0][1]["return"])

    def cells(values: np.ndarray, digits: int) -> str:
        return " | ".join("" if np.isnan(v) else f"{v:.{digits}f}" for v in values)

    print("| run, actions | measure | " + " | ".join(f"trial {k + 1}" for k in range(trials)) + " |")
    print("|---|---|" + "---|" * trials)
    for name, result in rows:
        print(f"| {name} | return | {cells(result['return'], 3)} |")
        print(f"| | goal reached | {cells(result['reached'], 2)} |")
        print(f"| | steps, when reached | {cells(result['steps'], 1)} |")
        print(f"| | reached again after a reached trial | {cells(result['kept'], 2)} |")
        print(f"| | steps then | {cells(result['kept_steps'], 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
