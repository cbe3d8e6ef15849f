"""The claim file that keeps two commands from writing one folder at once (``files.held``)."""

import subprocess
import sys
import time

HOLDER = """
import os, sys, time
from pathlib import Path
from mgdt_jax.core import files
claim, log, start, dead = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
while time.time() < start:
    pass
for round in range(300):
    try:
        with files.held(claim, "another writer"):
            with log.open("a") as file:
                file.write("+")
            time.sleep(0.0005)
            with log.open("a") as file:
                file.write("-")
    except OSError:
        continue
    if round % 2:  # as a holder killed there leaves it: a file naming a process that has ended
        left = claim.with_name(f"left.{os.getpid()}")
        left.write_text(dead)
        try:
            os.link(left, claim)
        except FileExistsError:
            pass
        left.unlink()
"""


def test_of_processes_claiming_one_folder_at_once_one_holds_it_at_a_time(tmp_path):
    # The claim was created empty and its process id written after, and a dead holder's claim was
    # removed and made anew: a process that read it empty, or removed another's new claim as the
    # dead one's, held the folder beside it (six processes: ~2,000 overlapping holds).
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    log, start = tmp_path / "log", time.time() + 5  # all import first, then start together
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / ".writing"), str(log), str(start),
                                 ended.stdout]) for _ in range(6)]
    assert [holder.wait(timeout=120) for holder in holders] == [0] * 6
    held = log.read_text()
    assert held and held == "+-" * (len(held) // 2)  # never a second "+" before the first "-"


def test_a_claim_that_cannot_be_written_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    # On a full disk the empty claim file stayed: its folder could not be removed, and mgdt-convert
    # then took a recording's run folder holding only it for a run without logs.
    import errno
    import os

    import pytest

    from mgdt_jax.core import files

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    with pytest.raises(OSError, match=rf"^{tmp_path}: cannot be written \(No space left on device\)$"):
        with files.held(tmp_path / ".writing", "another writer"):
            pass
    assert list(tmp_path.iterdir()) == []
