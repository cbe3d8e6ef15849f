"""``mgdt-import-checkpoint``: the released MGDT pickle -> a workdir that mgdt-eval and fine-tuning read.

    mgdt-import-checkpoint --pickle checkpoint_38274228.pkl --workdir runs/released200m

Writes WORKDIR/checkpoints/<step>/params (Orbax) and WORKDIR/config.json (the 200M experiment config
with the model size read from the weights).
"""

from __future__ import annotations

import argparse
import shutil
import sys

from absl import logging

from experiments import mgdt_200m
from mgdt_jax.core.commands import interruptible
from mgdt_jax.core import checkpointing, files
from mgdt_jax.recipes.mgdt.import_checkpoint import CheckpointImportError, build_model, load_released_pickle, save_params
from mgdt_jax.core.loop import CONFIG_FILE


@interruptible("mgdt-import-checkpoint")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mgdt-import-checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pickle", type=files.path_argument, required=True, help="the released (params, state) pickle")
    parser.add_argument("--workdir", type=files.path_argument, required=True, help="new run directory to write")
    parser.add_argument("--step", type=int, default=0, help="checkpoint step to file the weights under")
    args = parser.parse_args(argv)
    if args.step < 0:
        parser.error(f"--step must be >= 0, got {args.step}")
    if args.workdir.exists() and not args.workdir.is_dir():
        parser.error(f"--workdir {args.workdir}: is a file, not a folder")
    logging.set_verbosity(logging.FATAL)  # errors reach the user as one line; Orbax logs are noise
    workdir = args.workdir.expanduser().absolute()
    created, imported = not workdir.exists(), False
    try:
        existing = workdir / checkpointing.CHECKPOINTS / str(args.step)
        if existing.exists():
            if reason := checkpointing.incomplete_reason(existing):
                raise checkpointing.CheckpointError(
                    f"{existing} is an incomplete checkpoint ({reason}): remove it or import under another --step"
                )
            raise checkpointing.CheckpointError(f"{args.workdir} already holds checkpoint {args.step}")
        print(f"reading {args.pickle} ...", flush=True)
        params = load_released_pickle(args.pickle)
        try:
            model = build_model(params)
        except CheckpointImportError as error:  # a parameter missing or of the wrong shape: name the file
            raise CheckpointImportError(f"{args.pickle}: {error}") from None
        config = mgdt_200m.get_config()
        config.model.update(
            {key: getattr(model.config, key) for key in ("num_layers", "d_model", "num_heads", "mlp_ratio",
                                                         "num_steps", "single_return_token", "behaviour_cloning", "dtype")}
        )
        config_text = config.to_json_best_effort(indent=1) + "\n"
        config_path = workdir / CONFIG_FILE
        # Another step of the same import may join a workdir; another run's is never overwritten.
        if config_path.exists() and config_path.read_text() != config_text:
            raise checkpointing.CheckpointError(
                f"{args.workdir} holds another run (its {CONFIG_FILE} is not this model's): import into a new workdir"
            )
        print(f"writing a {model.config.num_layers}-layer d{model.config.d_model} model ...", flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        files.write_text(config_path, config_text)
        checkpoint = save_params(model, workdir, args.step)
        imported = True
    except (CheckpointImportError, checkpointing.CheckpointError, OSError) as error:
        print(f"mgdt-import-checkpoint: error: {files.error_line(error, args.workdir)}", file=sys.stderr)
        return 1
    finally:
        if created and not imported:  # a failed or interrupted import leaves no workdir behind
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"imported {args.pickle} into {checkpoint} with config {args.workdir / CONFIG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
