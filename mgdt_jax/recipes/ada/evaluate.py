"""Held-out evaluation of a trained AdA run: return per trial k = 1..K with frozen weights.

AdA (Adaptive Agent Team 2023, §3.1 and Fig. 3) scores an agent on held-out tasks by its return in
each trial of a k-trial episode: a curve that rises with k is adaptation within the episode. Here
every evaluation task (the task source's held-out ids, or every task when it holds none out) runs
``episodes`` meta-episodes of ``trials`` trials at once: one jitted program, the environment
``vmap``-ped over tasks x episodes, segments of the run's ``ppo.rollout_length`` steps as in
training (so a Transformer-XL sees the same memory span), actions sampled from the policy. Each
environment runs exactly one meta-episode; steps after its end are not counted.

Scores: a task's return in trial k is the mean over its episodes; over tasks, the mean, the median
and the 20th percentile (AdA reports all three: the median and 20th percentile show whether the
mean hides a tail of failed tasks), each with a percentile bootstrap 95% interval (tasks resampled
with replacement, 2,000 resamples; Efron & Tibshirani 1993, ch. 13).

Report: ``scores.csv``, ``scores.png`` (score against trial, one line per run, a panel per
statistic), then ``report.json`` (written last and atomically: a directory holding a report.json
holds a complete report).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mgdt_jax.core import files
from mgdt_jax.core.bootstrap import BOOTSTRAP_REPS, CONFIDENCE
from mgdt_jax.recipes.ada import env as ada_env
from mgdt_jax.recipes.ada.recipe import AdaRecipe, agent_inputs, load_agent

REPORT_JSON, SCORES_CSV, SCORES_PNG = "report.json", "scores.csv", "scores.png"
STATISTICS = ("mean", "median", "p20")


@dataclasses.dataclass(frozen=True)
class TrialScores:
    """One run's held-out scores.

    ``returns`` float64 [tasks, episodes, K]: return of each trial of each meta-episode;
    ``task_ids`` int [tasks]; ``settings``: what was evaluated (run, checkpoint step, environment,
    split, seed); ``env_steps_per_s`` over the evaluation loop (compilation excluded, ``compile_s``).
    """

    name: str
    returns: np.ndarray
    task_ids: np.ndarray
    settings: Mapping[str, Any]
    env_steps_per_s: float
    compile_s: float

    @property
    def task_scores(self) -> np.ndarray:
        """float64 [tasks, K]: each task's mean return per trial over its episodes."""
        return self.returns.mean(axis=1)


def statistic(name: str, values: np.ndarray, axis: int = 0) -> np.ndarray:
    """``mean``, ``median`` or ``p20`` (20th percentile, linear interpolation) of ``values`` along ``axis``."""
    if name == "mean":
        return values.mean(axis=axis)
    if name == "median":
        return np.median(values, axis=axis)
    if name == "p20":
        return np.percentile(values, 20, axis=axis)
    raise ValueError(f"statistic {name!r} is not one of {STATISTICS}")


