"""Prometheus metrics: the worker's counters, batch latency and queue depth over HTTP."""
from __future__ import annotations

import socket
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .errors import CannotCreate
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
        refusals = CounterMetricFamily(
            "dbimport_service_refusals",
            "Times a service refused the worker while it was running (credentials, access), by service.",
            labels=["service"],
        )
        for service in ("rabbitmq", "postgresql"):
            refusals.add_metric([service], s.refusals[service])
        yield refusals
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
    """Expose the metrics on http://addr:port/metrics from a daemon thread;
    CannotCreate if the port cannot be had."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise CannotCreate(port_problem(port, exc)) from None


def port_problem(port: int, exc: OSError) -> str:
    return (
        f"cannot serve metrics on port {port}: {exc.strerror or exc} "
        "(another process listens there: choose another --metrics-port, or stop that process)"
    )


def port_free(port: int, *, addr: str = "0.0.0.0") -> str | None:
    """None if `port` can be listened on now, else the problem, for `check`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr, port))
        except OSError as exc:
            return port_problem(port, exc)
    return None

