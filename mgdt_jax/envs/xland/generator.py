"""XLand-MiniGrid benchmarks generated here: rulesets (a goal, production rules, initial objects)
written in the file format `xminigrid.load_benchmark_from_path` reads, with a sidecar JSON that
records the file's sha256 and the generator settings, which every result carries. `load` reads a
file (ours or xminigrid's) the way that function does, but with an unpickler that resolves only
numpy and jax array reconstruction (core/safe_pickle.py), so a crafted file runs no code; then checks the arrays' shapes.

A task follows AdA (Adaptive Agent Team 2023, Appendix A.2) as XLand-MiniGrid applies it
(Nikulin et al. 2023, §3): sample a goal over one or two objects; then, for `chain_depth` levels,
replace each object the task still needs by a production rule that makes it from one or two fresh
objects, except that with probability `prune_prob` an object is left as it is (the branch is
pruned); the objects left at the end are placed in the world. Distractor rules consume objects of
the world (so some are dead ends that destroy what the goal needs) and produce fresh objects no
goal needs; distractor objects are further fresh objects in the world. Every object of a task is
distinct (tile x colour), so no rule can short-cut the chain. A ruleset whose goal and set of rules
equal an earlier one's is rejected and drawn again (the distractor objects do not make a new task).

Objects: the 6 pickable tiles (ball, square, pyramid, key, hex, star) x 10 colours (all but
empty and black, black being the floor's colour): 60 objects. Goal types (xminigrid `core.goals`):
agent_hold, agent_near and its 4 directed forms, tile_near and its 4 directed forms. Rule types
(xminigrid `core.rules`): agent_hold, agent_near (+4 directed), tile_near (+4 directed). The
undirected tile_near goal and rule are symmetric in their two objects, which are therefore stored
in a canonical order. Encodings are xminigrid's own: a goal is uint8 [5] (type id, then the
objects' (tile, colour)), a rule uint8 [7] (type id, input objects, product); the type ids are read
from xminigrid's classes, and tests compare every encoding with the class's `encode()`.

Everything is NumPy and plain Python, deterministic for a seed (`numpy.random.default_rng`); the
arrays are padded in preallocated NumPy buffers, never concatenated with `jnp` (XLA's compile of a
`jnp` concatenation over tens of thousands of rulesets stalls).
"""

from __future__ import annotations

import bz2
import dataclasses
import functools
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from mgdt_jax.core import files, safe_pickle

GOAL_LEN = 5  # xminigrid.core.goals.MAX_GOAL_ENCODING_LEN
RULE_LEN = 7  # xminigrid.core.rules.MAX_RULE_ENCODING_LEN
CODE_VERSION = 1  # bump when a change here changes the rulesets a seed gives

# name -> (xminigrid class, number of objects it names). Goals name 1 or 2 objects; rules name
# 1 or 2 inputs, then their product.
GOAL_TYPES: dict[str, tuple[str, int]] = {
    "agent_hold": ("AgentHoldGoal", 1),
    "agent_near": ("AgentNearGoal", 1),
    "agent_near_up": ("AgentNearUpGoal", 1),
    "agent_near_right": ("AgentNearRightGoal", 1),
    "agent_near_down": ("AgentNearDownGoal", 1),
    "agent_near_left": ("AgentNearLeftGoal", 1),
    "tile_near": ("TileNearGoal", 2),
    "tile_near_up": ("TileNearUpGoal", 2),
    "tile_near_right": ("TileNearRightGoal", 2),
    "tile_near_down": ("TileNearDownGoal", 2),
    "tile_near_left": ("TileNearLeftGoal", 2),
}
RULE_TYPES: dict[str, tuple[str, int]] = {
    "agent_hold": ("AgentHoldRule", 1),
    "agent_near": ("AgentNearRule", 1),
    "agent_near_up": ("AgentNearUpRule", 1),
    "agent_near_right": ("AgentNearRightRule", 1),
    "agent_near_down": ("AgentNearDownRule", 1),
    "agent_near_left": ("AgentNearLeftRule", 1),
    "tile_near": ("TileNearRule", 2),
    "tile_near_up": ("TileNearUpRule", 2),
    "tile_near_right": ("TileNearRightRule", 2),
    "tile_near_down": ("TileNearDownRule", 2),
    "tile_near_left": ("TileNearLeftRule", 2),
}
SYMMETRIC = frozenset({"tile_near"})  # the two objects play the same part


