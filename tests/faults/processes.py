"""Worker processes for fault tests: started from the test's settings, killed, restarted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import orjson

from conftest import worker_env as base_worker_env
from dbimport.config import Settings
from faults.plugins import CRASH_EXIT_CODE

TESTS = Path(__file__).resolve().parent.parent
POLL_S = 0.05
DEFAULT_WAIT_S = 60.0
# Many small batches, so that a fault lands in the middle of the stream; database
# retries that outlast any outage a test makes; a bounded wait for the broker.
FAULT_TUNING = {
    "IMPORT_BATCH_SIZE": "50",
    "IMPORT_PREFETCH": "100",
    "IMPORT_BATCH_WAIT_MS": "20",
    "IMPORT_CONNECT_TIMEOUT_S": "30",
    "IMPORT_DB_RETRY_S": "60",
}


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """conftest.worker_env tuned for faults, without the caller's FAULT_* switches, and
    with the tests' folder on the path (the launcher imports faults.*)."""
    env = {k: v for k, v in base_worker_env(settings, **FAULT_TUNING).items() if not k.startswith("FAULT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def command(*args: str, launcher: bool = False) -> list[str]:
    """`dbimport-worker ARGS`, or the same through the launcher that adds test plugins."""
    module = "faults.launcher" if launcher else "dbimport"
    return [sys.executable, "-m", module, *args]


class WorkerProcess:
    """One `dbimport-worker` process; its stdout and stderr go to a file of its own."""

    count = 0

    def __init__(self, args: Sequence[str], env: dict[str, str], workdir: Path, *, launcher: bool = False) -> None:
        WorkerProcess.count += 1
        self.output_path = workdir / f"worker-{WorkerProcess.count}.out"
        self._output: IO[bytes] = self.output_path.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            command(*args, launcher=launcher), env=env, cwd=workdir,
            stdout=self._output, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL, as `kill -9`; the exit status (-9)."""
        self.process.send_signal(signal.SIGKILL)
        return self.wait(DEFAULT_WAIT_S)

    def wait(self, timeout_s: float = DEFAULT_WAIT_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout_s} s:\n{self.output()[-3000:]}"
            ) from None
        finally:
            if self.process.poll() is not None:
                self._output.close()

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def stop(self) -> None:
        """Cleanup: whatever state it is in, it is gone afterwards, with its children."""
        if self.alive():
            kill_tree(self.pid)
        self.process.wait()
        self._output.close()


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants (children first, so none is left orphaned)."""
    for child in children_of(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = DEFAULT_WAIT_S,
             *, while_alive: WorkerProcess | None = None) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`, or at once if the
    worker it depends on died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if while_alive is not None and not while_alive.alive():
            raise AssertionError(f"worker exited {while_alive.process.returncode} while waiting for {what}:\n"
                                 f"{while_alive.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


def log_lines(settings: Settings, containing: str = "") -> list[str]:
    path = Path(settings.log_path)
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if containing in line]


def crash_at_batch(env: dict[str, str], tmp_path: Path, fault: str, batch: int = 3) -> list[str]:
    """Run a worker that dies at `fault` (FAULT_CRASH_AFTER_COMMIT or
    FAULT_CRASH_BEFORE_ACK) of its `batch`-th batch; the feedback_ids of that batch,
    as the fault recorded them (at least one)."""
    marker = tmp_path / "crashed"
    crashing = WorkerProcess(["run"], dict(env, **{fault: str(marker), "FAULT_CRASH_AT_BATCH": str(batch)}),
                             tmp_path, launcher=True)
    assert crashing.wait() == CRASH_EXIT_CODE, crashing.output()[-3000:]
    feedback_ids: list[str] = orjson.loads(marker.read_bytes())
    assert len(feedback_ids) > 0
    return feedback_ids
