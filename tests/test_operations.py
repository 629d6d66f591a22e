"""The crontab line, systemd unit and logrotate stanza of docs/operations.md, tried for real.

Each is read from the document ("Running it"), its paths replaced with the test's own,
and run.

How the command line behaves under them (the lock file, signals, limits, services
unreachable at start, exit codes) is tested in test_cli.py.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Harness, answered, msg
from dbimport.config import Settings
from dbimport.errors import ExitCode
from faults.processes import command, kill_tree, log_lines, wait_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


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
