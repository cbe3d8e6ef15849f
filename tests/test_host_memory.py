"""Commands re-execute once with glibc's huge-page malloc tunable, and respect a user's own setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mgdt_jax.core import host_memory

PROGRAM = (
    "from mgdt_jax.core import host_memory; host_memory.reexec_with_huge_page_malloc(); import os; "
    "print(os.environ.get('GLIBC_TUNABLES', ''), host_memory.launch_environment().get('GLIBC_TUNABLES', '-'))"
)


def run(environment: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not host_memory._huge_pages_need_advice(), reason="the kernel's huge pages are not 'madvise'")
def test_a_command_restarts_itself_with_the_tunable_added_to_the_users_own():
    base = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    assert run(base) == f"{host_memory.HUGE_PAGE_TUNABLE} -"  # children can get the launch environment back
    own = "glibc.malloc.arena_max=2"
    assert run(dict(base, GLIBC_TUNABLES=own)) == f"{own}:{host_memory.HUGE_PAGE_TUNABLE} {own}"


def test_a_users_own_hugetlb_setting_wins():
    assert run(dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=0")) == "glibc.malloc.hugetlb=0 glibc.malloc.hugetlb=0"
