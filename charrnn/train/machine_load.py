"""How much of this process's cores other processes took: while auto probed, and while a run planned from the
clock trains.

A probe on a machine that is busy for the moment measures the moment: a width chosen from it is too narrow for
the rest of the run, when the machine is quiet again (the schedule follows the clock, train/replan.py, but the
width is fixed); and a plan that took the moment's speed for good would decay its rate early. Linux counts every
core's busy time (/proc/stat) and this process's own (its CPU time, and its finished children's: the loss plot
is drawn in a child process): what the cores this process may run on were busy with, less its own, is what other
processes took from it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Protocol

STAT = Path("/proc/stat")
IDLE_FIELDS = (3, 4)   # idle and iowait, in /proc/stat's cpuN lines (after the name): the rest is busy time
MIN_SHARE = 0.25       # the correction is at most 4x: a measurement this far off is not to be trusted further
BUSY_SHARE = 0.85      # a process that had less of its cores than this had them taken by others
CGROUP_QUOTAS = (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))


class LoadMeter(Protocol):
    cores: int   # the cores this process may run on

    def start(self) -> None: ...

    def others_cores(self) -> float:
        """Since start(): how many of this process's cores other processes kept busy, on average."""


def own_share(meter: LoadMeter, threads: int) -> float:
    """The share of its quiet speed this process had, `threads` threads sharing its cores fairly with the others'
    work: 1 where the cores left over hold every thread, else what is left over per thread."""
    if meter.cores <= 0 or threads <= 0:
        return 1.0
    return min(1.0, max(MIN_SHARE, (meter.cores - meter.others_cores()) / min(threads, meter.cores)))


class ProcStatLoad:
    """LoadMeter from /proc/stat (Linux); anywhere else, or unreadable, it reports 0 (no correction). On a GPU the
    probe's steps are the device's, not the cores': auto uses no meter there."""

    def __init__(self, stat: Path = STAT):
        self.stat = stat
        self.ids = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if _cpu_quota():   # a container's quota limits it for good, and /proc/stat counts the whole host: no meter
            self.ids = []
        self.cores = len(self.ids)
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.started: Optional[tuple] = None

    def _busy_seconds(self) -> Optional[float]:
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        wanted, busy = {f"cpu{core}" for core in self.ids}, 0.0
        for line in lines:
            name, *fields = line.split()
            if name in wanted:
                counts = [int(f) for f in fields[:8]]
                busy += sum(c for i, c in enumerate(counts) if i not in IDLE_FIELDS)
        return busy / self.tick

    def start(self) -> None:
        busy = self._busy_seconds()
        self.started = None if busy is None else (busy, _own_seconds(), time.perf_counter())

    def others_cores(self) -> float:
        if self.started is None or not self.cores:
            return 0.0
        busy = self._busy_seconds()
        if busy is None:
            return 0.0
        busy0, own0, wall0 = self.started
        wall = time.perf_counter() - wall0
        if wall <= 0:
            return 0.0
        others = (busy - busy0) - (_own_seconds() - own0)
        return min(float(self.cores), max(0.0, others / wall))


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the loss plot's)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def _cpu_quota(files=CGROUP_QUOTAS) -> bool:
    """Whether a cgroup CPU quota limits this process (cgroup v2 `cpu.max` other than "max", or v1 a positive
    `cpu.cfs_quota_us`)."""
    for path in files:
        try:
            value = path.read_text().split()[0]
        except (OSError, IndexError):
            continue
        if value != "max" and value.lstrip("-").isdigit() and int(value) > 0:
            return True
    return False
