"""In-context evaluation of Algorithm Distillation: frozen weights, every task at once.

The model acts in ``num_episodes`` consecutive episodes of each task with nothing but its context
to learn from (Laskin et al. 2022, §5): one jitted loop, ``lax.scan`` over environment steps with
the environment ``vmap``-ped over tasks and the model batched over them, each step one KV-cache
decode (model.step) rather than a re-encoding of the whole context. The context runs on across
episode boundaries; an environment whose episode ends is reset in place.

The environment follows the interface of mgdt_jax/envs (pure ``reset(task, key) -> (state,
observation)`` and ``step(task, state, action, key) -> (state, observation, reward, done)`` on one
task, ``episode_length``); every episode must last exactly ``episode_length`` steps. Bandits report
cumulative pseudo-regret through ``regret(task, action) -> max_a mu_a - mu_action``.

Results: returns per task and episode, bootstrap 95% intervals over tasks (percentile bootstrap,
tasks resampled with replacement, as rliable's for one task set), and a report (report.json,
curves.csv, curves.png) beside any other curves (the source algorithm, ED) a caller adds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mgdt_jax.core import files
from mgdt_jax.core.bootstrap import BOOTSTRAP_REPS, CONFIDENCE

REPORT_JSON, CURVES_CSV, CURVES_PNG = "report.json", "curves.csv", "curves.png"


@dataclasses.dataclass(frozen=True)
class InContextRun:
    """One policy's in-context curves on a task set.

    ``returns`` float64 [tasks, episodes]; ``regret`` cumulative pseudo-regret after each step
    float64 [tasks, steps] (None without a regret function); ``env_steps_per_s``: tasks x steps over
    the loop's wall time (compilation excluded, reported as ``compile_s``).
    """

    name: str
    returns: np.ndarray
    regret: np.ndarray | None = None
    env_steps_per_s: float | None = None
    compile_s: float | None = None


def evaluate_in_context(
    model: nnx.Module,
    env: Any,
    tasks: Any,
    *,
    num_episodes: int,
    seed: int,
    greedy: bool,
    regret: Callable[[Any, jax.Array], jax.Array] | None = None,
    name: str | None = None,
) -> InContextRun:
    """Runs ``model`` (an AlgorithmDistillation: init_cache, step, start_action) in context on every
    task of ``tasks`` (a pytree, leaves [n, ...]) for ``num_episodes`` episodes, argmax actions if
    ``greedy`` else sampled from the logits, in one compiled loop.

    ValueError if an episode does not end exactly every ``env.episode_length`` steps.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be at least 1, got {num_episodes}")
    num_tasks = jax.tree.leaves(tasks)[0].shape[0]
    num_steps = num_episodes * env.episode_length
    graphdef, state = nnx.split(model)

    def rollout(state: Any, tasks: Any, key: jax.Array) -> tuple[jax.Array, ...]:
        model = nnx.merge(graphdef, state)
        reset_key, key = jax.random.split(key)
        env_state, observation = jax.vmap(env.reset)(tasks, jax.random.split(reset_key, num_tasks))
        start = (
            env_state,
            observation,
            jnp.full((num_tasks,), model.start_action, jnp.int32),
            jnp.zeros((num_tasks,), jnp.float32),
            model.init_cache(num_tasks),
            key,
        )

        def one_step(carry, step):
            env_state, observation, previous_action, previous_reward, cache, key = carry
            logits, cache = model.step(cache, observation, previous_action, previous_reward, step)
            key, action_key, step_key, reset_key = jax.random.split(key, 4)
            if greedy:
                action = jnp.argmax(logits, axis=-1)
            else:
                action = jax.random.categorical(action_key, logits)
            action = action.astype(jnp.int32)
            env_state, observation, reward, done = jax.vmap(env.step)(
                tasks, env_state, action, jax.random.split(step_key, num_tasks)
            )
            fresh_state, fresh_observation = jax.vmap(env.reset)(tasks, jax.random.split(reset_key, num_tasks))

            def where_done(fresh: jax.Array, old: jax.Array) -> jax.Array:
                return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), fresh, old)

            env_state = jax.tree.map(where_done, fresh_state, env_state)
            observation = where_done(fresh_observation, observation)
            reward = reward.astype(jnp.float32)
            outputs = (reward, done) if regret is None else (reward, done, jax.vmap(regret)(tasks, action))
            return (env_state, observation, action, reward, cache, key), outputs

        _, outputs = jax.lax.scan(one_step, start, jnp.arange(num_steps, dtype=jnp.int32))
        return outputs  # each [steps, tasks]

    key = jax.random.key(seed)
    started = time.perf_counter()
    compiled = jax.jit(rollout).lower(state, tasks, key).compile()
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    outputs = jax.block_until_ready(compiled(state, tasks, key))
    run_s = time.perf_counter() - started

    rewards, done = np.asarray(outputs[0], np.float64), np.asarray(outputs[1])
    expected_done = (np.arange(num_steps) + 1) % env.episode_length == 0
    if not (done == expected_done[:, None]).all():
        raise ValueError(f"{env.name}: episodes did not all end every episode_length={env.episode_length} steps")
    returns = rewards.reshape(num_episodes, env.episode_length, num_tasks).sum(axis=1).T  # [tasks, episodes]
    cumulative_regret = None
    if regret is not None:
        cumulative_regret = np.cumsum(np.asarray(outputs[2], np.float64), axis=0).T  # [tasks, steps]
    return InContextRun(
        name=name or ("argmax" if greedy else "sample"),
        returns=returns,
        regret=cumulative_regret,
        env_steps_per_s=num_tasks * num_steps / run_s,
        compile_s=compile_s,
    )


