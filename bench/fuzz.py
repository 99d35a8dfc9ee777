"""A longer fuzz run of the SIP/SDP/SIPREC/RTP/RTCP/RFC 4733 parsers than `make test` affords.

    .venv/bin/python bench/fuzz.py                 # 20,000 examples per property (~7 min on 2 cores)
    .venv/bin/python bench/fuzz.py --examples 2000 # a quicker pass

It runs the properties of tests/test_fuzz_parsers.py (the same code, not a copy) with a bounded
example count per property, through pytest, and prints one line per property with its time.
Hypothesis prints a minimal failing input for anything that breaks a property; add it to
tests/malformed/ (SIP) or as an explicit example when fixing the bug.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples per property (bounded run)")
    parser.add_argument("-k", default="", help="only properties matching this pytest -k expression")
    args = parser.parse_args()
    if not 1 <= args.examples <= 1_000_000:
        print(f"fuzz: --examples must be 1..1,000,000, got {args.examples}", file=sys.stderr)
        return 2
    env = {**os.environ, "ASR_FUZZ_EXAMPLES": str(args.examples), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", "--durations-min=0.5",
               "--timeout=3600", str(REPO / "tests" / "test_fuzz_parsers.py")]  # fmt: skip
    if args.k:
        command += ["-k", args.k]
    print(f"# fuzz: {args.examples} examples per property, {date.today()}, {platform.node()} ({os.cpu_count()} CPUs)")
    return subprocess.run(command, env=env, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
