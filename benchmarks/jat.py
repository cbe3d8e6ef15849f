"""JAT speed against the PyTorch JAT peer (GPT-Neo backbone, JAT's encoders): training and evaluation.

Modes (``--modes``, comma list):

* ``train``: training tokens/s of the core trainer's jitted step (mgdt_jax/core/train_step.py, the
  step ``mgdt-train`` runs) with the JAT recipe, on one fixed synthetic batch placed on the device
  once (the peer builds its batch once too), at the peer's sizes, tasks and sequence lengths:

  - ``--task mujoco``: a 17-d observation and the reward, a 6-d action, 256 steps = 512 tokens,
    continuous vectors tiled to 377 (``model.continuous_width``; the observation token also
    carries the reward, 378 inputs, where the peer tiles the observation to 376 + reward);
  - ``--task atari``: 4x84x84 frames (our model reads them as 84x84x4 uint8 and scales them to
    [-1, 1] itself; the peer feeds float32 in [-1, 1]), 18 discrete actions, 32 steps = 64 tokens,
    the image encoder, the next-frame decoder at the action tokens, kappa 0.005.

  fp32, dropout 0 (GPT-Neo's default dropouts), AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0,
  global-norm clip 1.0, no schedule (the peer's settings). By default the model holds only the
  task's encoders, as the peer's step touches only the task's (its AdamW skips parameters without a
  gradient); ``--all-groups`` builds the model of a mixed run (continuous and image encoders; the step
  compiled for the batch's group runs only its encoder), whose idle encoder AdamW still updates. Printed: steps/s,
  tokens/s (2 tokens a step), MFU of the decoder's FLOPs (mgdt_jax/core/flops.py: 6 N tokens +
  12 L D T^2 a sequence, the peer's "blocks" formula) against the best fp32 matmul measured at the
  start of this run, and ours/peer ratios.
* ``eval``: evaluation environment steps/s of mgdt_jax/recipes/jat/evaluate.py (``play_episodes``:
  environments made, reset and stepped, the KV-cached policy) on a real environment task
  (``--eval-task``, continuous: Meta-World or MuJoCo), the model of the mujoco task at each size
  with random weights (speed only, no scores): ``--eval-episodes`` environments stepped together
  (one model call a step for all) against the same episodes one environment at a time. Compilation
  is excluded (a warm-up run of each shape, past the context so the cache rebuild compiles too).
  The peer has no evaluation mode, so there is no peer ratio for it.

With ``--peer-python`` (an interpreter with torch and transformers) ``train`` also runs
../shared/peers/torch_jat.py at the same task, size and batch, right after ours in the same run; on
the GPU where JAX runs, when it runs on one (benchmarks/peer_on_cuda.py).

Run from the repository root (the install makes `benchmarks` importable; benchmarks/gpu_check.sh sets PYTHONPATH):

    python benchmarks/jat.py --modes train --task mujoco,atari --sizes jat-small,jat@2 --batch 8 \\
        --peer-python ../peer-venv/bin/python --json jat_train.json
    python benchmarks/jat.py --modes eval --sizes jat-small,jat --eval-task metaworld-reach --json jat_eval.json
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
from benchmarks.train import parse_sizes
from mgdt_jax.core.flops import matmul_peak  # the same probe as the MGDT benchmark's
from mgdt_jax.core import host_memory, sharding
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, names_argument, output_file_argument, path_argument, seed_argument
from mgdt_jax.core.flops import decoder_flops
from mgdt_jax.core.train_step import Trainer
from mgdt_jax.recipes.jat.data import empty_batch
from mgdt_jax.recipes.jat.model import JatModel, ModelConfig

SIZES = {"jat-small": (256, 4, 4), "jat": (768, 12, 12)}  # name -> (d_model, layers, heads), the peer's


@dataclasses.dataclass(frozen=True)
class TaskShape:
    """One of the peer's synthetic tasks."""

    num_steps: int
    group: str
    observation_size: int = 0
    action_size: int = 0