def bootstrap(task_scores: np.ndarray, *, reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
              seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Each statistic of ``task_scores`` [tasks, K] over tasks, with its percentile bootstrap interval:
    ``{stat: {"value": [K], "low": [K], "high": [K]}}``. ValueError for an empty or non-2D array."""
    task_scores = np.asarray(task_scores, np.float64)
    if task_scores.ndim != 2 or task_scores.shape[0] == 0:
        raise ValueError(f"bootstrap needs scores [tasks >= 1, K], got shape {task_scores.shape}")
    num_tasks = task_scores.shape[0]
    resamples = np.random.default_rng(seed).integers(0, num_tasks, (reps, num_tasks))
    resampled = task_scores[resamples]  # [reps, tasks, K]
    tail = (1.0 - confidence) / 2 * 100
    result = {}
    for name in STATISTICS:
        low, high = np.percentile(statistic(name, resampled, axis=1), [tail, 100 - tail], axis=0)
        result[name] = {"value": statistic(name, task_scores).tolist(), "low": low.tolist(), "high": high.tolist()}
    return result


def run_trials(agent: nnx.Module, env: ada_env.MetaEnvironment, tasks: ada_env.TaskSource, task_ids: np.ndarray, *,
               episodes: int, segment: int, seed: int, greedy: bool = False) -> tuple[np.ndarray, float, float]:
    """Returns float64 [tasks, episodes, K] of one meta-episode per (task, episode), K = env.num_trials,
    with ``(env steps/s, compile seconds)``. Actions are sampled from the policy, or its argmax with
    ``greedy``. The episodes of a task differ by their reset keys (start positions) and action samples."""
    num_trials = env.num_trials
    batch = len(task_ids) * episodes
    num_segments = -(-int(env.episode_length) // segment)
    graphdef, state = nnx.split(agent)

    @jax.jit
    def evaluate(state, ids, key):
        model = nnx.merge(graphdef, state)
        reset_key, key = jax.random.split(key)
        env_state, timestep = jax.vmap(env.reset)(jax.random.split(reset_key, batch), jax.vmap(tasks.params_of)(ids))
        carry = {
            "env_state": env_state, "timestep": timestep,
            "previous_action": jnp.full((batch,), env.num_actions, jnp.int32),
            "previous_reward": jnp.zeros((batch,), jnp.float32),
            "reset": jnp.ones((batch,), bool),
            "running": jnp.ones((batch,), bool),
            "returns": jnp.zeros((batch, num_trials), jnp.float32),
        }

        def one_step(carry, inputs):
            t, step_key = inputs
            observed = agent_inputs(carry["timestep"], carry["previous_action"], carry["previous_reward"], carry["reset"])
            logits, _, cache = model.act(observed, carry["cache"], t)
            action = (jnp.argmax(logits, axis=-1) if greedy else jax.random.categorical(step_key, logits)).astype(jnp.int32)
            env_state, timestep = jax.vmap(env.step)(carry["env_state"], action)
            reward = jnp.where(carry["running"], timestep.reward, 0.0)
            returns = carry["returns"] + jax.nn.one_hot(timestep.trial, num_trials) * reward[:, None]
            return dict(carry, cache=cache, env_state=env_state, timestep=timestep, previous_action=action,
                        previous_reward=timestep.reward, reset=jnp.zeros_like(carry["reset"]),
                        running=carry["running"] & ~timestep.done, returns=returns), None

        def one_segment(carry, segment_key):
            memory = carry.pop("memory")
            carry["cache"] = model.begin_segment(memory, segment)
            steps = (jnp.arange(segment, dtype=jnp.int32), jax.random.split(segment_key, segment))
            carry, _ = jax.lax.scan(one_step, carry, steps)
            carry["memory"] = model.end_segment(carry.pop("cache"))
            return carry, None

        carry["memory"] = model.initial_memory(batch)
        carry, _ = jax.lax.scan(one_segment, carry, jax.random.split(key, num_segments))
        return carry["returns"], carry["running"].any()

    ids = jnp.asarray(np.repeat(task_ids, episodes), jnp.int32)
    key = jax.random.key(seed)
    started = time.perf_counter()
    compiled = evaluate.lower(state, ids, key).compile()
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    returns, unfinished = jax.block_until_ready(compiled(state, ids, key))
    seconds = time.perf_counter() - started
    if bool(unfinished):  # the environment's episode_length is an upper bound; this would be a bug in it
        raise RuntimeError(f"{type(env).__name__}: meta-episodes outlast its episode_length {env.episode_length}")
    returns = np.asarray(returns, np.float64).reshape(len(task_ids), episodes, num_trials)
    return returns, batch * num_segments * segment / seconds, compile_s


def evaluate_run(workdir: str | Path, *, trials: int | None = None, episodes: int = 1, seed: int = 0,
                 name: str | None = None, step: int | None = None, greedy: bool = False) -> TrialScores:
    """The scores of the AdA run in ``workdir`` (its latest checkpoint, or ``step``) on its evaluation
    tasks, ``trials`` trials per meta-episode (default: the run's ``env.num_trials``; at most the trial
    features its agent observes, ``env.max_trials``), ``episodes`` meta-episodes per task, actions
    sampled from the policy (or its argmax with ``greedy``).

    ValueError (one line) for a workdir that is not an AdA run or has no checkpoint, ``trials`` or
    ``episodes`` below 1, a negative ``seed``, ``trials`` beyond what the agent observes, an
    environment without ``num_trials`` or ``episode_length``, or a benchmark file that is not the
    one the checkpoint trained on (``env.check_same_benchmark``).
    """
    workdir = Path(workdir)
    if episodes < 1:
        raise ValueError(f"episodes {episodes}: must be at least 1")
    if trials is not None and trials < 1:
        raise ValueError(f"trials {trials}: must be at least 1")
    if seed < 0:
        raise ValueError(f"seed {seed}: must be >= 0")
    from mgdt_jax.core.loop import check_paths_found, read_run_config

    env_config = dict(read_run_config(workdir, AdaRecipe.name, sections=("env",))["env"])
    if "num_trials" not in env_config:
        raise ValueError(f"{workdir}: its env section has no num_trials (not a multi-trial AdA environment)")
    features = int(env_config.get("max_trials") or env_config["num_trials"])
    trials = int(env_config["num_trials"]) if trials is None else trials
    if trials > features:
        raise ValueError(f"trials {trials}: the agent of {workdir} observes trial indices up to {features} "
                         f"(train with env.max_trials >= {trials})")
    env_config.update(num_trials=trials, max_trials=features)
    benchmark = env_config.get("benchmark")
    check_paths_found(workdir, [benchmark], "benchmark file")
    env, tasks = ada_env.make(env_config)
    if not hasattr(env, "episode_length"):
        raise ValueError(f"{type(env).__name__}: has no episode_length (the most steps of a meta-episode)")
    agent, run_config, chosen, position = load_agent(workdir, env, tasks, step=step)
    ada_env.check_same_benchmark(env, position, benchmark=benchmark, checkpoint=f"{workdir} step {chosen}",
                                 why="its held-out tasks would not be held out")
    task_ids, split = ada_env.evaluation_task_ids(tasks)
    segment = int((run_config.get("ppo") or {}).get("rollout_length", 16))
    returns, steps_per_s, compile_s = run_trials(agent, env, tasks, task_ids, episodes=episodes, segment=segment, seed=seed,
                                                 greedy=greedy)
    settings = {
        "workdir": str(workdir), "checkpoint_step": chosen, "agent": (run_config.get("model") or {}).get("agent"),
        "env": env.describe(), "trials": trials, "episodes_per_task": episodes, "tasks": len(task_ids), "split": split,
        "heldout_fraction": env_config.get("heldout_fraction"), "split_seed": env_config.get("split_seed"),
        "segment": segment, "seed": seed, "actions": "argmax of the policy" if greedy else "sampled from the policy",
        "train_seed": (run_config.get("train") or {}).get("seed"),  # the report pools without the run's folder
    }
    return TrialScores(name or workdir.name, returns, task_ids, settings, steps_per_s, compile_s)


def write_report(runs: Sequence[TrialScores], out_dir: str | Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """scores.csv, scores.png and report.json in ``out_dir``, as a whole (``files.write_together``);
    returns the report. ValueError for no run, repeated names, or runs of different trial counts."""
    if not runs:
        raise ValueError("write_report: no run to report")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"write_report: run names must be distinct, got {names}")
    if len({run.returns.shape[2] for run in runs}) != 1:
        raise ValueError("write_report: the runs have different numbers of trials")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {run.name: bootstrap(run.task_scores) for run in runs}


    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", "statistic", "trial", "value", "low", "high", "tasks", "episodes_per_task"])
            for run in runs:
                for name in STATISTICS:
                    entry = stats[run.name][name]
                    for k in range(run.returns.shape[2]):
                        writer.writerow([run.name, name, k + 1, entry["value"][k], entry["low"][k], entry["high"][k],
                                         run.returns.shape[0], run.returns.shape[1]])

    report = {
        "confidence": CONFIDENCE,
        "bootstrap_reps": BOOTSTRAP_REPS,
        **(dict(extra) if extra else {}),
        "runs": {
            run.name: {
                "settings": dict(run.settings),
                "tasks": int(run.returns.shape[0]),
                "episodes_per_task": int(run.returns.shape[1]),
                "trials": int(run.returns.shape[2]),
                "env_steps_per_s": run.env_steps_per_s,
                "compile_s": run.compile_s,
                "scores": stats[run.name],
                "task_ids": run.task_ids.tolist(),
                "task_scores": run.task_scores.tolist(),
            }
            for run in runs
        },
    }
    files.write_together(out_dir, {SCORES_CSV: write_csv, SCORES_PNG: lambda path: plot(stats, path),
                                   REPORT_JSON: lambda path: path.write_text(json.dumps(report, indent=1))})
    return report


def plot(stats: Mapping[str, Mapping[str, Mapping[str, list[float]]]], path: Path, title: str = "") -> None:
    """Score against trial: a panel per statistic, a line (with its interval) per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    labels = {"mean": "mean", "median": "median", "p20": "20th percentile"}
    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(4.5 * len(STATISTICS), 3.6), sharey=True)
    for axis, name in zip(axes, STATISTICS):
        for run, by_stat in stats.items():
            entry = by_stat[name]
            x = np.arange(1, len(entry["value"]) + 1)
            (line,) = axis.plot(x, entry["value"], marker="o", label=run)
            axis.fill_between(x, entry["low"], entry["high"], color=line.get_color(), alpha=0.2)
        axis.set_xlabel("trial")
        axis.set_xticks(x)
        axis.set_title(f"{labels[name]} over tasks ({round(CONFIDENCE * 100)}% CI)", fontsize=9)
    axes[0].set_ylabel("return in the trial")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
