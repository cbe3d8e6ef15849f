"""The AdA claims on XLand-MiniGrid, each benchmark -> training -> held-out evaluation -> table and plot.

    python experiments/ada_claims.py meta-rl [--quick] --out DIR [--docs]
    python experiments/ada_claims.py curriculum [--quick] --out DIR [--docs]
    python experiments/ada_claims.py kickstart [--quick] --out DIR [--docs]

All three on a trivial-preset benchmark generated here (mgdt_jax/envs/xland/generator.py; its
benchmark_id, sha256 and settings go into every report), XLand-MiniGrid-R1-9x9, 5 trials per
episode (fixed start), 10% of the rulesets held out (split seed 0) and never trained on; each
claim fits 60 minutes on 2 CPU cores (the sizes below were chosen from measured train-step times).

* ``meta-rl``: the Transformer-XL agent and the GRU RL² baseline (XLand-MiniGrid's: recurrent PPO
  over a fixed lifetime of 5 trials), the same PPO settings and environment steps. Claims, on
  held-out tasks: the Transformer-XL's trial-5 mean return >= 1.5x its trial-1 return, and its
  trial-5 return >= the GRU's.
* ``curriculum``: PLR with a no-op filter (mgdt_jax/recipes/ada/curriculum.py) against uniform
  sampling of the training tasks, the same agent and steps; held-out per-trial returns of both.
* ``kickstart``: a small GRU teacher is trained first; the Transformer-XL student learns with
  the distillation term (weight 1, annealed linearly to 0 over the first half of training) and
  without it, the same steps; held-out per-trial returns of both.

The comparisons are reported at equal environment steps, not asserted: the table says which way
they went. ``--quick`` shrinks everything to a smoke run of the same pipeline (no claim).
``--docs`` writes the table into docs/ada.md between the claim's markers and the figures into
docs/figures/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from experiments import common
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, path_argument, seed_argument
from mgdt_jax.core.metric_writer import read_metrics
from mgdt_jax.envs.xland import generator
from mgdt_jax.recipes.ada import evaluate
from mgdt_jax.recipes.ada.agents import AgentConfig
from mgdt_jax.recipes.ada.ppo import KickstartConfig, PPOConfig

SEED = 0
HELDOUT_FRACTION = 0.1  # of the generated rulesets, the held-out tasks every claim is scored on
DOCS = Path(__file__).resolve().parent.parent / "docs"
BUDGET_S = 3600
LEARNING_RATE = 1e-3  # Adam's peak rate, XLand-MiniGrid's meta-RL config (configs/meta.yaml)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run of a claim (the full claim or its --quick smoke run)."""

    rulesets: int  # generated trivial rulesets (10% held out)
    num_envs: int
    rollout_length: int
    train_steps: int  # PPO train steps per run: env steps = train_steps x num_envs x rollout_length
    teacher_steps: int  # kickstart: the GRU teacher's train steps
    eval_episodes: int  # meta-episodes per held-out task
    num_minibatches: int


# Sizes from train steps measured on the shared 2-core CPU (load average ~7 from other work): one
# step of 128 envs x 32 steps took 0.95 s with the Transformer-XL (0.85 s under PLR) and 0.45 s with
# the GRU; each evaluation ~1 min, each compile ~0.5-1 min. Estimates (docs/ada.md, "Claims"):
# meta-rl 1500 x (0.95 + 0.45) s = 35 min, curriculum 2 x 1200 x 0.95 s = 38 min, kickstart
# 2 x 1100 x 0.95 s + 600 teacher steps x ~0.4 s = 39 min, each + ~5-8 min of compiles and evaluation.
FULL = {
    # 32 episodes per held-out task: with 8, one trained agent's ratio moved by up to 0.2 between
    # evaluation seeds (docs/ada.md, "A fourth seed").
    "meta-rl": Scale(rulesets=2000, num_envs=128, rollout_length=32, train_steps=1500, teacher_steps=0,
                     eval_episodes=32, num_minibatches=4),
    "curriculum": Scale(rulesets=2000, num_envs=128, rollout_length=32, train_steps=1200, teacher_steps=0,
                        eval_episodes=2, num_minibatches=4),
    "kickstart": Scale(rulesets=2000, num_envs=128, rollout_length=32, train_steps=1100, teacher_steps=600,
                       eval_episodes=2, num_minibatches=4),
}
QUICK = Scale(rulesets=200, num_envs=16, rollout_length=16, train_steps=3, teacher_steps=2, eval_episodes=1,
              num_minibatches=2)

