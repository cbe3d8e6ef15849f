"""AdA training throughput: environment steps/s of the whole train step against the environments alone.

    python benchmarks/ada.py [--setting tiny|claim] [--envs N] [--rollout N] [--steps 5] [--agents trxl,gru]
                             [--d-model 64] [--layers 2] [--memory 32] [--peak-tflops X] [--json OUT]

For each agent it builds an AdA recipe, compiles the online train step (rollout of ``--envs``
environments for ``--rollout`` steps, GAE, PPO epochs and minibatches) and times ``--steps`` steps
after one warm-up step. ``--setting tiny`` (default): experiments/ada_tiny.py (arm recall, or
another ``--env-factory``) at ``--d-model``/``--layers``/``--memory`` (256 envs x 32 steps unless
given). ``--setting claim``: the meta-RL claim's standing setting of docs/ada.md (XLand-MiniGrid
R1-9x9, 5 trials of at most 30 steps, the agent goals of 340 trivial rulesets generated here, goal
hidden; gated Transformer-XL d 128 with a 128-step memory, or the claim's GRU; 16 minibatches; 256
envs x 160 steps unless given), built by experiments/ada_claims.py's ``run_config``.

The baseline, measured in the same run on the same batch: the environments alone, stepped for the
same ``--rollout`` steps by uniformly random actions with the same in-place resets of finished
meta-episodes, in one jitted scan. Printed: env steps/s of both and their ratio (the share of the
environments' own speed the learning agent keeps), parameter counts, the analytic FLOPs of a step
(``AdaRecipe.step_cost``), achieved TFLOP/s and MFU: against ``--peak-tflops`` if given, else
against the best float32 matmul measured in the same run (``flops.matmul_peak``, before the first
agent and after the last; float32 has no datasheet peak).
"""

from __future__ import annotations

import argparse
import sys
import json
import math
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import ada_tiny
from mgdt_jax.core import flops, sharding
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, names_argument, output_file_argument
from mgdt_jax.core.train_step import Trainer

MATMUL_SIZE = 2048  # float32; the size experiments/common.py's machine line measures


