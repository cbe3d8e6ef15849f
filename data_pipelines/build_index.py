"""`mgdt-index`: build or bring up to date the window index of RLDS datasets (training reads windows from it).

`mgdt-convert` writes the index with the dataset; this is the one-time pass for a dataset it did not
write (e.g. TFDS `rlu_atari` in array_record), or for one whose shards changed. Parts that still
match their shards are kept, so a rerun after an interruption or a partial change only builds
what is missing. See mgdt_jax/recipes/mgdt/step_store.py for the layout.
"""

from __future__ import annotations

import argparse
import os
import sys

from mgdt_jax.core import files
from mgdt_jax.core.commands import interruptible
from mgdt_jax.recipes.mgdt import step_store
from mgdt_jax.recipes.mgdt.rlds_source import DataError, find_dataset_dirs


@interruptible("mgdt-index")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-index", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="DATASET",
                        help="a dataset version directory, or a directory above several (as in data.sources)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes building parts (one shard each at a time); default: all cores")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    folder = " ".join(map(str, args.sources))
    try:
        for dataset_dir in find_dataset_dirs(args.sources):
            folder = dataset_dir
            report = step_store.build_index(dataset_dir, workers=args.workers, progress=not args.no_progress)
            print(f"{dataset_dir}: window index of {report.episodes} episodes ({report.steps} steps) at "
                  f"{report.directory}; {report.parts_built} parts built, {report.parts_current} up to date, "
                  f"{report.seconds:.1f} s")
    except (DataError, OSError) as error:
        print(f"mgdt-index: error: {files.error_line(error, folder)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
