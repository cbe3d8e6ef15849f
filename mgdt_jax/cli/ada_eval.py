"""``mgdt-ada-eval``: return per trial of a trained AdA run on its held-out tasks, frozen weights.

    mgdt-ada-eval --workdir RUN --out DIR [--trials K] [--episodes N] [--seed S] [--step STEP] [--greedy]

Every held-out task of the run's environment (``env.heldout_fraction``; every task when none is
held out) runs N meta-episodes of K trials at once from the run's latest checkpoint; per trial
k = 1..K: mean, median and 20th percentile over tasks with bootstrap 95% intervals. Writes
scores.csv, scores.png and report.json (last) into DIR.
"""

from __future__ import annotations

import argparse
import sys

from absl import logging

from mgdt_jax.cli.out_dir import claimed_out_dir
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import path_argument, seed_argument


@interruptible("mgdt-ada-eval")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-ada-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=path_argument, required=True, help="the AdA run (mgdt-train --workdir)")
    parser.add_argument("--out", type=path_argument, required=True, help="report directory")
    parser.add_argument("--trials", type=int, help="trials per meta-episode (default: the run's env.num_trials)")
    parser.add_argument("--episodes", type=int, default=1, help="meta-episodes per task (default 1)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="seeds the environments and sampling")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest complete one)")
    parser.add_argument("--greedy", action="store_true", help="act by the policy's argmax (default: sample from it)")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")

    logging.set_verbosity(logging.FATAL)  # errors reach the user as one line; Orbax logs are noise
    from mgdt_jax.recipes.ada import evaluate

    try:
        with claimed_out_dir(args.out, evaluate.REPORT_JSON, args.workdir):
            scores = evaluate.evaluate_run(args.workdir, trials=args.trials, episodes=args.episodes, seed=args.seed,
                                           step=args.step, greedy=args.greedy)
            report = evaluate.write_report([scores], args.out)
    except (ValueError, OSError) as error:  # BenchmarkError, CheckpointError surface as ValueError
        print(f"mgdt-ada-eval: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    run = report["runs"][scores.name]
    split = "held-out tasks" if run['settings']['split'] == "held-out" else "tasks (all: none held out)"
    print(f"{scores.name} (step {run['settings']['checkpoint_step']}): {run['tasks']} {split} x "
          f"{run['episodes_per_task']} episodes x {run['trials']} trials; report in {args.out}")
    for name in evaluate.STATISTICS:
        entry = run["scores"][name]
        cells = " ".join(f"{v:.3f}[{lo:.3f},{hi:.3f}]" for v, lo, hi in zip(entry["value"], entry["low"], entry["high"]))
        print(f"  {name:<6} per trial: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
