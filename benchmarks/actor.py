"""Actor-loop throughput: the batched policy against the raw emulators, and batching across games.

    python benchmarks/actor.py [--size tiny|200m] [--steps 150] [--repeats 3] [--json OUT]

Two figures, in environment steps per second (one step = 4 emulator frames):

1. policy overhead: the actor loop playing with the model (expert sampling) against its two parts
   alone, in the same run: the same vector environments stepped with uniformly random actions and
   no model ("environments alone"), and the jitted policy called on fixed frames with the loop's
   batch shapes and no emulator ("policy alone"). The loop's throughput as a fraction of the
   slower part says what the loop adds beyond its bottleneck (target: >= 85%); its fraction of
   the raw environments is kept as the earlier figure (target on a CPU with the tiny model: >= 70%).
   The three runs alternate ``--repeats`` times. Each run also counts the
   CPU seconds this process spends per env step (all threads: the emulators' and XLA's), which
   gives a ceiling where the parts must share few cores: ``min(environments, policy, cores /
   (cpu_env + cpu_policy))``, and the loop is also set against its parts run one after the other
   (``1 / (1/environments + 1/policy)``). Ratios are taken within a run, their medians quoted.
2. multi-game batching: 10 games played at once with one batched policy call per step against the
   same 10 games played one after the other (target: >= 3x).

``--size 200m`` measures both with the released model's size (randomly initialised; bfloat16 on
an accelerator), e.g. on a GPU.

Every run plays capped episodes (sticky actions 0.25, the paper protocol with a short cap) after an
untimed warm-up that compiles the policy, and is timed from its first step's end to its last, so
the figures are steady-state stepping (emulator creation and first resets excluded, as for the raw
environments).
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from experiments import mgdt_200m, tiny
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, output_file_argument
from mgdt_jax.recipes.mgdt import actor
from mgdt_jax.envs import atari
from mgdt_jax.recipes.mgdt.model import MultiGameDecisionTransformer
from mgdt_jax.recipes.mgdt.policy import Policy, sampling_preset

TEN_GAMES = ("Alien", "Asterix", "Breakout", "Enduro", "Freeway", "MsPacman", "Pong", "Qbert", "Seaquest", "SpaceInvaders")
CONFIGS = {"tiny": tiny.get_config, "200m": mgdt_200m.get_config}


class Rate(NamedTuple):
    """A timed run: env steps per wall-clock second, and CPU seconds (every thread of this process:
    the emulators' and XLA's included) per env step."""

    steps_per_s: float
    cpu_s_per_step: float


def _rate(env_steps: int, wall_s: float, cpu_s: float) -> Rate:
    return Rate(env_steps / wall_s, cpu_s / env_steps)


def raw_env_rate(games: Sequence[str], envs_per_game: int, steps: int, overlap: bool = True, seed: int = 0) -> Rate:
    """The vector environments alone, random minimal-set actions, no model: one vector environment
    per game and batch half, as `actor.play` makes them, all sent before any is received."""
    protocol = actor.PROTOCOLS["paper"]
    envs = [(actor.make_vector_env(game, size, protocol), len(atari.minimal_to_full(game)), size)
            for game in games for size in actor.half_sizes(envs_per_game, overlap)]
    for env, _, _ in envs:
        env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        for env, count, size in envs:
            env.send(rng.integers(0, count, size).astype(np.int32))
        for env, _, _ in envs:
            env.recv()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    for env, _, _ in envs:
        env.close()
    return _rate(steps * envs_per_game * len(games), elapsed, cpu)


def policy_rate(policy: Policy, num_envs: int, steps: int, overlap: bool = True, seed: int = 0) -> Rate:
    """The policy alone: `steps` calls per batch half on fixed random frames, no emulator.

    Uses the batch shapes `actor.play` uses for `num_envs` environments of one game (two halves with
    `overlap`), so the compiled steps of a warmed-up policy are reused; every call's actions are read
    back, as the loop reads them.
    """
    sizes = actor.half_sizes(num_envs, overlap)
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (size, 84, 84, 1), dtype=np.uint8) for size in sizes]
    starts = [np.zeros(size, bool) for size in sizes]
    rewards = [np.zeros(size, np.int32) for size in sizes]
    contexts = [policy.initial_context(size) for size in sizes]
    key = jax.random.key(seed)

    def one_step() -> None:
        nonlocal key
        pending = []
        for half in range(len(sizes)):
            key, step_key = jax.random.split(key)
            actions, contexts[half] = policy.act(contexts[half], frames[half], starts[half], rewards[half], step_key)
            pending.append(actions)
        for actions in pending:
            np.asarray(actions)

    one_step()  # the first call of each shape compiles (or finds the compiled step)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        one_step()
    return _rate(steps * num_envs, time.perf_counter() - start, time.process_time() - start_cpu)


def timed_play(
    policy: Policy, games: Sequence[str], envs_per_game: int, steps: int, overlap: bool = True
) -> tuple[int, float, float]:
    """(env steps, wall seconds, CPU seconds) of `actor.play` stepping, one episode of at most
    `steps` per environment.

    Timed from the first step's end to the last one's, like `raw_env_rate`: creating and resetting
    the emulators (about 2 s for 16 Breakout environments) is not stepping.
    """
    protocol = dataclasses.replace(actor.PROTOCOLS["paper"], max_episode_frames=4 * steps)
    marks: list[tuple[float, float, int]] = []

    def on_progress(_, env_steps):
        marks.append((time.perf_counter(), time.process_time(), env_steps))

    actor.play(policy, games, episodes_per_game=envs_per_game, protocol=protocol, overlap=overlap, on_progress=on_progress)
    (start, start_cpu, first_steps), (end, end_cpu, last_steps) = marks[0], marks[-1]
    return last_steps - first_steps, end - start, end_cpu - start_cpu


def actor_rate(policy: Policy, games: Sequence[str], envs_per_game: int, steps: int, overlap: bool = True) -> Rate:
    """The actor loop's steady-state stepping (`timed_play`) as a `Rate`."""
    return _rate(*timed_play(policy, games, envs_per_game, steps, overlap))


