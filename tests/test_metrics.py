"""Metrics: the Prometheus endpoint of `run --metrics-port`, and the throughput and idle lines.

README.md, "Operations": "Metrics", and the throughput line of "Logging".

The refusals metric is checked with the refusals while running (test_cli.py); the
other lines of the job log in test_job_log.py.
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from conftest import Harness, free_port, metric, msg, scrape, spawn, worker_env
from faults.processes import command, wait_for

WAIT_S = 30.0


def test_the_metrics_endpoint_serves_counters_by_code_batch_latency_rate_and_depth(
    harness: Harness, tmp_path: Path
) -> None:
    """Given `run --metrics-port P` answering three good messages and one bad one, then
    http://…:P/metrics serves results by code, the batch latency histogram, the rate and
    the import queue's depth, in the Prometheus text format."""
    port = free_port()
    env = worker_env(harness.settings, IMPORT_LOG_INTERVAL_S="0.2")
    worker = spawn("run", "--metrics-port", str(port), env=env, cwd=tmp_path)
    try:
        harness.publish(*(msg(email=f"m{i}@example.com") for i in range(3)), b"not json")
        wait_for(lambda: harness.queue_depth(harness.settings.result_queue) == 4, "four results", timeout_s=WAIT_S)

        def scraped_depth() -> str | None:
            try:
                text = scrape(port)
            except OSError:
                return None
            return text if metric(text, "dbimport_queue_depth") is not None else None

        wait_for(scraped_depth, "a scrape with the queue depth", timeout_s=WAIT_S)
        text = scrape(port)
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=WAIT_S)[0]
    assert worker.returncode == 0, output[-2000:]
    assert metric(text, "dbimport_results_total", '{code="0"}') == 3, text
    assert metric(text, "dbimport_results_total", '{code="400"}') == 1, text
    assert metric(text, "dbimport_profiles_created_total") == 3, text
    assert (metric(text, "dbimport_batch_seconds_count") or 0) >= 1, text
    assert metric(text, "dbimport_batch_seconds_bucket", '{le="+Inf"}') == metric(text, "dbimport_batch_seconds_count")
    assert metric(text, "dbimport_messages_per_second") is not None, text
    assert metric(text, "dbimport_queue_depth") == 0, text
    assert "# TYPE dbimport_batch_seconds histogram" in text


# --- the throughput and idle lines of the job log ---------------------------------------------


def test_an_idle_worker_says_so_once_instead_of_repeating_its_throughput_line(harness: Harness, tmp_path: Path) -> None:
    """Given 3 messages and a log interval of 0.3 s, when the worker runs for 2.5 s, then the
    throughput line comes while it works, and after that one "idle" line, not one every 0.3 s."""
    interval_s = 0.3
    harness.publish(*(msg(email=f"t{i}@example.com") for i in range(3)))
    env = worker_env(harness.settings, IMPORT_LOG_INTERVAL_S=str(interval_s))
    done = subprocess.run(command("run", "--max-runtime", "2.5"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    log = Path(harness.settings.log_path).read_text().splitlines()
    busy = [line for line in log if "msg/s" in line]
    idle = [line for line in log if "idle: no messages to handle" in line]
    assert len(busy) == 1 and "handled 3 messages" in busy[0], busy
    assert len(idle) == 1 and "handled 3 so far" in idle[0], idle


def test_the_throughput_line_comes_every_interval_while_working_and_idle_at_most_every_few_minutes() -> None:
    """The reporter's clock is driven by hand: busy intervals each get a line; an idle
    stretch gets one line at its start, then one every IDLE_REPORT_INTERVAL_S at most."""
    import logging

    from dbimport.stats import IDLE_REPORT_INTERVAL_S, Stats, ThroughputReporter

    now = [0.0]
    stats = Stats()
    reporter = ThroughputReporter(stats, interval_s=5.0, depth=lambda: 0, clock=lambda: now[0])
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("dbimport.throughput")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for _ in range(3):  # 15 s of work
            now[0] += 5.0
            stats.handled += 100
            reporter.maybe_report()
        for _ in range(int(2 * IDLE_REPORT_INTERVAL_S / 5.0)):  # ten minutes idle
            now[0] += 5.0
            reporter.maybe_report()
        now[0] += 5.0
        stats.handled += 1
        reporter.maybe_report()
    finally:
        logger.removeHandler(handler)
    kinds = ["busy" if "msg/s" in line else "idle" for line in lines]
    assert kinds == ["busy", "busy", "busy", "idle", "idle", "busy"], lines
