"""``mgdt-demo``: the whole flow on a small real dataset, from playing Atari to a scored report.

    mgdt-demo [--workdir mgdt_demo] [--games Breakout,Pong,Boxing] [--record-steps 4000]
              [--train-steps 1000] [--episodes 2] [--eval-max-frames 10000]

1. records real ALE games (random policy, sticky actions) into DQN-replay logs   (mgdt-record)
2. converts the logs to an RLDS dataset                                           (mgdt-convert)
3. pretrains the tiny MGDT over every available device, with checkpoints          (mgdt-train)
4. evaluates the last checkpoint on the same games and writes the report          (mgdt-eval)

Each stage leaves its result in WORKDIR and a rerun reuses it: recorded games are kept, converted
shards are skipped, training resumes from its newest checkpoint (and does nothing once finished),
and a report of the same checkpoint is not played again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import ml_collections
from absl import logging

from data_pipelines import convert, record
from experiments import tiny
from mgdt_jax.recipes.mgdt import actor
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import evaluate
from mgdt_jax.core import loop, metric_writer

DEFAULT_GAMES = ("Breakout", "Pong", "Boxing")
# The recorded episodes are short, so is the evaluation cap: 2,500 agent steps (the released
# notebook's default rollout length) keeps a policy that never serves in Breakout from playing
# the full 27,000 steps.
DEFAULT_EVAL_MAX_FRAMES = 10_000


def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/4] {text}", flush=True)


def record_games(games: list[str], steps: int, logs_dir: Path) -> None:
    """Records each game once; a game is recorded into a scratch folder and moved in when complete."""
    scratch = logs_dir.with_name(logs_dir.name + ".partial")
    for seed, game in enumerate(games):
        if (logs_dir / game).is_dir():
            print(f"{game}: reusing {logs_dir / game}")
            continue
        shutil.rmtree(scratch / game, ignore_errors=True)  # an interrupted earlier recording
        result = record.record(game, steps, scratch, capacity=max(steps // 3, 100), seed=seed)
        (logs_dir / game).parent.mkdir(parents=True, exist_ok=True)
        (scratch / game).rename(logs_dir / game)
        print(f"{game}: {result.steps} steps, {result.episodes_finished} finished episodes, "
              f"{result.checkpoints} dumps -> {logs_dir / game}")
    shutil.rmtree(scratch, ignore_errors=True)


def train_config(dataset_dir: Path, train_steps: int) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.data.sources = (str(dataset_dir),)
    config.train.num_steps = train_steps
    config.train.checkpoint_every = max(train_steps // 4, 1)
    config.train.log_every = max(train_steps // 20, 1)
    return config


def evaluate_latest(train_dir: Path, games: list[str], episodes: int, max_frames: int, report_dir: Path) -> int:
    """Evaluates the newest checkpoint unless the report already holds that checkpoint's scores."""
    model, step = evaluate.load_model(train_dir)
    report_file = report_dir / "report.json"
    if report_file.exists() and json.loads(report_file.read_text()).get("settings", {}).get("step") == step:
        print(f"reusing the report of step {step}: {report_file}")
        return step
    protocol = actor.EvalProtocol("demo", sticky_action_probability=0.25, max_episode_frames=max_frames)
    evaluate.evaluate(model, games, episodes=episodes, protocol=protocol, out_dir=report_dir,
                      extra_settings={"workdir": str(train_dir), "step": step})
    return step


def print_report(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    print(f"{'game':<14}{'episodes':>9}{'raw mean':>11}{'human-normalised':>18}")
    for game, scores in report["games"].items():
        normalised = scores["human_normalised"]
        shown = f"{normalised['value']:.3f}" if normalised else "n/a (no human score)"
        print(f"{game:<14}{len(scores['raw_scores']):>9}{scores['raw_mean']:>11.1f}{shown:>18}")
    for name, interval in report["aggregates"].items():
        print(f"{name:<14} {interval['value']:.3f}  95% CI [{interval['low']:.3f}, {interval['high']:.3f}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("mgdt_demo"))
    parser.add_argument("--games", default=",".join(DEFAULT_GAMES), help="comma-separated Atari games")
    parser.add_argument("--record-steps", type=int, default=4000, help="agent steps recorded per game")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=2, help="evaluation episodes per game")
    parser.add_argument("--eval-max-frames", type=int, default=DEFAULT_EVAL_MAX_FRAMES,
                        help="evaluation episode cap in emulator frames (4 per agent step)")
    args = parser.parse_args(argv)
    for name in ("record_steps", "train_steps", "episodes", "eval_max_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        games = [atari.check_game(game.strip()) for game in args.games.split(",")]
    except atari.UnknownGameError as error:
        parser.error(str(error))
    logging.set_verbosity(logging.ERROR)  # Orbax's informational warnings are noise here
    workdir = args.workdir.absolute()
    logs_dir, dataset_dir = workdir / "logs", workdir / "rlds"
    train_dir, report_dir = workdir / "train", workdir / "report"
    started = time.perf_counter()

    _stage(1, f"recording {args.record_steps} steps of {', '.join(games)} into DQN-replay logs")
    record_games(games, args.record_steps, logs_dir)

    _stage(2, "converting the logs to an RLDS dataset")
    conversion = convert.convert(logs_dir, dataset_dir)
    print(convert.summary_line(conversion, dataset_dir, time.perf_counter() - started))

    _stage(3, f"pretraining the tiny MGDT for {args.train_steps} steps")
    result = loop.train(train_config(dataset_dir, args.train_steps), train_dir)
    print(f"trained steps {result.first_step}..{result.last_step}; checkpoints in {train_dir}")

    _stage(4, f"evaluating the last checkpoint, {args.episodes} episodes per game")
    step = evaluate_latest(train_dir, games, args.episodes, args.eval_max_frames, report_dir)
    print_report(report_dir)
    print(
        f"\ndone in {time.perf_counter() - started:.0f}s: report {report_dir / 'report.json'}, "
        f"{report_dir / 'scores.csv'}, plot {report_dir / 'scores.png'}; checkpoint step {step} in {train_dir}; "
        f"TensorBoard: tensorboard --logdir {train_dir / metric_writer.TENSORBOARD_DIR}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
