"""Host memory for the commands that run XLA programs on a CPU: huge pages for malloc, and how
much memory is free (``available_bytes``).

XLA on a CPU takes every step's temporaries (about 1 GB for the 10M model at batch 32) from
glibc malloc, which maps large blocks fresh with mmap each time; the kernel then faults them in
4 KiB pages: ~230,000 page faults and ~0.4 s of system time per 10M training step, 8% of the step.
glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35+) makes malloc advise transparent huge
pages on those mappings, 512x fewer faults. glibc reads tunables only when a process starts, so a
command re-executes itself once, before doing anything else, with the tunable added.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_LAUNCH_TUNABLES = "MGDT_JAX_LAUNCH_GLIBC_TUNABLES"  # the user's own value, kept across the re-execution
_TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_pages_need_advice() -> bool:
    """True where the kernel grants transparent huge pages to mappings that ask (mode "madvise")."""
    try:
        return "[madvise]" in _TRANSPARENT_HUGE_PAGES.read_text()
    except OSError:
        return False


def reexec_with_huge_page_malloc() -> None:
    """Re-executes this process with the tunable set, unless it is set already or cannot help.

    Nothing changes off Linux/glibc, where the kernel gives huge pages unasked ("always") or never,
    and where GLIBC_TUNABLES already names ``glibc.malloc.hugetlb`` (the user's choice wins; this
    also ends the re-execution). Call it first thing in a command's ``main``.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or platform.libc_ver()[0] != "glibc" or not _huge_pages_need_advice():
        return
    environment = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, HUGE_PAGE_TUNABLE])))
    environment[_LAUNCH_TUNABLES] = tunables
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environment)


def launch_environment() -> dict[str, str]:
    """This process's environment as it was launched, without the tunable a re-execution added.

    For child processes that should run as the user started them, e.g. a benchmark's baseline.
    """
    environment = dict(os.environ)
    if _LAUNCH_TUNABLES in environment:
        launched = environment.pop(_LAUNCH_TUNABLES)
        if launched:
            environment["GLIBC_TUNABLES"] = launched
        else:
            environment.pop("GLIBC_TUNABLES", None)
    return environment


def available_bytes() -> int | None:
    """Memory this process may still take, or None off Linux: ``MemAvailable``, capped by the limit
    of this process's cgroup (v2: ``memory.max`` less what it uses, page cache it can drop not
    counted as used; v1 limits are not read)."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        group = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / group.strip().lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit.isdigit():
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
            used = int((folder / "memory.current").read_text()) - int(stat.get("inactive_file", 0))
            available = min(available, int(limit) - used)
    except (OSError, ValueError, StopIteration):
        pass
    return available


def describe_bytes(size: float) -> str:
    """``size`` bytes for a message: "512 KiB", "3.2 GiB" (binary units; negative sizes keep their sign)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:,.0f} bytes"

