"""mgdt-xland-benchmark: generate an XLand-MiniGrid benchmark (rulesets) with our own generator.

    mgdt-xland-benchmark --preset trivial --count 10000 --seed 0 --out trivial_10k.pkl.bz2

Writes OUT (a bz2 pickle that `xminigrid.load_benchmark_from_path` reads) and OUT.json (its
sha256, the generator settings and statistics). A preset (XLand-MiniGrid's trivial/small/medium/
high settings) gives the defaults; --chain-depth, --prune-prob, --distractor-rules and
--distractor-objects override them. The task generator is mgdt_jax.envs.xland.generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys

from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import files
from mgdt_jax.core.files import path_argument, seed_argument
from mgdt_jax.envs.xland import generator


@interruptible("mgdt-xland-benchmark")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-xland-benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(generator.PRESETS), default="trivial",
                        help="XLand-MiniGrid's settings of that name as defaults")
    parser.add_argument("--count", type=int, required=True, help="distinct rulesets to generate")
    parser.add_argument("--seed", type=seed_argument, default=0, help="the same seed and settings give the same file")
    parser.add_argument("--out", type=path_argument, required=True, help="benchmark file to write (OUT.json beside it)")
    parser.add_argument("--chain-depth", type=int, default=None, help="levels of production rules to the goal (0..3)")
    parser.add_argument("--prune-prob", type=float, default=None,
                        help="chance that a needed object is placed as is instead of produced ([0, 1))")
    parser.add_argument("--distractor-rules", type=int, default=None, help="rules that lead nowhere the goal needs")
    parser.add_argument("--distractor-objects", type=int, default=None, help="objects in the world the task does not need")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # Flag -> the generator setting it overrides, so a bad value is reported by its flag, up front.
    setting_flags = {"chain_depth": ("--chain-depth", args.chain_depth), "prune_prob": ("--prune-prob", args.prune_prob),
                     "num_distractor_rules": ("--distractor-rules", args.distractor_rules),
                     "num_distractor_objects": ("--distractor-objects", args.distractor_objects)}
    if args.count < 1:
        parser.error(f"--count {args.count}: must be >= 1")
    overrides = {name: value for name, (_, value) in setting_flags.items() if value is not None}
    settings = dataclasses.replace(generator.PRESETS[args.preset], **overrides)
    for name, why in settings.faults().items():
        flag, value = setting_flags[name]  # a preset's own settings are valid: the fault is a flag's
        parser.error(f"{flag} {value}: {why}")
    preset = args.preset if not overrides else f"{args.preset}+custom"
    for target in (args.out, generator.sidecar_path(args.out)):
        if target.is_dir():
            print(f"mgdt-xland-benchmark: error: {target}: is a directory; --out names the benchmark file to write",
                  file=sys.stderr)
            return 1
    if args.out.exists() and not args.force:
        print(f"mgdt-xland-benchmark: error: {args.out} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    try:
        with files.removing_created_folders(args.out.parent):
            args.out.parent.mkdir(parents=True, exist_ok=True)  # made, and found writable, before generating
            if not os.access(args.out.parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            arrays, stats = generator.generate(settings, args.count, args.seed, progress=not args.no_progress)
            record = generator.write(arrays, args.out, settings=settings, seed=args.seed, preset=preset, stats=stats)
    except generator.BenchmarkError as error:
        print(f"mgdt-xland-benchmark: error: {files.error_line(error, args.out)}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. a missing or read-only folder; the error names a scratch file, so name OUT
        print(f"mgdt-xland-benchmark: error: {args.out}: cannot write ({error.strerror or error})", file=sys.stderr)
        return 1
    print(f"wrote {record['num_rulesets']} rulesets ({record['benchmark_id']}, up to {record['max_rules']} rules and "
          f"{record['max_init_tiles']} objects, {record['duplicates_rejected']} duplicates rejected) to {args.out} "
          f"in {record['seconds']:.1f} s; sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