class BenchmarkError(ValueError):
    """Bad generator settings, an exhausted task space, or a benchmark file that is missing,
    altered or unreadable; the message names the value or file and the fault."""


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """What defines the task distribution (recorded in every sidecar)."""

    chain_depth: int = 0  # levels of production rules between the world and the goal
    prune_prob: float = 0.0  # chance that a needed object is placed as is instead of produced
    num_distractor_rules: int = 0
    num_distractor_objects: int = 3
    goal_types: tuple[str, ...] = tuple(GOAL_TYPES)
    rule_types: tuple[str, ...] = tuple(RULE_TYPES)

    def faults(self) -> dict[str, str]:
        """Setting name -> why its value is out of range; empty when every setting is valid."""
        faults = {}
        if not 0 <= self.chain_depth <= 3:
            faults["chain_depth"] = "must be in 0..3 (60 objects bound the chain)"
        if not 0.0 <= self.prune_prob < 1.0:  # also refuses NaN
            faults["prune_prob"] = "must be in [0, 1)"
        for name in ("num_distractor_rules", "num_distractor_objects"):
            if not 0 <= getattr(self, name) <= 8:
                faults[name] = "must be in 0..8"
        for kind, names, known in (("goal", self.goal_types, GOAL_TYPES), ("rule", self.rule_types, RULE_TYPES)):
            if not names or any(name not in known for name in names):
                faults[f"{kind}_types"] = f"need at least one of {', '.join(known)}"
        return faults

    def validate(self) -> None:
        """BenchmarkError naming the first setting out of range."""
        if faults := self.faults():
            name, why = next(iter(faults.items()))
            value = getattr(self, name)
            raise BenchmarkError(f"{name} {list(value) if isinstance(value, tuple) else value}: {why}")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "goal_types": list(self.goal_types), "rule_types": list(self.rule_types)}


# XLand-MiniGrid's benchmark settings (its scripts/generate_benchmarks.sh) over our type sets.
PRESETS: dict[str, GeneratorSettings] = {
    "trivial": GeneratorSettings(chain_depth=0, prune_prob=0.0, num_distractor_rules=0, num_distractor_objects=3),
    "small": GeneratorSettings(chain_depth=1, prune_prob=0.3, num_distractor_rules=2, num_distractor_objects=2),
    "medium": GeneratorSettings(chain_depth=2, prune_prob=0.1, num_distractor_rules=3, num_distractor_objects=2),
    "high": GeneratorSettings(chain_depth=3, prune_prob=0.1, num_distractor_rules=4, num_distractor_objects=1),
}


@functools.cache
def objects() -> np.ndarray:
    """uint8 [60, 2]: every (tile, colour) a task may use, in a fixed order."""
    from xminigrid.core.constants import Colors, Tiles

    tiles = (Tiles.BALL, Tiles.SQUARE, Tiles.PYRAMID, Tiles.KEY, Tiles.HEX, Tiles.STAR)
    colours = (Colors.RED, Colors.GREEN, Colors.BLUE, Colors.PURPLE, Colors.YELLOW, Colors.GREY, Colors.WHITE,
               Colors.BROWN, Colors.PINK, Colors.ORANGE)
    return np.array([(tile, colour) for tile in tiles for colour in colours], np.uint8)


def _type_id(cls: type) -> int:
    """The leading byte xminigrid's own `encode()` writes for a goal or rule class."""
    blank = [np.zeros(2, np.uint8)] * len(dataclasses.fields(cls))
    return int(np.asarray(cls(*blank).encode())[0])


@functools.cache
def type_ids() -> tuple[dict[str, int], dict[str, int]]:
    """(goal type ids, rule type ids) of `GOAL_TYPES` and `RULE_TYPES`."""
    from xminigrid.core import goals, rules

    return ({name: _type_id(getattr(goals, cls)) for name, (cls, _) in GOAL_TYPES.items()},
            {name: _type_id(getattr(rules, cls)) for name, (cls, _) in RULE_TYPES.items()})


