"""The JAT learning claims, each data -> training -> evaluation -> table and plot, fixed seeds.

    python experiments/jat_claims.py mini-jat --out DIR [--quick] [--no-image] [--docs docs/jat.md]
    python experiments/jat_claims.py kappa --out DIR [--data DIR/data] [--quick] [--docs docs/jat.md]

Variants (no claim): ``--tasks``, ``--train-steps``, ``--eval-episodes``, and ``--raw-observations``
(continuous observations fed raw, as JAT does, instead of standardised per task; docs/jat.md §6).

* ``mini-jat``: one small JAT on 4 BabyAI levels, 4 Meta-World v3 tasks, 2 MuJoCo v5 tasks and the
  BabyAI-RGB image task, all recorded here (``mgdt-jat-record``'s code; the MuJoCo experts trained
  by our PPO first). Claim: IQM expert-normalised score >= 0.8 on BabyAI and on Meta-World and
  >= 0.5 on MuJoCo, within 60 minutes on 2 CPU cores including the data.
* ``kappa``: the weight of the next-observation loss, kappa in {0, 0.005, 0.5} (JAT, Gallouédec et
  al. 2024, §5.2 found 0.005 best), at equal steps, same seed, same data: the mini-JAT's tasks
  without the image task (whose reconstruction is what kappa weighs most) and fewer steps, so that
  the three runs fit in about an hour.

Training goes through the core loop (``mgdt-train``'s) with the JAT recipe; evaluation is
``mgdt-jat-eval``'s (evaluate.play_task: a task's episodes stepped together, KV-cached policy,
sampled discrete actions; per-domain IQM with a stratified-bootstrap 95% interval). The image
task's batches are expensive on CPU (docs/jat.md §9), so its sampling weight is small (about 1% of
the batches are image batches) and ``--no-image`` leaves it out. ``--quick`` shrinks data, model,
training and evaluation to a smoke run of the same pipeline (its figures are no claim).

A rerun with the same --out reuses the recorded tasks, the finished training runs and evaluations;
other settings in the same --out are refused. Prints a markdown table and the checks; writes
summary.json, results.md and the plot under --out, and with --docs the claim's section of that file
(between its markers) and the plot into docs/figures/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from data_pipelines.jat import experts, record
from experiments import common, jat_tiny
from mgdt_jax.core import checkpointing
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core.files import count_argument, path_argument
from mgdt_jax.envs import gym_tasks
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import evaluate, references

SEED = 0
EVAL_SEED = 1_000_000  # evaluation episodes reset from seeds EVAL_SEED, EVAL_SEED + 1, ...: none is a recorded one
BABYAI = ("babyai-go-to-red-ball-grey", "babyai-go-to-local", "babyai-pickup-loc", "babyai-put-next-local")
METAWORLD = ("metaworld-reach", "metaworld-push", "metaworld-drawer-close", "metaworld-button-press-topdown")
# The two MuJoCo experts cheapest to train (docs/jat.md §4: 50 s and 200 s; Swimmer 250 s, Reacher 305 s).
MUJOCO = ("mujoco-pendulum", "mujoco-doublependulum")
IMAGE = ("babyai-rgb-go-to-red-ball-grey",)
# (expert episodes, random-policy episodes for the reference) per domain. Recording speeds on one
# core: BabyAI ~1,500-1,800 steps/s (a bot episode is 5-12 steps, a random one up to the level's
# limit), Meta-World ~1,500 (500-step episodes), MuJoCo ~3,500 once the experts exist. 40 Meta-World
# and 20 MuJoCo episodes were overfitted, and so were 3,000 bot episodes a BabyAI level: after 8,000
# steps the action loss on pickup-loc was 0.05 on its recorded episodes and 0.80 on 300 fresh ones
# (docs/jat.md §10). 20,000 a level (~590k steps) take ~6 minutes of one core.
EPISODES = {"babyai": (20000, 100), "babyai-rgb": (1000, 100), "metaworld": (200, 20), "mujoco": (200, 20)}
QUICK_EPISODES = {"babyai": (50, 10), "babyai-rgb": (20, 5), "metaworld": (2, 2), "mujoco": (2, 2)}
TARGETS = {"babyai": 0.8, "metaworld": 0.8, "mujoco": 0.5}
TIME_LIMIT_S = 3600
# JAT's loss weights (tokenize_stream.py L64-69): Meta-World x50, InvertedPendulum x50, other MuJoCo x10.
LOSS_WEIGHTS = {"metaworld": 50.0, "mujoco-pendulum": 50.0, "mujoco": 10.0}
IMAGE_SAMPLING_WEIGHT = 0.1  # vs 1 for every other task: ~1% of batches (group drawn by summed weights)
# BabyAI rows by level: the two levels students fail (pickup-loc 0.35, put-next-local 0.17 against
# 0.98 and 0.93 for the go-to levels, docs/jat.md §10) are drawn 3x as often as the go-to levels. The
# weights sum to 4, as four weights of 1 do, so the discrete group's share of batches is unchanged.
BABYAI_SAMPLING_WEIGHTS = {"babyai-go-to-red-ball-grey": 0.5, "babyai-go-to-local": 0.5, "babyai-pickup-loc": 1.5,
                           "babyai-put-next-local": 1.5}
KAPPAS = (0.0, 0.005, 0.5)


@dataclasses.dataclass(frozen=True)
class Setting:
    tasks: tuple[str, ...]
    episodes: dict
    train_steps: int
    batch_size: int
    num_layers: int
    d_model: int
    num_steps: int  # steps per training row and evaluation context
    learning_rate: float
    warmup_steps: int
    eval_episodes: int
    max_eval_steps: int | None  # cut evaluation episodes (smoke runs only)
    normalize_observations: bool = True  # per-task standardised continuous observations (docs/jat.md §6)


FULL = Setting(tasks=BABYAI + METAWORLD + MUJOCO + IMAGE, episodes=EPISODES, train_steps=8000, batch_size=32,
               num_layers=3, d_model=128, num_steps=32, learning_rate=1e-3, warmup_steps=200, eval_episodes=10,
               max_eval_steps=None)
QUICK = Setting(tasks=(BABYAI[0], METAWORLD[0], MUJOCO[0], IMAGE[0]), episodes=QUICK_EPISODES, train_steps=40,
                batch_size=8, num_layers=1, d_model=64, num_steps=16, learning_rate=1e-3, warmup_steps=5,
                eval_episodes=10, max_eval_steps=40)
KAPPA_STEPS = 2000  # per kappa (3 runs); the full mini-JAT's other settings


def domain(task: str) -> str:
    return evaluate.domain_of(task)


def loss_weight(task: str) -> float:
    return LOSS_WEIGHTS.get(task, LOSS_WEIGHTS.get(domain(task), 1.0))


def sampling_weight(task: str, image_weight: float) -> float:
    return image_weight if domain(task) == "babyai-rgb" else BABYAI_SAMPLING_WEIGHTS.get(task, 1.0)


RECORDING_WORKERS = 2  # processes recording tasks side by side (this machine's cores)


def _record_task(task: str, data_dir: Path, episodes: int, random_episodes: int) -> str:
    """Records one task (a worker process's job); its summary line."""
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="metaworld")
    summaries = record.record([task], data_dir, episodes, seed=SEED, random_episodes=random_episodes,
                              experts_dir=data_dir / "experts", progress=False)
    return record.summary_line(summaries, data_dir)


