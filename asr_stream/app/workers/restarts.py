"""How soon a dead child process is started again: at once, then slower if it keeps dying.

A process that crashes once (a bug hit by one call, the OOM killer) should be back at once; one
that dies right after every start (a broken GPU, a deleted model) must not be respawned in a
tight loop that burns the CPU the other processes need and floods the logs.
"""

from __future__ import annotations

import time

FIRST_DELAY_S = 0.0
MAX_DELAY_S = 30.0
#: A child that ran this long since its last start counts as healthy: the next restart is immediate.
HEALTHY_AFTER_S = 60.0


class Backoff:
    """Delays for successive restarts of one child: 0, 1, 2, 4, ... 30 s while it keeps dying early."""

    def __init__(self, healthy_after_s: float = HEALTHY_AFTER_S) -> None:
        self._healthy_after_s = healthy_after_s
        self._failures = 0
        self._ready_at: float | None = None  # when the child last came up, if it has since the last death

    def started(self) -> None:
        """The child came up (call when it reports ready)."""
        self._ready_at = time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before the next start, counting this death (or failed start)."""
        if self._ready_at is not None and time.monotonic() - self._ready_at >= self._healthy_after_s:
            self._failures = 0
        self._ready_at = None
        self._failures += 1
        return FIRST_DELAY_S if self._failures == 1 else min(MAX_DELAY_S, 2.0 ** (self._failures - 2))