@dataclasses.dataclass(frozen=True)
class Curve:
    """Mean over tasks at each index, with a bootstrap interval; each float64 [X]."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def bootstrap_curve(
    values: np.ndarray, *, reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE, seed: int = 0
) -> Curve:
    """Mean over tasks of ``values`` [tasks, X] with a percentile bootstrap interval: tasks are
    resampled with replacement ``reps`` times (Efron & Tibshirani 1993, ch. 13). Resamples are drawn
    as multinomial counts, so memory is reps x (tasks + X), not reps x tasks x X."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"bootstrap_curve needs values [tasks >= 1, X], got shape {values.shape}")
    num_tasks = values.shape[0]
    counts = np.random.default_rng(seed).multinomial(num_tasks, np.full(num_tasks, 1.0 / num_tasks), size=reps)
    resampled = counts @ values / num_tasks  # [reps, X]
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail], axis=0)
    return Curve(values.mean(axis=0), low, high)


def write_report(runs: Sequence[InContextRun], out_dir: Path, settings: Mapping[str, Any]) -> Path:
    """Writes curves.csv, curves.png and report.json as a whole (``files.write_together``: a
    directory holding a report.json holds a complete report, and a failed write leaves none of
    them); returns report.json's path.

    ``runs`` must have distinct names. ValueError otherwise or if there is none.
    """
    if not runs:
        raise ValueError("write_report: no run to report")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"write_report: run names must be distinct, got {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {run.name: _curves(run) for run in runs}

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", "metric", "index", "mean", "low", "high", "tasks"])
            for run in runs:
                for metric, curve in curves[run.name].items():
                    for index in range(curve.mean.shape[0]):
                        writer.writerow([run.name, metric, index + 1, curve.mean[index], curve.low[index],
                                         curve.high[index], run.returns.shape[0]])

    def final(curve: Curve) -> dict[str, float]:
        return {"mean": float(curve.mean[-1]), "low": float(curve.low[-1]), "high": float(curve.high[-1])}

    report = {
        "settings": dict(settings),
        "confidence": CONFIDENCE,
        "bootstrap_reps": BOOTSTRAP_REPS,
        "runs": {
            run.name: {
                "tasks": int(run.returns.shape[0]),
                "episodes": int(run.returns.shape[1]),
                "env_steps_per_s": run.env_steps_per_s,
                "compile_s": run.compile_s,
                "final": {metric: final(curve) for metric, curve in curves[run.name].items()},
                "curves": {
                    metric: {"mean": curve.mean.tolist(), "low": curve.low.tolist(), "high": curve.high.tolist()}
                    for metric, curve in curves[run.name].items()
                },
            }
            for run in runs
        },
    }
    files.write_together(out_dir, {CURVES_CSV: write_csv, CURVES_PNG: lambda path: _plot(curves, path),
                                   REPORT_JSON: lambda path: path.write_text(json.dumps(report, indent=2))})
    return out_dir / REPORT_JSON


def _curves(run: InContextRun) -> dict[str, Curve]:
    curves = {"return": bootstrap_curve(run.returns)}
    if run.regret is not None:
        curves["cumulative_regret"] = bootstrap_curve(run.regret)
    return curves


def _plot(curves: Mapping[str, Mapping[str, Curve]], path: Path) -> None:
    """Return per episode (and cumulative regret per step, where any) against the in-context index."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    metrics = [metric for metric in ("return", "cumulative_regret") if any(metric in c for c in curves.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.0), squeeze=False)
    labels = {"return": ("in-context episode", "return per episode"), "cumulative_regret": ("step", "cumulative regret")}
    for axis, metric in zip(axes[0], metrics):
        for name, by_metric in curves.items():
            if metric not in by_metric:
                continue
            curve = by_metric[metric]
            x = np.arange(1, curve.mean.shape[0] + 1)
            (line,) = axis.plot(x, curve.mean, label=name)
            axis.fill_between(x, curve.low, curve.high, color=line.get_color(), alpha=0.2)
        axis.set_xlabel(labels[metric][0])
        axis.set_ylabel(f"{labels[metric][1]} (mean, {math.floor(CONFIDENCE * 100)}% CI)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def source_run(env: Any, source: Any, tasks: Any, *, num_episodes: int, seed: int,
               regret: Callable[[Any, jax.Array], jax.Array] | None = None) -> InContextRun:
    """A source algorithm (mgdt_jax.recipes.ad.sources) learning from scratch on every task for
    ``num_episodes`` episodes: the curve AD's in-context curve is compared with."""
    from mgdt_jax.recipes.ad import sources

    started = time.perf_counter()
    result = sources.rollout(env, source, tasks, seed, num_episodes)
    rewards = np.asarray(jax.block_until_ready(result.rewards), np.float64)  # [tasks, episodes, L]
    seconds = time.perf_counter() - started
    cumulative_regret = None
    if regret is not None:
        per_step = jax.vmap(lambda task, actions: regret(task, actions))(tasks, result.actions.reshape(rewards.shape[0], -1))
        cumulative_regret = np.cumsum(np.asarray(per_step, np.float64), axis=1)
    return InContextRun(name=source.name, returns=rewards.sum(-1), regret=cumulative_regret,
                        env_steps_per_s=rewards.size / seconds)
