"""Log lines that an attacker or a broken peer cannot multiply: throttled per key, fields clipped.

A fuzzer sending 20,000 bad SIP datagrams must not produce 20,000 warnings, and a 30 KB Call-ID
must not be written out whole. `ThrottledLog` writes the first event of each key (typically
source address + kind of problem) at once, then counts repeats for `interval_s` and folds the
count into the next line that gets through: "... (and 312 more like this in the last 10 s)".
Written here because the stdlib has no rate limiting and the known recipes (a `logging.Filter`
keyed on the message) cannot tell sources apart once the arguments are merged in.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

#: Default length of a peer-controlled value in a log line: room for a UUID@host Call-ID.
CLIP_CHARS = 120


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """`value` as text of at most about `limit` characters, saying how much was cut.

    Control characters are escaped (repr-style) so a peer cannot forge extra log lines.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and len(text) <= limit:
        return text
    shown = repr(text[:limit])[1:-1]
    return shown if len(text) <= limit else f"{shown}…(+{len(text) - limit} chars)"


@dataclass(slots=True)
class _Window:
    opened: float  # when the line that opened this window was written
    suppressed: int = 0


class ThrottledLog:
    """At most one line per key every `interval_s`; the rest are counted, not lost.

    Memory is bounded by `max_keys`: when full, the key seen least recently is forgotten (its
    pending count is added to the next line written for any key, so totals stay honest).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        self._forgotten = 0  # repeats counted under keys that were evicted before being reported

    def warning(self, key: Hashable, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log at WARNING unless `key` logged within `interval_s`; True when a line was written."""
        return self.log(logging.WARNING, key, message, *args, exc_info=exc_info)

    def log(self, level: int, key: Hashable, message: str, *args: object, exc_info: bool = False) -> bool:
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.opened < self.interval_s:
            window.suppressed += 1
            self._windows.move_to_end(key)
            return False
        self._windows[key] = _Window(now)
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_keys:
            _, evicted = self._windows.popitem(last=False)
            self._forgotten += evicted.suppressed
        suppressed = (window.suppressed if window is not None else 0) + self._forgotten
        self._forgotten = 0
        if suppressed:
            message += " (and %d more like this in the last %.0f s)"
            args = (*args, suppressed, self.interval_s)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
