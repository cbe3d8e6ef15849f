"""Algorithm Distillation speed against the PyTorch AD peer, and the token-layout measurement.

Modes (``--modes``, comma list):

* ``train``: training tokens/s of the core trainer's jitted step with the AD recipe (model +
  action cross-entropy + optax AdamW with the peer's settings, lr 3e-4, betas (0.9, 0.99), weight
  decay 0.01, global-norm clip 1.0; dropout on) on one fixed synthetic Dark Room batch of
  80-step windows, in both token layouts. The peer's figures count 3 tokens per step; the
  like-for-like ratio is our ``separate`` layout's tokens/s over the peer's, and the joint layout is
  compared in context steps/s (windows x steps per second), which is what a user trains on.
* ``eval``: in-context evaluation env steps/s over 81 Dark Room goals (one per cell) with an
  80-step context, argmax actions, random weights (as the peer's): our one compiled loop with a KV
  cache (mgdt_jax/recipes/ad/evaluate.py, compilation excluded and printed apart) against the peer's
  Python loop that re-encodes the context at every step.
* ``layout``: the design measurement behind the joint token: joint vs separate tokens (ALiBi) and
  joint tokens without positions, each trained the same number of updates on Thompson-sampling
  histories of 10-armed Bernoulli bandits (100 pulls, context 100), then held-out loss/accuracy,
  frozen in-context cumulative regret at 100 pulls on 256 fresh tasks, and training throughput.

With ``--peer-python`` (an interpreter with torch) ``train``/``eval`` also run
../shared/peers/torch_ad.py at the same size, batch and context, right after ours in the same run,
and print ours/peer ratios. ``train`` times the core trainer's step (the one ``mgdt-train`` runs)
on a fixed batch: data loading, checkpointing and metrics are apart, as in the peer's loop. Where
JAX runs on a GPU the peer trains there too (benchmarks/peer_on_cuda.py; its evaluation stays off);
there ``--precision bfloat16`` compares our bf16 models with the peer under torch's bf16 autocast.

    python benchmarks/ad.py --modes train,eval --sizes ad-small --peer-python ../peer-venv/bin/python --json ad.json
    python benchmarks/ad.py --modes layout --json ad_layout.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.peers import check_peer, run_peer
from benchmarks.peer_on_cuda import PRECISIONS, peer_command
from mgdt_jax import envs
from mgdt_jax.core import host_memory, sharding
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, names_argument, output_file_argument, path_argument, seed_argument
from mgdt_jax.core.train_step import Trainer
from mgdt_jax.envs import bandit
from mgdt_jax.recipes.ad import evaluate
from mgdt_jax.recipes.ad.data import TrainingWindows
from mgdt_jax.recipes.ad.model import ADModelConfig, AlgorithmDistillation, loss_and_metrics, training_flops
from mgdt_jax.recipes.ad import sources

SIZES = {"ad-small": (64, 2, 2), "ad": (512, 4, 4)}  # name -> (d_model, layers, heads), the peer's hidden sizes
LAYOUTS = ("joint", "separate")
DARK_ROOM = envs.DARKROOM  # 9x9, 20 steps, 5 actions: the peer's Dark Room
DARK_ROOM_SIZE, DARK_ROOM_EPISODE, DARK_ROOM_ACTIONS = DARK_ROOM.size, DARK_ROOM.episode_length, DARK_ROOM.num_actions
CONTEXT_STEPS = 80  # the peer's seq_len: 4 Dark Room episodes
REPO = Path(__file__).resolve().parents[1]


class TrainStep:
    """The core trainer's jitted step (mgdt_jax/core/train_step.py) with the AD recipe, as
    ``mgdt-train`` runs it, on one device, with the peer's optimizer: AdamW at a constant
    ``learning_rate``, betas (0.9, 0.99), weight decay 0.01, global-norm clip 1.0."""

    def __init__(self, model: ADModelConfig, env_name: str, batch_size: int, learning_rate: float, seed: int = 0):
        fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                  if f.name not in ("num_observations", "num_actions")}
        config = {
            "recipe": "ad", "data": {"env": env_name}, "model": fields,
            "optimizer": {"name": "adamw", "learning_rate": learning_rate, "b1": 0.9, "b2": 0.99, "weight_decay": 0.01,
                          "grad_clip_norm": 1.0, "warmup_steps": 0, "schedule": "constant"},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
            "train": {"batch_size": batch_size, "grad_accum_steps": 1, "num_steps": 1_000_000},
        }
        self.trainer = Trainer(config, sharding.make_mesh(config["mesh"], devices=jax.devices()[:1]))
        self.state = self.trainer.init(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        self.state, metrics = self.trainer.step(self.state, self.trainer.shard_batch(batch))
        return {name: float(value) for name, value in metrics.items()}  # blocks, like the peer's loss.item()

    @property
    def num_params(self) -> int:
        return sum(leaf.size for leaf in jax.tree.leaves(self.state.params))

    def model(self) -> AlgorithmDistillation:
        return self.trainer.model(self.state)


def model_config(size: str, layout: str, **overrides: Any) -> ADModelConfig:
    d_model, layers, heads = SIZES[size]
    settings = dict(num_observations=DARK_ROOM_SIZE**2, num_actions=DARK_ROOM_ACTIONS, context_steps=CONTEXT_STEPS,
                    token_layout=layout, num_layers=layers, d_model=d_model, num_heads=heads, dropout_rate=0.1)
    settings.update(overrides)
    return ADModelConfig(**settings)


def dark_room_batch(batch_size: int) -> dict[str, np.ndarray]:
    """The peer's fixed random batch: valid ids, rewards 1 with probability 0.1."""
    rng = np.random.default_rng(0)
    shape = (batch_size, CONTEXT_STEPS)
    return {
        "observations": rng.integers(0, DARK_ROOM_SIZE**2, shape).astype(np.int32),
        "actions": rng.integers(0, DARK_ROOM_ACTIONS, shape).astype(np.int32),
        "rewards": (rng.random(shape) < 0.1).astype(np.float32),
        "previous_action": rng.integers(0, DARK_ROOM_ACTIONS, batch_size).astype(np.int32),
        "previous_reward": np.zeros(batch_size, np.float32),
    }


