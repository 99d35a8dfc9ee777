"""Which machine a benchmark ran on and how busy it was: every number in docs/ names both."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (the CPU machine is shared with other work)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    """CPU model, usable cores and Python version, e.g. 'lscpu "Intel(R) Xeon(R) Processor", 2 cores, Python 3.11.7'."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        lscpu = []
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), platform.processor())
    return f'lscpu "{model}", {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}'


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` and of its child processes so far, from /proc; None if gone.

    Its children count because a daemon with `workers: N` does most of its work in them (the
    inference process, the ingest workers): live ones are summed one by one, and those that ended
    and were reaped are in the parent's own cutime and cstime.
    """
    stats = _process_stats()
    if pid not in stats:
        return None
    tree, pending = [], [pid]
    while pending:
        parent = pending.pop()
        tree.append(parent)
        pending.extend(child for child, (ppid, _) in stats.items() if ppid == parent)
    return sum(stats[member][1] for member in tree) / os.sysconf("SC_CLK_TCK")


def _process_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime + cutime + cstime in clock ticks) of every process (/proc/PID/stat)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]))  # ppid; fields 14-17
    return stats


def machine_busy_s() -> float:
    """CPU seconds every core of this machine has spent busy since boot (/proc/stat: all but idle and iowait).

    Over a step, this less the daemon's and the generator's own CPU is what everything else took:
    on a shared machine, the first thing to look at when two runs of the same step disagree.
    """
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")  # guest time is already in user
