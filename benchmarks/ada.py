"""AdA training throughput: environment steps/s of the whole train step against the environments alone.

    python benchmarks/ada.py [--envs 256] [--rollout 32] [--steps 5] [--agents trxl,gru]
                             [--d-model 64] [--layers 2] [--memory 32] [--peak-tflops X] [--json OUT]

For each agent it builds the AdA recipe of experiments/ada_tiny.py (arm recall, or another
``--env-factory``) at the given size, compiles the online train step (rollout of ``--envs``
environments for ``--rollout`` steps, GAE, PPO epochs and minibatches) and times ``--steps`` steps
after one warm-up step. The baseline, measured in the same run on the same batch: the environments
alone, stepped for the same ``--rollout`` steps by uniformly random actions with the same in-place
resets of finished meta-episodes, in one jitted scan. Printed: env steps/s of both and their ratio
(the share of the environments' own speed the learning agent keeps), parameter counts, the analytic
FLOPs of a step (``AdaRecipe.step_cost``), achieved TFLOP/s and MFU against ``--peak-tflops``
(float32 has no datasheet peak in mgdt_jax/core/flops.py, so MFU needs it given).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import ada_tiny
from mgdt_jax.core import sharding
from mgdt_jax.core.files import path_argument
from mgdt_jax.core.train_step import Trainer


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


def measure(agent: str, args: argparse.Namespace) -> dict:
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
    mesh = sharding.make_mesh({"data": -1})
    trainer = Trainer(config, mesh)
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
        "mfu": flops_per_second / (args.peak_tflops * 1e12 * jax.device_count()) if args.peak_tflops else None,
        "episode_return": float(metrics["episode_return"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=256)
    parser.add_argument("--rollout", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--agents", default="trxl,gru")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--memory", type=int, default=32)
    parser.add_argument("--env-factory", default="", help="module:function (default: arm recall)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak for MFU")
    parser.add_argument("--json", type=path_argument)
    args = parser.parse_args()
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); {args.envs} envs x {args.rollout} steps per train step")
    results = []
    for agent in args.agents.split(","):
        result = measure(agent, args)
        results.append(result)
        mfu = f"{result['mfu']:.2%}" if result["mfu"] is not None else "n/a (no --peak-tflops)"
        print(
            f"{agent:5s} params {result['parameters']:,} | train {result['train_env_steps_per_second']:,.0f} env steps/s "
            f"| envs alone {result['env_only_steps_per_second']:,.0f} steps/s | ratio {result['train_over_env_only']:.3f} "
            f"| {result['flops_per_step']:.3e} FLOPs/step, {result['tflops_per_second']:.4f} TFLOP/s, MFU {mfu} "
            f"| compile {result['compile_seconds']:.1f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
