"""Operator tools: the metrics endpoint, `run --workers N` under signals, `check`'s lines."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

from conftest import Harness, msg, ok, worker_env

WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbimport", *args], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_the_metrics_endpoint_serves_counters_by_code_batch_latency_rate_and_depth(
    harness: Harness, tmp_path: Path
) -> None:
    """Given `run --metrics-port P` answering three good messages and one bad one, then
    http://…:P/metrics serves results by code, the batch latency histogram, the rate and
    the import queue's depth, in the Prometheus text format."""
    port = free_port()
    env = worker_env(harness.settings, IMPORT_LOG_INTERVAL_S="0.2")
    worker = start("run", "--metrics-port", str(port), env=env, cwd=tmp_path)
    try:
        harness.publish(*(msg(email=f"m{i}@example.com") for i in range(3)), b"not json")
        wait_for(lambda: harness.queue_depth(harness.settings.result_queue) == 4, "four results")

        def scraped_depth() -> str | None:
            try:
                text = scrape(port)
            except OSError:
                return None
            return text if metric(text, "dbimport_queue_depth") is not None else None

        wait_for(scraped_depth, "a scrape with the queue depth")
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


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_workers_2_drains_without_duplicates_and_sigterm_stops_both_children(
    harness: Harness, tmp_path: Path
) -> None:
    """Given `run --workers 2` on a queue of 400 messages over 100 e-mails, then both
    children work, every message is answered once with one profile per e-mail; SIGTERM
    to the parent reaches both children, which finish and exit, and the parent exits 0."""
    emails = [f"w{i % 100}@example.com" for i in range(400)]
    harness.publish(*(msg(email=e, feedback_id=str(n), data={"_fname": f"F{n}"}) for n, e in enumerate(emails)))
    env = worker_env(harness.settings, IMPORT_BATCH_SIZE="20", IMPORT_PREFETCH="40")
    parent = start("run", "--workers", "2", env=env, cwd=tmp_path)
    try:
        wait_for(lambda: len(children_of(parent.pid)) == 2, "two workers")
        children = children_of(parent.pid)
        wait_for(lambda: harness.queue_depth(harness.settings.result_queue) == 400, "400 results")
        started = time.monotonic()
        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=WAIT_S)[0]
        stopped_s = time.monotonic() - started
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, output[-3000:]
    assert stopped_s < 10, stopped_s
    assert all(not Path(f"/proc/{pid}").exists() for pid in children), output[-2000:]
    handled = [int(n) for n in re.findall(r"stopped: handled=(\d+)", output)]
    assert len(handled) == 2 and sum(handled) == 400, output[-3000:]
    results = ok(harness.results())
    assert sorted(int(r["feedback_id"]) for r in results) == list(range(400))
    assert harness.count("SELECT count(*) FROM profiles") == 100
    assert harness.count("SELECT count(DISTINCT email) FROM profiles") == 100


def test_workers_share_the_parents_lock(harness: Harness, tmp_path: Path) -> None:
    """Given `run --workers 2 --lock-file L` running, then a second start with the same
    lock file exits 0 at once, whatever its --workers."""
    lock = tmp_path / "dbimport.lock"
    env = worker_env(harness.settings)
    first = start("run", "--workers", "2", "--lock-file", str(lock), env=env, cwd=tmp_path)
    try:
        wait_for(lambda: len(children_of(first.pid)) == 2, "two workers")
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "dbimport", "run", "--workers", "3", "--lock-file", str(lock)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
        )
        assert second.returncode == 0, second.stderr
        assert time.monotonic() - started < 5
        assert "another run holds" in second.stderr
        assert len(children_of(first.pid)) == 2
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=WAIT_S)
    assert first.returncode == 0


def test_check_names_a_missing_unique_index_on_its_own_line(harness: Harness, tmp_path: Path) -> None:
    """Given the store lost the unique index that keeps e-mails unique per database, then
    `check` prints a line naming that key and exits 1; the other checks still pass."""
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX profiles_email_key")
    done = subprocess.run(
        [sys.executable, "-m", "dbimport", "check"], env=worker_env(harness.settings),
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.splitlines() == ["schema: missing unique key on profiles (db_id, email)"], done.stdout