@functools.cache
def type_counts() -> tuple[int, int]:
    """(goal types, rule types) xminigrid decodes: one more than the largest id of its goal and rule
    classes (the empty one, 0, included). Its `lax.switch` clamps a larger id to the last type."""
    from xminigrid.core import goals, rules

    def count(module, base: type) -> int:
        return 1 + max(_type_id(cls) for cls in vars(module).values()
                       if isinstance(cls, type) and issubclass(cls, base) and cls is not base)

    return count(goals, goals.BaseGoal), count(rules, rules.BaseRule)


def encode_goal(name: str, goal_objects: np.ndarray) -> np.ndarray:
    """uint8 [5]: goal `name` over `goal_objects` (uint8 [1 or 2, 2]), as xminigrid encodes it."""
    if name in SYMMETRIC:
        goal_objects = np.array(sorted(map(tuple, goal_objects)), np.uint8)
    out = np.zeros(GOAL_LEN, np.uint8)
    out[0] = type_ids()[0][name]
    out[1:1 + goal_objects.size] = goal_objects.reshape(-1)
    return out


def encode_rule(name: str, inputs: np.ndarray, product: np.ndarray) -> np.ndarray:
    """uint8 [7]: rule `name` making `product` (uint8 [2]) from `inputs` (uint8 [1 or 2, 2])."""
    if name in SYMMETRIC:
        inputs = np.array(sorted(map(tuple, inputs)), np.uint8)
    out = np.zeros(RULE_LEN, np.uint8)
    out[0] = type_ids()[1][name]
    out[1:1 + inputs.size] = inputs.reshape(-1)
    out[1 + inputs.size:3 + inputs.size] = product
    return out


