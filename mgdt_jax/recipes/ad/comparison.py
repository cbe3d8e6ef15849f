"""``mgdt-ad-eval``'s comparison: a trained AD run on its held-out tasks beside its source
algorithms from scratch and an ED run, in one report (mgdt_jax/recipes/ad/evaluate.py's runs and
report; the runs loaded by mgdt_jax/recipes/ad/recipe.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgdt_jax.recipes.ad import evaluate
from mgdt_jax.recipes.ad.recipe import (heldout_tasks, in_context_episodes, load_trained, overlap_error,
                                        regret_function, training_task_ids)


def compare(ad_workdir: str | Path, out_dir: str | Path, *, ed_workdir: str | Path | None = None,
            baselines: Sequence[Any] = (), episodes: int | None = None, seed: int = 0,
            train_task_ids: np.ndarray | None = None, step: int | None = None) -> dict[str, Any]:
    """In-context evaluation of a trained AD run (checkpoint ``step``, default the newest) on its
    config's held-out tasks, sampled and argmax, beside each baseline source (a Source) from scratch
    and an ED run's sampled and argmax runs, in one report (write_report; its settings name the
    steps read). Returns the report. ValueError (one line) when the held-out tasks overlap the
    training tasks (``train_task_ids``, default: the histories' metadata) of the AD run or of the
    ED run (another split: its baseline would be scored on tasks it trained on), or the ED run is of
    another environment."""
    recipe, model, ad_step = load_trained(ad_workdir, step)
    env = recipe.env
    tasks = heldout_tasks(env, recipe.evaluation)
    heldout_ids = np.asarray(tasks.id)
    train_ids = training_task_ids(recipe) if train_task_ids is None else train_task_ids
    if fault := overlap_error(str(ad_workdir), train_ids, heldout_ids):
        raise ValueError(fault)
    for source in baselines:  # every input checked before the first (long) evaluation
        source.check(env)
    if ed_workdir is not None:
        ed_recipe, ed_model, ed_step = load_trained(ed_workdir)
        if ed_recipe.env.name != env.name:
            raise ValueError(f"{ed_workdir}: an ED run on {ed_recipe.env.name!r}, and the AD run is on {env.name!r}")
        # An ED run trained on in-memory histories (experiment scripts) shares the given training tasks.
        in_memory = not ed_recipe.data.sources and train_task_ids is not None
        ed_train_ids = train_task_ids if in_memory else training_task_ids(ed_recipe)
        if fault := overlap_error(f"{ed_workdir} (the ED run)", ed_train_ids, heldout_ids):
            raise ValueError(fault)
    num_episodes = episodes or in_context_episodes(env, recipe.evaluation)
    regret = regret_function(env)
    runs = [evaluate.evaluate_in_context(model, env, tasks, num_episodes=num_episodes, seed=seed, greedy=greedy,
                                regret=regret, name=f"AD {'argmax' if greedy else 'sample'}") for greedy in (False, True)]
    for source in baselines:
        runs.append(evaluate.source_run(env, source, tasks, num_episodes=num_episodes, seed=seed, regret=regret))
    if ed_workdir is not None:
        runs += [evaluate.evaluate_in_context(ed_model, env, tasks, num_episodes=num_episodes, seed=seed, greedy=greedy,
                                     regret=regret, name=f"ED {'argmax' if greedy else 'sample'}") for greedy in (False, True)]
    settings = {"env": env.name, "tasks": int(heldout_ids.shape[0]), "episodes": num_episodes,
                "split_seed": recipe.evaluation.split_seed, "seed": seed, "ad_workdir": str(ad_workdir), "step": ad_step,
                "ed_workdir": None if ed_workdir is None else str(ed_workdir),
                "ed_step": None if ed_workdir is None else ed_step,
                "baselines": [source.config() for source in baselines]}
    path = evaluate.write_report(runs, Path(out_dir), settings)
    return json.loads(path.read_text())
