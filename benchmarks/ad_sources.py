"""Source-algorithm throughput for Algorithm Distillation: environment steps per second.

    python benchmarks/ad_sources.py [--tasks 1024] [--episodes 100] [--repeats 3] [--baseline-tasks 8] [--json OUT]

For each (environment, source algorithm) pair it times `sources.rollout`, which runs one learner
per task from scratch, vmapped over the tasks and scanned over the episodes in one jitted call: a
first call compiles (reported apart), then the best of `--repeats` calls with other seeds is timed.
One step is one environment step of one learner (a pull, for bandits), learning included. Beside
the speed it prints the mean episode return over the first and last tenth of the timed histories,
so each figure is shown for a learner that learns.

Baseline, measured in the same run: the same algorithm written the usual way, one task after the
other in a Python loop over NumPy (tabular Q-learning on Dark Room, Thompson sampling on the
10-armed bandit), on `--baseline-tasks` tasks; the ratio is ours over that.
"""

from __future__ import annotations

import argparse
import sys
import json
import time

import numpy as np

from mgdt_jax import envs
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, output_file_argument
from mgdt_jax.envs import grid
from mgdt_jax.recipes.ad import sources

PAIRS = (
    ("bandit", "thompson"), ("bandit", "ucb1"), ("bandit", "ad_epsilon"),
    ("darkroom", "q_learning"), ("darkroom", "a2c"), ("darkroom", "ad_epsilon"),
    ("darkroom_hard", "q_learning"), ("key_to_door", "q_learning"), ("key_to_door", "a2c"),
)


def numpy_q_learning_darkroom(num_tasks: int, num_episodes: int, seed: int = 0) -> dict:
    """Tabular Q-learning (the settings of sources.QLearning) on Dark Room 9x9, task by task."""
    source, env = sources.QLearning(), envs.get("darkroom")
    rng = np.random.default_rng(seed)
    moves = grid.MOVES
    started = time.perf_counter()
    for goal in rng.integers(0, 81, num_tasks):
        goal = np.array(divmod(goal, 9))
        q = np.full((81, 5), source.initial_value)
        for _ in range(num_episodes):
            position = np.array([4, 4])
            observation = 40
            for _ in range(env.episode_length):
                if rng.random() < source.epsilon:
                    action = rng.integers(5)
                else:
                    values = q[observation]
                    action = rng.choice(np.flatnonzero(values == values.max()))
                position = np.clip(position + moves[action], 0, 8)
                next_observation = position[0] * 9 + position[1]
                reward = float((position == goal).all())
                target = reward + source.discount * q[next_observation].max()
                q[observation, action] += source.learning_rate * (target - q[observation, action])
                observation = next_observation
    seconds = time.perf_counter() - started
    steps = num_tasks * num_episodes * env.episode_length
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


def numpy_thompson_bandit(num_tasks: int, num_pulls: int, seed: int = 0) -> dict:
    """Beta-Bernoulli Thompson sampling on 10-armed bandits (means uniform in [0, 1]), task by task."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for _ in range(num_tasks):
        means = rng.random(10)
        successes, failures = np.zeros(10), np.zeros(10)
        for _ in range(num_pulls):
            arm = np.argmax(rng.beta(1 + successes, 1 + failures))
            reward = rng.random() < means[arm]
            successes[arm] += reward
            failures[arm] += 1 - reward
    seconds = time.perf_counter() - started
    steps = num_tasks * num_pulls
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


@interruptible("benchmarks/ad_sources.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=count_argument(), default=1024, help="learners run at once (vmapped)")
    parser.add_argument("--episodes", type=count_argument(), default=100, help="episodes per learner (bandit: pulls)")
    parser.add_argument("--repeats", type=count_argument(), default=3, help="timed calls; the best counts")
    parser.add_argument("--baseline-tasks", type=count_argument(), default=8,
                        help="learners of the NumPy baseline loops (one after another)")
    parser.add_argument("--json", type=output_file_argument, default=None, help="write every figure here")
    args = parser.parse_args()

    baselines = {("darkroom", "q_learning"): numpy_q_learning_darkroom(args.baseline_tasks, args.episodes),
                 ("bandit", "thompson"): numpy_thompson_bandit(args.baseline_tasks, args.episodes)}
    results = []
    print(f"{'environment':<14} {'source':<11} {'tasks':>6} {'steps':>10} {'compile s':>9} {'steps/s':>12} "
          f"{'NumPy loop':>11} {'ratio':>7}  return first -> last tenth")
    for env_name, source_name in PAIRS:
        env = envs.get(env_name)
        figures = sources.steps_per_second(env, sources.make_source(source_name), args.tasks, args.episodes,
                                           repeats=args.repeats)
        baseline = baselines.get((env_name, source_name))
        ratio = figures["steps_per_s"] / baseline["steps_per_s"] if baseline else None
        results.append({"env": env_name, "source": source_name, "tasks": args.tasks, "episodes": args.episodes,
                        **figures, "numpy_steps_per_s": baseline and baseline["steps_per_s"], "ratio": ratio})
        print(f"{env_name:<14} {source_name:<11} {args.tasks:>6} {figures['steps']:>10,} {figures['compile_s']:>9.1f} "
              f"{figures['steps_per_s']:>12,.0f} "
              + (f"{baseline['steps_per_s']:>11,.0f} {ratio:>6.{0 if ratio >= 10 else 2}f}x" if baseline else f"{'':>11} {'':>7}")
              + f"  {figures['first_return']:.2f} -> {figures['last_return']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
