"""Counters of what the worker handled, and the periodic throughput line."""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("dbimport.throughput")


@dataclass
class Stats:
    """Totals since start: the test oracle and the log line's source."""

    handled: int = 0
    created: int = 0
    updated: int = 0
    replayed: int = 0
    requeued: int = 0
    dead: int = 0
    batches: int = 0
    by_code: Counter[int] = field(default_factory=Counter)
    batch_seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.by_code.items() if code != 0)


class ThroughputReporter:
    """Logs the rate every `interval_s`; `depth` reads the queue depth (may fail)."""

    def __init__(
        self, stats: Stats, *, interval_s: float, depth: Callable[[], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._interval_s = interval_s
        self._depth = depth
        self._clock = clock
        self._last_time = clock()
        self._last_handled = stats.handled

    def maybe_report(self) -> None:
        now = self._clock()
        elapsed = now - self._last_time
        if elapsed < self._interval_s:
            return
        s = self._stats
        rate = (s.handled - self._last_handled) / elapsed if elapsed > 0 else 0.0
        errors = ", ".join(f"{code}={n}" for code, n in sorted(s.by_code.items()) if code != 0) or "none"
        depth = self._depth()
        log.info(
            "handled %d messages (%.1f msg/s over %.1f s): created=%d updated=%d errors: %s; "
            "replayed=%d requeued=%d dead=%d; queue depth=%s",
            s.handled, rate, elapsed, s.created, s.updated, errors,
            s.replayed, s.requeued, s.dead, "?" if depth is None else depth,
        )
        self._last_time = now
        self._last_handled = s.handled
