"""One BLAS thread per daemon process: the cores belong to the engines' own thread pools.

numpy's OpenBLAS starts a thread per core and, after each matrix product (the log-mel filterbank
of every request, for one), keeps those threads spinning for a while in wait for more work. The
daemon's products are small, and its cores are already divided between the engines' threads (one
ONNX Runtime session per lane, sized for the machine), so the spinning only steals the core that the
other lane is computing on: on 2 cores a tiny.en partial cost 262-267 ms of CPU with numpy's
default pool and 162 ms with one thread (bench/partials.py; docs/benchmarks.md, "Partials that scale").
threadpoolctl caps the pool of whichever BLAS numpy loaded, at run time, so the order of imports
does not matter the way an environment variable would.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def limit_blas_threads() -> None:
    """Cap every BLAS library loaded in this process at one thread, for the rest of its life."""
    threadpool_limits(limits=1, user_api="blas")
