"""The Algorithm Distillation claims, each data -> training -> evaluation -> table and plot, fixed seeds
(``--seed``, 0 by default, for the histories, the model and the evaluation; the task split is fixed).

    python experiments/ad_claims.py bandit [--quick] --out DIR
    python experiments/ad_claims.py darkroom [--quick] --out DIR
    python experiments/ad_claims.py key_to_door [--quick] --out DIR
    python experiments/ad_claims.py darkroom --observation-embedding table --out DIR  # a variant (no claim)

* ``bandit``: AD trained on Thompson-sampling histories of 10-armed Bernoulli bandits (100 pulls),
  frozen, on 512 fresh held-out bandits: cumulative regret at 100 pulls against Thompson sampling
  and UCB1 from scratch on the same bandits, and ED (the same model on the optimal arm's pulls).
  Claim: AD within 5% of Thompson and at most 0.55x UCB1; ED clearly worse; all within 5 minutes
  on 2 cores.
* ``darkroom``: AD on Q-learning histories of the 65 training goals (200 episodes each, every 10th
  kept, so a 4-episode context spans 40 episodes of learning; observations embedded as row +
  column), in context on the 16 held-out goals for 40 episodes, beside Q-learning from scratch and
  ED (expert histories). Claim: mean return of AD's sampled policy at episode 40 >= 10 and rising
  (argmax is reported beside it). docs/algorithm_distillation.md gives the settings tried before.
* ``key_to_door``: the in-context curve of AD trained on Q-learning histories, beside Q-learning.

Histories are generated in memory (sources.rollout, the generator mgdt-ad-histories runs) and
trained through the core loop with the AD recipe; the report is mgdt-ad-eval's (comparison.compare).
``--quick`` shrinks data and training to a smoke run of the same pipeline (its figures are no claim).
Prints a markdown table and the checks; writes the report (JSON, CSV, PNG) into OUT/report and, last,
OUT/summary.json (a run without it did not finish), and ends by saying so. A claim stopped by a
SIGTERM or Ctrl-C (or killed) goes on where it stopped when rerun with the same ``--out`` and
arguments: finished training runs are skipped, a stopped one resumes from its checkpoint (one per
tenth of its steps), and the wall time reported adds up every attempt's training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments import ad_bandit, ad_darkroom, ad_key_to_door, common
from mgdt_jax import envs
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, path_argument, seed_argument
from mgdt_jax.recipes.ad import comparison, sources
from mgdt_jax.recipes.ad.model import OBSERVATION_EMBEDDINGS
from mgdt_jax.recipes.ad.recipe import ADRecipe


@dataclasses.dataclass(frozen=True)
class Claim:
    config: object  # the experiment module
    env: str
    source: str  # what AD distils
    source_settings: dict
    baselines: tuple[str, ...]  # run from scratch on the held-out tasks
    num_train: int | None  # training tasks (None: the split's default)
    num_heldout: int | None
    histories_per_task: int
    episodes_per_history: int
    train_steps: int
    ed_steps: int
    batch_size: int
    model: dict  # over the experiment config's model section
    subsample: int = 1  # train on every k-th episode of each history


CLAIMS = {
    "bandit": Claim(ad_bandit, "bandit", "thompson", {}, ("thompson", "ucb1"), num_train=16384, num_heldout=512,
                    histories_per_task=1, episodes_per_history=100, train_steps=1500, ed_steps=100, batch_size=64,
                    model={"num_layers": 2, "d_model": 64, "num_heads": 2, "dropout_rate": 0.0}),
    "darkroom": Claim(ad_darkroom, "darkroom", "q_learning", {}, ("q_learning",), num_train=None, num_heldout=None,
                      histories_per_task=32, episodes_per_history=200, subsample=10, train_steps=3000, ed_steps=500,
                      batch_size=64, model={"num_layers": 2, "d_model": 64, "num_heads": 2,
                                            "observation_embedding": "coordinates"}),
    "key_to_door": Claim(ad_key_to_door, "key_to_door", "q_learning", {}, ("q_learning",), num_train=1024,
                         num_heldout=64, histories_per_task=2, episodes_per_history=300, train_steps=2000,
                         ed_steps=300, batch_size=32, model={}),
}
QUICK = {"darkroom": dict(histories_per_task=4, episodes_per_history=60, subsample=1, train_steps=300, ed_steps=100,
                          batch_size=32),
         "key_to_door": dict(num_train=256, histories_per_task=1, episodes_per_history=60, train_steps=200, ed_steps=50,
                             batch_size=16),
         "bandit": dict(num_train=512, train_steps=100, ed_steps=20)}
QUICK_MODEL = {"num_layers": 2, "d_model": 64, "num_heads": 2}
VARIANT_FLAGS = ("quick", "source", "train_steps", "small", "config_model", "episodes", "subsample",
                 "observation_embedding")  # each changes the claim's setting: its checks are no verdict on it
SPLIT_SEED = 0  # the training / held-out task split, the same for every --seed


def histories(claim: Claim, env, source_name: str, tasks, seed: int):
    source = sources.make_source(source_name, **(claim.source_settings if source_name == claim.source else {}))
    result = sources.rollout(env, source, tasks, seed, claim.episodes_per_history, claim.histories_per_task)
    return sources.to_histories(result, env, source)


def subsample(data, every: int):
    """Every ``every``-th episode of each history (episodes 0, every, 2 every, ...): a context of a few
    episodes then spans ``every`` times more of the source's learning (Laskin et al. 2022, §5)."""
    length = data.episode_length
    episodes = data.observations.shape[1] // length

    def keep(steps):
        return steps.reshape(steps.shape[0], episodes, length)[:, ::every].reshape(steps.shape[0], -1)

    return dataclasses.replace(data, observations=keep(data.observations), actions=keep(data.actions),
                               rewards=keep(data.rewards), metadata={**data.metadata, "subsampled_every": every})