def sample_ruleset(rng: np.random.Generator, settings: GeneratorSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task: (goal uint8 [5], rules uint8 [r, 7], init_tiles uint8 [t, 2]), rules and objects
    in a random order. Draws from `rng` only, so a seed fixes the sequence of tasks."""
    vocabulary = objects()
    order = rng.permutation(len(vocabulary))  # fresh objects are taken from here, never twice
    taken = 0

    def fresh(n: int) -> list[int]:
        nonlocal taken
        taken += n
        return [int(i) for i in order[taken - n:taken]]

    goal_name = settings.goal_types[rng.integers(len(settings.goal_types))]
    needed = fresh(GOAL_TYPES[goal_name][1])
    goal = encode_goal(goal_name, vocabulary[needed])
    rules = []
    for _ in range(settings.chain_depth):
        next_needed = []
        for product in needed:
            if rng.random() < settings.prune_prob:
                next_needed.append(product)
                continue
            rule_name = settings.rule_types[rng.integers(len(settings.rule_types))]
            inputs = fresh(RULE_TYPES[rule_name][1])
            rules.append(encode_rule(rule_name, vocabulary[inputs], vocabulary[product]))
            next_needed.extend(inputs)
        needed = next_needed
    world = needed + fresh(settings.num_distractor_objects)
    for _ in range(settings.num_distractor_rules):
        rule_name = settings.rule_types[rng.integers(len(settings.rule_types))]
        arity = RULE_TYPES[rule_name][1]
        if len(world) >= arity:
            inputs = [world[i] for i in rng.choice(len(world), arity, replace=False)]
        else:  # too few objects in the world: a rule that can never fire
            inputs = fresh(arity)
        rules.append(encode_rule(rule_name, vocabulary[inputs], vocabulary[fresh(1)[0]]))
    rules = np.array(rules, np.uint8).reshape(-1, RULE_LEN)[rng.permutation(len(rules))]
    init_tiles = vocabulary[world][rng.permutation(len(world))]
    return goal, rules, init_tiles


def task_key(goal: np.ndarray, rules: np.ndarray) -> bytes:
    """What makes two rulesets the same task: the goal and the set of rules."""
    return goal.tobytes() + b"".join(sorted(rule.tobytes() for rule in rules))


def generate(settings: GeneratorSettings, count: int, seed: int, *, progress: bool = False,
             max_consecutive_duplicates: int = 200_000) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`count` distinct tasks for `seed`: (arrays, stats).

    arrays: goals uint8 [count, 5], rules uint8 [count, R, 7] (R = max rules, >= 1, padded with
    xminigrid's empty rule, all zeros), init_tiles uint8 [count, T, 2] (T = max objects, >= 1,
    padded with the empty tile (0, 0), which xminigrid's reset skips), num_rules int32 [count].
    stats: duplicates_rejected, max_rules, max_init_tiles, goal_type_counts, seconds.
    BenchmarkError for bad settings, or when `max_consecutive_duplicates` draws in a row repeat
    known tasks (the task space of the settings is exhausted)."""
    import tqdm

    settings.validate()
    if count < 1:
        raise BenchmarkError(f"count {count}: must be positive")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    tasks = []
    duplicates = consecutive = 0
    with tqdm.tqdm(total=count, unit="ruleset", disable=not progress) as bar:
        while len(tasks) < count:
            goal, rules, init_tiles = sample_ruleset(rng, settings)
            key = task_key(goal, rules)
            if key in seen:
                duplicates += 1
                consecutive += 1
                if consecutive >= max_consecutive_duplicates:
                    raise BenchmarkError(
                        f"only {len(tasks)} distinct tasks after {consecutive} duplicate draws in a row: the task "
                        f"space of these settings is nearly exhausted; ask for fewer than {count}")
                continue
            consecutive = 0
            seen.add(key)
            tasks.append((goal, rules, init_tiles))
            bar.update(1)
    max_rules = max(1, max(len(rules) for _, rules, _ in tasks))
    max_tiles = max(1, max(len(tiles) for _, _, tiles in tasks))
    arrays = {"goals": np.zeros((count, GOAL_LEN), np.uint8),
              "rules": np.zeros((count, max_rules, RULE_LEN), np.uint8),
              "init_tiles": np.zeros((count, max_tiles, 2), np.uint8),
              "num_rules": np.zeros(count, np.int32)}
    for i, (goal, rules, init_tiles) in enumerate(tasks):
        arrays["goals"][i] = goal
        arrays["rules"][i, :len(rules)] = rules
        arrays["init_tiles"][i, :len(init_tiles)] = init_tiles
        arrays["num_rules"][i] = len(rules)
    goal_names = {type_id: name for name, type_id in type_ids()[0].items()}
    per_goal_type = np.bincount(arrays["goals"][:, 0], minlength=max(goal_names) + 1)
    # The largest counts, not the arrays' widths (at least 1 slot, an empty rule, where there are none).
    stats = {"duplicates_rejected": duplicates, "max_rules": int(arrays["num_rules"].max()), "max_init_tiles": max_tiles,
             "goal_type_counts": {goal_names[i]: int(n) for i, n in enumerate(per_goal_type) if n},
             "seconds": round(time.perf_counter() - started, 3)}
    return arrays, stats


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the record of benchmark file `path` lives: `<path>.json`."""
    return Path(f"{os.fspath(path)}.json")


def write(arrays: dict[str, np.ndarray], path: str | os.PathLike, *, settings: GeneratorSettings, seed: int,
          preset: str | None = None, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `arrays` (from `generate`) to `path` as xminigrid's bz2 pickle and its record to
    `<path>.json`; returns the record. Both files are written beside their targets and renamed
    into place, the data first, so a file with a record is complete. OSError on I/O faults."""
    import xminigrid

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    record_partial = sidecar_path(partial)
    try:
        with bz2.open(partial, "wb") as f:
            pickle.dump({key: arrays[key] for key in ("goals", "rules", "init_tiles", "num_rules")}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
        sha256 = files.sha256(partial)
        count = int(arrays["goals"].shape[0])
        record = {
            "benchmark_id": f"{preset or 'custom'}-{count}-{sha256[:12]}",
            "file": path.name,
            "sha256": sha256,
            "num_bytes": partial.stat().st_size,
            "format": "bz2 pickle of goals, rules, init_tiles, num_rules (xminigrid.load_benchmark_from_path)",
            "num_rulesets": count,
            "generator": {"preset": preset, "settings": settings.to_json(), "seed": seed, "count": count,
                          "code_version": CODE_VERSION, "numpy": np.__version__},
            "xminigrid": xminigrid.__version__,
            "shapes": {key: list(value.shape) for key, value in arrays.items()},
            **(stats or {}),
        }
        record_partial.write_text(json.dumps(record, indent=1) + "\n")
        # The old record goes first: between the renames the new file stands alone (load refuses a
        # file without its record), never beside a record of other contents.
        sidecar_path(path).unlink(missing_ok=True)
        os.replace(partial, path)
        os.replace(record_partial, sidecar_path(path))
    finally:
        partial.unlink(missing_ok=True)
        record_partial.unlink(missing_ok=True)
    return record


def read_record(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The record of benchmark file `path` (its sidecar JSON); with `verify`, BenchmarkError unless
    the file's sha256 is the recorded one."""
    record_file = sidecar_path(path)
    if Path(path).is_dir():
        raise BenchmarkError(f"{path}: is a directory, not a benchmark file")
    if not Path(path).is_file():
        raise BenchmarkError(f"{path}: no such benchmark file")
    try:
        record = json.loads(record_file.read_text())
        recorded = record["sha256"]
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: no record {record_file.name} beside it "
                             f"(generate with mgdt-xland-benchmark)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BenchmarkError(f"{record_file}: unreadable record ({error})") from None
    if verify and files.sha256(path) != recorded:
        raise BenchmarkError(f"{path}: sha256 differs from the one in {record_file.name}; the file was altered")
    return record


# What a benchmark pickle may name: NumPy's array reconstruction, and JAX's (xminigrid's own
# generator pickles jnp arrays). JAX's _reconstruct_array calls only a function the pickle names,
# which must itself be on this list.
SAFE_PICKLE_GLOBALS = safe_pickle.NUMPY_ARRAYS | {("jax._src.array", "_reconstruct_array")}
BENCHMARK_KEYS = ("goals", "rules", "init_tiles", "num_rules")  # what load_benchmark_from_path reads


def read_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """The dict a benchmark file (bz2 pickle) holds, read with `safe_pickle.load`: arrays of
    numpy or jax only, so a crafted file cannot run code. BenchmarkError (naming `path`) for a
    file that is unreadable, names anything else, or is not a dict holding `BENCHMARK_KEYS`."""
    try:
        with bz2.open(path, "rb") as f:
            payload = safe_pickle.load(f, SAFE_PICKLE_GLOBALS)
    except safe_pickle.RefusedGlobal as error:
        raise BenchmarkError(f"{path}: refused: its pickle names {error}, and a benchmark holds only numpy or jax "
                             f"arrays (nothing of it was run)") from None
    # A damaged or crafted stream fails in many ways (bz2's OSError, pickle's own, or a bad
    # argument to an allowed constructor); each is the file's fault.
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, MemoryError) as error:
        raise BenchmarkError(f"{path}: unreadable benchmark ({error})") from None
    if not isinstance(payload, dict):
        raise BenchmarkError(f"{path}: holds a {type(payload).__name__}, not a dict of benchmark arrays")
    missing = [key for key in BENCHMARK_KEYS if key not in payload]
    if missing:
        raise BenchmarkError(f"{path}: no {', '.join(missing)} (a benchmark holds {', '.join(BENCHMARK_KEYS)})")
    return payload


# The arrays xminigrid's environments take, by key: dtype and the sizes after the ruleset axis N
# (None: any size >= 1). num_rules only has to be integers [N, ...]: ours are int32 [N],
# xminigrid's uint8 [N, 1], and no environment reads them.
ARRAY_LAYOUT: dict[str, tuple[str, tuple[int | None, ...]]] = {
    "goals": ("uint8", (GOAL_LEN,)),
    "rules": ("uint8", (None, RULE_LEN)),
    "init_tiles": ("uint8", (None, 2)),
}


def _describe_array(value: Any) -> str:
    """`uint8 [3, 5]`, or what the value is when it is no array."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{np.dtype(value.dtype)} {list(value.shape)}"
    return f"a {type(value).__name__}"


def check_arrays(arrays: dict[str, Any], path: str | os.PathLike) -> int:
    """The number of rulesets N of `arrays` (from `read_arrays`). BenchmarkError naming `path` and
    the first array whose dtype or shape is not `ARRAY_LAYOUT`'s (N >= 1, the same N everywhere):
    checked here because a wrong shape would otherwise fail as a traceback inside a jitted step."""
    count = None
    for key, (dtype, tail) in ARRAY_LAYOUT.items():
        value = arrays[key]
        shape = tuple(getattr(value, "shape", ()))
        fits = (hasattr(value, "dtype") and np.dtype(value.dtype) == np.dtype(dtype) and len(shape) == 1 + len(tail)
                and shape[0] >= 1 and shape[0] == (count or shape[0])
                and all(size == want if want is not None else size >= 1 for size, want in zip(shape[1:], tail)))
        if not fits:
            layout = ", ".join([f"N = {count}" if count else "N >= 1"] + ["any" if want is None else str(want) for want in tail])
            raise BenchmarkError(f"{path}: {key} is {_describe_array(value)}; xminigrid takes {dtype} [{layout}]")
        count = shape[0]
    num_rules = arrays["num_rules"]
    shape = tuple(getattr(num_rules, "shape", ()))
    if not shape or shape[0] != count or np.dtype(num_rules.dtype).kind not in "iu":
        raise BenchmarkError(f"{path}: num_rules is {_describe_array(num_rules)}; a benchmark holds integers [N = {count}, ...]")
    return count


def check_values(arrays: dict[str, Any], path: str | os.PathLike) -> None:
    """BenchmarkError naming `path`, the array, the ruleset and the value, for a goal or rule type id
    or an initial object's tile or colour id that xminigrid does not know: indexing with it would
    not fail but silently clamp (a goal type 255 trains on another goal) or yield NaN embeddings."""
    from xminigrid.core.constants import NUM_COLORS, NUM_TILES

    goal_types, rule_types = type_counts()
    for key, ids, limit, what in (("goals", arrays["goals"][:, 0], goal_types, "goal type id"),
                                  ("rules", arrays["rules"][..., 0], rule_types, "rule type id"),
                                  ("init_tiles", arrays["init_tiles"][..., 0], NUM_TILES, "tile id"),
                                  ("init_tiles", arrays["init_tiles"][..., 1], NUM_COLORS, "colour id")):
        ids = np.asarray(ids)
        if (ids >= limit).any():
            where = tuple(int(i) for i in np.argwhere(ids >= limit)[0])
            raise BenchmarkError(f"{path}: {key} of ruleset {where[0]} holds {what} {int(ids[where])}; "
                                 f"xminigrid knows 0..{limit - 1}")


def load(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(xminigrid Benchmark, record) for a file written by `write` (or by xminigrid's generator,
    given a record): checked against its record, read with `read_arrays` (no code in the file
    runs) and its arrays checked with `check_arrays` and `check_values`. The record (sha256, generator settings) is
    what results carry. BenchmarkError (one line naming `path`) for any fault."""
    from xminigrid.benchmarks import Benchmark

    record = read_record(path)
    arrays = read_arrays(path)
    count = check_arrays(arrays, path)
    if count != record.get("num_rulesets"):
        raise BenchmarkError(f"{path}: {count} rulesets, the record says {record.get('num_rulesets')}")
    check_values(arrays, path)
    # xminigrid.load_benchmark_from_path builds exactly this from pickle.load's dict; that call
    # would unpickle anything, so the restricted read above stands in for it.
    return Benchmark(**{key: arrays[key] for key in BENCHMARK_KEYS}), record


def task_split(num_rulesets: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, held-out ids): int32, sorted, disjoint, covering 0..num_rulesets-1; a random
    `heldout_fraction` (rounded, at least one id each side) goes to held-out, fixed by `seed`.
    BenchmarkError if either side would be empty."""
    if not 0.0 < heldout_fraction < 1.0:
        raise BenchmarkError(f"heldout_fraction {heldout_fraction}: must be in (0, 1)")
    num_heldout = int(round(num_rulesets * heldout_fraction))
    if num_heldout < 1 or num_heldout >= num_rulesets:
        raise BenchmarkError(f"{num_rulesets} rulesets with heldout_fraction {heldout_fraction}: "
                             f"one side of the split would be empty")
    order = np.random.default_rng(seed).permutation(num_rulesets).astype(np.int32)
    return np.sort(order[num_heldout:]), np.sort(order[:num_heldout])