def env_only_rollout(recipe, length: int):
    """A jitted (key, env_state, timestep, task_state) -> same, ``length`` random-action steps."""
    env, num_envs = recipe.env, recipe.num_envs

    def one_step(carry, key):
        env_state, timestep = carry
        action_key, sample_key, reset_key = jax.random.split(key, 3)
        action = jax.random.randint(action_key, (num_envs,), 0, env.num_actions)
        env_state, timestep = jax.vmap(env.step)(env_state, action)
        _, new_state, new_timestep = recipe._new_episodes(task_state, sample_key, reset_key)
        done = timestep.done
        select = lambda new, old: jnp.where(done.reshape(done.shape + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
        return (jax.tree.map(select, new_state, env_state), jax.tree.map(select, new_timestep, timestep)), timestep.reward.sum()

    @jax.jit
    def run(key, env_state, timestep):
        (env_state, timestep), rewards = jax.lax.scan(one_step, (env_state, timestep), jax.random.split(key, length))
        return env_state, timestep, rewards.sum()

    task_state = recipe.tasks.init(jax.random.key(0))
    return run


# The meta-RL claim's standing setting (docs/ada.md, "Where the claims stand"): its command's flags.
CLAIM_TASK = {"goals": "agent", "observe_goal": False, "trial_steps": 30}
CLAIM_TRXL = {"memory_length": 128, "gated": True, "d_model": 128, "head_hidden": 128}


def claim_config(agent: str, envs: int, rollout: int, scratch: Path):
    """The claim's training config for ``agent`` at ``envs`` x ``rollout``, its benchmark written
    under ``scratch``."""
    # Imported here: gpu_check imports this module (env_only_rollout) on machines without the
    # claims' dependencies.
    from experiments import ada_claims

    task = ada_claims.TaskSetting(**CLAIM_TASK)
    scale = ada_claims.Scale(rulesets=340, num_envs=envs, rollout_length=rollout, train_steps=600, teacher_steps=0,
                             eval_episodes=32, num_minibatches=16)
    benchmark, _ = ada_claims.make_benchmark(scratch, scale, task)
    return ada_claims.run_config(agent, benchmark, scale, scale.train_steps, task, trxl_options=CLAIM_TRXL,
                                 lr_schedule="linear", entropy_anneal=True)


def tiny_config(agent: str, args: argparse.Namespace):
    config = ada_tiny.get_config()
    config.model.agent = agent
    config.model.d_model = args.d_model
    config.model.num_layers = args.layers
    config.model.memory_length = args.memory
    config.model.gru_hidden = args.d_model
    config.ppo.rollout_length = args.rollout
    config.train.batch_size = args.envs
    config.train.num_steps = 10**6
    if args.env_factory:
        config.env.factory = args.env_factory
    return config


def measure(agent: str, args: argparse.Namespace) -> dict:
    """One agent's figures (its MFU is set by ``main``, once the peak is known)."""
    with tempfile.TemporaryDirectory(prefix="ada_bench_") as scratch:
        config = claim_config(agent, args.envs, args.rollout, Path(scratch)) if args.setting == "claim" else tiny_config(agent, args)
        trainer = Trainer(config, sharding.make_mesh({"data": -1}))  # reads the benchmark file here
    recipe = trainer.recipe
    state = trainer.init(0)
    start = time.perf_counter()
    step = trainer.lower_step({}).compile()
    compile_seconds = time.perf_counter() - start
    state, metrics = step(state, {})
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, {})
    jax.block_until_ready(metrics)
    train_seconds = (time.perf_counter() - start) / args.steps

    env_run = env_only_rollout(recipe, args.rollout)
    env_state, timestep = state.rollout.per_env["env_state"], state.rollout.per_env["timestep"]
    jax.block_until_ready(env_run(jax.random.key(1), env_state, timestep))
    start = time.perf_counter()
    for index in range(args.steps):
        env_state, timestep, total = env_run(jax.random.key(index + 2), env_state, timestep)
    jax.block_until_ready(total)
    env_seconds = (time.perf_counter() - start) / args.steps

    steps_per_call = args.envs * args.rollout
    cost = recipe.step_cost(args.envs)
    flops_per_second = cost.flops / train_seconds
    return {
        "agent": agent,
        "parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(state.params))),
        "compile_seconds": compile_seconds,
        "train_env_steps_per_second": steps_per_call / train_seconds,
        "env_only_steps_per_second": steps_per_call / env_seconds,
        "train_over_env_only": env_seconds / train_seconds,
        "flops_per_step": cost.flops,
        "tflops_per_second": flops_per_second / 1e12,
        "episode_return": float(metrics["episode_return"]),
    }


@interruptible("benchmarks/ada.py", errors=(ValueError, OSError))
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=("tiny", "claim"), default="tiny",
                        help="tiny: experiments/ada_tiny.py; claim: the meta-RL claim's setting (docs/ada.md)")
    parser.add_argument("--envs", type=count_argument(), help="environments per rollout (default 256)")
    parser.add_argument("--rollout", type=count_argument(), help="steps per rollout (default 32, the claim's 160)")
    parser.add_argument("--steps", type=count_argument(), default=5, help="timed train steps per agent")
    parser.add_argument("--agents", type=names_argument(("trxl", "gru")), default="trxl,gru", help="comma list of trxl, gru")
    tiny_only = {"d_model": 64, "layers": 2, "memory": 32, "env_factory": ""}
    parser.add_argument("--d-model", type=count_argument(), help="tiny setting only (default 64)")
    parser.add_argument("--layers", type=count_argument(), help="tiny setting only (default 2)")
    parser.add_argument("--memory", type=count_argument(), help="tiny setting only (default 32)")
    parser.add_argument("--env-factory", help="tiny setting only: module:function (default: arm recall)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="per-device peak for MFU (default: the best float32 matmul measured in this run)")
    parser.add_argument("--json", type=output_file_argument, help="write every figure here")
    args = parser.parse_args()
    for name, default in tiny_only.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif args.setting == "claim":
            parser.error(f"--{name.replace('_', '-')} applies to --setting tiny only: the claim's setting is fixed "
                         f"(docs/ada.md)")
    if args.envs is None:
        args.envs = 256
    if args.rollout is None:
        args.rollout = 160 if args.setting == "claim" else 32
    if not 0 <= args.peak_tflops < math.inf:  # nan gave an MFU of nan%
        parser.error(f"--peak-tflops {args.peak_tflops:g}: must be a positive finite number (or 0: measure the best "
                     "matmul)")
    if args.setting == "claim" and args.envs % 16:
        parser.error(f"--envs {args.envs}: the claim's 16 minibatches must divide it")
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); {args.setting} setting; "
          f"{args.envs} envs x {args.rollout} steps per train step", flush=True)
    # The ceiling is measured before the first agent and after the last; MFU is read against the best.
    measured = [] if args.peak_tflops else [flops.matmul_peak(jnp.float32, MATMUL_SIZE)]
    results = [measure(agent, args) for agent in args.agents]
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    else:
        measured.append(flops.matmul_peak(jnp.float32, MATMUL_SIZE))
        peak = max(measured)
        print(f"float32 matmul {MATMUL_SIZE}^3: {' and '.join(f'{m / 1e9:.1f}' for m in measured)} GFLOP/s "
              "(before and after the agents; MFU against the best)")
    for result in results:
        result["peak_flops_per_second"] = peak
        result["mfu"] = result["tflops_per_second"] * 1e12 / (peak * jax.device_count())
    for result in results:
        print(
            f"{result['agent']:5s} params {result['parameters']:,} | train {result['train_env_steps_per_second']:,.0f} env steps/s "
            f"| envs alone {result['env_only_steps_per_second']:,.0f} steps/s | ratio {result['train_over_env_only']:.3f} "
            f"| {result['flops_per_step']:.3e} FLOPs/step, {result['tflops_per_second']:.4f} TFLOP/s, MFU {result['mfu']:.1%} "
            f"| compile {result['compile_seconds']:.1f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