def timed_training(step: TrainStep, batches, warmup: int, steps: int) -> dict[str, Any]:
    """Runs warmup (untimed; the first compiles) then ``steps`` timed steps over ``batches(k)``."""
    started = time.perf_counter()
    first = None
    for k in range(warmup):
        metrics = step(batches(k))
        first = first or metrics
    warmup_s = time.perf_counter() - started
    times = []
    timed_start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        started = time.perf_counter()
        metrics = step(batches(k))
        times.append(time.perf_counter() - started)
    elapsed = time.perf_counter() - timed_start
    return {"warmup_s": warmup_s, "timed_s": elapsed, "steps_per_s": steps / elapsed,
            "step_s_median": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "loss_first": first["action_loss"] if first else None, "loss_last": metrics["action_loss"]}


def bench_train(size: str, layout: str, batch_size: int, steps: int, warmup: int,
                precision: str = "float32") -> dict[str, Any]:
    config = model_config(size, layout, dtype=precision)
    step = TrainStep(config, DARK_ROOM.name, batch_size, 3e-4)
    batch = dark_room_batch(batch_size)
    result = {"mode": "train", "size": size, "layout": layout, "batch": batch_size, "precision": precision,
              "params": step.num_params,
              "tokens_per_window": config.sequence_length, "train_flops_per_step": training_flops(config, batch_size)}
    result.update(timed_training(step, lambda k: batch, warmup, steps))
    result["tokens_per_s"] = result["steps_per_s"] * batch_size * config.sequence_length
    result["context_steps_per_s"] = result["steps_per_s"] * batch_size * CONTEXT_STEPS
    result["achieved_gflops"] = result["steps_per_s"] * result["train_flops_per_step"] / 1e9
    return result


def bench_eval(size: str, layout: str, episodes: int, precision: str = "float32") -> dict[str, Any]:
    config = model_config(size, layout, dtype=precision)
    model = AlgorithmDistillation(config, rngs=nnx.Rngs(0))
    goals = DARK_ROOM.task_split(0, num_train=0, num_heldout=DARK_ROOM.num_tasks)[1]  # all 81 goals
    run = evaluate.evaluate_in_context(model, DARK_ROOM, goals, num_episodes=episodes, seed=0, greedy=True)
    return {"mode": "eval", "size": size, "layout": layout, "precision": precision, "tasks": int(goals.id.shape[0]),
            "episodes": episodes,
            "env_steps": int(goals.id.shape[0]) * episodes * DARK_ROOM_EPISODE, "env_steps_per_s": run.env_steps_per_s,
            "compile_s": run.compile_s, "mean_return_per_episode": float(run.returns.mean())}