def run_config(claim: Claim, steps: int, seed: int):
    """The experiment config with the claim's model, batch, steps and seed."""
    config = claim.config.get_config()
    config.train.seed = config.data.seed = config.evaluation.seed = seed
    for key, value in claim.model.items():
        setattr(config.model, key, value)
    config.evaluation.num_heldout = claim.num_heldout or 0
    config.train.num_steps = steps
    config.train.batch_size = claim.batch_size
    config.train.checkpoint_every = max(steps // 10, 1)  # a stopped claim resumes from its last tenth
    config.train.log_every = max(steps // 10, 1)
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
    return config


def train(claim: Claim, data, out: Path, name: str, steps: int, seed: int) -> float:
    """Trains run OUT/``name`` to its end (a stage: a rerun resumes it from its checkpoint or skips
    it); its wall seconds over every attempt."""
    config = run_config(claim, steps, seed)
    done = common.stage(out, name, lambda: common.train_to_end(config, out / name, recipe=ADRecipe(config, histories=data)),
                        output=out / name)
    return done["seconds"]


@interruptible("ad_claims")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("claim", choices=sorted(CLAIMS), help="which claim (the module docstring says each)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of the same pipeline (no claim)")
    parser.add_argument("--out", type=path_argument, required=True,
                        help="runs, report and summary.json go here; rerun with it to go on where it stopped")
    parser.add_argument("--seed", type=seed_argument, default=0, help="histories, initialisation, window order and evaluation "
                        "(the task split stays the same)")
    parser.add_argument("--source", help="distil this source instead of the claim's (a variant, no claim)")
    parser.add_argument("--train-steps", type=count_argument(), help="AD updates instead of the claim's")
    parser.add_argument("--small", action="store_true", help=f"the model {QUICK_MODEL} instead of the claim's")
    parser.add_argument("--config-model", action="store_true", help="the experiment config's model instead of the claim's")
    parser.add_argument("--episodes", type=count_argument(), help="episodes per generated history instead of the claim's")
    parser.add_argument("--subsample", type=count_argument(), help="train on every K-th episode of each history (claim's: 1 or 10)")
    parser.add_argument("--observation-embedding", choices=OBSERVATION_EMBEDDINGS,
                        help="grid observations as one vector per cell, or row + column (the claim's otherwise)")
    args = parser.parse_args(argv)
    claim = CLAIMS[args.claim]
    if args.quick:
        claim = dataclasses.replace(claim, **QUICK[args.claim])
    embedding = {key: claim.model[key] for key in ("observation_embedding",) if key in claim.model}
    if args.config_model:
        claim = dataclasses.replace(claim, model=embedding)
    if args.small or (args.quick and args.claim != "bandit"):
        claim = dataclasses.replace(claim, model={**QUICK_MODEL, **embedding})
    if args.observation_embedding:
        claim = dataclasses.replace(claim, model={**claim.model, "observation_embedding": args.observation_embedding})
    if args.subsample:
        claim = dataclasses.replace(claim, subsample=args.subsample)
    if args.source:
        claim = dataclasses.replace(claim, source=args.source)
    if args.train_steps:
        claim = dataclasses.replace(claim, train_steps=args.train_steps)
    if args.episodes:
        claim = dataclasses.replace(claim, episodes_per_history=args.episodes)
    env = envs.get(claim.env)
    try:
        sources.make_source(claim.source).check(env)
    except sources.SourceError as error:  # an unknown name, or a source for other environments
        parser.error(f"--source {claim.source}: {error}")
    try:
        ADRecipe(run_config(claim, claim.train_steps, args.seed))  # the model's settings, before any work
    except ValueError as error:
        parser.error(f"{args.claim}: {error}")
    context_episodes = -(-claim.config.get_config().model.context_steps // env.episode_length)
    kept = -(-claim.episodes_per_history // claim.subsample)
    if kept < context_episodes:
        parser.error(f"--subsample {claim.subsample}: keeps {kept} of {claim.episodes_per_history} episodes per "
                     f"history, fewer than the {context_episodes} of the model's context")
    # Rerun with the same --out and arguments, a stopped claim goes on where it stopped (its
    # histories are generated again: the same for the same seed).
    resumed = common.check_settings(args.out, {name: value for name, value in vars(args).items() if name != "out"},
                                    "ad_claims")
    host = common.describe_machine(common.machine())  # before the clock starts: not the claim's time
    started, earlier_s = time.perf_counter(), common.stage_seconds(args.out)
    print(f"# {args.claim}{' (quick)' if args.quick else ''}: {claim}; seed {args.seed}; {host}"
          + (f"; resuming {args.out} ({earlier_s:.0f} s of training done or begun)" if resumed else ""), flush=True)
    train_tasks, _ = env.task_split(SPLIT_SEED, claim.num_train, claim.num_heldout)
    data = histories(claim, env, claim.source, train_tasks, args.seed)
    if claim.subsample > 1:
        data = subsample(data, claim.subsample)
    expert = histories(claim, env, "expert", train_tasks, args.seed)
    data_s = time.perf_counter() - started
    returns = data.episode_returns()
    print(f"data: {data.num_histories} {data.source} histories x {data.episodes_per_history} episodes in {data_s:.1f} s; "
          f"return first {returns[:, 0].mean():.3f}, last {returns[:, -1].mean():.3f}", flush=True)
    ad_s = train(claim, data, args.out, "ad", claim.train_steps, args.seed)
    ed_s = train(claim, expert, args.out, "ed", claim.ed_steps, args.seed)
    print(f"training: AD {claim.train_steps} steps in {ad_s:.1f} s, ED {claim.ed_steps} steps in {ed_s:.1f} s", flush=True)
    eval_started = time.perf_counter()
    report = comparison.compare(args.out / "ad", args.out / "report", ed_workdir=args.out / "ed",
                                baselines=[sources.make_source(name) for name in claim.baselines], seed=args.seed,
                                train_task_ids=np.asarray(train_tasks.id))
    eval_s = time.perf_counter() - eval_started
    total_s = data_s + common.stage_seconds(args.out) + eval_s  # the training of every attempt, a redone run's last
    bandit = "cumulative_regret" in report["runs"]["AD sample"]["final"]
    metric = "cumulative_regret" if bandit else "return"
    label = "cumulative regret at 100 pulls" if bandit else f"return at in-context episode {report['settings']['episodes']}"
    print(f"\n{report['settings']['tasks']} held-out tasks; data {data_s:.0f} s, training {ad_s + ed_s:.0f} s, "
          f"evaluation {eval_s:.0f} s, total {total_s:.0f} s\n")
    print(f"| run | {label} [95% CI] | first episode return |\n|---|---|---|")
    finals = {}
    for name, run in report["runs"].items():
        final = run["final"][metric]
        finals[name] = final["mean"]
        print(f"| {name} | {final['mean']:.2f} [{final['low']:.2f}, {final['high']:.2f}] | "
              f"{run['curves']['return']['mean'][0]:.2f} |")
    checks = {}
    if bandit:
        thompson, ucb1, ad = finals["thompson"], finals["ucb1"], finals["AD sample"]
        checks = {"AD within 5% of Thompson": ad <= 1.05 * thompson, "AD <= 0.55x UCB1": ad <= 0.55 * ucb1,
                  "ED clearly worse (>= 1.5x AD)": min(finals["ED sample"], finals["ED argmax"]) >= 1.5 * ad,
                  "within 5 minutes": common.within(args.out, total_s, 300)}
        print(f"\nAD/Thompson {ad / thompson:.3f}, AD/UCB1 {ad / ucb1:.3f}")
    else:
        # AD's policy samples its actions (as the paper's); argmax, printed above, repeats one path.
        curve = report["runs"]["AD sample"]["curves"]["return"]["mean"]
        checks = {"rising (last 5 episodes above the first 5)": bool(np.mean(curve[-5:]) > np.mean(curve[:5]))}
        if args.claim == "darkroom":
            checks["AD sampled at the last episode >= 10"] = bool(curve[-1] >= 10)
    variant = [f"--{name.replace('_', '-')}" for name in VARIANT_FLAGS if getattr(args, name)]
    if variant:
        print(f"\n{', '.join(variant)}: not the claim's setting; the checks below apply its thresholds, no verdict on it")
    for name, passed in checks.items():
        print(f"check: {name}: {common.verdict(passed)}")
    (args.out / "summary.json").write_text(json.dumps({"claim": args.claim, "quick": args.quick, "variant": variant, "seconds": {
        "data": data_s, "train_ad": ad_s, "train_ed": ed_s, "evaluation": eval_s, "total": total_s},
        "finals": finals, "checks": checks, "machine": common.machine()}, indent=2))
    written = ", ".join(path.name for path in sorted((args.out / "report").iterdir()))
    print(f"wrote {args.out / 'report'} ({written}), {args.out / 'summary.json'}, and the AD and ED runs in "
          f"{args.out / 'ad'} and {args.out / 'ed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
