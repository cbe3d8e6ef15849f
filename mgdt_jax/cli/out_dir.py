"""What the evaluation CLIs share: their ``--out`` folder, checked before any playing and held while
they write (a Ctrl-C handled by mgdt_jax/core/commands.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mgdt_jax.core import files
from mgdt_jax.core.checkpointing import CHECKPOINTS, INCOMPLETE, checkpoint_directory


def check_out_dir(out: Path, report_name: str, workdir: Path | None = None) -> None:
    """Checks an evaluation CLI's ``--out`` before any playing, so a bad path costs no scores.

    ``report_name`` is the recipe's report file, written last: its presence marks a finished report.
    Raises OSError (one line, naming the path) when ``out`` is not a directory, holds a finished
    report (which the run would replace: another shard's or an earlier run's), cannot be created,
    or is the evaluated run's ``workdir`` or inside its checkpoint folders (which training rotates
    and hashes; a subfolder such as ``WORKDIR/eval`` is fine).
    """
    if workdir is not None:
        # --workdir may also name the checkpoint folder itself (an imported checkpoint, RUN/checkpoints).
        checkpoints = checkpoint_directory(workdir).resolve()
        run = checkpoints.parent if checkpoints.name == CHECKPOINTS else Path(workdir).resolve()
        target = out.resolve()
        if target == run or any(target.is_relative_to(folder) for folder in (checkpoints, run / CHECKPOINTS,
                                                                              run / INCOMPLETE)):
            raise OSError(f"--out {out}: the run's own folder{'' if target == run else ' of checkpoints'}; give the "
                          f"report a folder of its own, e.g. {run / 'eval'}")
    if out.is_dir() and (out / report_name).exists():
        raise OSError(f"--out {out}: already holds a report ({report_name}); choose another directory or remove it")
    files.check_folder(out, "--out")  # a symlink to nothing, a file, a folder that cannot be made or written


CLAIM_FILE = ".evaluating"  # in --out while an evaluation CLI runs: the process id of the one writing there


@contextlib.contextmanager
def claimed_out_dir(out: Path, report_name: str, workdir: Path | None = None) -> Iterator[None]:
    """``check_out_dir``, then holds ``out`` for this process while the block runs, so that two
    evaluations given the same ``--out`` cannot both pass the check and the later one replace the
    earlier one's report: ``OUT/.evaluating`` is created exclusively with this process's id (a file
    left by a process no longer running is taken over). OSError (one line) when another evaluation
    holds it or finished a report there meanwhile. Folders made for ``out`` are removed again if the
    block fails."""
    check_out_dir(out, report_name, workdir)
    with files.removing_created_folders(out):
        out.mkdir(parents=True, exist_ok=True)
        with files.held(out / CLAIM_FILE, "another evaluation"):
            if (out / report_name).exists():  # finished by another process after the check above
                raise OSError(f"--out {out}: already holds a report ({report_name}); choose another directory or remove it")
            yield
