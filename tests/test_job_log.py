"""The job log: every error result in it, reopened after logrotate, and the periodic throughput line."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Harness, msg, worker_env

WAIT_S = 15.0




def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dbimport", *args]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def holds(path: Path, text: str) -> Callable[[], bool]:
    return lambda: path.exists() and text in path.read_text()


def test_every_error_result_is_logged_with_its_feedback_id_code_and_text(harness: Harness, tmp_path: Path) -> None:
    harness.publish(
        b"{not json",
        msg(db_id=99, email="a@example.com", feedback_id="fb-404"),
        {"account_id": 1, "db_id": 1, "feedback_id": "fb-400"},
        msg(db_id=3, email="a@example.com", feedback_id="fb-403"),
        msg(email="x@example.com", data={"_fname": "x" * 3000}, feedback_id="fb-413"),
        msg(email="ok@example.com", feedback_id="fb-ok"),
    )
    env = worker_env(harness.settings, IMPORT_MAX_MESSAGE_BYTES="2048")
    done = subprocess.run(command("run", "--until-empty"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    results = harness.results()
    assert sorted(r["error"] for r in results) == [0, 400, 400, 403, 404, 413]
    log = Path(harness.settings.log_path).read_text().splitlines()
    for result in results:
        if result["error"] == 0:
            continue
        lines = [
            line for line in log
            if result["error_text"] in line and str(result["error"]) in line
            and repr(result["feedback_id"]) in line
        ]
        assert lines, f"no log line for {result}:\n" + "\n".join(log)


def test_the_log_file_is_reopened_after_logrotate_moves_it(harness: Harness, tmp_path: Path) -> None:
    """Given a running worker, when logrotate renames its log, then the next lines go to a new
    file of the configured name, and SIGTERM stops the worker with exit 0."""
    log_file = Path(harness.settings.log_path)
    rotated = log_file.with_name(log_file.name + ".1")
    process = subprocess.Popen(command("run", "--max-runtime", "30"), env=worker_env(harness.settings),
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.publish(msg(db_id=99, feedback_id="before-rotate"))
        wait_for(holds(log_file, "before-rotate"), "the first error line")
        log_file.rename(rotated)
        harness.publish(msg(db_id=99, feedback_id="after-rotate"))
        wait_for(holds(log_file, "after-rotate"), "the error line in a new file")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "before-rotate" in rotated.read_text()
    assert "after-rotate" not in rotated.read_text()
    assert "stopped:" in log_file.read_text()
    assert [r["feedback_id"] for r in harness.results()] == ["before-rotate", "after-rotate"]


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
