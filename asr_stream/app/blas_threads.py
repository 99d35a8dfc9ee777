"""One BLAS thread per daemon process: the cores belong to the engines' own thread pools.

numpy's OpenBLAS starts a thread per core and, after each matrix product (the log-mel filterbank
of every request, for one), keeps those threads spinning for a while in wait for more work. The
daemon's products are small, and its cores are already divided between the engines' threads (one
ONNX Runtime session per lane, sized for the machine), so the spinning only steals the core that the
other lane is computing on: on 2 cores a tiny.en partial cost 262-267 ms of CPU with numpy's
default pool and 162 ms with one thread (bench/partials.py; docs/benchmarks.md, "Partials that scale").
threadpoolctl caps the pool of the BLAS that numpy loaded, at run time; it acts only on libraries
already loaded, so numpy is imported first (an environment variable would instead have to be set
before any import).
"""

from __future__ import annotations

import numpy  # noqa: F401  (loads the BLAS library whose pool is capped below)
from threadpoolctl import threadpool_limits


def limit_blas_threads() -> None:
    """Cap numpy's BLAS (and any other loaded) at one thread, for the rest of this process's life."""
    threadpool_limits(limits=1, user_api="blas")
