"""Rate-limited warnings: bad input is named in the log, but a flood of it is not a flood of log lines.

Why time-based rather than "the first N": a daemon runs for weeks. A cap on the first N warnings of
a parser goes quiet for good after one bad burst, so the next bad line a month later would be only
a counter. Here each key (a file, a config source) gets `burst` warnings per `period_s`; what is
suppressed in a period is summarised with its count when the next period starts, so the log always
says how many lines were skipped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(slots=True)
class _Slot:
    start: float
    emitted: int = 0
    suppressed: int = 0


class WarnLimiter:
    """At most `burst` warnings per key and period; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, burst: int = 20, period_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 level: int = logging.WARNING) -> None:
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self.clock = clock
        self.level = level
        self._slots: dict[str, _Slot] = {}

    def warn(self, key: str, message: str, *args: Any) -> bool:
        """Log `message % args` unless this key used its burst in the current period.

        Returns True when the line was logged."""
        now = self.clock()
        slot = self._slots.get(key)
        if slot is None or now - slot.start >= self.period_s:
            if slot is not None and slot.suppressed:
                self.logger.log(self.level, "%s: %d more warnings like the above were suppressed "
                                "in %.0f s", key, slot.suppressed, self.period_s)
            slot = self._slots[key] = _Slot(now)
        if slot.emitted < self.burst:
            slot.emitted += 1
            self.logger.log(self.level, message, *args)
            if slot.emitted == self.burst:
                self.logger.log(self.level, "%s: further warnings are only counted for the next "
                                "%.0f s", key, self.period_s)
            return True
        slot.suppressed += 1
        return False
