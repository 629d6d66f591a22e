"""`run --workers N`: N worker processes under one parent that restarts the dead."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ExitCode

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
# A child that exits with one of these stops the whole run: every child would fail alike.
FATAL_EXIT_CODES = {
    ExitCode.UNAVAILABLE, ExitCode.CANTCREAT, ExitCode.NOPERM, ExitCode.CONFIG,
}
# Exit codes after which a child is not restarted: it finished, or it is fatal.
FINAL_EXIT_CODES = {ExitCode.OK, *FATAL_EXIT_CODES}


@dataclass
class Child:
    slot: int
    process: subprocess.Popen[bytes]
    started_at: float


class Supervisor:
    """Starts `command` N times, forwards SIGTERM/SIGINT, restarts a child that dies.

    A child that exits 0 (drained, or reached its limits) is done; 69, 73, 77 or
    78 stop the whole run with that code. Any other exit (a crash, a kill) is restarted
    after a backoff that grows while children keep dying young.
    """

    def __init__(self, command: Sequence[str], *, workers: int) -> None:
        self.command = list(command)
        self.workers = workers
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.exit_code = 0

    def run(self) -> int:
        self._install_signal_handlers()
        for slot in range(self.workers):
            self._start(slot)
        delays = dict.fromkeys(range(self.workers), RESTART_FIRST_DELAY_S)
        while self.children:
            time.sleep(POLL_INTERVAL_S)
            for slot, child in list(self.children.items()):
                code = child.process.poll()
                if code is None:
                    continue
                del self.children[slot]
                if self.stopping or code in FINAL_EXIT_CODES:
                    if code in FATAL_EXIT_CODES and not self.stopping:
                        log.error("worker %d exited %d; stopping the others", slot, code)
                        self.exit_code = code
                        self._signal_all(signal.SIGTERM)
                        self.stopping = True
                    continue
                lived_s = time.monotonic() - child.started_at
                delays[slot] = RESTART_FIRST_DELAY_S if lived_s > RESTART_MAX_DELAY_S else min(
                    delays[slot] * 2, RESTART_MAX_DELAY_S
                )
                log.warning("worker %d (pid %d) died with %s; restarting in %.0f s",
                            slot, child.process.pid, _describe(code), delays[slot])
                self._sleep(delays[slot])
                if not self.stopping:
                    self._start(slot)
        return self.exit_code

    def _start(self, slot: int) -> None:
        process = subprocess.Popen(self.command, env={**os.environ, "DBIMPORT_WORKER_SLOT": str(slot)})
        self.children[slot] = Child(slot, process, time.monotonic())
        log.info("worker %d started (pid %d)", slot, process.pid)

    def _install_signal_handlers(self) -> None:
        def forward(signum: int, _frame: Any) -> None:
            log.info("received %s; forwarding to %d worker(s)", signal.Signals(signum).name, len(self.children))
            self.stopping = True
            self._signal_all(signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)

    def _signal_all(self, signum: int) -> None:
        for child in self.children.values():
            if child.process.poll() is None:
                try:
                    child.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(POLL_INTERVAL_S)


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def child_command(args: argparse.Namespace) -> list[str]:
    """The command line of one child, rebuilt from the parent's parsed options: `run`
    with the same limits and configuration, without --workers and --lock-file (the
    parent holds the lock for all of them)."""
    command = [sys.executable, "-m", "dbimport"]
    if args.config is not None:
        command += ["--config", args.config]
    command.append("run")
    if args.until_empty:
        command.append("--until-empty")
    if args.max_messages is not None:
        command += ["--max-messages", str(args.max_messages)]
    if args.max_runtime is not None:
        command += ["--max-runtime", repr(args.max_runtime)]
    if args.metrics_port is not None:
        command += ["--metrics-port", str(args.metrics_port)]
    return command
