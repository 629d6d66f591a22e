"""Counters of what the worker handled, and the periodic throughput line."""
from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("dbimport.throughput")

# An idle worker says so once, then at most this often.
IDLE_REPORT_INTERVAL_S = 300.0
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Stats:
    """Totals since start: the test oracle, the log line's and the metrics' source."""

    handled: int = 0
    created: int = 0
    updated: int = 0
    replayed: int = 0
    requeued: int = 0
    dead: int = 0
    batches: int = 0
    by_code: Counter[int] = field(default_factory=Counter)
    # Refusals while running (credentials rotated, access revoked), by service.
    refusals: Counter[str] = field(default_factory=Counter)
    batch_seconds: float = 0.0
    batch_buckets: list[int] = field(default_factory=lambda: [0] * len(BATCH_SECONDS_BUCKETS))
    # Set by the reporter, read by the metrics endpoint.
    rate: float = 0.0
    queue_depth: int | None = None

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.by_code.items() if code != 0)

    def observe_batch(self, seconds: float) -> None:
        self.batches += 1
        self.batch_seconds += seconds
        i = bisect.bisect_left(BATCH_SECONDS_BUCKETS, seconds)
        if i < len(self.batch_buckets):
            self.batch_buckets[i] += 1

    def batch_histogram(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound, count) pairs, ending with +Inf."""
        out, total = [], 0
        for bound, n in zip(BATCH_SECONDS_BUCKETS, self.batch_buckets):
            total += n
            out.append((str(bound), float(total)))
        out.append(("+Inf", float(self.batches)))
        return out


class ThroughputReporter:
    """Logs the rate every `interval_s`; `depth` reads the queue depth (None if unknown)."""

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
        self._last_requeued = stats.requeued
        self._last_batches = stats.batches
        self._last_batch_seconds = stats.batch_seconds
        self._idle_said_at: float | None = None

    def maybe_report(self) -> None:
        now = self._clock()
        elapsed = now - self._last_time
        if elapsed < self._interval_s:
            return
        s = self._stats
        s.rate = (s.handled - self._last_handled) / elapsed if elapsed > 0 else 0.0
        s.queue_depth = self._depth()
        if s.handled == self._last_handled and s.requeued == self._last_requeued:
            self._report_idle(now)
            return
        self._idle_said_at = None
        batches = s.batches - self._last_batches
        latency_ms = 1000 * (s.batch_seconds - self._last_batch_seconds) / batches if batches else 0.0
        errors = ", ".join(f"{code}={n}" for code, n in sorted(s.by_code.items()) if code != 0) or "none"
        log.info(
            "handled %d messages (%.1f msg/s over %.1f s, %d batches, %.0f ms a batch): "
            "created=%d updated=%d errors: %s; replayed=%d requeued=%d dead=%d; queue depth=%s",
            s.handled, s.rate, elapsed, batches, latency_ms, s.created, s.updated, errors,
            s.replayed, s.requeued, s.dead, "?" if s.queue_depth is None else s.queue_depth,
        )
        self._last_time = now
        self._last_handled = s.handled
        self._last_requeued = s.requeued
        self._last_batches = s.batches
        self._last_batch_seconds = s.batch_seconds

    def _report_idle(self, now: float) -> None:
        """Once when the worker becomes idle, then at most every IDLE_REPORT_INTERVAL_S."""
        self._last_time = now
        if self._idle_said_at is not None and now - self._idle_said_at < IDLE_REPORT_INTERVAL_S:
            return
        self._idle_said_at = now
        s = self._stats
        log.info(
            "idle: no messages to handle; handled %d so far; queue depth=%s",
            s.handled, "?" if s.queue_depth is None else s.queue_depth,
        )
