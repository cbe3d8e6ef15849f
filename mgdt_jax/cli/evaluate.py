"""``mgdt-eval``: play a checkpoint on a game suite and write a human-normalised report.

    mgdt-eval --workdir DIR [--step N] (--suite NAME | --games A,B) [--episodes N] --out DIR [--video]

Writes OUT/report.json, OUT/scores.csv, OUT/scores.png (and OUT/videos/<Game>.mp4 with --video).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from absl import logging

from mgdt_jax.cli.out_dir import claimed_out_dir
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import path_argument, seed_argument
from mgdt_jax.recipes.mgdt import actor
from mgdt_jax.envs import atari
from mgdt_jax.core.checkpointing import CheckpointError
from mgdt_jax.recipes.mgdt.evaluate import evaluate, resolve_games
from mgdt_jax.recipes.mgdt.recipe import load_model
from mgdt_jax.recipes.mgdt.policy import SAMPLING_MODES, sampling_preset
from mgdt_jax.recipes.mgdt.report import REPORT_JSON, VIDEOS


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4, got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"shard index must be in 0..N-1, got {text!r}")
    return shard


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgdt-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=path_argument, required=True, help="training run or imported checkpoint")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    games = parser.add_mutually_exclusive_group(required=True)
    games.add_argument("--suite", choices=sorted(atari.SUITES), help="train41, heldout5, all46 or dqn60")
    games.add_argument("--games", help="comma-separated games, e.g. Pong,Breakout")
    parser.add_argument("--episodes", type=int, default=16, help="episodes per game (paper: 16)")
    parser.add_argument("--out", type=path_argument, required=True, help="report directory")
    parser.add_argument("--video", action="store_true", help="also write one MP4 episode per game")
    parser.add_argument("--mode", choices=SAMPLING_MODES, default="expert", help="how returns and actions are sampled")
    parser.add_argument("--kappa", type=float, help="expert mode: weight of the expert term (default 10)")
    parser.add_argument("--target-return", type=float, help="target mode: the fixed return-to-go")
    parser.add_argument("--episode-start", choices=("mask", "blank"),
                        help="pad windows at episode starts with masked steps or with blank frames marked real "
                             "(default: blank for --mode colab, as the notebook; mask otherwise, as in training)")
    parser.add_argument("--protocol", choices=sorted(actor.PROTOCOLS), default="paper",
                        help="paper: sticky actions 0.25, 108k-frame cap; colab: the released notebook's settings")
    parser.add_argument("--max-episode-frames", type=int, help="override the protocol's episode cap (emulator frames)")
    parser.add_argument("--max-envs-per-game", type=int, help="environments per game (default: one per episode)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="seeds the environments and sampling")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                        help="play only every N-th game starting at I (split a suite over processes)")
    return parser


@interruptible("mgdt-eval")
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.FATAL)  # errors reach the user as one line; Orbax logs are noise
    for name in ("episodes", "max_episode_frames", "max_envs_per_game"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_episode_frames is not None and args.max_episode_frames > atari.MAX_EPISODE_FRAMES:
        parser.error(f"--max-episode-frames must be <= {atari.MAX_EPISODE_FRAMES} (ALE's largest episode cap), "
                     f"got {args.max_episode_frames}")
    for flag, value, mode in (("--kappa", args.kappa, "expert"), ("--target-return", args.target_return, "target")):
        if value is not None and args.mode != mode:
            parser.error(f"{flag} applies to --mode {mode} only, not --mode {args.mode}")
    overrides = {
        "kappa": args.kappa,
        "target_return": args.target_return,
        "mask_episode_start": None if args.episode_start is None else args.episode_start == "mask",
    }
    try:
        sampling = sampling_preset(args.mode, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:
        parser.error(str(error))
    protocol = actor.PROTOCOLS[args.protocol]
    if args.max_episode_frames is not None:
        protocol = dataclasses.replace(protocol, max_episode_frames=args.max_episode_frames)
    try:
        with claimed_out_dir(args.out, REPORT_JSON, args.workdir):
            if args.video:  # a file there failed at the first frame, as "[Errno 17] File exists"
                files.check_folder(args.out / VIDEOS, "--out")
            games = resolve_games(args.suite, args.games.split(",") if args.games else None)
            shard_index, shard_count = args.shard
            games = games[shard_index::shard_count]
            if not games:
                raise ValueError(f"shard {shard_index}/{shard_count} has no games")
            model, step = load_model(args.workdir, args.step)
            summary = evaluate(
                model,
                games,
                episodes=args.episodes,
                sampling=sampling,
                protocol=protocol,
                seed=args.seed,
                max_envs_per_game=args.max_envs_per_game,
                out_dir=args.out,
                video=args.video,
                extra_settings={"workdir": str(args.workdir), "step": step, "shard": f"{shard_index}/{shard_count}"},
            )
    except (CheckpointError, atari.UnknownGameError, ValueError, OSError) as error:
        print(f"mgdt-eval: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    print(f"step {step} on {len(games)} game(s) x {args.episodes} episodes: {summary.one_line()}; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