def bench_layouts(updates: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """Joint vs separate tokens (and joint without positions) on 10-armed bandit histories."""
    pulls, arms = 100, 10
    env, thompson = bandit.BernoulliBandit(num_arms=arms), sources.make_source("thompson")

    def thompson_histories(num: int, task_seed: int):
        tasks = env.sample_tasks(jax.random.key(task_seed), num)
        return tasks, sources.to_histories(sources.rollout(env, thompson, tasks, task_seed, pulls), env, thompson)

    _, train_histories = thompson_histories(4096, seed)
    heldout_tasks, heldout = thompson_histories(256, seed + 1)
    heldout_batch = {"observations": heldout.observations, "actions": heldout.actions, "rewards": heldout.rewards,
                     "previous_action": np.full(256, arms, np.int32), "previous_reward": np.zeros(256, np.float32)}
    means = np.asarray(heldout_tasks.means, np.float64)
    source_regret = (means.max(axis=1, keepdims=True) - np.take_along_axis(means, heldout.actions, axis=1)).sum(axis=1)
    tasks = env.sample_tasks(jax.random.key(seed + 2), 256)
    random_regret = pulls * float(jnp.mean(jnp.max(tasks.means, axis=1) - jnp.mean(tasks.means, axis=1)))
    print(f"layout: Thompson source regret@{pulls} {source_regret.mean():.2f} on its held-out histories; "
          f"random {random_regret:.2f} on the evaluation tasks", flush=True)
    windows = TrainingWindows(train_histories, context_steps=pulls, global_batch_size=batch_size, seed=seed)
    results = []
    for layout, positions in (("joint", "alibi"), ("separate", "alibi"), ("joint", "none")):
        config = ADModelConfig(num_observations=1, num_actions=arms, context_steps=pulls, token_layout=layout,
                               positions=positions, num_layers=2, d_model=64, num_heads=2, dropout_rate=0.0)
        step = TrainStep(config, env.name, batch_size, 1e-3, seed)
        timing = timed_training(step, windows.batch, warmup=1, steps=updates - 1)
        model = step.model()
        logits = nnx.jit(lambda model, batch: model(batch, deterministic=True))(model, heldout_batch)
        _, heldout_metrics = loss_and_metrics(logits, heldout_batch)
        result = {"mode": "layout", "layout": layout, "positions": positions, "updates": updates, "batch": batch_size,
                  "train_s": timing["warmup_s"] + timing["timed_s"], "first_step_s": timing["warmup_s"],
                  "tokens_per_s": timing["steps_per_s"] * batch_size * config.sequence_length,
                  "context_steps_per_s": timing["steps_per_s"] * batch_size * pulls,
                  "train_loss_last": timing["loss_last"],
                  "heldout_loss": float(heldout_metrics["action_loss"]),
                  "heldout_accuracy": float(heldout_metrics["action_accuracy"]),
                  "source_regret": float(source_regret.mean()), "random_regret": random_regret}
        for greedy in (False, True):
            run = evaluate.evaluate_in_context(model, env, tasks, num_episodes=pulls, seed=seed,
                                               greedy=greedy, regret=bandit.regret)
            curve = evaluate.bootstrap_curve(run.regret[:, -1:])
            policy = "argmax" if greedy else "sample"
            result[f"regret_{policy}"] = float(curve.mean[0])
            result[f"regret_{policy}_ci"] = [float(curve.low[0]), float(curve.high[0])]
            result[f"eval_env_steps_per_s_{policy}"] = run.env_steps_per_s
        results.append(result)
        print(f"  {layout:>8}/{positions:<5} {updates} updates in {result['train_s']:.1f}s "
              f"({result['context_steps_per_s']:,.0f} context steps/s, {result['tokens_per_s']:,.0f} tok/s)  "
              f"held-out loss {result['heldout_loss']:.3f} acc {result['heldout_accuracy']:.3f}  "
              f"regret@{pulls} sample {result['regret_sample']:.2f} [{result['regret_sample_ci'][0]:.2f}, "
              f"{result['regret_sample_ci'][1]:.2f}] argmax {result['regret_argmax']:.2f}", flush=True)
    return results


def bench_peer(peer_python: str, peer_script: Path, modes: list[str], size: str, batch_size: int, steps: int,
               warmup: int, episodes: int, precision: str = "float32") -> list[dict[str, Any]]:
    return run_peer(peer_command(peer_python, peer_script, jax.default_backend() == "gpu", precision) + [
        "--modes", ",".join(modes), "--sizes", f"{size}@{batch_size}", "--steps", str(steps), "--warmup", str(warmup),
        "--envs", str(DARK_ROOM_SIZE**2), "--eval-episodes", str(episodes), "--threads", str(os.cpu_count())])["results"]


@interruptible("benchmarks/ad.py", errors=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program, not called from Python
        host_memory.reexec_with_huge_page_malloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", type=names_argument(("train", "eval", "layout")), default="train,eval",
                        help="comma list of train, eval, layout")
    parser.add_argument("--sizes", type=names_argument(tuple(SIZES)), default="ad-small",
                        help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--batch", type=count_argument(), default=64, help="training batch in windows (the peer's default)")
    parser.add_argument("--steps", type=count_argument(), default=10, help="timed training steps")
    parser.add_argument("--warmup", type=count_argument(1), default=3, help="untimed training steps (the first compiles: at least 1)")
    parser.add_argument("--eval-episodes", type=count_argument(), default=10, help="in-context Dark Room episodes per goal")
    parser.add_argument("--layout-updates", type=count_argument(2), default=300,
                        help="training updates per layout (layout mode; the first compiles, so at least 2)")
    parser.add_argument("--layout-batch", type=count_argument(), default=32, help="batch of the layout mode")
    parser.add_argument("--seed", type=seed_argument, default=0, help="data, parameters and evaluation")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="our models' matmul dtype; bfloat16 runs the peer under torch's bf16 autocast (GPU only)")
    parser.add_argument("--peer-python", help="interpreter with torch; runs the PyTorch AD peer")
    parser.add_argument("--peer-script", type=path_argument, default=REPO.parent / "shared" / "peers" / "torch_ad.py",
                        help="the PyTorch AD peer run by --peer-python (default: %(default)s)")
    parser.add_argument("--json", type=output_file_argument, help="write every figure here")
    args = parser.parse_args(argv)

    modes, sizes = args.modes, args.sizes
    # On a GPU the peer runs through benchmarks/peer_on_cuda.py, whose hooks cover its training only.
    peer_modes = [mode for mode in modes if mode in (("train",) if jax.default_backend() == "gpu" else ("train", "eval"))]
    if args.peer_python is not None:
        check_peer(args.peer_python, args.peer_script, "torch", on_gpu=jax.default_backend() == "gpu",
                         precision=args.precision)

    print(f"# jax {jax.__version__}  backend={jax.default_backend()}  {jax.devices()[0].device_kind}  "
          f"cpus={os.cpu_count()}  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    ours, peers = [], []
    if "layout" in modes:
        ours += bench_layouts(args.layout_updates, args.layout_batch, args.seed)
    for size in sizes:
        for layout in LAYOUTS:
            if "train" in modes:
                result = bench_train(size, layout, args.batch, args.steps, args.warmup, args.precision)
                ours.append(result)
                print(f"train {size} {layout:>8} {args.precision} B={args.batch} {result['tokens_per_s']:>9,.0f} tok/s "
                      f"{result['context_steps_per_s']:>9,.0f} context steps/s  step {result['step_s_median']:.3f}s  "
                      f"{result['achieved_gflops']:.1f} GFLOP/s  loss {result['loss_first']:.3f}->{result['loss_last']:.3f}",
                      flush=True)
            if "eval" in modes:
                result = bench_eval(size, layout, args.eval_episodes, args.precision)
                ours.append(result)
                print(f"eval  {size} {layout:>8} {result['tasks']} goals x {args.eval_episodes} episodes: "
                      f"{result['env_steps_per_s']:>11,.0f} env steps/s (compile {result['compile_s']:.1f}s apart)  "
                      f"mean return {result['mean_return_per_episode']:.3f}", flush=True)
        if args.peer_python is not None and peer_modes:
            print(f"{size}: PyTorch peer ({', '.join(peer_modes)})...", flush=True)
            size_peers = bench_peer(args.peer_python, args.peer_script, peer_modes, size, args.batch, args.steps,
                                    args.warmup, args.eval_episodes, args.precision)
            peers += size_peers
            for peer in size_peers:
                mine = [r for r in ours if r["mode"] == peer["mode"] and r.get("size") == size]
                if peer["mode"] == "train":
                    peer_steps = peer["steps_per_s"] * peer["batch"] * CONTEXT_STEPS
                    print(f"  peer train {peer['tokens_per_s']:>9,.0f} tok/s {peer_steps:>9,.0f} context steps/s  "
                          f"step {peer['step_s_median']:.3f}s", flush=True)
                    for result in mine:
                        result["tokens_ratio_vs_peer"] = result["tokens_per_s"] / peer["tokens_per_s"]
                        result["context_steps_ratio_vs_peer"] = result["context_steps_per_s"] / peer_steps
                        print(f"  ratio train {result['layout']:>8}: {result['tokens_ratio_vs_peer']:.2f}x tokens/s, "
                              f"{result['context_steps_ratio_vs_peer']:.2f}x context steps/s", flush=True)
                else:
                    print(f"  peer eval  {peer['env_steps_per_s']:>11,.0f} env steps/s  "
                          f"(full context {peer['full_window_env_steps_per_s'] or 0:,.0f})", flush=True)
                    for result in mine:
                        result["env_steps_ratio_vs_peer"] = result["env_steps_per_s"] / peer["env_steps_per_s"]
                        print(f"  ratio eval  {result['layout']:>8}: {result['env_steps_ratio_vs_peer']:.1f}x env steps/s",
                              flush=True)
    if args.json:
        report = {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
                  "python": sys.version.split()[0], "platform": platform.platform(),
                  "load_average_at_end": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
                  "ours": ours, "peer": peers}
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
