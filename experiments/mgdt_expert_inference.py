"""Does expert action inference beat behaviour cloning on mixed-quality data? One command, small scale.

    python experiments/mgdt_expert_inference.py --workdir runs/expert_inference [--quick] [--docs docs/results.md]
        [--games Freeway,DemonAttack] [--heldout-game Enduro] [--train-steps N] [--eval-episodes N] [--epsilon SPEC]
        [--max-episode-steps N] [--seed N]

1. records mixed-quality data: each game's scripted expert (data_pipelines/experts.py) with one
   epsilon per episode, by default `cycle:1,0.1` (episodes alternate random play and the expert
   with 10% random actions, so the returns form two modes; `--epsilon linear:1.0:0.0` anneals
   from random play to the expert over the recording instead), for the pretraining games and a
   smaller part for a held-out game;
2. trains the return-conditioned MGDT and its behaviour-cloning variant on the same data, same
   steps, same seeds (config: experiments/expert_inference.py);
3. evaluates on every pretraining game, `eval_episodes` each: expert action inference (kappa 10,
   paper §3.4), the released notebook's variant ("colab" sampling), BC, and uniformly random
   minimal-set actions; all with sticky actions 0.25 and the recording's episode cap;
4. fine-tunes on the held-out game's data (`heldout_fraction` of a pretraining game's steps, at
   least two capped episodes) from the pretrained MGDT and from scratch, at the same steps, and
   evaluates both with expert action inference;
5. reports human-normalised scores per game with bootstrap 95% intervals, IQM, the data's mean
   return, the targets met or not, and a plot: OUT/results.md and OUT/expert_inference.png, and
   with --docs the section between this experiment's markers in that file (plot beside it in
   figures/).

Every stage's randomness is seeded by `experiment.seed` (`--seed`, default 0): game i of the
recording plan is recorded with seed + i, and the parameters, the batches and the evaluation use
the seed itself. A rerun in the same workdir with the same games, schedule, cap and seed reuses the
recordings and the finished training runs; with others it stops and asks for another workdir.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from data_pipelines import convert, experts, record  # noqa: E402
from experiments import common, expert_inference  # noqa: E402
from mgdt_jax.core.commands import interruptible  # noqa: E402
from mgdt_jax.core.files import count_argument, path_argument, seed_argument  # noqa: E402
from mgdt_jax.envs import atari  # noqa: E402
from mgdt_jax.recipes.mgdt import actor, evaluate, report, scores  # noqa: E402
from mgdt_jax.recipes.mgdt.policy import sampling_preset  # noqa: E402
from mgdt_jax.recipes.mgdt.recipe import load_model  # noqa: E402

METHODS = ("expert inference", "colab variant", "BC", "random")
BEGIN, END = "<!-- mgdt_expert_inference:begin -->", "<!-- mgdt_expert_inference:end -->"


def record_stage(exp, root: Path) -> dict[str, dict]:
    """Records every game once (reused on a rerun); returns per game its episode returns and epsilons."""
    done_file = root / "recorded.json"
    if done_file.exists():
        recorded = json.loads(done_file.read_text())
        if sorted(recorded) != sorted([*exp.games, exp.heldout_game]):
            raise SystemExit(f"mgdt_expert_inference: error: {done_file} holds {', '.join(sorted(recorded))}, not "
                             f"{', '.join(sorted([*exp.games, exp.heldout_game]))}: use another --workdir")
        for key, flag, wanted in (("schedule", "epsilon", exp.epsilon),
                                  ("max_episode_steps", "max-episode-steps", exp.max_episode_steps),
                                  ("experiment_seed", "seed", exp.seed)):
            found = {str(entry.get(key, "not recorded")) for entry in recorded.values()}
            if found != {str(wanted)}:
                raise SystemExit(f"mgdt_expert_inference: error: {done_file} was recorded with --{flag} "
                                 f"{', '.join(sorted(found))}, not {wanted}: use another --workdir")
        return recorded
    shutil.rmtree(root / "logs", ignore_errors=True)
    heldout_steps = max(round(exp.heldout_fraction * exp.steps_per_game), 2 * exp.max_episode_steps)
    plan = [(game, "pretrain", exp.steps_per_game) for game in exp.games]
    plan.append((exp.heldout_game, "heldout", heldout_steps))
    recorded = {}
    for index, (game, part, steps) in enumerate(plan):
        result = record.record(game, steps, root / "logs" / part, capacity=min(steps, 100_000),
                               max_episode_steps=exp.max_episode_steps, policy="expert",
                               seed=exp.seed + index, progress=False, epsilon=exp.epsilon)
        recorded[game] = {"part": part, "steps": steps, "returns": result.episode_returns,
                          "epsilons": result.episode_epsilons, "schedule": exp.epsilon,
                          "max_episode_steps": exp.max_episode_steps, "experiment_seed": exp.seed}
        print(f"recorded {game} ({part}): {steps} steps, {result.episodes_finished} episodes, "
              f"mean score {np.mean(result.episode_returns):.1f}", flush=True)
    for part in ("pretrain", "heldout"):
        convert.convert(root / "logs" / part, root / "rlds" / part, max_episode_steps=exp.max_episode_steps,
                        progress=False)
    done_file.write_text(json.dumps(recorded))
    return recorded


def train_config(config, sources: Path, **changes):
    """The config without the experiment section, reading `sources`, with dotted fields changed."""
    run = copy.deepcopy(config)
    del run["experiment"]
    run.data.sources = (str(sources),)
    run.train.eval_every = 0
    for dotted, value in changes.items():
        section, field = dotted.split(".")
        setattr(run[section], field, value)
    return run


def play_method(method: str, models: dict, games: list[str], exp, protocol) -> report.EvaluationSummary:
    """One method's evaluation summary over `games`."""
    print(f"  {method}", flush=True)
    if method == "random":
        return evaluate.evaluate_random(games, episodes=exp.eval_episodes, protocol=protocol, seed=exp.seed,
                                        extra_settings={"method": method})
    model_name, sampling = {
        "expert inference": ("mgdt", sampling_preset("expert", kappa=exp.kappa)),
        "colab variant": ("mgdt", sampling_preset("colab")),
        "BC": ("bc", sampling_preset("bc")),
    }[method]
    return evaluate.evaluate(models[model_name], games, episodes=exp.eval_episodes, sampling=sampling,
                             protocol=protocol, seed=exp.seed)