MODELS = {
    "trxl": {"agent": "trxl", "num_layers": 2, "d_model": 64, "num_heads": 4, "memory_length": 64, "head_hidden": 64},
    "gru": {"agent": "gru", "d_model": 64, "gru_hidden": 128, "head_hidden": 64},
    "gru_teacher": {"agent": "gru", "d_model": 32, "gru_hidden": 64, "head_hidden": 32},
}


@dataclasses.dataclass(frozen=True)
class TaskSetting:
    """What the agents face: the trivial preset's goal types, whether the goal is observed, trial length."""

    goals: str = "all"  # "all": the trivial preset's goal types; "agent": only the agent_* goals
    observe_goal: bool = True  # AdA; False: XLand-MiniGrid's RL² baselines (the view only)
    trial_steps: int = 0  # a trial's step limit; 0: xminigrid's default, 3 * 9 * 9 = 243
    show_trial_end: bool = False  # a trial's last (rewarded) view is a step of its own (trials.TrialEnv)
    time_onehot: bool = False  # the time within the trial as a one-hot input instead of a fraction

    def describe(self) -> str:
        goals = "all trivial goal types" if self.goals == "all" else "the six agent_* goal types only"
        return (f"{goals}; goal {'observed' if self.observe_goal else 'hidden'}; "
                f"trials of at most {self.trial_steps or 243} steps"
                + ("; each trial's last view shown as a step of its own" if self.show_trial_end else "")
                + ("; time within the trial one-hot" if self.time_onehot else ""))


def make_benchmark(out: Path, scale: Scale, task: TaskSetting) -> tuple[Path, dict]:
    """The trivial-preset benchmark of ``scale.rulesets`` rulesets (seed 0), written under ``out``
    (a stage: a rerun reads it back, its hash checked); ``task.goals == "agent"`` keeps only the
    goals on the agent (60 objects x 6 types = 360 tasks)."""
    path = out / "benchmark" / f"trivial_{task.goals}_{scale.rulesets}.pkl.bz2"
    settings = generator.PRESETS["trivial"]
    if task.goals == "agent":
        settings = dataclasses.replace(settings, goal_types=tuple(g for g in generator.GOAL_TYPES if g.startswith("agent_")))

    def write() -> None:
        path.parent.mkdir(exist_ok=True)
        arrays, stats = generator.generate(settings, scale.rulesets, SEED)
        generator.write(arrays, path, settings=settings, seed=SEED, preset="trivial", stats=stats)

    common.stage(out, "benchmark", write, output=path)
    record = generator.read_record(path)
    wanted = {"preset": "trivial", "settings": settings.to_json(), "seed": SEED, "count": scale.rulesets}
    if {key: record["generator"].get(key) for key in wanted} != wanted:  # replaced since, e.g. regenerated --force
        differ = ", ".join(f"{key} {record['generator'].get(key)!r}" for key in wanted
                           if record["generator"].get(key) != wanted[key])
        raise generator.BenchmarkError(f"{path}: generated with {differ}, not this claim's settings; the runs "
                                       "resumed on it would mix two benchmarks")
    return path, record