TASKS = {"mujoco": TaskShape(256, "continuous", 17, 6), "atari": TaskShape(32, "image")}
CONTINUOUS_WIDTH = 377  # JAT's tiling width
NUM_ACTIONS = 18
FRAMES = (84, 84, 4)
REPO = Path(__file__).resolve().parents[1]


def model_config(size: str, task: str, all_groups: bool, precision: str = "float32") -> ModelConfig:
    d_model, layers, heads = SIZES[size]
    groups = ("continuous", "image") if all_groups else (TASKS[task].group,)
    return ModelConfig(num_layers=layers, d_model=d_model, num_heads=heads, mlp_ratio=4, dropout_rate=0.0,
                       dtype=precision, param_dtype="float32", num_steps=TASKS[task].num_steps,
                       continuous_width=CONTINUOUS_WIDTH, num_discrete_actions=NUM_ACTIONS, image_shape=FRAMES,
                       groups=groups, observation_loss_coef=0.005)


def synthetic_batch(config: ModelConfig, task: str, batch_size: int) -> dict[str, np.ndarray]:
    """The peer's fixed random batch in our layout: one whole episode a row, every step real."""
    shape, rng = TASKS[task], np.random.default_rng(0)
    batch = empty_batch(config, batch_size, shape.group)
    steps = (batch_size, shape.num_steps)
    batch["loss_weight"][:] = 1.0
    batch["position"][:] = np.arange(shape.num_steps)
    if shape.group == "continuous":
        batch["continuous_observations"][..., : shape.observation_size] = rng.standard_normal((*steps, shape.observation_size))
        batch["rewards"][:] = rng.standard_normal(steps)
        batch["continuous_actions"][..., : shape.action_size] = rng.uniform(-1, 1, (*steps, shape.action_size))
        batch["continuous_observation_size"][:] = shape.observation_size
        batch["continuous_action_size"][:] = shape.action_size
    else:
        batch["image_observations"][:] = rng.integers(0, 256, batch["image_observations"].shape, dtype=np.uint8)
        batch["discrete_actions"][:] = rng.integers(0, NUM_ACTIONS, steps)
        batch["num_discrete_actions"][:] = NUM_ACTIONS
    return batch


def bench_train(size: str, task: str, batch_size: int, steps: int, warmup: int, all_groups: bool,
                peak: float, precision: str = "float32") -> dict[str, Any]:
    model = model_config(size, task, all_groups, precision)
    config = {
        "recipe": "jat", "model": dataclasses.asdict(model),
        "optimizer": {"name": "adamw", "learning_rate": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                      "grad_clip_norm": 1.0, "warmup_steps": 0, "schedule": "constant"},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "train": {"batch_size": batch_size, "grad_accum_steps": 1, "num_steps": 1_000_000},
    }
    trainer = Trainer(config, sharding.make_mesh(config["mesh"], devices=jax.devices()[:1]))
    state = trainer.init(0)
    batch = trainer.shard_batch(synthetic_batch(model, task, batch_size))

    def step() -> float:
        nonlocal state
        state, metrics = trainer.step(state, batch)
        return float(metrics["loss"])  # blocks, like the peer's loss.item()

    started = time.perf_counter()
    first = [step() for _ in range(warmup)]
    warmup_s = time.perf_counter() - started
    times, losses = [], []
    timed_start = time.perf_counter()
    for _ in range(steps):
        started = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - started)
    elapsed = time.perf_counter() - timed_start
    sequence = 2 * model.num_steps
    blocks, attention = decoder_flops(num_layers=model.num_layers, d_model=model.d_model, mlp_ratio=model.mlp_ratio,
                                      sequence_length=sequence, batch_size=batch_size)
    steps_per_s = steps / elapsed
    return {"mode": "train", "task": task, "size": size, "batch": batch_size, "groups": list(model.groups),
            "seq_len": sequence, "params": sum(leaf.size for leaf in jax.tree.leaves(state.params)),
            "warmup_steps": warmup, "warmup_s": warmup_s, "timed_steps": steps, "timed_s": elapsed,
            "steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * batch_size * sequence,
            "step_s_median": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "decoder_flops_per_step": blocks + attention, "achieved_gflops": (blocks + attention) * steps_per_s / 1e9,
            "mfu": (blocks + attention) * steps_per_s / peak,
            "loss_first": first[0] if first else losses[0], "loss_last": losses[-1]}


