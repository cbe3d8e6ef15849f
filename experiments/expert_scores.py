"""Scores of the scripted experts (mgdt-record --policy expert) beside random play and human scores.

    python experiments/expert_scores.py [--episodes 20] [--max-episode-steps 2500] [--json OUT]

Each game is played `--episodes` times by its expert (epsilon 0) and by the uniform random policy,
with the recording environment (Dopamine preprocessing, sticky actions 0.25), episode i reset with
seed i, and capped at `--max-episode-steps` agent steps (4 emulator frames each). Prints a markdown
table: mean raw score with a bootstrap 95% interval (rliable's percentile bootstrap, 2000
resamples), the DQN Zoo random and human scores (mgdt_jax/envs/atari_scores.csv), and the expert's
human-normalised mean. Games run in parallel processes, one per game and policy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys

import numpy as np

from data_pipelines import experts, record
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, output_file_argument
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import scores


def play(game: str, policy: str, episodes: int, max_episode_steps: int, sticky_actions: float = 0.25) -> list[float]:
    """Raw scores of `episodes` capped episodes of one policy ("expert" or "random")."""
    env = record.make_environment(game, sticky_actions, max_episode_steps)
    agent = record.POLICIES[policy](game, 0, env.unwrapped.ale)
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=episode)
        action, total, steps = agent.begin_episode(observation), 0.0, 0
        while True:
            observation, reward, game_over, truncated, _ = env.step(action)
            total, steps = total + float(reward), steps + 1
            if game_over or truncated or steps == max_episode_steps:
                break
            action = agent.step(float(np.clip(reward, -1, 1)), observation)
        returns.append(total)
    env.close()
    return returns


def _play(job: tuple[str, str, int, int]) -> list[float]:
    return play(*job)


@interruptible("experiments/expert_scores.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=count_argument(), default=20, help="episodes per game and policy")
    parser.add_argument("--max-episode-steps", type=count_argument(), default=2500, help="agent steps (4 frames each)")
    parser.add_argument("--processes", type=count_argument(), default=3, help="games played at once, one process each")
    parser.add_argument("--json", type=output_file_argument, help="also write every episode's score here (checked first)")
    args = parser.parse_args(argv)
    games = sorted(experts.EXPERTS)
    jobs = [(game, policy, args.episodes, args.max_episode_steps) for game in games for policy in ("expert", "random")]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = dict(zip([(g, p) for g, p, *_ in jobs], pool.map(_play, jobs)))
    references = atari.reference_scores()
    print(f"{args.episodes} episodes per game and policy, sticky actions 0.25, episodes capped at "
          f"{args.max_episode_steps} agent steps ({4 * args.max_episode_steps} frames)\n")
    print("| game | expert (mean, 95% CI) | random, measured (mean, 95% CI) | random (DQN Zoo) | human | expert, human-normalised |")
    print("|---|---|---|---|---|---|")
    for game in games:
        cells = []
        for policy in ("expert", "random"):
            interval = scores.game_interval(np.array(results[game, policy]))
            cells.append(f"{interval.value:.1f} [{interval.low:.1f}, {interval.high:.1f}]")
        normalised = scores.game_interval(scores.human_normalised(game, np.array(results[game, "expert"])))
        reference = references[game]
        print(f"| {game} | {cells[0]} | {cells[1]} | {reference.random} | {reference.human} | "
              f"{normalised.value:.2f} [{normalised.low:.2f}, {normalised.high:.2f}] |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "scores": {f"{g}/{p}": s for (g, p), s in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
