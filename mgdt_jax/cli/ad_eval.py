"""``mgdt-ad-eval``: in-context evaluation of a trained Algorithm Distillation run on held-out tasks.

    mgdt-ad-eval --workdir W [--ed-workdir W_ED] [--baselines thompson,ucb1] [--episodes N] --out DIR

Frozen weights, every held-out task of the run's config (``evaluation.split_seed``,
``evaluation.num_heldout``) at once with a KV cache, sampled and argmax actions, beside each
baseline source algorithm learning from scratch on the same tasks and the ED run; writes
report.json, curves.csv and curves.png (bootstrap 95% intervals; bandits: cumulative regret).
"""

from __future__ import annotations

import argparse
import sys

from absl import logging

from mgdt_jax.cli.out_dir import claimed_out_dir
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import count_argument, path_argument, seed_argument


@interruptible("mgdt-ad-eval")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-ad-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=path_argument, required=True, help="the AD run (mgdt-train --workdir)")
    parser.add_argument("--step", type=count_argument(0), help="the AD run's checkpoint step (default: the newest)")
    parser.add_argument("--ed-workdir", type=path_argument, help="an Expert Distillation run to compare with")
    parser.add_argument("--baselines", default="", help="comma list of source algorithms run from scratch, "
                                                        "e.g. thompson,ucb1 or q_learning")
    parser.add_argument("--episodes", type=int, default=None, help="in-context episodes (default 100 pulls / 40)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="seeds the environments and sampling")
    parser.add_argument("--out", type=path_argument, required=True, help="report directory")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        parser.error("--episodes must be positive")
    names = [name.strip() for name in args.baselines.split(",") if name.strip()]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        parser.error(f"--baselines {args.baselines}: names {', '.join(twice)} more than once")

    logging.set_verbosity(logging.FATAL)  # errors reach the user as one line; Orbax logs are noise
    from mgdt_jax.core.checkpointing import CheckpointError
    from mgdt_jax.envs.base import EnvError
    from mgdt_jax.recipes.ad import comparison, evaluate, sources

    try:
        with claimed_out_dir(args.out, evaluate.REPORT_JSON, args.workdir):
            baselines = [sources.make_source(name) for name in names]
            report = comparison.compare(args.workdir, args.out, ed_workdir=args.ed_workdir, baselines=baselines,
                                        episodes=args.episodes, seed=args.seed, step=args.step)
    except (ValueError, CheckpointError, EnvError, OSError) as error:  # HistoryError, SourceError are ValueErrors
        print(f"mgdt-ad-eval: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    settings = report["settings"]
    print(f"{settings['env']}: step {settings['step']}"
          + (f" (ED step {settings['ed_step']})" if settings["ed_step"] is not None else "")
          + f", {settings['tasks']} held-out tasks x {settings['episodes']} in-context episodes; report in {args.out}")
    for name, run in report["runs"].items():
        metric = "cumulative_regret" if "cumulative_regret" in run["final"] else "return"
        final = run["final"][metric]
        print(f"  {name:<12} {metric} at the end {final['mean']:.3f} [{final['low']:.3f}, {final['high']:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
