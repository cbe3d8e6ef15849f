"""``mgdt-jat-eval``: play a JAT checkpoint on recorded tasks and write an expert-normalised report.

    mgdt-jat-eval --workdir RUN --data data/jat --tasks babyai-go-to-local,metaworld-reach --out DIR

Each task's references come from DATA/<task>/references.json (written by mgdt-jat-record). Writes
OUT/report.json, OUT/scores.csv and OUT/scores.png (mgdt_jax/recipes/jat/evaluate.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from absl import logging

from mgdt_jax.cli.out_dir import claimed_out_dir
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import MAX_SEED, path_argument, seed_argument


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgdt-jat-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=path_argument, required=True, help="a JAT training run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--data", type=path_argument, required=True, help="directory of the recorded tasks (DATA/<task>)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (at least 10)")
    parser.add_argument("--envs-per-task", type=int, help="environments stepped together (default: all episodes)")
    parser.add_argument("--greedy", action="store_true", help="argmax discrete actions instead of sampling")
    parser.add_argument("--max-steps", type=int, help="cut episodes after this many steps (smoke runs)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="seeds the environments and sampling")
    parser.add_argument("--out", type=path_argument, required=True, help="report directory")
    return parser


@interruptible("mgdt-jat-eval")
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.episodes < 10:
        parser.error(f"--episodes must be >= 10 (per-task IQM over fewer is noise), got {args.episodes}")
    if args.seed + args.episodes - 1 > MAX_SEED:  # episode i is reset with seed + i
        parser.error(f"--seed {args.seed} with --episodes {args.episodes}: the last episode's seed would pass {MAX_SEED}")
    for name in ("envs_per_task", "max_steps"):
        if (value := getattr(args, name)) is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    task_names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not task_names:
        parser.error(f"--tasks names no task: {args.tasks!r}")
    if twice := sorted({name for name in task_names if task_names.count(name) > 1}):
        parser.error(f"--tasks {args.tasks}: names {', '.join(twice)} more than once (it would count twice in the IQM)")
    logging.set_verbosity(logging.FATAL)
    from mgdt_jax.core.checkpointing import CheckpointError
    from mgdt_jax.envs.gym_tasks import UnknownTaskError, get_task
    from mgdt_jax.recipes.jat import evaluate, references

    try:
        with claimed_out_dir(args.out, evaluate.REPORT_JSON, args.workdir):
            for name in task_names:  # before the run's tasks are compared with them (the zero-shot line)
                get_task(name)
            refs = {name: references.load(args.data / name, task=name) for name in task_names}
            for name, ref in refs.items():
                references.check_versions(ref)
            model, config, step = evaluate.load_model(args.workdir, args.step)
            trained = _trained_tasks(config)
            if untrained := [name for name in task_names if name not in trained]:
                print(f"mgdt-jat-eval: {', '.join(untrained)}: not among the run's training tasks "
                      f"({', '.join(sorted(trained)) or 'none recorded'}): scored zero-shot", file=sys.stderr)
            results = [evaluate.play_task(model, name, refs[name], episodes=args.episodes,
                                          envs_per_task=args.envs_per_task, seed=args.seed, greedy=args.greedy,
                                          max_steps=args.max_steps) for name in task_names]
            aggregates = evaluate.domain_iqm(results)
            evaluate.write_report(results, aggregates, args.out, {
                "workdir": str(args.workdir), "step": step, "episodes": args.episodes, "seed": args.seed,
                "greedy": args.greedy, "envs_per_task": args.envs_per_task, "max_steps": args.max_steps,
                "not_trained_on": untrained})
    except (CheckpointError, UnknownTaskError, ValueError, OSError) as error:  # ReferenceError is a ValueError
        print(f"mgdt-jat-eval: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    line = ", ".join(f"{name} IQM {i.value:.3f} [{i.low:.3f}, {i.high:.3f}]" for name, i in aggregates.items())
    print(f"step {step}, {len(results)} task(s) x {args.episodes} episodes: {line}; report in {args.out}")
    return 0


def _trained_tasks(config: dict) -> set[str]:
    """The task names of a run config's ``data.tasks``: each dataset's ``spec.task``, or the name of
    its folder where the dataset cannot be read now (moved, or a path relative to another folder)."""
    from mgdt_jax.recipes.jat.fields import DatasetError, read_spec

    names = set()
    for task in config.get("data", {}).get("tasks", ()):
        path = Path(str(task.get("path", "") if isinstance(task, dict) else task))
        try:
            names.add(read_spec(path).task)
        except DatasetError:
            names.add(path.name)
    return names


if __name__ == "__main__":
    sys.exit(main())
