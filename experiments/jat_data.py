"""The mini-JAT's data: records its tasks (seed 0) and prints their references as a markdown table.

    python -m experiments.jat_data --out data/jat

4 BabyAI levels and the BabyAI-RGB image task (100 bot episodes each), 4 Meta-World v3 tasks and
the 4 small MuJoCo tasks (20 expert episodes each, the MuJoCo experts trained first by our PPO),
each with as many uniform-random episodes for the reference. A rerun reuses what is recorded and
only prints the table (docs/jat.md §3 and §4 show one).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from data_pipelines.jat import record
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import path_argument
from mgdt_jax.recipes.jat import references

GROUPS = (  # (tasks, expert episodes = random episodes)
    (("babyai-go-to-red-ball-grey", "babyai-go-to-local", "babyai-pickup-loc", "babyai-put-next-local",
      "babyai-rgb-go-to-red-ball-grey"), 100),
    (("metaworld-reach", "metaworld-push", "metaworld-drawer-close", "metaworld-button-press-topdown"), 20),
    (("mujoco-pendulum", "mujoco-doublependulum", "mujoco-reacher", "mujoco-swimmer"), 20),
)


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def table(out: Path) -> str:
    rows = ["| task | env | episodes (expert / random) | expert mean return ± std | random mean return ± std "
            "| success (expert / random) |", "|---|---|---|---|---|---|"]
    for tasks, _ in GROUPS:
        for task in tasks:
            refs = references.load(out / task)
            rows.append(f"| `{task}` | {refs.env_id} | {refs.expert.episodes} / {refs.random.episodes} "
                        f"| {refs.expert.mean_return:.4g} ± {refs.expert.std_return:.2g} "
                        f"| {refs.random.mean_return:.4g} ± {refs.random.std_return:.2g} "
                        f"| {_rate(refs.expert.success_rate)} / {_rate(refs.random.success_rate)} |")
    versions = {}
    for tasks, _ in GROUPS:
        versions.update(references.load(out / tasks[0]).versions)
    rows.append("\nVersions: " + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())))
    return "\n".join(rows)


def ppo_table(out: Path) -> str:
    rows = ["| task | PPO steps | γ | mean training return (last 20 episodes) | recorded expert return |",
            "|---|---|---|---|---|"]
    for task in GROUPS[2][0]:
        with np.load(out / "experts" / f"{task}.npz") as content:
            info = json.loads(str(content["info"]))
        refs = references.load(out / task)
        rows.append(f"| `{task}` | {info['config']['total_steps']:,} | {info['config']['gamma']} "
                    f"| {info['train_return']:.4g} | {refs.expert.mean_return:.4g} |")
    return "\n".join(rows)


@interruptible("jat_data")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=path_argument, required=True, help="writes OUT/<task>/ for every task")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="metaworld")
    for tasks, episodes in GROUPS:
        summaries = record.record(list(tasks), args.out, episodes, seed=0, random_episodes=episodes,
                                  experts_dir=args.out / "experts")
        print(record.summary_line(summaries, args.out))
    print(table(args.out))
    print()
    print(ppo_table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