def bench_eval(size: str, task_name: str, episodes: int, max_steps: int | None, seed: int) -> dict[str, Any]:
    from mgdt_jax.recipes.jat import evaluate  # environments: only for this mode

    config = model_config(size, "mujoco", all_groups=False)
    model = JatModel(config, rngs=nnx.Rngs(seed))  # random weights: speed only
    warm = config.num_steps + 2  # past the context, so the cache rebuild compiles in the warm-up too
    result: dict[str, Any] = {"mode": "eval", "size": size, "task": task_name, "episodes": episodes,
                              "context_steps": config.num_steps, "max_steps": max_steps}
    for name, together in (("together", episodes), ("one_at_a_time", 1)):
        compile_started = time.perf_counter()
        evaluate.play_episodes(model, task_name, episodes=together, envs_per_task=together, seed=seed, max_steps=warm)
        result[f"{name}_warmup_s"] = time.perf_counter() - compile_started
        returns, env_steps, seconds = evaluate.play_episodes(model, task_name, episodes=episodes, envs_per_task=together,
                                                             seed=seed, max_steps=max_steps)
        result[f"{name}_env_steps"] = env_steps
        result[f"{name}_seconds"] = seconds
        result[f"{name}_env_steps_per_s"] = env_steps / seconds
        result[f"{name}_mean_return"] = float(np.mean(returns))
    result["together_over_one_at_a_time"] = result["together_env_steps_per_s"] / result["one_at_a_time_env_steps_per_s"]
    return result


def bench_peer(peer_python: str, peer_script: Path, task: str, size: str, batch_size: int, steps: int,
               warmup: int, precision: str = "float32") -> dict[str, Any]:
    report = run_peer(peer_command(peer_python, peer_script, jax.default_backend() == "gpu", precision) + [
        "--task", task, "--sizes", f"{size}@{batch_size}", "--steps", str(steps), "--warmup", str(warmup),
        "--threads", str(os.cpu_count())])
    return {**report["results"][0], "peer_peak_gflops": report["peak_gflops_used_for_mfu"]}