def run_config(model: str, benchmark: Path, scale: Scale, steps: int, task: TaskSetting = TaskSetting(), *,
               curriculum: str = "uniform", teacher: Path | None = None, anneal_steps: int = 0,
               trxl_options: dict | None = None, trxl_learning_rate: float = LEARNING_RATE, lr_schedule: str = "constant",
               entropy_anneal: bool = False, seed: int = SEED):
    """A training config: XLand R1-9x9, 5 trials, PPO with XLand-MiniGrid's meta-RL settings scaled down;
    ``trxl_options`` (e.g. ``{"memory_length": 128, "gated": True}``) override the Transformer-XL's
    ``MODELS`` entry and ``trxl_learning_rate`` its peak Adam rate (every other agent's stays ``LEARNING_RATE``);
    ``lr_schedule="linear"`` decays Adam's rate to 0 over the run, as XLand-MiniGrid's
    configs/meta.yaml does (``"constant"`` keeps the peak rate, the runs before the flag existed);
    ``entropy_anneal`` decays the entropy bonus linearly from 0.01 to 0 over the run; ``seed`` is
    the training seed (initial parameters, environment resets, actions), the benchmark and split stay
    those of ``SEED``."""
    return common.from_dict({
        "recipe": "ada",
        "env": {"factory": "mgdt_jax.recipes.ada.xland:make", "benchmark": str(benchmark),
                "env_id": "XLand-MiniGrid-R1-9x9", "num_trials": 5, "max_trials": 13, "fixed_start": True,
                "max_steps": task.trial_steps, "show_trial_end": task.show_trial_end, "observe_goal": task.observe_goal,
                "time_onehot": task.time_onehot,
                "heldout_fraction": HELDOUT_FRACTION, "split_seed": SEED, "curriculum": curriculum,
                "curriculum_settings": {}},
        "model": {**dataclasses.asdict(AgentConfig()), "observation": "grid", **MODELS[model],
                  **((trxl_options or {}) if model == "trxl" else {})},
        "ppo": {**dataclasses.asdict(PPOConfig()), "rollout_length": scale.rollout_length, "num_epochs": 1,
                "num_minibatches": scale.num_minibatches, "entropy_coef": 0.01,
                "entropy_anneal_steps": steps if entropy_anneal else 0},
        "kickstart": {**dataclasses.asdict(KickstartConfig()), "teacher": str(teacher or ""), "weight": 1.0,
                      "hold_steps": 0, "anneal_steps": max(anneal_steps, 1)},
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "optimizer": {"name": "adamw", "learning_rate": trxl_learning_rate if model == "trxl" else LEARNING_RATE,
                      "warmup_steps": min(10, steps), "schedule": lr_schedule,
                      "grad_clip_norm": 0.5, "eps": 1e-5},
        "train": {"batch_size": scale.num_envs, "grad_accum_steps": 1, "num_steps": steps, "seed": seed,
                  "log_every": max(min(steps // 20, 10), 1), "checkpoint_every": max(steps // 10, 1), "keep_checkpoints": 1,
                  "eval_every": 0, "init_from": "", "profile_steps": 0},
    })


def train(name: str, config, out: Path) -> tuple[Path, float]:
    """Trains run OUT/``name`` to its end (a stage: a rerun resumes it from its checkpoint or skips
    it); (its workdir, its wall seconds over every attempt)."""
    workdir = out / name
    done = common.stage(out, name, lambda: common.train_to_end(config, workdir), output=workdir)
    attempts = f" over {done['attempts']} attempts" if done["attempts"] > 1 else ""
    print(f"trained {name}: {config.train.num_steps} steps x {config.train.batch_size} envs x "
          f"{config.ppo.rollout_length} = {env_steps(config):,} env steps in {done['seconds']:.0f} s{attempts}", flush=True)
    return workdir, done["seconds"]


def env_steps(config) -> int:
    return config.train.num_steps * config.train.batch_size * config.ppo.rollout_length


def training_curve(workdir: Path, steps_per_train_step: int, window: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, return per trial [n, 5]) over the run: each logged rollout's mean return of the
    meta-episodes that ended in it, averaged over ``window`` logged rollouts weighted by their
    episode counts (a rollout where none ended counts for nothing)."""
    entries = [e for e in read_metrics(workdir) if "train/return_trial_1" in e]
    steps = np.array([e["step"] * steps_per_train_step for e in entries])
    episodes = np.array([e["train/episodes"] for e in entries])
    returns = np.array([[e[f"train/return_trial_{k}"] for k in range(1, 6)] for e in entries])
    kernel = np.ones(min(window, len(entries)))
    weight = np.convolve(episodes, kernel, "valid")
    smoothed = np.stack([np.convolve(episodes * returns[:, k], kernel, "valid") for k in range(5)], axis=1)
    keep = weight > 0
    return steps[len(kernel) - 1:][keep], smoothed[keep] / weight[keep, None]
def plot_training(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """Training return of trial 1 and trial 5 against environment steps, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 3.8))
    for name, (steps, returns) in curves.items():
        (line,) = axis.plot(steps, returns[:, 4], label=f"{name}, trial 5")
        axis.plot(steps, returns[:, 0], linestyle="--", color=line.get_color(), label=f"{name}, trial 1")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("training return in the trial\n(episodes ended, moving average)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(report: dict) -> str:
    lines = ["| run | " + " | ".join(f"trial {k}" for k in range(1, 6)) + " | trial 5 / trial 1 | median trial 5 | p20 trial 5 |",
             "|---|" + "---|" * 8]
    for name, run in report["runs"].items():
        mean = run["scores"]["mean"]
        cells = " | ".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in zip(mean["value"], mean["low"], mean["high"]))
        ratio = f"{mean['value'][-1] / mean['value'][0]:.2f}" if mean["value"][0] > 0 else "n/a"  # trial 1 of 0
        lines.append(f"| {name} | {cells} | {ratio} | {run['scores']['median']['value'][-1]:.3f} | "
                     f"{run['scores']['p20']['value'][-1]:.3f} |")
    return "\n".join(lines)


