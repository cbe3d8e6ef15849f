"""The claim file that keeps two commands from writing one folder at once (``files.held``)."""

import subprocess
import sys
import time

HOLDER = """
import os, sys, time
from pathlib import Path
from mgdt_jax.core import files
claim, log, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    pass
for _ in range(300):
    try:
        with files.held(claim, "another writer"):
            with log.open("a") as file:
                file.write("+")
            time.sleep(0.0005)
            with log.open("a") as file:
                file.write("-")
    except OSError:
        pass
"""


def test_of_processes_claiming_one_folder_at_once_one_holds_it_at_a_time(tmp_path):
    # The claim was created empty and its process id written after: another process reading it in
    # between took it for a dead holder's and took it over (six processes: ~2,000 overlapping holds).
    log, start = tmp_path / "log", time.time() + 5  # all import first, then start together
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / ".writing"), str(log), str(start)])
               for _ in range(6)]
    assert [holder.wait(timeout=120) for holder in holders] == [0] * 6
    held = log.read_text()
    assert held and held == "+-" * (len(held) // 2)  # never a second "+" before the first "-"
    assert not (tmp_path / ".writing").exists() and sorted(path.name for path in tmp_path.iterdir()) == ["log"]
