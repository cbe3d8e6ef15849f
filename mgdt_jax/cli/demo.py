"""``mgdt-demo``: the whole flow on a small real dataset, from playing Atari to a scored report.

    mgdt-demo [--workdir mgdt_demo] [--games Boxing,Freeway,Breakout] [--record-steps 10000]
              [--policy expert] [--epsilon-schedule linear:1.0:0.0] [--max-episode-steps 1000]
              [--train-steps 1000] [--episodes 4]

1. records real ALE games into DQN-replay logs: each game's scripted expert mixed with random
   actions, epsilon annealed from 1 to 0 over the recording, so the data runs from random to
   expert play (sticky actions; `--policy random` records random play only)   (mgdt-record)
2. converts the logs to an RLDS dataset                                           (mgdt-convert)
3. pretrains the tiny MGDT over every available device, with checkpoints          (mgdt-train)
4. evaluates the last checkpoint on the same games with expert action inference, and a uniformly
   random policy under the same protocol, and writes both reports               (mgdt-eval)

Each stage leaves its result in WORKDIR and a rerun reuses it: recorded games are kept, converted
shards are skipped, training resumes from its newest checkpoint (and does nothing once finished),
and a report of the same checkpoint is not played again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import ml_collections
from absl import logging

from data_pipelines import convert, experts, record
from experiments import tiny
from mgdt_jax.core.commands import interruptible
from mgdt_jax.recipes.mgdt import actor
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt import evaluate
from mgdt_jax.recipes.mgdt.recipe import load_model
from mgdt_jax.core import files, loop, metric_writer
from mgdt_jax.core.checkpointing import CheckpointError

DEFAULT_GAMES = ("Boxing", "Freeway", "Breakout")  # each has a scripted expert (data_pipelines/experts.py)
RANDOM_DIR = "random"  # the random baseline's report, under the report folder
SETTINGS_FILE = "demo.json"  # the settings that fix the recorded data, so a rerun reuses only its own
DATA_SETTINGS = ("record_steps", "policy", "epsilon", "max_episode_steps")


def _stage(number: int, text: str) -> None:
    print(f"\n[{number}/4] {text}", flush=True)


def record_games(games: list[str], steps: int, logs_dir: Path, policy: str, epsilon: str,
                 max_episode_steps: int) -> None:
    """Records each game once; a game is recorded into a scratch folder and moved in when complete."""
    scratch = logs_dir.with_name(logs_dir.name + ".partial")
    for seed, game in enumerate(games):
        if (logs_dir / game).is_dir():
            print(f"{game}: reusing {logs_dir / game}")
            continue
        shutil.rmtree(scratch / game, ignore_errors=True)  # an interrupted earlier recording
        result = record.record(game, steps, scratch, capacity=max(steps // 3, 100), seed=seed, policy=policy,
                               epsilon=epsilon, max_episode_steps=max_episode_steps)
        (logs_dir / game).parent.mkdir(parents=True, exist_ok=True)
        (scratch / game).rename(logs_dir / game)
        print(f"{game}: {result.steps} steps, {result.episodes_finished} finished episodes, "
              f"{result.checkpoints} dumps -> {logs_dir / game}")
    shutil.rmtree(scratch, ignore_errors=True)


def check_settings(workdir: Path, settings: dict[str, object]) -> None:
    """Records the settings that fix the demo's data in ``workdir/SETTINGS_FILE``; ValueError (one
    line) when the workdir holds a demo recorded with others, whose logs a rerun would reuse."""
    path = workdir / SETTINGS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: unreadable ({error})") from None
        if saved != settings:
            changed = ", ".join(f"{name} {saved.get(name)!r} -> {value!r}" for name, value in settings.items()
                                if saved.get(name) != value)
            raise ValueError(f"{workdir} holds a demo recorded with other settings ({changed}): use another --workdir")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_json(path, settings)


def train_config(dataset_dir: Path, train_steps: int) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.data.sources = (str(dataset_dir),)
    config.train.num_steps = train_steps
    config.train.checkpoint_every = max(train_steps // 4, 1)
    config.train.log_every = max(train_steps // 20, 1)
    return config


def _holds(report_file: Path, games: list[str], episodes: int, protocol: actor.EvalProtocol, **settings) -> bool:
    """Whether `report_file` already scores these games, episodes and protocol (and `settings`)."""
    if not report_file.exists():
        return False
    report = json.loads(report_file.read_text())
    wanted = {"episodes_per_game": episodes, "protocol": dataclasses.asdict(protocol), **settings}
    return sorted(report["games"]) == sorted(games) and all(report["settings"].get(k) == v for k, v in wanted.items())


def evaluate_latest(train_dir: Path, games: list[str], episodes: int, max_frames: int, report_dir: Path) -> int:
    """Evaluates the newest checkpoint, and random play, unless the reports already hold those scores."""
    model, step = load_model(train_dir)
    protocol = actor.EvalProtocol("demo", sticky_action_probability=0.25, max_episode_frames=max_frames)
    report_file, random_file = report_dir / "report.json", report_dir / RANDOM_DIR / "report.json"
    if _holds(report_file, games, episodes, protocol, step=step):
        print(f"reusing the report of step {step}: {report_file}")
    else:
        evaluate.evaluate(model, games, episodes=episodes, protocol=protocol, out_dir=report_dir,
                          extra_settings={"workdir": str(train_dir), "step": step})
    if _holds(random_file, games, episodes, protocol):
        print(f"reusing the random baseline: {random_file}")
    else:
        evaluate.evaluate_random(games, episodes=episodes, protocol=protocol, out_dir=report_dir / RANDOM_DIR)
    return step


def print_report(report_dir: Path) -> None:
    """The trained agent's scores beside random play's, per game (raw means) and aggregated (HNS)."""
    trained = json.loads((report_dir / "report.json").read_text())
    random = json.loads((report_dir / RANDOM_DIR / "report.json").read_text())

    def normalised(scores: dict) -> str:
        return f"{scores['human_normalised']['value']:.3f}" if scores["human_normalised"] else "n/a"

    print(f"{'game':<14}{'episodes':>9}{'trained raw':>13}{'random raw':>12}{'trained HNS':>13}{'random HNS':>12}")
    for game, scores in trained["games"].items():
        baseline = random["games"][game]
        print(f"{game:<14}{len(scores['raw_scores']):>9}{scores['raw_mean']:>13.1f}{baseline['raw_mean']:>12.1f}"
              f"{normalised(scores):>13}{normalised(baseline):>12}")
    for name, interval in trained["aggregates"].items():
        other = random["aggregates"][name]
        print(f"HNS {name:<10} trained {interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
              f"   random {other['value']:.3f} [{other['low']:.3f}, {other['high']:.3f}]")


@interruptible("mgdt-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=files.path_argument, default=Path("mgdt_demo"),
                        help="recordings, dataset, run and report go here (default: %(default)s)")
    parser.add_argument("--games", default=",".join(DEFAULT_GAMES), help="comma-separated Atari games")
    parser.add_argument("--record-steps", type=files.count_argument(), default=10_000, help="agent steps recorded per game")
    parser.add_argument("--policy", default="expert", choices=sorted(record.POLICIES),
                        help="the recording policy: the game's scripted expert, or random play")
    parser.add_argument("--epsilon", "--epsilon-schedule", dest="epsilon", default="linear:1.0:0.0",
                        help="per-episode chance of a random action (mgdt-record's schedules)")
    parser.add_argument("--max-episode-steps", type=files.count_argument(), default=1000,
                        help="episode cap in agent steps (4 frames each), recording and evaluation alike")
    parser.add_argument("--train-steps", type=files.count_argument(), default=1000, help="MGDT training steps")
    parser.add_argument("--episodes", type=files.count_argument(), default=4, help="evaluation episodes per game and policy")
    args = parser.parse_args(argv)
    if args.max_episode_steps > atari.MAX_EPISODE_FRAMES // 4:
        parser.error(f"--max-episode-steps must be <= {atari.MAX_EPISODE_FRAMES // 4} (ALE's largest episode cap)")
    try:
        games = [atari.check_game(game.strip()) for game in args.games.split(",")]
        experts.parse_epsilon_schedule(args.epsilon)
    except ValueError as error:
        parser.error(str(error))
    if args.policy == "expert" and (missing := [game for game in games if game not in experts.EXPERTS]):
        parser.error(f"no scripted expert for {', '.join(missing)} (experts exist for "
                     f"{', '.join(sorted(experts.EXPERTS))}); use --policy random")
    if args.workdir.exists() and not args.workdir.is_dir():
        parser.error(f"--workdir {args.workdir}: is a file, not a folder")
    logging.set_verbosity(logging.ERROR)  # Orbax's informational warnings are noise here
    workdir = args.workdir.absolute()
    started = time.perf_counter()
    try:
        check_settings(workdir, {"games": games, **{name: getattr(args, name) for name in DATA_SETTINGS}})
        return _run_stages(args, games, workdir, started)
    except (ValueError, OSError, CheckpointError, loop.TrainingDiverged) as error:  # data errors are ValueErrors
        print(f"mgdt-demo: error: {files.error_line(error, args.workdir)}", file=sys.stderr)
        return 1


def _run_stages(args: argparse.Namespace, games: list[str], workdir: Path, started: float) -> int:
    logs_dir, dataset_dir = workdir / "logs", workdir / "rlds"
    train_dir, report_dir = workdir / "train", workdir / "report"
    played_by = "scripted experts, epsilon " + args.epsilon if args.policy == "expert" else "random play"
    _stage(1, f"recording {args.record_steps} steps of {', '.join(games)} ({played_by}) into DQN-replay logs")
    record_games(games, args.record_steps, logs_dir, args.policy, args.epsilon, args.max_episode_steps)

    _stage(2, "converting the logs to an RLDS dataset")
    conversion = convert.convert(logs_dir, dataset_dir, max_episode_steps=args.max_episode_steps)
    print(convert.summary_line(conversion, dataset_dir, time.perf_counter() - started))

    _stage(3, f"pretraining the tiny MGDT for {args.train_steps} steps")
    result = loop.train(train_config(dataset_dir, args.train_steps), train_dir)
    if result.stopped_by:
        print(f"mgdt-demo: training {result.stopped_by} at step {result.last_step}; its checkpoint is in {train_dir}, "
              f"nothing was evaluated", file=sys.stderr)
        if result.stopped_by == "interrupted":
            raise KeyboardInterrupt
        return 1
    print(f"trained steps {result.first_step}..{result.last_step}; checkpoints in {train_dir}")

    _stage(4, f"evaluating the last checkpoint (expert action inference) and random play, "
              f"{args.episodes} episodes per game each")
    step = evaluate_latest(train_dir, games, args.episodes, 4 * args.max_episode_steps, report_dir)
    print_report(report_dir)
    print(
        f"\ndone in {time.perf_counter() - started:.0f}s: report {report_dir / 'report.json'}, "
        f"{report_dir / 'scores.csv'}, plot {report_dir / 'scores.png'}, random play's in "
        f"{report_dir / RANDOM_DIR}; checkpoint step {step} in {train_dir}; "
        f"TensorBoard: tensorboard --logdir {train_dir / metric_writer.TENSORBOARD_DIR}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