def warm_up(policy: Policy, games: Sequence[str], envs_per_game: int) -> None:
    """Compiles the policy for the batch shapes of both loop variants (a policy keeps its steps)."""
    for overlap in (True, False):
        timed_play(policy, games, envs_per_game, steps=2, overlap=overlap)


def policy_overhead(policy: Policy, game: str, num_envs: int, steps: int, repeats: int,
                    cores: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Figure 1: the actor loop on ``num_envs`` environments of one game against its two parts alone,
    ``repeats`` alternating runs of the three.

    Returns (figures, per-run ratios). Figures: each run's env steps/s and CPU ms per env step
    (medians over the runs) and the medians of the per-run ratios ``actor_over_raw``,
    ``actor_over_slower_part`` (the target's), ``actor_over_serial`` (against ``1 / (1/environments +
    1/policy)``) and ``actor_over_ceiling`` (against ``min(environments, policy, cores / (cpu_env +
    cpu_policy))``). Every ratio is taken within a run: on a shared machine only those compare. The
    policy must be warmed up for this game and size (`warm_up`).
    """
    runs: dict[str, list[Rate]] = {"raw": [], "actor": [], "policy_alone": []}
    for _ in range(repeats):
        runs["raw"].append(raw_env_rate([game], num_envs, steps))
        runs["actor"].append(actor_rate(policy, [game], num_envs, steps))
        runs["policy_alone"].append(policy_rate(policy, num_envs, steps))
    figures: dict[str, float] = {"cores": cores}
    for name, rates in runs.items():
        figures[f"{name}_env_steps_per_s"] = float(np.median([r.steps_per_s for r in rates]))
        figures[f"{name}_cpu_ms_per_step"] = float(np.median([r.cpu_s_per_step for r in rates])) * 1e3
    ratios: dict[str, list[float]] = {"actor_over_raw": [], "actor_over_slower_part": [], "actor_over_serial": [],
                                      "actor_over_ceiling": []}
    for loop, env, pol in zip(runs["actor"], runs["raw"], runs["policy_alone"]):
        # Serial: the loop's step costs both parts' times. Ceiling: no faster than either part alone,
        # nor than the cores can supply the CPU time both parts spend per step.
        serial = 1 / (1 / env.steps_per_s + 1 / pol.steps_per_s)
        ceiling = min(env.steps_per_s, pol.steps_per_s, cores / (env.cpu_s_per_step + pol.cpu_s_per_step))
        for key, reference in (("actor_over_raw", env.steps_per_s), ("actor_over_serial", serial),
                               ("actor_over_slower_part", min(env.steps_per_s, pol.steps_per_s)),
                               ("actor_over_ceiling", ceiling)):
            ratios[key].append(loop.steps_per_s / reference)
    figures.update({key: float(np.median(values)) for key, values in ratios.items()})
    return figures, ratios


def default_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@interruptible("benchmarks/actor.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(CONFIGS), default="tiny",
                        help="the model: tiny (CPU) or 200m, the released size (accelerator)")
    parser.add_argument("--steps", type=count_argument(2), default=150, help="agent steps per timed run (timed from the first step's end: at least 2)")
    parser.add_argument("--envs-per-game", type=count_argument(), default=2, help="for the 10-game comparisons")
    parser.add_argument("--overhead-envs", type=count_argument(), default=16, help="environments of one game for figure 1")
    parser.add_argument("--repeats", type=count_argument(), default=3, help="alternating runs of figure 1's three measurements")
    parser.add_argument("--cores", type=count_argument(), default=default_cores(), help="cores the ceiling of figure 1 assumes")
    parser.add_argument("--json", type=output_file_argument, help="also write the figures here")
    args = parser.parse_args()

    config = CONFIGS[args.size]()
    if jax.devices()[0].platform == "cpu":
        config.model.dtype = "float32"  # bfloat16 matmuls are emulated (slow) on CPUs
    model = MultiGameDecisionTransformer(config.model, rngs=nnx.Rngs(0))
    sampling = sampling_preset("expert")
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    print(f"{args.size} model: {params:,} parameters on {jax.devices()[0].platform}; {jax.local_device_count()} device(s)")
    figures: dict[str, float] = {}

    # 1. Policy overhead: one game, many environments.
    overhead_games, n = ["Breakout"], args.overhead_envs
    policy = Policy(model, sampling)
    warm_up(policy, overhead_games, n)
    overhead, ratios = policy_overhead(policy, overhead_games[0], n, args.steps, args.repeats, args.cores)
    figures.update(overhead)
    figures["actor_one_batch_env_steps_per_s"] = actor_rate(policy, overhead_games, n, args.steps, False).steps_per_s
    print(
        f"1. Breakout x {n} envs, medians of {args.repeats} alternating run(s): raw env "
        f"{figures['raw_env_steps_per_s']:,.0f} steps/s, actor loop {figures['actor_env_steps_per_s']:,.1f} steps/s, "
        f"{figures['actor_over_raw']:.0%} of raw (target >= 70%); one run without overlapping halves "
        f"{figures['actor_one_batch_env_steps_per_s']:,.0f} steps/s"
    )
    bottleneck = "environments" if figures["raw_env_steps_per_s"] <= figures["policy_alone_env_steps_per_s"] else "policy"
    print(
        f"   policy alone {figures['policy_alone_env_steps_per_s']:,.0f} steps/s: the loop runs at "
        f"{figures['actor_over_slower_part']:.0%} of the slower part ({bottleneck}; target >= 85%; per run: "
        f"{', '.join(f'{f:.0%}' for f in ratios['actor_over_slower_part'])}), "
        f"{figures['actor_over_serial']:.0%} of the parts run one after the other"
    )
    print(
        f"   CPU time per env step: environments {figures['raw_cpu_ms_per_step']:.3f} ms, policy "
        f"{figures['policy_alone_cpu_ms_per_step']:.3f} ms, loop {figures['actor_cpu_ms_per_step']:.3f} ms; the loop runs "
        f"at {figures['actor_over_ceiling']:.0%} of the ceiling min(environments, policy, {args.cores} cores / their CPU "
        f"time per step)"
    )

    # 2. Ten games in one batch against one game at a time.
    batched = Policy(model, sampling)
    warm_up(batched, TEN_GAMES, args.envs_per_game)
    single = Policy(model, sampling)  # one compiled step for the one-game batch shape, reused per game
    warm_up(single, TEN_GAMES[:1], args.envs_per_game)
    figures["batched_env_steps_per_s"] = actor_rate(batched, TEN_GAMES, args.envs_per_game, args.steps).steps_per_s
    per_game = [timed_play(single, [game], args.envs_per_game, args.steps) for game in TEN_GAMES]
    figures["one_at_a_time_env_steps_per_s"] = sum(run[0] for run in per_game) / sum(run[1] for run in per_game)
    figures["batched_over_one_at_a_time"] = figures["batched_env_steps_per_s"] / figures["one_at_a_time_env_steps_per_s"]
    print(
        f"2. 10 games x {args.envs_per_game} envs: batched {figures['batched_env_steps_per_s']:,.0f} steps/s, "
        f"one game at a time {figures['one_at_a_time_env_steps_per_s']:,.0f} steps/s = "
        f"{figures['batched_over_one_at_a_time']:.2f}x (target >= 3x)"
    )
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "platform": jax.devices()[0].platform, **figures}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
