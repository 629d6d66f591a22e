"""Cron- and systemd-supervised operation: the lock file, clean stops on signals and limits,
services unreachable at start, and the crontab line, systemd unit and logrotate stanza
of docs/operations.md, tried for real."""
from __future__ import annotations

import grp
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg.conninfo
import pytest

from conftest import Harness, msg
from dbimport.config import Settings
from dbimport.errors import ExitCode
from faults.checks import email_stream
from faults.plugins import FAULT_MODE
from faults.processes import WorkerProcess, command, kill_tree, log_lines, wait_for, worker_env
from faults.proxy import TcpProxy
from faults.services import queue_counts

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
STOP_WITHIN_S = 5.0
RABBITMQ = ("127.0.0.1", 5672)
POSTGRES = ("127.0.0.1", 5432)


def answered(harness: Harness) -> int:
    return harness.queue_depth(harness.settings.result_queue)


def take_all(harness: Harness, queue: str) -> list[dict[str, Any]]:
    """Every message left in `queue`, consumed."""
    out = []
    while True:
        method, _props, body = harness.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(orjson.loads(body))


def assert_acked_exactly_what_it_answered(harness: Harness, messages: list[dict[str, Any]]) -> set[str]:
    """After a clean stop: each message answered once and gone, or unanswered and still
    queued; none left unacked. The feedback_ids answered."""
    queue = harness.settings.import_queue
    wait_for(lambda: queue_counts(queue).unacked == 0, "the broker to settle the closed channel", timeout_s=10)
    results = harness.results()
    answered_ids = [r["feedback_id"] for r in results]
    assert len(answered_ids) == len(set(answered_ids)), "a message was answered twice"
    assert all(r["error"] == 0 for r in results)
    left = [m["feedback_id"] for m in take_all(harness, queue)]
    assert sorted(answered_ids + left) == sorted(m["feedback_id"] for m in messages)
    return set(answered_ids)


# --- the lock file --------------------------------------------------------------------------


