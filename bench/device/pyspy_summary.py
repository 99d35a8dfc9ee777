"""Summarise py-spy raw profiles (`record --format raw --threads`): per process, where each thread's samples go.

    python3 bench/device/pyspy_summary.py RESULTS/profiles/*.txt

For each file: samples per thread, and per thread the functions that hold the most samples, by
self time (the innermost frame) and by total time (anywhere on the stack). A device run returns
few files, so the ladder's raw stacks are read on the device and only this summary comes back.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

TOP = 12


def summarise(path: Path) -> str:
    own: dict[str, Counter[str]] = defaultdict(Counter)
    anywhere: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        own[thread][frames[-1] if frames else "(idle)"] += int(count)
        for frame in set(frames):
            anywhere[thread][frame] += int(count)
    lines = [f"== {path.name}"]
    for thread, counts in sorted(own.items(), key=lambda item: -sum(item[1].values())):
        total = sum(counts.values())
        lines.append(f"-- {thread}: {total} samples")
        lines += [f"   self  {100 * n / total:5.1f}%  {frame}" for frame, n in counts.most_common(TOP)]
        lines += [f"   total {100 * n / total:5.1f}%  {frame}" for frame, n in anywhere[thread].most_common(TOP)]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(summarise(Path(name)) for name in sys.argv[1:]))
