"""Every daemon process caps numpy's BLAS pool at one thread (app/blas_threads.py).

Checked in fresh interpreters, whose pool would otherwise have a thread per core (up to
OPENBLAS_NUM_THREADS=4): a child process the daemon spawns, whose entry point imports nothing
else, and the daemon's own process, where the cap comes first in `Daemon.start` (even a start that
fails on an unprepared model has applied it). On a one-core machine there is nothing to tell apart.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from asr_stream.app.logs import LogSettings
from asr_stream.app.workers.process import ChildProcess
from asr_stream.common.ipc import Link

REPO = Path(__file__).resolve().parents[1]
ENV = {"OPENBLAS_NUM_THREADS": "4", "PATH": ""}


def blas_threads() -> int:
    return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")


def uncapped_blas_threads() -> int:
    """numpy's pool in a fresh interpreter with the test's environment."""
    script = "import numpy; from threadpoolctl import threadpool_info; "
    script += "print(max(p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'))"
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


async def report_blas_threads(spec: object, link: Link) -> int:
    """A child's main: its exit status is 10 + its BLAS pool's thread count (1 would be a failure's).

    It loads numpy only now, after the child's start-up capped the pool, as a worker's code may."""
    import numpy  # noqa: F401

    return 10 + blas_threads()


@pytest.fixture(autouse=True)
def several_blas_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")  # what a spawned child inherits
    if uncapped_blas_threads() < 2:
        pytest.skip("one core: numpy's pool has one thread anyway")


async def test_a_child_process_runs_one_blas_thread() -> None:
    child = ChildProcess("blas-probe", report_blas_threads, None, LogSettings())
    await child.start()
    assert await child.reap(timeout_s=60) == 11


def test_the_daemon_process_runs_one_blas_thread(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: whisper-tiny.en\nengines_dir: {tmp_path / 'no-engines'}\nsip: {{listen: '127.0.0.1:0'}}\n")
    script = textwrap.dedent(
        f"""
        import asyncio
        from threadpoolctl import threadpool_info
        from asr_stream.app.config import load_config
        from asr_stream.app.daemon import Daemon

        def blas_threads():
            return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")

        try:
            asyncio.run(Daemon(load_config({str(config)!r}, environ={{}})).start())
        except Exception as error:  # the model is not prepared: the start fails after the cap
            print(type(error).__name__)
        print(blas_threads())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == ["ModelError", "1"], done.stdout + done.stderr