def _interval(i: scores.Interval) -> str:
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}]"


def _plot(summaries: dict[str, report.EvaluationSummary], games: list[str], path: Path) -> None:
    groups = [*games, "IQM"]
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 2, 3.5))
    width = 0.8 / len(summaries)
    for k, (method, summary) in enumerate(summaries.items()):
        intervals = [g.normalised for g in summary.games] + [summary.aggregates["iqm"]]
        values = np.array([i.value for i in intervals])
        errors = np.array([[i.value - i.low for i in intervals], [i.high - i.value for i in intervals]])
        ax.bar(np.arange(len(groups)) + k * width, values, width, yerr=errors, capsize=3, label=method)
    ax.set_xticks(np.arange(len(groups)) + width * (len(summaries) - 1) / 2, groups)
    ax.set_ylabel("human-normalised score")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@interruptible("mgdt_expert_inference")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=path_argument, required=True,
                        help="recordings, runs and report go here; a rerun goes on where it stopped")
    parser.add_argument("--quick", action="store_true", help="smoke-test size (minutes); its figures claim nothing")
    parser.add_argument("--docs", type=path_argument, help="also write the results into this markdown file's section")
    variants = parser.add_argument_group("variants (the report's command shows those given)")
    variants.add_argument("--games", help="comma-separated pretraining games (default: the config's)")
    variants.add_argument("--heldout-game", help="the fine-tuning game (default: the config's)")
    variants.add_argument("--train-steps", type=count_argument(), help="MGDT and BC training steps (default: the config's)")
    variants.add_argument("--eval-episodes", type=count_argument(), help="per game and method (default: the config's)")
    variants.add_argument("--epsilon", help="the recordings' epsilon schedule, e.g. cycle:1,0 (default: the config's)")
    variants.add_argument("--max-episode-steps", type=count_argument(),
                          help="episode cap in agent steps, in recording and evaluation (default: the config's)")
    variants.add_argument("--seed", type=seed_argument,
                          help="seeds recording, parameters, batches and evaluation alike (default: the config's)")
    args = parser.parse_args(argv)
    if args.docs is not None and args.quick:  # would replace the claim's result with a smoke run's
        parser.error("--docs: a --quick run is no claim; docs take full runs only")
    config = expert_inference.get_config()
    if args.quick:
        config = expert_inference.quick(config)
    exp = config.experiment
    flags = []
    if args.games:
        exp.games = tuple(game.strip() for game in args.games.split(","))
        flags.append(f"--games {args.games}")
    if args.heldout_game:
        exp.heldout_game = args.heldout_game
        flags.append(f"--heldout-game {args.heldout_game}")
    for name, value in (("train-steps", args.train_steps), ("eval-episodes", args.eval_episodes),
                        ("max-episode-steps", args.max_episode_steps)):
        if value is not None:
            flags.append(f"--{name} {value}")
    if args.train_steps:
        config.train.num_steps = args.train_steps
        config.train.checkpoint_every = min(config.train.checkpoint_every, args.train_steps)
    if args.eval_episodes:
        exp.eval_episodes = args.eval_episodes
    if args.max_episode_steps:
        exp.max_episode_steps = args.max_episode_steps
    if args.seed is not None:
        exp.seed = args.seed
        flags.append(f"--seed {args.seed}")
    config.train.seed = config.data.seed = exp.seed
    if args.epsilon:
        try:
            experts.parse_epsilon_schedule(args.epsilon)
        except ValueError as error:
            print(f"mgdt_expert_inference: error: --epsilon: {error}", file=sys.stderr)
            return 2
        exp.epsilon = args.epsilon
        flags.append(f"--epsilon {args.epsilon}")
    logging.set_verbosity(logging.ERROR)
    started = time.perf_counter()
    try:
        games = [atari.check_game(g) for g in exp.games]
        heldout = atari.check_game(exp.heldout_game)
    except atari.UnknownGameError as error:
        print(f"mgdt_expert_inference: error: {error}", file=sys.stderr)
        return 2
    for game in [*games, heldout]:
        if game not in experts.EXPERTS:
            print(f"mgdt_expert_inference: error: no scripted expert for {game}: experts exist for "
                  f"{', '.join(sorted(experts.EXPERTS))}", file=sys.stderr)
            return 2
    if heldout in games:
        print(f"mgdt_expert_inference: error: the held-out game {heldout} is also a pretraining game", file=sys.stderr)
        return 2
    root = args.workdir.absolute()
    root.mkdir(parents=True, exist_ok=True)

    print("[1/4] recording mixed-quality data", flush=True)
    recorded = record_stage(exp, root)

    print(f"[2/4] training MGDT and BC for {config.train.num_steps} steps each", flush=True)
    pretrain_data = root / "rlds" / "pretrain"
    runs = {"mgdt": train_config(config, pretrain_data), "bc": train_config(config, pretrain_data, **{"model.behaviour_cloning": True})}
    for name, run in runs.items():
        common.train_to_end(run, root / "train" / name)
    models = {name: load_model(root / "train" / name)[0] for name in runs}

    print(f"[3/4] evaluating {', '.join(METHODS)} on {', '.join(games)}, {exp.eval_episodes} episodes each", flush=True)
    protocol = actor.EvalProtocol("expert-inference", sticky_action_probability=0.25,
                                  max_episode_frames=4 * exp.max_episode_steps)
    summaries = {method: play_method(method, models, games, exp, protocol) for method in METHODS}

    print(f"[4/4] fine-tuning on {heldout} for {exp.finetune_steps} steps, from pretrained and from scratch", flush=True)
    heldout_data = root / "rlds" / "heldout"
    warmup = max(exp.finetune_steps // 10, 1)
    finetune = {
        "pretrained": train_config(config, heldout_data, **{"train.init_from": str(root / "train" / "mgdt")}),
        "scratch": train_config(config, heldout_data),
    }
    finetuned = {}
    for name, run in finetune.items():
        run.train.num_steps = exp.finetune_steps
        run.train.checkpoint_every = exp.finetune_steps
        run.optimizer.learning_rate = exp.finetune_learning_rate
        run.optimizer.warmup_steps = warmup
        common.train_to_end(run, root / "finetune" / name)
        model = load_model(root / "finetune" / name)[0]
        finetuned[name] = evaluate.evaluate(model, [heldout], episodes=exp.eval_episodes,
                                            sampling=sampling_preset("expert", kappa=exp.kappa),
                                            protocol=protocol, seed=exp.seed).games[0]

    command = " ".join(["python experiments/mgdt_expert_inference.py --workdir runs/expert_inference",
                        *(["--quick"] if args.quick else []), *flags])
    text = results_markdown(config, recorded, summaries, finetuned, games, heldout, command, args.quick,
                            time.perf_counter() - started)
    _plot(summaries, games, root / "expert_inference.png")
    (root / "results.md").write_text(text.replace("figures/expert_inference", "expert_inference"))
    print(text.replace("figures/expert_inference", "expert_inference"))  # as results.md: the plot beside it
    written = [root / "results.md", root / "expert_inference.png"]
    if args.docs:
        write_docs_section(args.docs, text, root / "expert_inference.png")
        written.append(args.docs)
    print("wrote " + ", ".join(map(str, written)), flush=True)
    return 0


def results_markdown(config, recorded, summaries, finetuned, games, heldout, command, quick, seconds) -> str:
    exp = config.experiment
    data_mean = {game: float(np.mean(recorded[game]["returns"])) for game in recorded}
    lines = [
        f"### {'Smoke run (--quick): checks the flow, claims nothing' if quick else 'Result'}",
        "",
        f"Command: `{command} --docs docs/results.md` ({seconds / 60:.0f} min on this machine's CPU).",
        "",
        f"Data: {exp.steps_per_game} agent steps per game of {', '.join(games)} recorded by the scripted expert "
        f"with epsilon `{exp.epsilon}` (one per episode), episodes capped at {exp.max_episode_steps} steps; "
        f"model: {config.model.num_layers} layers, d {config.model.d_model}; MGDT and BC trained "
        f"{config.train.num_steps} steps each (batch {config.train.batch_size}); {exp.eval_episodes} evaluation "
        f"episodes per game and method, sticky actions 0.25, same cap. Human-normalised means with bootstrap 95% "
        f"intervals (the DQN Zoo random and human scores are of full games, so on capped episodes the "
        f"normalised values compare methods with each other, not with the paper):",
        "",
        "| method | " + " | ".join(games) + " | IQM | mean |",
        "|---|" + "---|" * (len(games) + 2),
    ]
    for method, summary in summaries.items():
        cells = [f"{_interval(g.normalised)} (raw {g.raw_mean:.1f})" for g in summary.games]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_interval(summary.aggregates['iqm'])} "
                     f"| {_interval(summary.aggregates['mean'])} |")
    lines.append("| data (mean return) | " + " | ".join(
        f"{scores.human_normalised(g, np.array([data_mean[g]]))[0]:.3f} (raw {data_mean[g]:.1f})" for g in games) + " | | |")
    mean = {m: s.aggregates["mean"] for m, s in summaries.items()}
    ordered = all(mean[a].low > mean[b].high for a, b in [("expert inference", "BC"), ("BC", "random")])
    at_data = [g.game for g in summaries["expert inference"].games if g.raw_mean >= data_mean[g.game]]
    heldout_steps = recorded[heldout]["steps"]
    lines += [
        "",
        f"Fine-tuning on {heldout} ({heldout_steps} recorded steps, data mean return {data_mean[heldout]:.1f}), "
        f"{exp.finetune_steps} steps at learning rate {exp.finetune_learning_rate}, expert action inference:",
        "",
        "| start | human-normalised | raw mean |",
        "|---|---|---|",
        *(f"| {name} | {_interval(g.normalised)} | {g.raw_mean:.1f} |" for name, g in finetuned.items()),
        "",
        "Targets:",
        f"- mean HNS expert inference > BC > random with non-overlapping 95% intervals: {'met' if ordered else 'not met'}",
        f"- expert inference at or above the data's mean return on >= 2 games: "
        f"{'met' if len(at_data) >= 2 else 'not met'} ({', '.join(at_data) or 'none'})",
        f"- fine-tuned above scratch: "
        f"{'met' if finetuned['pretrained'].normalised.low > finetuned['scratch'].normalised.high else 'not met'} "
        "(non-overlapping intervals)",
        "",
        "![expert inference](figures/expert_inference.png)",
    ]
    return "\n".join(lines) + "\n"


def write_docs_section(path: Path, text: str, plot: Path) -> None:
    """Replaces the text between this experiment's markers in `path` and copies the plot beside it."""
    document = path.read_text()
    if BEGIN not in document or END not in document:
        raise SystemExit(f"{path}: lacks the markers {BEGIN} ... {END}")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", document))
    (path.parent / "figures").mkdir(exist_ok=True)
    shutil.copy(plot, path.parent / "figures" / "expert_inference.png")


if __name__ == "__main__":
    sys.exit(main())