def by_goal_type(report: dict, goals: np.ndarray) -> str:
    """Markdown table: each run's held-out mean return in trial 1 and trial 5, by goal type
    (``goals``: uint8 [num_rulesets, 5], the benchmark's goal encodings, type id first)."""
    names = {type_id: name for name, type_id in generator.type_ids()[0].items()}
    runs = report["runs"]
    lines = ["| goal type | tasks | " + " | ".join(f"{name} trial 1 -> 5" for name in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    task_types = np.asarray(goals)[np.asarray(next(iter(runs.values()))["task_ids"]), 0]
    for type_id in np.unique(task_types):
        cells = []
        for run in runs.values():
            scores = np.asarray(run["task_scores"])[task_types == type_id]  # [tasks, trials]
            cells.append(f"{scores[:, 0].mean():.3f} -> {scores[:, 4].mean():.3f}")
        lines.append(f"| `{names.get(int(type_id), type_id)}` | {int((task_types == type_id).sum())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(claim: str, text: str, figures: list[Path]) -> None:
    """The claim's section of docs/ada.md (between its markers) and its figures in docs/figures/."""
    begin, end = f"<!-- ada_claims:{claim}:begin -->", f"<!-- ada_claims:{claim}:end -->"
    path = DOCS / "ada.md"
    document = path.read_text()
    if begin not in document or end not in document:
        raise SystemExit(f"ada_claims: error: {path}: lacks the markers {begin} ... {end}")
    for figure in figures:
        shutil.copyfile(figure, DOCS / "figures" / figure.name)
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", document))


@interruptible("ada_claims")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("claim", choices=("meta-rl", "curriculum", "kickstart"), help="which claim (docs/ada.md)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of the same pipeline (no claim)")
    parser.add_argument("--out", type=path_argument, required=True,
                        help="benchmark, runs and report go here; rerun with it to go on where it stopped")
    parser.add_argument("--docs", action="store_true", help="write the table and figures into docs/")
    parser.add_argument("--goals", choices=("all", "agent"), default="all",
                        help="agent: only the agent_* goal types (360 tasks; ask --rulesets 340 or fewer)")
    parser.add_argument("--hide-goal", action="store_true", help="the agents see the view only (XLand-MiniGrid's RL²)")
    parser.add_argument("--trial-steps", type=count_argument(0), default=0, help="a trial's step limit (0: 243, xminigrid's)")
    parser.add_argument("--rulesets", type=count_argument(), help="generated rulesets (default: the claim's scale)")
    parser.add_argument("--train-steps", type=count_argument(), help="PPO steps per run (default: the claim's scale)")
    parser.add_argument("--envs", type=count_argument(),
                        help="environments stepped together, the rollout batch (default: the claim's scale, 128)")
    parser.add_argument("--rollout-length", type=count_argument(),
                        help="environment steps per rollout, the span of backpropagation through time (default: the "
                             "claim's scale, 32)")
    parser.add_argument("--minibatches", type=count_argument(),
                        help="PPO minibatches per rollout (default: the claim's scale, 4); they split the environments")
    parser.add_argument("--memory-length", type=count_argument(),
                        help=f"the Transformer-XL's cached steps per layer (default {MODELS['trxl']['memory_length']})")
    parser.add_argument("--width", type=count_argument(),
                        help=f"the Transformer-XL's model and head width (default {MODELS['trxl']['d_model']}; the GRU's "
                             f"state is {MODELS['gru']['gru_hidden']} wide)")
    parser.add_argument("--gated", action="store_true", help="the Transformer-XL with GTrXL's GRU-type gates")
    parser.add_argument("--no-alibi", action="store_true",
                        help="the Transformer-XL without ALiBi's recency bias (trial index and time stay inputs)")
    parser.add_argument("--show-trial-end", action="store_true",
                        help="a trial's last view (the rewarded one) is a step of its own before the world restarts")
    parser.add_argument("--time-onehot", action="store_true",
                        help="both agents see the time within the trial one-hot over its steps (default: steps / length)")
    parser.add_argument("--trxl-lr", type=float, default=LEARNING_RATE,
                        help=f"the Transformer-XL's peak Adam rate (default {LEARNING_RATE:g}, the GRU's; "
                             "Transformer-XL PPO in JAX uses 2e-4)")
    parser.add_argument("--lr-schedule", choices=("constant", "linear"), default="constant",
                        help="Adam's rate after warm-up: constant at its peak or linear decay to 0 (XLand-MiniGrid's meta config)")
    parser.add_argument("--entropy-anneal", action="store_true",
                        help="decay PPO's entropy bonus linearly from 0.01 to 0 over the run (default: constant)")
    parser.add_argument("--seed", type=seed_argument, default=SEED,
                        help=f"training seed of every run (default {SEED}); the benchmark, split and evaluation keep {SEED}")
    args = parser.parse_args(argv)
    if args.docs and args.quick:
        parser.error("--docs: a --quick run is no claim; docs take full runs only")
    scale = QUICK if args.quick else FULL[args.claim]
    heads = MODELS["trxl"]["num_heads"]
    if args.width is not None and args.width % heads:
        parser.error(f"--width {args.width}: must be a multiple of the Transformer-XL's {heads} heads")
    if not (math.isfinite(args.trxl_lr) and args.trxl_lr > 0):
        parser.error(f"--trxl-lr {args.trxl_lr}: must be a finite number > 0")
    scale = dataclasses.replace(scale, rulesets=args.rulesets or scale.rulesets, num_envs=args.envs or scale.num_envs,
                                train_steps=args.train_steps or scale.train_steps,
                                rollout_length=args.rollout_length or scale.rollout_length,
                                num_minibatches=args.minibatches or scale.num_minibatches)
    if scale.num_envs % scale.num_minibatches:
        parser.error(f"--minibatches {scale.num_minibatches}: must divide the {scale.num_envs} environments")
    try:  # the split the runs will make (10% held out), checked before any work
        generator.task_split(scale.rulesets, HELDOUT_FRACTION, SEED)
    except generator.BenchmarkError as error:
        parser.error(f"--rulesets {scale.rulesets}: {error}")
    task = TaskSetting(goals=args.goals, observe_goal=not args.hide_goal, trial_steps=args.trial_steps,
                       show_trial_end=args.show_trial_end, time_onehot=args.time_onehot)
    # Rerun with the same --out and arguments, an interrupted claim goes on where it stopped.
    settings = {name: value for name, value in vars(args).items() if name not in ("out", "docs")}
    existed = args.out.exists()  # then empty: check_settings refuses anything else that is not a rerun
    resumed = common.check_settings(args.out, settings, "ada_claims")
    earlier_s = common.stage_seconds(args.out)
    host = common.machine()
    print(f"# {args.claim}{' (quick)' if args.quick else ''}: {scale}; {common.describe_machine(host)}"
          + (f"; resuming {args.out} ({earlier_s / 60:.1f} min of stages done or begun)" if resumed else ""), flush=True)
    try:
        benchmark, record = make_benchmark(args.out, scale, task)
    except generator.BenchmarkError as error:
        if resumed:  # its benchmark was removed or altered since
            raise SystemExit(f"ada_claims: error: --out {args.out}: {error}") from None
        for written in (list(args.out.iterdir()) if existed else [args.out]):  # what this run wrote, only
            if written.is_dir() and not written.is_symlink():
                shutil.rmtree(written)
            else:
                written.unlink()
        raise SystemExit(f"ada_claims: error: --rulesets {scale.rulesets}: {error}") from None
    print(f"benchmark {record['benchmark_id']} ({record['num_rulesets']} trivial rulesets, sha256 {record['sha256'][:16]}...)",
          flush=True)

    steps = scale.train_steps
    memory = args.memory_length or 0
    trxl = {**({"memory_length": memory} if memory else {}), **({"gated": True} if args.gated else {}),
            **({"d_model": args.width, "head_hidden": args.width} if args.width else {}),
            **({"alibi": False} if args.no_alibi else {})}
    # Every run of a claim shares these; trxl_options reach the Transformer-XL only.
    shared = {"trxl_options": trxl, "trxl_learning_rate": args.trxl_lr, "lr_schedule": args.lr_schedule,
              "entropy_anneal": args.entropy_anneal,
              "seed": args.seed}
    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    if args.claim == "meta-rl":
        for name, model in (("Transformer-XL", "trxl"), ("GRU RL2", "gru")):
            runs[name], seconds[name] = train(model, run_config(model, benchmark, scale, steps, task, **shared), args.out)
    elif args.claim == "curriculum":
        for name, curriculum in (("PLR + no-op filter", "plr"), ("uniform", "uniform")):
            runs[name], seconds[name] = train(
                curriculum, run_config("trxl", benchmark, scale, steps, task, curriculum=curriculum, **shared), args.out)
    else:
        teacher, seconds["GRU teacher"] = train(
            "teacher", run_config("gru_teacher", benchmark, scale, scale.teacher_steps, task, **shared), args.out)
        kick = run_config("trxl", benchmark, scale, steps, task, teacher=teacher, anneal_steps=steps // 2, **shared)
        runs["kickstarted"], seconds["kickstarted"] = train("kickstarted", kick, args.out)
        runs["not kickstarted"], seconds["not kickstarted"] = train(
            "plain", run_config("trxl", benchmark, scale, steps, task, **shared), args.out)
        runs["GRU teacher"] = teacher

    eval_started = time.perf_counter()
    scores = [evaluate.evaluate_run(workdir, episodes=scale.eval_episodes, seed=SEED, name=name)
              for name, workdir in runs.items()]
    report = evaluate.write_report(scores, args.out / "report", extra={"benchmark": record})
    eval_s = time.perf_counter() - eval_started
    total_s = common.stage_seconds(args.out) + eval_s  # every attempt's stages, a redone run's last

    per_step = scale.num_envs * scale.rollout_length
    plot_training({name: training_curve(workdir, per_step) for name, workdir in runs.items()},
                  args.out / "report" / "training.png",
                  f"{args.claim}: training return, {record['benchmark_id']}")
    means = {name: run["scores"]["mean"]["value"] for name, run in report["runs"].items()}
    checks: dict[str, bool | None] = {}
    if args.claim == "meta-rl":
        trxl, gru = means["Transformer-XL"], means["GRU RL2"]
        # A trial 1 of 0 leaves the ratio undefined: no claim, not a pass.
        checks["Transformer-XL trial 5 >= 1.5x trial 1"] = bool(trxl[0] > 0 and trxl[4] >= 1.5 * trxl[0])
        checks["Transformer-XL trial 5 >= GRU trial 5"] = bool(trxl[4] >= gru[4])
    elif args.claim == "curriculum":
        checks["PLR trial 5 >= uniform trial 5 (reported, not claimed)"] = bool(means["PLR + no-op filter"][4] >= means["uniform"][4])
    else:
        checks["kickstarted trial 5 >= not kickstarted (reported, not claimed)"] = bool(means["kickstarted"][4] >= means["not kickstarted"][4])
    checks["within 60 minutes"] = common.within(args.out, total_s, BUDGET_S)

    flags = [args.claim, *(["--quick"] if args.quick else []),
             *(["--goals", args.goals] if args.goals != "all" else []), *(["--hide-goal"] if args.hide_goal else []),
             *(["--trial-steps", str(args.trial_steps)] if args.trial_steps else []),
             *(["--show-trial-end"] if args.show_trial_end else []),
             *(["--time-onehot"] if args.time_onehot else []),
             *(["--rulesets", str(args.rulesets)] if args.rulesets else []),
             *(["--envs", str(args.envs)] if args.envs else []),
             *(["--train-steps", str(args.train_steps)] if args.train_steps else []),
             *(["--rollout-length", str(args.rollout_length)] if args.rollout_length else []),
             *(["--minibatches", str(args.minibatches)] if args.minibatches else []),
             *(["--memory-length", str(memory)] if memory else []),
             *(["--width", str(args.width)] if args.width else []), *(["--gated"] if args.gated else []),
             *(["--no-alibi"] if args.no_alibi else []),
             *(["--trxl-lr", f"{args.trxl_lr:g}"] if args.trxl_lr != LEARNING_RATE else []),
             *(["--lr-schedule", args.lr_schedule] if args.lr_schedule != "constant" else []),
             *(["--entropy-anneal"] if args.entropy_anneal else []),
             *(["--seed", str(args.seed)] if args.seed != SEED else [])]
    text = (f"`python experiments/ada_claims.py {' '.join(flags)} --out DIR`: benchmark `{record['benchmark_id']}` (trivial "
            f"preset, seed {SEED}, {record['num_rulesets']} rulesets, {report['runs'][next(iter(runs))]['tasks']} held out), "
            f"XLand-MiniGrid-R1-9x9, 5 trials, {task.describe()}; {steps * per_step:,} env steps per run ({steps} PPO steps x "
            f"{scale.num_envs} envs x {scale.rollout_length}); held-out returns per trial, mean over tasks "
            f"[bootstrap 95% CI], {scale.eval_episodes} episodes per task, actions sampled. Training "
            + ", ".join(f"{name} {s / 60:.1f} min" for name, s in seconds.items())
            + f"; evaluation {eval_s / 60:.1f} min; total {total_s / 60:.1f} min; {common.describe_machine(host)}.\n\n"
            + table(report) + "\n\nBy goal type (held-out tasks, mean over each type's tasks and episodes):\n\n"
            + by_goal_type(report, np.asarray(generator.load(benchmark)[0].goals)) + "\n\n"
            + "\n".join(f"* {name}: {common.verdict(ok)}" for name, ok in checks.items()) + "\n")
    print("\n" + text)
    (args.out / "summary.json").write_text(json.dumps({
        "claim": args.claim, "command": f"python experiments/ada_claims.py {' '.join(flags)} --out DIR",
        "quick": args.quick, "scale": dataclasses.asdict(scale), "task": dataclasses.asdict(task),
        "benchmark": record, "machine": host,
        "seconds": {**seconds, "evaluation": eval_s, "total": total_s}, "trial_means": means, "checks": checks}, indent=1))
    if args.docs:
        figures = [args.out / "report" / f"ada_{args.claim}_{kind}.png" for kind in ("scores", "training")]
        shutil.copyfile(args.out / "report" / evaluate.SCORES_PNG, figures[0])
        shutil.copyfile(args.out / "report" / "training.png", figures[1])
        write_docs(args.claim, text + f"\n![held-out return per trial](figures/ada_{args.claim}_scores.png)\n"
                   f"![training return](figures/ada_{args.claim}_training.png)\n", figures)
    print(f"wrote {args.out / 'report'} (report.json, scores.csv, scores.png, training.png), {args.out / 'summary.json'}"
          + (f", the {args.claim} section of {DOCS / 'ada.md'} and its figures" if args.docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
