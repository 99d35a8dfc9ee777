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
    """User + system CPU seconds of process `pid` so far (its threads included), from /proc; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def machine_busy_s() -> float:
    """CPU seconds every core of this machine has spent busy since boot (/proc/stat: all but idle and iowait).

    Over a step, this less the daemon's and the generator's own CPU is what everything else took:
    on a shared machine, the first thing to look at when two runs of the same step disagree.
    """
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")  # guest time is already in user
