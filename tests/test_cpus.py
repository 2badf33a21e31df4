"""available_cpus: the smaller of the cgroup v2 quota (rounded down, at least 1) and the CPU affinity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.common.cpus import available_cpus, cgroup_cpu_limit


def _cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "quota"),
    [
        ("200000 100000\n", 2),  # 2 CPUs
        ("150000 100000\n", 1),  # 1.5: a second thread would be throttled half the time
        ("399999 100000\n", 3),
        ("50000 100000\n", 1),  # half a CPU still runs one thread
        ("100000 50000\n", 2),  # another period
        ("max 100000\n", None),  # no limit
        ("garbage\n", None),
        ("100000 0\n", None),
        ("", None),
    ],
)
def test_quota_is_rounded_down_to_whole_cpus(tmp_path: Path, text: str, quota: int | None):
    assert cgroup_cpu_limit(_cpu_max(tmp_path, text)) == quota


def test_smaller_of_quota_and_affinity(tmp_path: Path):
    two = _cpu_max(tmp_path, "200000 100000")
    assert available_cpus(two, affinity=range(64)) == 2  # a 2-CPU container on a 64-core node
    assert available_cpus(two, affinity={3}) == 1  # pinned to one core under a larger quota
    assert available_cpus(_cpu_max(tmp_path, "max 100000"), affinity={0, 5, 7}) == 3
    assert available_cpus(tmp_path / "missing", affinity=range(8)) == 8  # no cgroup v2
    assert available_cpus(two, affinity=()) == 1


def test_defaults_read_this_process():
    cpus = available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