def test_a_second_run_with_the_same_lock_file_exits_0_at_once_while_the_first_holds_it(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker running with --lock-file, when another run starts with the same lock
    file, then it exits 0 at once without consuming; the first goes on answering; once the
    first has stopped, a new run takes the lock and drains the queue."""
    lock = tmp_path / "worker.lock"
    env = worker_env(harness.settings)
    first = WorkerProcess(["run", "--lock-file", str(lock)], env, tmp_path)
    try:
        wait_for(lambda: log_lines(harness.settings, "starting:"), "the first run to start", while_alive=first)
        assert lock.read_text().strip() == str(first.pid)

        started = time.monotonic()
        second = subprocess.run(command("run", "--lock-file", str(lock), "--until-empty"), env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert time.monotonic() - started < 10
        assert len(log_lines(harness.settings, f"another run holds {lock}; exiting")) == 1
        assert len(log_lines(harness.settings, "starting:")) == 1, "the second run must not consume"

        harness.publish(*(msg(email=f"lock{i}@example.com", feedback_id=f"lock{i}") for i in range(20)))
        wait_for(lambda: answered(harness) == 20, "the first run's answers", while_alive=first)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
    finally:
        first.stop()

    harness.publish(msg(email="after@example.com", feedback_id="after"))
    third = subprocess.run(command("run", "--lock-file", str(lock), "--until-empty"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr
    assert sorted(r["feedback_id"] for r in harness.results()) == sorted([f"lock{i}" for i in range(20)] + ["after"])
    assert harness.queue_depth(harness.settings.import_queue) == 0
    assert len(log_lines(harness.settings, "starting:")) == 2


# --- clean stops ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_batch_finishes_the_batch_in_hand_acks_exactly_what_was_answered_and_exits_0(
    harness: Harness, tmp_path: Path, signum: int,
) -> None:
    """Given a worker in the middle of 3,000 messages, inside the transaction of a batch,
    when it gets SIGTERM or SIGINT, then it finishes that batch (its messages are
    answered) and exits 0 within a few seconds; every message it answered is gone from
    the queue, every other one is still there, ready, and nothing is left unacked."""
    messages = email_stream("stop", matching=FAULT_MODE)
    # Message 100 is the first with its address: the worker holds the batch it is in.
    in_hand = messages[100]
    holding, release = tmp_path / "holding", tmp_path / "release"
    harness.publish(*messages)
    env = worker_env(harness.settings, FAULT_HOLD_EMAIL=in_hand["email"],
                     FAULT_HOLD_MARKER=str(holding), FAULT_HOLD_RELEASE=str(release))
    worker = WorkerProcess(["run"], env, tmp_path, launcher=True)
    try:
        wait_for(holding.exists, "a batch in hand", while_alive=worker)
        signalled = time.monotonic()
        worker.signal(signum)
        release.touch()
        assert worker.wait() == 0, worker.output()[-3000:]
        took_s = time.monotonic() - signalled
    finally:
        release.touch()
        worker.stop()

    assert took_s < STOP_WITHIN_S, f"took {took_s:.1f} s to stop"
    name = signal.Signals(signum).name
    assert len(log_lines(harness.settings, f"received {name}; finishing the batch in hand")) == 1
    answered_ids = assert_acked_exactly_what_it_answered(harness, messages)
    assert in_hand["feedback_id"] in answered_ids, "the batch in hand was not finished"
    assert len(answered_ids) < len(messages)


@pytest.mark.slow
def test_max_runtime_on_a_busy_queue_stops_in_time_and_acks_exactly_what_was_answered(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given 3,000 messages, paced so that they take longer than 2 s, when `run --max-runtime 2`
    works on them, then it stops after about 2 s with exit 0, as cleanly as on SIGTERM."""
    messages = email_stream("runtime", matching=FAULT_MODE)
    harness.publish(*messages)
    env = worker_env(harness.settings, FAULT_PACE_S="0.1")
    started = time.monotonic()
    worker = WorkerProcess(["run", "--max-runtime", "2"], env, tmp_path, launcher=True)
    assert worker.wait() == 0, worker.output()[-3000:]
    elapsed = time.monotonic() - started
    # The deadline is checked between batches; interpreter start-up comes on top.
    assert 2.0 <= elapsed < 2.0 + STOP_WITHIN_S + 3, elapsed
    assert len(log_lines(harness.settings, "--max-runtime reached; stopping")) == 1
    count = len(assert_acked_exactly_what_it_answered(harness, messages))
    assert 0 < count < len(messages)


# --- services unreachable at start -------------------------------------------------------------


def pointing_at(settings: Settings, service: str, port: int) -> dict[str, str]:
    """Environment overrides that send the worker to `port` for `service`."""
    if service == "RabbitMQ":
        return {"RABBITMQ_PORT": str(port)}
    params = psycopg.conninfo.conninfo_to_dict(settings.postgres_dsn)
    params.update(host="127.0.0.1", port=str(port))
    return {"POSTGRES_DSN": psycopg.conninfo.make_conninfo(**params)}


def attempt_delays(settings: Settings) -> list[float]:
    lines = log_lines(settings, "start attempt ")
    return [float(re.search(r"retrying in ([\d.]+) s", line).group(1)) for line in lines]  # type: ignore[union-attr]


@pytest.mark.parametrize("service", ["RabbitMQ", "PostgreSQL"])
def test_until_empty_with_a_service_unreachable_retries_with_backoff_then_exits_69(
    harness: Harness, tmp_path: Path, service: str,
) -> None:
    """Given the service at a closed port, when `run --until-empty` starts with
    IMPORT_CONNECT_TIMEOUT_S=3, then it logs each attempt with a doubling delay, and
    gives up with exit 69 in bounded time."""
    closed = TcpProxy(RABBITMQ if service == "RabbitMQ" else POSTGRES)  # never started: its port is closed
    env = worker_env(harness.settings, IMPORT_CONNECT_TIMEOUT_S="3",
                     **pointing_at(harness.settings, service, closed.port))
    started = time.monotonic()
    done = subprocess.run(command("run", "--until-empty"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert elapsed < 3 + 10, elapsed
    attempts = log_lines(harness.settings, "start attempt ")
    assert len(attempts) >= 2 and all(service in line for line in attempts), attempts
    delays = attempt_delays(harness.settings)
    # Doubling, but the last wait ends at the deadline: the whole timeout is used.
    assert delays[:2] == [0.5, 1.0] and all(b == 2 * a for a, b in itertools.pairwise(delays[:-1])), delays
    assert 0 < delays[-1] <= 2 * delays[-2] and elapsed >= 3, (delays, elapsed)
    assert log_lines(harness.settings, "gave up after IMPORT_CONNECT_TIMEOUT_S=3 s")


@pytest.mark.parametrize("service", ["RabbitMQ", "PostgreSQL"])
def test_without_until_empty_the_worker_keeps_trying_and_drains_once_the_service_answers(
    harness: Harness, tmp_path: Path, service: str,
) -> None:
    """Given the service unreachable (a proxy in front of it that is not listening yet),
    when `run` starts, then it keeps trying; once the proxy listens, it connects and
    answers what was queued; SIGTERM then exits 0."""
    proxy = TcpProxy(RABBITMQ if service == "RabbitMQ" else POSTGRES)
    messages = [msg(email=f"late{i}@example.com", feedback_id=f"late{i}") for i in range(100)]
    harness.publish(*messages)
    env = worker_env(harness.settings, **pointing_at(harness.settings, service, proxy.port))
    worker = WorkerProcess(["run"], env, tmp_path)
    try:
        wait_for(lambda: len(log_lines(harness.settings, "start attempt ")) >= 2, "two attempts", while_alive=worker)
        assert answered(harness) == 0
        proxy.start()
        wait_for(lambda: answered(harness) == len(messages), "the answers", while_alive=worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    finally:
        worker.stop()
        proxy.close()
    assert log_lines(harness.settings, "connected after ")
    assert sorted(r["feedback_id"] for r in harness.results() if r["error"] == 0) == sorted(
        m["feedback_id"] for m in messages)


def test_sigterm_while_retrying_at_start_exits_0_at_once(harness: Harness, tmp_path: Path) -> None:
    closed = TcpProxy(RABBITMQ)
    env = worker_env(harness.settings, **pointing_at(harness.settings, "RabbitMQ", closed.port))
    worker = WorkerProcess(["run"], env, tmp_path)
    try:
        wait_for(lambda: len(log_lines(harness.settings, "start attempt ")) >= 2, "two attempts", while_alive=worker)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        assert time.monotonic() - signalled < STOP_WITHIN_S
    finally:
        worker.stop()


# --- docs/operations.md, tried -------------------------------------------------------------


def code_block(info: str, containing: str = "") -> str:
    """The one fenced block of docs/operations.md with this info string (and text)."""
    blocks = re.findall(r"^```(\S*)\n(.*?)^```", DOC.read_text(), re.DOTALL | re.MULTILINE)
    found = [body for lang, body in blocks if lang == info and containing in body]
    assert len(found) == 1, f"expected one ```{info} block holding {containing!r} in {DOC}"
    return found[0]


class Site:
    """The doc's layout under the test's own folder: /etc/dbimport, /var/lib/dbimport,
    /var/log/dbimport, and the virtualenv running these tests for /opt/dbimport/.venv."""

    def __init__(self, root: Path, settings: Settings, **config: Any) -> None:
        self.etc, self.lib, self.log = root / "etc", root / "lib", root / "log"
        for folder in (self.etc, self.lib, self.log):
            folder.mkdir()
        self.log_path = self.log / "job_server.log"
        self.settings = settings.replace(log_path=str(self.log_path))
        (self.etc / "main.json").write_bytes(orjson.dumps({
            "POSTGRES_DSN": settings.postgres_dsn, "RABBITMQ_HOST": settings.rabbitmq_host,
            "RABBITMQ_PORT": settings.rabbitmq_port, "IMPORT_QUEUE": settings.import_queue,
            "IMPORT_RESULT_QUEUE": settings.result_queue, "IMPORT_DEAD_QUEUE": settings.dead_queue,
            "JOB_SERVER_LOG": str(self.log_path), "IMPORT_BATCH_WAIT_MS": 20, **config,
        }))

    def localise(self, text: str) -> str:
        for doc_path, here in (("/opt/dbimport/.venv", sys.prefix), ("/etc/dbimport", self.etc),
                               ("/var/lib/dbimport", self.lib), ("/var/log/dbimport", self.log)):
            text = text.replace(doc_path, str(here))
        return text

    def env(self) -> dict[str, str]:
        """What cron gives a job: next to nothing."""
        return {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "HOME": str(self.lib),
                "LOGNAME": pwd.getpwuid(os.getuid()).pw_name}

    def lines(self, containing: str) -> list[str]:
        return log_lines(self.settings, containing)


def test_the_crontab_line_started_twice_at_the_same_moment_runs_one_worker(harness: Harness, tmp_path: Path) -> None:
    """Given the doc's crontab line, when cron starts its command twice at once (as two
    minutes' starts overlap), then one worker drains the queue and the other exits 0 at
    once; SIGTERM stops the worker with exit 0."""
    site = Site(tmp_path, harness.settings)
    line = code_block("crontab").strip()
    schedule, job = line.split(maxsplit=5)[:5], line.split(maxsplit=5)[5]
    assert schedule == ["*"] * 5
    job = site.localise(job)
    messages = [msg(email=f"cron{i}@example.com", feedback_id=f"cron{i}") for i in range(200)]
    harness.publish(*messages)

    shells = [subprocess.Popen(["/bin/sh", "-c", job], env=site.env(), cwd=site.lib) for _ in range(2)]
    try:
        wait_for(lambda: any(s.poll() is not None for s in shells), "one start to give way", timeout_s=30)
        gave_way = next(s for s in shells if s.poll() is not None)
        running = next(s for s in shells if s is not gave_way)
        assert gave_way.returncode == 0
        assert running.poll() is None, "both starts exited"
        wait_for(lambda: answered(harness) == len(messages), "the worker's answers")
        pid = int((site.lib / "worker.lock").read_text())
        os.kill(pid, signal.SIGTERM)
        assert running.wait(timeout=30) == 0
    finally:
        for shell in shells:
            if shell.poll() is None:
                kill_tree(shell.pid)
                shell.wait()
    assert len(site.lines("another run holds")) == 1
    assert len(site.lines("starting:")) == 1
    assert sorted(r["feedback_id"] for r in harness.results()) == sorted(m["feedback_id"] for m in messages)


def unit_value(unit: str, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key}= in the unit: {values}"
    return values[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_passes_systemd_analyze_verify(harness: Harness, tmp_path: Path) -> None:
    site = Site(tmp_path, harness.settings)
    unit = tmp_path / "dbimport-worker.service"
    unit.write_text(site.localise(code_block("ini", "[Service]")))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "dbimport-worker" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


def test_the_systemd_units_command_runs_and_stops_on_its_kill_signal_with_exit_0(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given the unit's ExecStart run as it is, in its WorkingDirectory, then it answers the
    queue, and on KillSignal it exits 0 (a success for systemd) within TimeoutStopSec; the
    permanent exit codes (73, 77, 78) are the ones it is told not to restart after."""
    site = Site(tmp_path, harness.settings)
    unit = site.localise(code_block("ini", "[Service]"))
    assert Path(unit_value(unit, "WorkingDirectory")) == site.lib
    permanent = {int(code) for code in unit_value(unit, "RestartPreventExitStatus").split()}
    assert permanent == {ExitCode.CANTCREAT, ExitCode.NOPERM, ExitCode.CONFIG}
    kill_signal = signal.Signals[unit_value(unit, "KillSignal")]
    timeout_s = float(unit_value(unit, "TimeoutStopSec"))
    messages = [msg(email=f"unit{i}@example.com", feedback_id=f"unit{i}") for i in range(50)]
    harness.publish(*messages)

    service = subprocess.Popen(shlex.split(unit_value(unit, "ExecStart")), env=site.env(), cwd=site.lib,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: answered(harness) == len(messages), "the service's answers")
        service.send_signal(kill_signal)
        assert service.wait(timeout=timeout_s) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert site.lines("stopped: handled=50 ")


def test_logrotate_with_the_stanza_rotates_a_live_log_and_the_worker_writes_the_new_file(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker writing its log (a throughput line every 0.2 s), when `logrotate -f`
    runs the doc's stanza, then the old lines are in job_server.log.1, and the worker's
    next lines, an error result's among them, are in the new job_server.log."""
    assert shutil.which("logrotate"), "logrotate is missing: apt-get install -y logrotate"
    site = Site(tmp_path, harness.settings, IMPORT_LOG_INTERVAL_S=0.2)
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    stanza = site.localise(code_block("logrotate")).replace("dbimport dbimport", f"{user} {group}")
    config = tmp_path / "logrotate.conf"
    config.write_text(stanza)
    config.chmod(0o644)
    rotated = site.log_path.with_name("job_server.log.1")

    worker = subprocess.Popen(command("--config", str(site.etc / "main.json"), "run"), env=site.env(),
                              cwd=site.lib, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.publish(msg(db_id=99, email="a@example.com", feedback_id="before-rotate"))
        wait_for(lambda: site.lines("before-rotate"), "the first error line")
        done = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "before-rotate" in rotated.read_text()
        harness.publish(msg(db_id=99, email="a@example.com", feedback_id="after-rotate"))
        wait_for(lambda: site.lines("after-rotate") and site.lines("msg/s"), "lines in the new file")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "after-rotate" not in rotated.read_text()
    assert site.lines("stopped: handled=2 ")
    mode = site.log_path.stat().st_mode & 0o777
    assert mode == 0o640, oct(mode)


# --- exit codes --------------------------------------------------------------------------------


def test_the_exit_codes_documented_for_operators_are_the_command_lines_own() -> None:
    section = DOC.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == set(ExitCode)
