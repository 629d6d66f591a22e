"""The job log: every error result in it, and the file reopened after logrotate moves it.

README.md, "Operations", "Logging".

The throughput and idle lines are checked with the metrics (test_metrics.py); the
doc's logrotate stanza, run by logrotate itself, in test_operations.py.
"""
from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import Harness, msg, worker_env
from faults.processes import command, wait_for

WAIT_S = 15.0


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
        wait_for(holds(log_file, "before-rotate"), "the first error line", timeout_s=WAIT_S)
        log_file.rename(rotated)
        harness.publish(msg(db_id=99, feedback_id="after-rotate"))
        wait_for(holds(log_file, "after-rotate"), "the error line in a new file", timeout_s=WAIT_S)
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