def record_data(setting: Setting, data_dir: Path) -> None:
    """Records (or finds recorded) every task of ``setting`` into DATA/<task>, a line a task.

    Tasks are recorded by `RECORDING_WORKERS` processes, longest first (environment stepping is
    single-threaded Python); each task's episodes depend only on its name and `SEED`, so the data are
    those of a one-process run.
    """
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "experts").mkdir(exist_ok=True)
    longest_first = (*reversed(BABYAI), *METAWORLD, *MUJOCO, *IMAGE)
    tasks = sorted(setting.tasks, key=lambda task: longest_first.index(task) if task in longest_first else -1)
    with ProcessPoolExecutor(RECORDING_WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_record_task, task, data_dir, *setting.episodes[domain(task)]) for task in tasks]
        try:
            for future in futures:
                print(future.result(), flush=True)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # report the first failure without recording the rest
            raise


def train_config(setting: Setting, data_dir: Path, kappa: float, image_weight: float):
    """jat_tiny's config with this claim's tasks, size and schedule."""
    config = jat_tiny.get_config()
    model = config.model
    model.num_layers, model.d_model, model.num_steps = setting.num_layers, setting.d_model, setting.num_steps
    model.num_heads = max(setting.d_model // 32, 1)
    model.observation_loss_coef = kappa
    model.normalize_observations = setting.normalize_observations
    model.groups = ("discrete", "continuous", "image") if any(domain(t) == "babyai-rgb" for t in setting.tasks) \
        else ("discrete", "continuous")
    config.data.tasks = tuple({"path": str(data_dir / task),
                               "sampling_weight": sampling_weight(task, image_weight),
                               "loss_weight": loss_weight(task)} for task in setting.tasks)
    config.data.seed = SEED
    config.seed = SEED
    config.optimizer.learning_rate = setting.learning_rate
    config.optimizer.warmup_steps = setting.warmup_steps
    config.optimizer.schedule = "cosine"
    train = config.train
    train.num_steps = setting.train_steps
    train.batch_size = setting.batch_size
    train.checkpoint_every = setting.train_steps
    train.log_every = max(setting.train_steps // 20, 1)
    return config


def evaluate_run(setting: Setting, workdir: Path, data_dir: Path, report_dir: Path) -> None:
    """mgdt-jat-eval's evaluation of the run's last checkpoint into REPORT_DIR (report.json last)."""
    model, _, step = evaluate.load_model(workdir)
    results = []
    for task in setting.tasks:
        results.append(evaluate.play_task(model, task, references.load(data_dir / task, task=task),
                                          episodes=setting.eval_episodes, seed=EVAL_SEED,
                                          max_steps=setting.max_eval_steps))
        print(f"evaluated {task}: normalised mean {np.mean(results[-1].normalized):.3f} "
              f"({results[-1].env_steps} env steps in {results[-1].seconds:.0f} s)", flush=True)
    evaluate.write_report(results, evaluate.domain_iqm(results), report_dir, {
        "workdir": str(workdir), "step": step, "episodes": setting.eval_episodes, "seed": EVAL_SEED,
        "greedy": False, "envs_per_task": None, "max_steps": setting.max_eval_steps})


def _interval(d: dict) -> str:
    return f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _header(name: str, setting: Setting, quick: bool, image_weight: float) -> str:
    return (f"### {'Smoke run (--quick): checks the flow, claims nothing' if quick else name}\n\n"
            f"Model: {setting.num_layers} layers, d_model {setting.d_model}, {setting.num_steps} steps "
            f"({2 * setting.num_steps} tokens) a row; {setting.train_steps} AdamW steps of {setting.batch_size} rows, "
            f"learning rate {setting.learning_rate:g} (warm-up {setting.warmup_steps}, cosine decay), seed {SEED}; "
            f"JAT's loss weights (Meta-World and InvertedPendulum x50, other MuJoCo x10); sampling weights "
            + ", ".join(f"{task.removeprefix('babyai-')} {sampling_weight(task, image_weight):g}" for task in setting.tasks
                        if sampling_weight(task, image_weight) != 1.0)
            + f" (1 for every other task); "
            f"continuous observations {'standardised per task' if setting.normalize_observations else 'raw'}. "
            f"Data (expert / random-reference episodes per task): "
            + ", ".join(f"{name} {e} / {r}" for name, (e, r) in setting.episodes.items()
                        if any(domain(t) == name for t in setting.tasks))
            + f". Evaluation: {setting.eval_episodes} episodes per task stepped together, sampled discrete actions"
            + (f", cut at {setting.max_eval_steps} steps" if setting.max_eval_steps else "")
            + f"; {common.describe_machine(common.machine())}.\n")


def task_table(report: dict, data_dir: Path) -> list[str]:
    lines = ["| task | mean return | expert / random return | mean normalised score |", "|---|---|---|---|"]
    for task, result in report["tasks"].items():
        refs = references.load(data_dir / task, task=task)
        lines.append(f"| `{task}` | {result['mean_return']:.4g} | {refs.expert.mean_return:.4g} / "
                     f"{refs.random.mean_return:.4g} | {result['mean_normalized']:.3f} |")
    return lines


def variant_flags(args) -> str:
    """The variant options of the command line (module docstring), as the report's command shows them."""
    flags = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("tasks", "train_steps", "eval_episodes")
             if getattr(args, name)]
    return "".join(" " + flag for flag in flags + (["--raw-observations"] if args.raw_observations else []))


def mini_jat(args, setting: Setting, image_weight: float) -> int:
    out = args.out
    common.check_settings(out, {"claim": "mini-jat", "setting": dataclasses.asdict(setting), "image_weight": image_weight,
                                "babyai_sampling_weights": BABYAI_SAMPLING_WEIGHTS}, "jat_claims")
    data_dir = out / "data"
    stages = {"data": common.stage(out, "data", lambda: record_data(setting, data_dir), output=data_dir)}
    config = train_config(setting, data_dir, kappa=0.005, image_weight=image_weight)
    share = image_weight / sum(sampling_weight(task, image_weight) for task in setting.tasks)
    if any(domain(t) == "babyai-rgb" for t in setting.tasks):
        print(f"image batches: about {share:.1%} of the {setting.train_steps} steps", flush=True)
    stages["training"] = common.stage(out, "training", lambda: common.train_to_end(config, out / "train"),
                                     output=out / "train")
    stages["evaluation"] = common.stage(out, "evaluation", lambda: evaluate_run(setting, out / "train", data_dir, out / "eval"),
                                       output=out / "eval")
    report = json.loads((out / "eval" / "report.json").read_text())
    total_s = sum(s["seconds"] for s in stages.values())
    domains = report["domains"]
    checks = {f"{name} IQM >= {target}": domains[name]["value"] >= target for name, target in TARGETS.items()
              if name in domains}
    checks[f"within {TIME_LIMIT_S // 60} minutes including data"] = common.within(out, total_s, TIME_LIMIT_S)
    command = f"python experiments/jat_claims.py mini-jat --out runs/mini_jat{' --quick' if args.quick else ''}" \
              f"{' --no-image' if args.no_image else ''}{variant_flags(args)}"
    lines = [_header("Mini-JAT: result", setting, args.quick, image_weight),
             f"Command: `{command} --docs docs/jat.md`; wall time: {common.stage_times(stages)}; total {total_s / 60:.1f} min.\n",
             "| domain | IQM expert-normalised [95% CI] | target |", "|---|---|---|"]
    lines += [f"| {name} | {_interval(d)} | {TARGETS.get(name, '–')} |" for name, d in domains.items()]
    lines += ["", *task_table(report, data_dir), "", "Checks:"]
    lines += [f"- {name}: {common.verdict(passed, ('met', 'NOT met'))}" for name, passed in checks.items()]
    lines += ["", "![mini-JAT](figures/jat_mini_jat.png)"]
    text = "\n".join(lines) + "\n"
    plot = out / "jat_mini_jat.png"
    _plot({"mini-JAT": domains}, plot, TARGETS)
    finish(out, text, plot, args.docs, "jat_mini_jat", {
        "claim": "mini-jat", "quick": args.quick, "stages": stages, "total_seconds": total_s,
        "domains": domains, "checks": checks})
    return 0


def kappa(args, setting: Setting) -> int:
    out = args.out
    common.check_settings(out, {"claim": "kappa", "setting": dataclasses.asdict(setting), "kappas": list(KAPPAS),
                                "babyai_sampling_weights": BABYAI_SAMPLING_WEIGHTS}, "jat_claims")
    data_dir = args.data or out / "data"
    runs, stages = {}, {"data": common.stage(out, "data", lambda: record_data(setting, data_dir),
                                             output=None if args.data else data_dir)}  # --data's folder is not ours to redo
    for value in KAPPAS:
        run = out / f"kappa_{value:g}"
        config = train_config(setting, data_dir, kappa=value, image_weight=1.0)
        stages[f"training kappa {value:g}"] = common.stage(out, f"training kappa {value:g}",
                                                           lambda config=config, run=run: common.train_to_end(config, run / "train"),
                                                           output=run / "train")
        stages[f"evaluation kappa {value:g}"] = common.stage(
            out, f"evaluation kappa {value:g}", lambda run=run: evaluate_run(setting, run / "train", data_dir, run / "eval"),
            output=run / "eval")
        runs[value] = json.loads((run / "eval" / "report.json").read_text())
    total_s = sum(s["seconds"] for s in stages.values())
    names = list(runs[KAPPAS[0]]["domains"])
    command = (f"python experiments/jat_claims.py kappa --out runs/jat_kappa{' --quick' if args.quick else ''}"
               f"{' --data runs/mini_jat/data' if args.data else ''}{variant_flags(args)}")
    lines = [_header("Kappa ablation: result", setting, args.quick, 1.0),
             f"Command: `{command} --docs docs/jat.md`; kappa in {{{', '.join(f'{k:g}' for k in KAPPAS)}}}, each run "
             f"the same data, seed and steps; total {total_s / 60:.1f} min ({common.stage_times(stages)}).\n",
             "| kappa | " + " | ".join(f"{name} IQM [95% CI]" for name in names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {value:g} | " + " | ".join(_interval(report["domains"][name]) for name in names) + " |"
              for value, report in runs.items()]
    best = {name: max(KAPPAS, key=lambda value: runs[value]["domains"][name]["value"]) for name in names}
    lines += ["", "Best kappa per domain (IQM point estimate): " + ", ".join(f"{n} {b:g}" for n, b in best.items())
              + "; JAT found 0.005 best.", "", "![kappa ablation](figures/jat_kappa.png)"]
    text = "\n".join(lines) + "\n"
    plot = out / "jat_kappa.png"
    _plot({f"kappa {value:g}": report["domains"] for value, report in runs.items()}, plot, TARGETS)
    finish(out, text, plot, args.docs, "jat_kappa", {
        "claim": "kappa", "quick": args.quick, "stages": stages, "total_seconds": total_s,
        "domains": {f"{value:g}": report["domains"] for value, report in runs.items()}, "best": best})
    return 0


def _plot(series: dict[str, dict], path: Path, targets: dict[str, float]) -> None:
    """Grouped bars: per domain, each series' IQM with its 95% interval; targets as short lines."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = sorted({name for domains in series.values() for name in domains})
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(2 + 1.6 * len(names), 4))
    for offset, (label, domains) in enumerate(series.items()):
        x = np.arange(len(names)) + (offset - (len(series) - 1) / 2) * width
        values = np.array([domains[n]["value"] if n in domains else np.nan for n in names])
        errors = np.array([[domains[n]["value"] - domains[n]["low"], domains[n]["high"] - domains[n]["value"]]
                           if n in domains else [0.0, 0.0] for n in names]).T
        axis.bar(x, values, width, yerr=errors, capsize=3, label=label)
    for index, name in enumerate(names):
        if name in targets:
            axis.hlines(targets[name], index - 0.45, index + 0.45, colors="black", linestyles="--",
                        label="target" if index == 0 else None)
    axis.set_xticks(np.arange(len(names)), names)
    axis.set_ylabel("IQM expert-normalised score (95% CI)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def finish(out: Path, text: str, plot: Path, docs: Path | None, marker: str, summary: dict) -> None:
    print(text.replace("figures/", ""))  # as OUT/results.md: the plot beside it (docs keep figures/)
    (out / "results.md").write_text(text.replace("figures/", ""))
    (out / "summary.json").write_text(json.dumps({**summary, "machine": common.machine()}, indent=1) + "\n")
    if docs:
        begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
        document = docs.read_text()
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        docs.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", document))
        (docs.parent / "figures").mkdir(exist_ok=True)
        shutil.copy(plot, docs.parent / "figures" / plot.name)


@interruptible("jat_claims")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("claim", choices=("mini-jat", "kappa"), help="which claim (docs/jat.md)")
    parser.add_argument("--out", type=path_argument, required=True, help="data, runs, reports and tables go here")
    parser.add_argument("--quick", action="store_true", help="a smoke run of the same pipeline (no claim)")
    parser.add_argument("--no-image", action="store_true", help="mini-jat without the BabyAI-RGB image task")
    parser.add_argument("--tasks", help="comma-separated tasks instead of the claim's (a variant, no claim)")
    parser.add_argument("--train-steps", type=count_argument(), help="optimizer steps instead of the claim's")
    parser.add_argument("--eval-episodes", type=count_argument(), help="evaluation episodes per task (at least 10)")
    parser.add_argument("--raw-observations", action="store_true",
                        help="continuous observations unstandardised, as JAT (a variant, no claim)")
    parser.add_argument("--data", type=path_argument, help="kappa: the recorded tasks to reuse (e.g. a mini-jat's OUT/data)")
    parser.add_argument("--docs", type=path_argument, help="also write the results into this markdown file's section")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else FULL
    if args.claim == "kappa":
        setting = dataclasses.replace(setting, tasks=tuple(t for t in setting.tasks if domain(t) != "babyai-rgb"),
                                      train_steps=setting.train_steps if args.quick else KAPPA_STEPS)
    if args.no_image:
        setting = dataclasses.replace(setting, tasks=tuple(t for t in setting.tasks if domain(t) != "babyai-rgb"))
    if args.tasks is not None:
        names = [name for name in args.tasks.split(",") if name]
        if not names:
            parser.error(f"--tasks {args.tasks!r}: no task names")
        for name in names:
            try:
                gym_tasks.get_task(name)
            except gym_tasks.UnknownTaskError as error:
                parser.error(f"--tasks: {error}")
        setting = dataclasses.replace(setting, tasks=tuple(names))
    if args.train_steps:
        setting = dataclasses.replace(setting, train_steps=args.train_steps,
                                      warmup_steps=min(setting.warmup_steps, args.train_steps // 10))
    if args.raw_observations:
        setting = dataclasses.replace(setting, normalize_observations=False)
    if args.eval_episodes is not None:
        if args.eval_episodes < 10:
            parser.error(f"--eval-episodes must be >= 10 (per-task IQM over fewer is noise), got {args.eval_episodes}")
        setting = dataclasses.replace(setting, eval_episodes=args.eval_episodes)
    if args.data is not None and args.claim != "kappa":
        parser.error("--data is for kappa (mini-jat records its own data into OUT/data)")
    if args.out.exists() and not args.out.is_dir():  # before the machine's matmul is timed for the header
        parser.error(f"--out {args.out}: is a file, not a folder")
    if args.data is not None and not args.data.is_dir():  # a typo would record every task afresh into it
        parser.error(f"--data {args.data}: no such folder of recorded tasks")
    if args.data is not None and (missing := [task for task in setting.tasks
                                              if not (args.data / task / references.REFERENCES_FILE).is_file()]):
        # --data is read, never written: recording the missing tasks would put them into another run's folder
        parser.error(f"--data {args.data}: holds no recording of {', '.join(missing)} (give a mini-JAT run's OUT/data "
                     "of the same settings)")
    if args.docs is not None and args.quick:  # would replace the claim's result with a smoke run's
        parser.error("--docs: a --quick run is no claim; docs take full runs only")
    if args.docs is not None and not args.docs.is_file():
        parser.error(f"--docs {args.docs}: no such file")
    if args.docs is not None:
        marker = "jat_mini_jat" if args.claim == "mini-jat" else "jat_kappa"
        document = args.docs.read_text()
        if f"<!-- {marker}:begin -->" not in document or f"<!-- {marker}:end -->" not in document:
            parser.error(f"--docs {args.docs}: lacks the markers <!-- {marker}:begin --> ... <!-- {marker}:end -->")
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="metaworld")
    print(f"# {args.claim}{' (quick)' if args.quick else ''}: {len(setting.tasks)} tasks, {setting.train_steps} steps; "
          f"{common.describe_machine(common.machine())}", flush=True)
    try:
        if args.claim == "mini-jat":
            return mini_jat(args, setting, IMAGE_SAMPLING_WEIGHT)
        return kappa(args, setting)
    except (gym_tasks.UnknownTaskError, experts.ExpertError, record.RecordError, jat_fields.DatasetError,
            checkpointing.CheckpointError, ValueError, OSError) as error:  # references.ReferenceError is a ValueError
        print(f"jat_claims: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