@interruptible("benchmarks/jat.py", errors=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program, not called from Python
        host_memory.reexec_with_huge_page_malloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", type=names_argument(("train", "eval")), default="train", help="comma list of train, eval")
    parser.add_argument("--task", type=names_argument(tuple(TASKS)), default="mujoco,atari",
                        help=f"training tasks, comma list of {', '.join(TASKS)}")
    parser.add_argument("--sizes", default="jat-small,jat@2", help="comma list of jat-small, jat; NAME@B sets its batch")
    parser.add_argument("--batch", type=count_argument(), default=8, help="training batch of a size without @B (the peer's default)")
    parser.add_argument("--steps", type=count_argument(), default=10, help="timed training steps")
    parser.add_argument("--warmup", type=count_argument(0), default=3, help="untimed training steps (the first compiles)")
    parser.add_argument("--all-groups", action="store_true", help="train the model of a mixed run (continuous + image)")
    parser.add_argument("--eval-task", default="metaworld-reach", help="a continuous Meta-World or MuJoCo JAT task")
    parser.add_argument("--eval-episodes", type=count_argument(), default=10, help="environments (one episode each)")
    parser.add_argument("--eval-max-steps", type=count_argument(), help="cut episodes after this many steps (default: the env's limit)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="data, parameters and evaluation")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="our models' matmul dtype; bfloat16 runs the peer under torch's bf16 autocast (GPU only)")
    parser.add_argument("--peer-python", help="interpreter with torch and transformers; runs the PyTorch JAT peer")
    parser.add_argument("--peer-script", type=path_argument, default=REPO.parent / "shared" / "peers" / "torch_jat.py",
                        help="the PyTorch JAT peer run by --peer-python (default: %(default)s)")
    parser.add_argument("--json", type=output_file_argument, help="write every figure here")
    args = parser.parse_args(argv)

    modes, tasks = args.modes, args.task
    sizes = parse_sizes(args.sizes, args.batch, tuple(SIZES))
    if "eval" in modes:
        from mgdt_jax.envs import gym_tasks  # environments: only for this mode
        from mgdt_jax.recipes.jat import tokens

        try:
            shapes = gym_tasks.get_task(args.eval_task).shapes
            group = tokens.task_group(args.eval_task, shapes)
        except ValueError as error:
            raise SystemExit(f"--eval-task: {error}") from None
        if group != "continuous":
            raise SystemExit(f"--eval-task {args.eval_task}: a {group} task; the eval mode plays the mujoco model, "
                             f"choose a Meta-World or MuJoCo task")
    if args.peer_python is not None and "train" in modes:
        check_peer(args.peer_python, args.peer_script, "torch, transformers",
                         on_gpu=jax.default_backend() == "gpu", precision=args.precision)

    print(f"# jax {jax.__version__}  backend={jax.default_backend()}  {jax.devices()[0].device_kind}  "
          f"cpus={os.cpu_count()}  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    ours, peers = [], []
    peak = None
    if "train" in modes:
        peak = matmul_peak(jnp.dtype(args.precision), 4096)
        print(f"peak  {args.precision} matmul 4096^3: best {peak / 1e9:.1f} GFLOP/s", flush=True)
        for task in tasks:
            for size, batch_size in sizes:
                result = bench_train(size, task, batch_size, args.steps, args.warmup, args.all_groups, peak,
                                     args.precision)
                ours.append(result)
                print(f"train {task:>6} {size:>9} B={batch_size:<3d} T={result['seq_len']} groups={'+'.join(result['groups'])} "
                      f"params={result['params']:,}  {result['steps_per_s']:.3f} steps/s  "
                      f"{result['tokens_per_s']:,.0f} tok/s  step median {result['step_s_median']:.3f}s "
                      f"[{result['step_s_min']:.3f}-{result['step_s_max']:.3f}]  {result['achieved_gflops']:.1f} GFLOP/s  "
                      f"MFU {100 * result['mfu']:.1f}%  loss {result['loss_first']:.3f}->{result['loss_last']:.3f}",
                      flush=True)
                if args.peer_python is not None:
                    peer = bench_peer(args.peer_python, args.peer_script, task, size, batch_size, args.steps, args.warmup,
                                      args.precision)
                    peers.append(peer)
                    result["tokens_ratio_vs_peer"] = result["tokens_per_s"] / peer["tokens_per_s"]
                    print(f"  peer  {peer['steps_per_s']:.3f} steps/s  {peer['tokens_per_s']:,.0f} tok/s  "
                          f"step median {peer['step_s_median']:.3f}s  MFU {100 * peer['mfu']:.1f}% "
                          f"(of its torch peak {peer['peer_peak_gflops']:.1f} GFLOP/s)", flush=True)
                    print(f"  ratio ours/peer: {result['tokens_ratio_vs_peer']:.2f}x tokens/s", flush=True)
    if "eval" in modes:
        print(f"eval: the PyTorch JAT peer has no evaluation mode; ours only (random weights, {args.eval_task})",
              flush=True)
        for size, _ in sizes:
            result = bench_eval(size, args.eval_task, args.eval_episodes, args.eval_max_steps, args.seed)
            ours.append(result)
            print(f"eval  {size:>9} {args.eval_task} {args.eval_episodes} episodes: together "
                  f"{result['together_env_steps_per_s']:,.1f} env steps/s, one at a time "
                  f"{result['one_at_a_time_env_steps_per_s']:,.1f} env steps/s: "
                  f"{result['together_over_one_at_a_time']:.2f}x  (warm-ups {result['together_warmup_s']:.1f}s, "
                  f"{result['one_at_a_time_warmup_s']:.1f}s apart)", flush=True)
    if args.json:
        report = {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
                  "python": sys.version.split()[0], "platform": platform.platform(),
                  "load_average_at_end": os.getloadavg(), "precision": args.precision, "peak_flops": peak,
                  "args": {k: str(v) for k, v in vars(args).items()}, "ours": ours, "peer": peers}
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
