"""Speed of k-trial XLand-MiniGrid episodes: environment steps per second of TrialEnv.

    python benchmarks/xland.py [--envs 256 1024 8192] [--steps 256] [--repeats 3] [--preset trivial]
                               [--env-id XLand-MiniGrid-R1-9x9] [--trials 5] [--json OUT]

For each batch size it times one jitted call that scans `--steps` steps of `--envs` environments
(vmapped) with uniformly random actions drawn inside the call: a first call compiles (reported
apart), then the best of `--repeats` calls is timed, alternating with the baseline's. One step is one environment step of one
environment. The rulesets come from a benchmark generated here with the preset (written to a
temporary directory and loaded through xminigrid's `load_benchmark_from_path`), one per environment.

Baseline, measured in the same run on the same rulesets, batch and actions: xminigrid's
environment alone under its own `GymAutoResetWrapper` (episodes of one trial, reset with a new
key); the ratio is TrialEnv over that. With fixed_start (the default) a trial's reset copies the
stored start world instead of drawing a new one, which xminigrid's auto-reset does (on every step,
under vmap).
"""

from __future__ import annotations

import argparse
import sys
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, output_file_argument
from mgdt_jax.envs.xland import generator, trials


def _time(runs, key, repeats: int) -> tuple[list[float], list[float]]:
    """(compile seconds, best call seconds) of each run; the timed calls alternate between the
    runs, so that a shared machine's load falls on both alike."""
    compile_s = []
    for run in runs:
        started = time.perf_counter()
        jax.block_until_ready(run(key))
        compile_s.append(time.perf_counter() - started)
    best = [float("inf")] * len(runs)
    for i in range(repeats):
        for j, run in enumerate(runs):
            started = time.perf_counter()
            jax.block_until_ready(run(jax.random.fold_in(key, i + 1)))
            best[j] = min(best[j], time.perf_counter() - started)
    return compile_s, best


def write_benchmark(preset: str, count: int, seed: int, directory: Path) -> Path:
    """``count`` rulesets of generator preset ``preset`` written (with their record) into ``directory``;
    the file's path, for ``generator.load`` or an AdA ``env.benchmark``."""
    settings = generator.PRESETS[preset]
    path = directory / f"{preset}_{count}.pkl.bz2"
    arrays, stats = generator.generate(settings, count, seed=seed)
    generator.write(arrays, path, settings=settings, seed=seed, preset=preset, stats=stats)
    return path


def trial_env_rollout(env: trials.TrialEnv, rulesets, num_envs: int, num_steps: int):
    @jax.jit
    def run(key):
        reset_key, action_key = jax.random.split(key)
        state, _ = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs), rulesets)

        def body(carry, key):
            state, total = carry
            actions = jax.random.randint(key, (num_envs,), 0, env.num_actions)
            state, timestep = jax.vmap(env.step)(state, actions)
            return (state, total + timestep.reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0)), jax.random.split(action_key, num_steps))
        return total

    return run


def plain_env_rollout(env_id: str, max_steps: int, rulesets, num_envs: int, num_steps: int):
    import xminigrid
    from xminigrid.wrappers import GymAutoResetWrapper

    env, params = xminigrid.make(env_id)
    env = GymAutoResetWrapper(env)
    params = jax.vmap(lambda ruleset: params.replace(ruleset=ruleset, max_steps=max_steps))(rulesets)

    @jax.jit
    def run(key):
        reset_key, action_key = jax.random.split(key)
        timestep = jax.vmap(env.reset)(params, jax.random.split(reset_key, num_envs))

        def body(carry, key):
            timestep, total = carry
            actions = jax.random.randint(key, (num_envs,), 0, env.num_actions(params))
            timestep = jax.vmap(env.step)(params, timestep, actions)
            return (timestep, total + timestep.reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (timestep, jnp.float32(0)), jax.random.split(action_key, num_steps))
        return total

    return run


@interruptible("benchmarks/xland.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=count_argument(), nargs="+", default=[256, 1024, 8192],
                        help="batch sizes, each timed (default: %(default)s)")
    parser.add_argument("--steps", type=count_argument(), default=256, help="steps per environment in one timed call")
    parser.add_argument("--repeats", type=count_argument(), default=3, help="timed calls of each side, alternating; the best counts")
    parser.add_argument("--preset", choices=sorted(generator.PRESETS), default="trivial", help="generator preset of the rulesets")
    parser.add_argument("--env-id", default="XLand-MiniGrid-R1-9x9", help="xminigrid environment (default: %(default)s)")
    parser.add_argument("--trials", type=count_argument(), default=5, help="trials per episode")
    parser.add_argument("--json", type=output_file_argument, default=None, help="write every figure here")
    args = parser.parse_args()

    env = trials.TrialEnv(args.env_id, num_trials=args.trials)  # an unknown --env-id fails before the generation
    with tempfile.TemporaryDirectory() as scratch:
        benchmark, record = generator.load(write_benchmark(args.preset, max(args.envs), 0, Path(scratch)))
    print(f"{args.env_id}, {args.trials} trials of up to {env.trial_length} steps, benchmark {record['benchmark_id']} "
          f"({record['max_rules']} rules, {record['max_init_tiles']} objects padded); {jax.devices()[0].platform}")
    print(f"{'envs':>6} {'steps':>10} {'compile s':>9} {'TrialEnv steps/s':>17} {'xminigrid steps/s':>18} {'ratio':>6}")
    results = []
    for num_envs in args.envs:
        rulesets = trials.get_rulesets(benchmark, jnp.arange(num_envs))
        key = jax.random.key(num_envs)
        (compile_s, _), (seconds, plain_seconds) = _time(
            [trial_env_rollout(env, rulesets, num_envs, args.steps),
             plain_env_rollout(args.env_id, env.trial_length, rulesets, num_envs, args.steps)], key, args.repeats)
        steps = num_envs * args.steps
        row = {"env_id": args.env_id, "trials": args.trials, "benchmark": record["benchmark_id"], "envs": num_envs,
               "steps": steps, "compile_s": compile_s, "steps_per_s": steps / seconds,
               "xminigrid_steps_per_s": steps / plain_seconds, "ratio": plain_seconds / seconds,
               "device": jax.devices()[0].device_kind}
        results.append(row)
        print(f"{num_envs:>6} {steps:>10,} {compile_s:>9.1f} {row['steps_per_s']:>17,.0f} "
              f"{row['xminigrid_steps_per_s']:>18,.0f} {row['ratio']:>6.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
