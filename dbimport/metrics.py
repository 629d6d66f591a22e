"""Prometheus metrics: the worker's counters, batch latency and queue depth over HTTP."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import Stats


class StatsCollector(Collector):
    """Reads `Stats` at scrape time: the counters have one source, the worker's own."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        results = CounterMetricFamily(
            "dbimport_results", "Messages answered, by result code.", labels=["code"]
        )
        for code, n in sorted(s.by_code.items()):
            results.add_metric([str(code)], n)
        yield results
        for name, value, text in (
            ("dbimport_profiles_created", s.created, "Profiles created."),
            ("dbimport_profiles_updated", s.updated, "Profile updates applied."),
            ("dbimport_replayed", s.replayed, "Redelivered messages answered from the message log."),
            ("dbimport_requeued", s.requeued, "Messages given back after an internal failure."),
            ("dbimport_dead_letters", s.dead, "Messages moved to the dead-letter queue."),
            ("dbimport_batches", s.batches, "Batches settled."),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield HistogramMetricFamily(
            "dbimport_batch_seconds", "Time from a batch's delivery to its ack.",
            buckets=s.batch_histogram(), sum_value=s.batch_seconds,
        )
        yield GaugeMetricFamily("dbimport_messages_per_second", "Rate over the last log interval.", value=s.rate)
        if s.queue_depth is not None:
            yield GaugeMetricFamily("dbimport_queue_depth", "Ready messages in the import queue.", value=s.queue_depth)


def serve(stats: Stats, port: int, *, addr: str = "0.0.0.0") -> None:
    """Expose the metrics on http://addr:port/metrics from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    start_http_server(port, addr=addr, registry=registry)

