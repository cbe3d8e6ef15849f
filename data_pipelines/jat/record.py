"""`mgdt-jat-record`: play experts on JAT tasks and write each task as an RLDS dataset.

Each task becomes OUT/<task>/: the expert's episodes (rlds.py layout), references.json (the mean
return of those episodes and of a uniform-random policy on the same environment version, with the
package versions, and the per-dimension mean and std of the expert's continuous observations) and
metadata.json. A task is written into OUT/<task>.partial/ and renamed when
complete, so a rerun skips the tasks already recorded (with the same options) and redoes any other.

MuJoCo tasks need a PPO expert in --experts (EXPERTS/<task>.npz); a missing one is trained first
(ppo.py), which takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tqdm

from data_pipelines.jat import experts, rlds
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import check_folder, held, path_argument, removing_created_folders, seed_argument
from mgdt_jax.envs import gym_tasks
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import references as jat_references

DEFAULT_RANDOM_EPISODES = 100


class RecordError(ValueError):
    """A recording that cannot go ahead; the message names the task or path and the fault."""


def play_episode(task: gym_tasks.Task, env, policy: experts.Policy, seed: int | None) -> rlds.Episode:
    """One episode of `policy` in `env` (reset with `seed` when not None)."""
    with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints its level-sampling retries
        observation, _ = env.reset(seed=seed)
    policy.begin(env)
    rows = [task.observe(observation)]
    actions, rewards, success = [], [], False
    while True:
        action = policy.act(observation)
        if task.action_bounds is not None:
            action = np.clip(np.asarray(action, np.float32), *task.action_bounds)
        observation, reward, terminated, truncated, info = env.step(action)
        rows.append(task.observe(observation))
        actions.append(action)
        rewards.append(reward)
        success = success or bool(info.get("success", False))
        if terminated or truncated:
            break
    observations = {name: [row[name] for row in rows] if name == "text_observations"
                    else np.stack([row[name] for row in rows]) for name in rows[0]}
    if task.domain == "babyai":
        success = bool(terminated and sum(rewards) > 0)  # BabyAI rewards only reaching the goal
    elif task.domain == "mujoco":
        success = None
    return rlds.Episode(observations, np.asarray(actions), np.asarray(rewards, np.float32), bool(terminated), success)


def expert(task: gym_tasks.Task, experts_dir: Path | None, seed: int = 0) -> experts.Policy:
    """The policy that records ``task`` (experts.py), its action noise seeded by ``seed``; a MuJoCo
    task's PPO expert is read from ``experts_dir``, trained first when missing (with its own seed
    0, whatever ``seed``; ExpertError without a directory)."""
    if task.domain == "babyai":
        return experts.BabyAIBotPolicy()
    if task.domain == "metaworld":
        return experts.ScriptedMetaWorldPolicy(task.env_id.removesuffix("-v3"), seed=seed)
    from data_pipelines.jat import ppo  # JAX and the PPO trainer: only for the MuJoCo tasks

    return ppo.load_expert(task.name, experts_dir, task.env_id, action_seed=seed)


def play(task: gym_tasks.Task, policy_factory: Callable, episodes: int, seed: int,
         skipped: list[str] | None = None) -> Iterator[rlds.Episode]:
    """`episodes` episodes in one environment made with `seed` (first reset seeded, later ones not).

    An episode in which the expert fails to plan (experts.PlanningError) is dropped and replaced;
    its error is appended to `skipped`. More failures than episodes is a RecordError.
    """
    env = task.make_env(seed)
    policy = policy_factory(env)
    played = failed = 0
    while played < episodes:
        try:
            episode = play_episode(task, env, policy, seed if played + failed == 0 else None)
        except experts.PlanningError as error:
            failed += 1
            if skipped is not None:
                skipped.append(str(error))
            if failed > max(episodes, 10):
                raise RecordError(f"{task.name}: the expert failed in {failed} episodes (last: {error})") from None
            continue
        played += 1
        yield episode
    env.close()


def _reference(returns: list[float], successes: list[bool | None]) -> jat_references.Reference:
    rates = [s for s in successes if s is not None]
    return jat_references.Reference(mean_return=float(np.mean(returns)), std_return=float(np.std(returns)),
                                    episodes=len(returns),
                                    success_rate=float(np.mean(rates)) if rates else None)


def _job(task: gym_tasks.Task, episodes: int, random_episodes: int, seed: int) -> dict:
    return {"task": task.name, "env_id": task.env_id, "expert": experts.EXPERT_NAMES[task.domain],
            "episodes": episodes, "random_episodes": random_episodes, "seed": seed,
            "versions": jat_references.installed_versions(task.packages)}


def recorded(out_dir: Path, task: gym_tasks.Task, job: dict) -> bool:
    """Whether OUT/<task> holds a complete recording of this job; RecordError if it holds another."""
    final = Path(out_dir) / task.name
    if not (final / "dataset_info.json").exists():
        if final.exists():
            raise RecordError(f"{final}: exists but is not a complete dataset; remove it to record {task.name}")
        return False
    try:
        metadata = json.loads((final / jat_fields.METADATA_FILE).read_text())
        previous, summary = metadata["job"], metadata["summary"]
        fault = rlds.shard_fault(final, task.name, summary)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RecordError(f"{final / jat_fields.METADATA_FILE}: unreadable ({error})") from None
    if previous != job:
        differ = sorted(key for key in job if previous.get(key) != job[key])
        raise RecordError(f"{final}: recorded with other {', '.join(differ)}; choose another --out or remove it")
    if fault:  # not to be reported as "already recorded"
        raise RecordError(f"{final}: damaged since it was recorded ({fault}); remove it to record {task.name} again")
    return True


def record_task(task: gym_tasks.Task, out_dir: Path, episodes: int, seed: int = 0,
                random_episodes: int = DEFAULT_RANDOM_EPISODES, experts_dir: Path | None = None,
                episodes_per_shard: int = 1000, on_episode: Callable[[rlds.Episode], None] = lambda e: None) -> dict:
    """Records one task into OUT/<task> (or finds it recorded); returns its summary with references.

    Holds ``OUT/<task>.writing`` meanwhile: a second recording of the task into OUT at once is
    refused in one line (it deleted this one's OUT/<task>.partial and the two wrote into each
    other's files); other tasks may be recorded into OUT beside it."""
    if episodes < 1 or random_episodes < 1:
        raise RecordError(f"{task.name}: episodes and random episodes must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with held(rlds.writing_claim(out_dir, task.name), f"{rlds.WRITERS} of {task.name}"):
        return _record_task(task, out_dir, episodes, seed, random_episodes, experts_dir, episodes_per_shard, on_episode)


def _record_task(task: gym_tasks.Task, out_dir: Path, episodes: int, seed: int, random_episodes: int,
                 experts_dir: Path | None, episodes_per_shard: int, on_episode: Callable[[rlds.Episode], None]) -> dict:
    job = _job(task, episodes, random_episodes, seed)
    final = out_dir / task.name
    if recorded(out_dir, task, job):
        try:
            summary = json.loads((final / jat_fields.METADATA_FILE).read_text())["summary"]
            references = jat_references.load(final).to_json()
        except (OSError, ValueError, KeyError, TypeError) as error:  # ReferenceError is a ValueError
            raise RecordError(f"{final}: recorded, but its summary or references are unreadable ({error}); "
                              f"remove it to record {task.name} again") from None
        return {**summary, "references": references, "resumed": True, "played_steps": 0}
    partial = out_dir / f"{task.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    expert_returns, expert_successes, skipped = [], [], []
    moments = rlds.ObservationMoments()
    preparing = []  # seconds spent making the expert (a MuJoCo PPO expert's training): not recording

    def make_expert(env) -> experts.Policy:
        begun = time.perf_counter()
        policy = expert(task, experts_dir, seed)
        preparing.append(time.perf_counter() - begun)
        return policy

    def count(episode: rlds.Episode) -> None:
        expert_returns.append(episode.episode_return)
        expert_successes.append(episode.success)
        moments.add(episode)
        on_episode(episode)

    try:  # an interrupted recording leaves nothing: the folder is complete only once renamed
        summary = rlds.write_dataset(
            partial, jat_fields.TaskSpec(task.name, task.shapes),
            play(task, make_expert, episodes, seed, skipped),
            {"job": job, "final_observation": "recorded", "skipped_expert_episodes": skipped}, episodes_per_shard,
            description=f"JAT task {task.name} ({task.env_id}) played by {experts.EXPERT_NAMES[task.domain]}.",
            on_episode=count)
        random_returns, random_successes, random_steps = [], [], 0
        for episode in play(task, lambda env: experts.RandomPolicy(env, seed), random_episodes, seed):
            random_steps += episode.num_steps
            random_returns.append(episode.episode_return)
            random_successes.append(episode.success)
            on_episode(episode)
        references = jat_references.TaskReferences(
            task=task.name, env_id=task.env_id, expert=_reference(expert_returns, expert_successes),
            random=_reference(random_returns, random_successes), versions=job["versions"],
            observation_stats=moments.stats())
        jat_references.save(references, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(final)
    return {**summary, "references": references.to_json(), "resumed": False,
            "played_steps": summary["steps"] + random_steps, "expert_seconds": round(sum(preparing), 3),
            "seconds": round(time.perf_counter() - started - sum(preparing), 3), "skipped_expert_episodes": len(skipped)}


def record(task_names: list[str], out_dir: Path, episodes: int, seed: int = 0,
           random_episodes: int = DEFAULT_RANDOM_EPISODES, experts_dir: Path | None = None,
           progress: bool = True, summaries: list[dict] | None = None) -> list[dict]:
    """Records every task in turn (each as record_task); the bar counts episodes, expert and random.
    Each task's summary is appended to ``summaries`` (default a new list, returned) once it is done,
    so a caller knows what was recorded before a later task failed.

    A failure removes OUT (and its parents) again where this call created it and it is still empty.
    """
    resolved = [gym_tasks.get_task(name) for name in task_names]
    out_dir = Path(out_dir)
    started, steps = time.perf_counter(), 0
    summaries = [] if summaries is None else summaries
    total = len(resolved) * (episodes + random_episodes)
    with removing_created_folders(out_dir), tqdm.tqdm(total=total, unit="episode", disable=not progress) as bar:

        def count(episode: rlds.Episode) -> None:
            nonlocal steps
            steps += episode.num_steps
            bar.update()
            bar.set_postfix_str(f"{steps:,} steps, {steps / (time.perf_counter() - started):,.0f} steps/s")

        out_dir.mkdir(parents=True, exist_ok=True)
        for task in resolved:
            bar.set_description(task.name)
            summary = record_task(task, out_dir, episodes, seed, random_episodes, experts_dir, on_episode=count)
            if summary["resumed"]:
                bar.update(episodes + random_episodes)
            summaries.append(summary)
    return summaries


def summary_line(summaries: list[dict], out_dir: Path) -> str:
    """The command's last line. Its steps/s are of the recording (playing, writing) alone: the time
    spent making an expert (training a MuJoCo task's PPO expert: minutes) is given apart."""
    new = [s for s in summaries if not s["resumed"]]
    played, seconds = sum(s["played_steps"] for s in new), sum(s["seconds"] for s in new)
    preparing = sum(s["expert_seconds"] for s in new)
    scores = "; ".join(f"{s['task']} expert {s['references']['expert']['mean_return']:.3g} "
                       f"random {s['references']['random']['mean_return']:.3g}" for s in summaries)
    return (f"recorded {len(new)} tasks ({sum(s['episodes'] for s in new)} expert episodes, "
            f"{sum(s['steps'] for s in new):,} steps; {played / max(seconds, 1e-9):,.0f} steps/s with the random "
            f"reference episodes{f', after {preparing:.0f} s making experts' if preparing >= 1 else ''}), "
            f"{len(summaries) - len(new)} already recorded, into {out_dir}; mean returns: {scores}")


@interruptible("mgdt-jat-record")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-jat-record", description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="+", help="JAT task names, e.g. babyai-go-to-local metaworld-reach "
                                                 "mujoco-pendulum babyai-rgb-go-to-red-ball-grey")
    parser.add_argument("--episodes", type=int, required=True, help="expert episodes per task")
    parser.add_argument("--out", type=path_argument, required=True, help="writes OUT/<task>/ for each task")
    parser.add_argument("--seed", type=seed_argument, default=0,
                        help="the environments' resets, the experts' and the random policy's actions")
    parser.add_argument("--random-episodes", type=int, default=DEFAULT_RANDOM_EPISODES,
                        help="episodes of the uniform-random policy measured for the reference")
    parser.add_argument("--experts", type=path_argument, default=None,
                        help="directory of PPO experts for MuJoCo tasks (default: OUT/experts)")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.random_episodes < 1:
        parser.error("--episodes and --random-episodes must be positive")
    if twice := sorted({name for name in args.tasks if args.tasks.count(name) > 1}):
        parser.error(f"{', '.join(twice)}: named more than once (a task is recorded once)")
    # The env checker's and the scripted policies' chatter would break the progress bar.
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="metaworld")
    experts_dir = args.experts if args.experts is not None else args.out / "experts"
    summaries: list[dict] = []
    try:  # checked before any recording or expert training, which would fail only at their end
        check_folder(args.out, "--out")
        check_folder(experts_dir, "--experts")
        record(args.tasks, args.out, args.episodes, args.seed, args.random_episodes, experts_dir, summaries=summaries)
    except (gym_tasks.UnknownTaskError, experts.ExpertError, RecordError, jat_fields.DatasetError, OSError) as error:
        done = "".join(f"; {', '.join(names)} {state} (kept)" for state, names in (
            ("recorded before it", [s["task"] for s in summaries if not s["resumed"]]),
            ("already recorded", [s["task"] for s in summaries if s["resumed"]])) if names)
        print(f"mgdt-jat-record: error: {files.error_line(error, args.out)}{done}", file=sys.stderr)
        return 1
    print(summary_line(summaries, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
