"""How many CPUs this process may really use: the smaller of its cgroup v2 CPU quota and its CPU affinity.

``os.cpu_count()`` (and torch's default thread count) is the host's core count. A container limited to 2 CPUs on
a 64-core node that starts 64 threads is throttled by the kernel for most of every scheduling period, and its
threads wait for each other: thread pools are sized from :func:`available_cpus` instead.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from pathlib import Path

logger = logging.getLogger("clipsync.cpus")

#: The cgroup v2 CPU limit of the process's own cgroup (a container sees its cgroup at the root).
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(cpu_max: Path = CPU_MAX) -> int | None:
    """The CPU quota of a cgroup v2 ``cpu.max`` file in whole CPUs, or ``None`` when it sets none.

    ``cpu.max`` holds ``"<quota> <period>"`` in microseconds, or ``"max <period>"`` without a limit. A fractional
    quota is rounded down (at least 1): a thread more than the quota pays for is throttled, not faster.

    Args:
        cpu_max: The file to read (a parameter so that tests can give their own).
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):  # no cgroup v2 (or not mounted): no quota known
        return None
    if quota == "max":
        return None
    try:
        cpus = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        logger.warning("cpus: ignoring an unreadable %s: %r %r", cpu_max, quota, period)
        return None
    return max(1, math.floor(cpus))


def available_cpus(cpu_max: Path = CPU_MAX, affinity: Collection[int] | None = None) -> int:
    """The CPUs this process can use: the smaller of its cgroup quota and the CPUs it may run on (at least 1).

    Args:
        cpu_max: The cgroup v2 ``cpu.max`` file.
        affinity: The CPUs the process may run on; default ``os.sched_getaffinity(0)`` (``os.cpu_count()`` where
            the platform has no affinity call).
    """
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cpus = max(1, len(affinity))
    quota = cgroup_cpu_limit(cpu_max)
    return cpus if quota is None else min(cpus, quota)


def thread_count(requested: int = 0, workers: int = 1, cpu_max: Path | None = None) -> int:
    """The threads one worker may use: ``requested`` when set, else its share of :func:`available_cpus`.

    Every ``num_threads: 0`` (auto) setting and every decoder's thread count goes through here, so that a
    container limited to 2 CPUs on a 64-core node starts 2 threads, not 64.

    Args:
        requested: An explicit thread count (``num_threads`` of a config); 0 means auto.
        workers: Processes of the stage running side by side, which share the CPUs.
        cpu_max: The cgroup v2 ``cpu.max`` file; default :data:`CPU_MAX`, read when called.
    """
    if requested > 0:
        return requested
    return max(1, available_cpus(cpu_max or CPU_MAX) // max(1, workers))


def set_torch_threads(requested: int = 0, workers: int = 1) -> int:
    """Give torch :func:`thread_count` intra-op threads (torch's own default is the host's core count).

    Returns:
        The thread count set.
    """
    import torch

    threads = thread_count(requested, workers)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.debug("cpus: torch uses %d thread(s)", threads)
    return threads
