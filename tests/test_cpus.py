"""available_cpus: the smaller of the cgroup v2 quota (rounded down, at least 1) and the CPU affinity; thread_count
and set_torch_threads: num_threads 0 (auto) means those CPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.common import cpus
from components.common.cpus import available_cpus, cgroup_cpu_limit, set_torch_threads, thread_count


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


def test_thread_count_is_the_request_or_a_worker_share_of_the_cpus(tmp_path: Path):
    four = _cpu_max(tmp_path, "400000 100000")
    assert thread_count(3, cpu_max=four) == 3  # an explicit num_threads wins
    assert thread_count(0, cpu_max=four) == min(4, len(os.sched_getaffinity(0)))
    assert thread_count(0, workers=64, cpu_max=four) == 1  # never 0
    if len(os.sched_getaffinity(0)) >= 2:
        assert thread_count(0, workers=2, cpu_max=four) == min(4, len(os.sched_getaffinity(0))) // 2


def test_auto_torch_threads_follow_a_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(cpus, "CPU_MAX", _cpu_max(tmp_path, "100000 100000"))  # a 1-CPU container
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(0) == 1
        assert torch.get_num_threads() == 1
        assert set_torch_threads(2) == 2  # num_threads: 2 is taken as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
