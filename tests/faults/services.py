"""Faults on the real services, aimed only at the test's own worker connections.

Other suites share the broker and the database server: a connection is closed only
if it carries the name of this test's import queue (RabbitMQ) or belongs to this
test's database (PostgreSQL). Never `close_all_connections`, never a restart.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import NamedTuple

import psycopg

from conftest import ADMIN_DSN
from dbimport.store import database_name

RABBITMQCTL_TIMEOUT_S = 60
# `rabbitmqctl list_connections pid client_properties` prints one line a connection:
# <rabbit@host.1.2.3>\t[...,{"connection_name","dbimport-worker pid=123 queue=q"}]
_CONNECTION = re.compile(r'^(<[^>]+>)\t.*\{"connection_name","dbimport-worker pid=(\d+) queue=([^"]*)"\}')


@dataclass(frozen=True)
class WorkerConnection:
    """One worker's AMQP connection as the broker lists it."""

    broker_pid: str  # the Erlang process id that `close_connection` takes
    worker_pid: int
    queue: str


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=RABBITMQCTL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def worker_connections(import_queue: str) -> list[WorkerConnection]:
    """The AMQP connections of workers on `import_queue` (no one else's)."""
    found = []
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        match = _CONNECTION.match(line)
        if match and match.group(3) == import_queue:
            found.append(WorkerConnection(match.group(1), int(match.group(2)), match.group(3)))
    return found


def close_worker_connections(
    import_queue: str, *, worker_pid: int | None = None, reason: str = "fault injection",
) -> list[WorkerConnection]:
    """Close the AMQP connections of workers on `import_queue` (only worker `worker_pid`'s
    if given), as the broker does when it restarts; the ones it closed."""
    closed = []
    for connection in worker_connections(import_queue):
        if worker_pid is not None and connection.worker_pid != worker_pid:
            continue
        done = subprocess.run(["rabbitmqctl", "-q", "close_connection", connection.broker_pid, reason],
                              capture_output=True, text=True, timeout=RABBITMQCTL_TIMEOUT_S)
        # It may have gone by itself meanwhile: only the ones the broker closed count.
        if done.returncode == 0:
            closed.append(connection)
    return closed


class QueueCounts(NamedTuple):
    ready: int
    unacked: int


def queue_counts(queue: str) -> QueueCounts:
    """Ready and unacknowledged messages of `queue`, as the broker counts them now."""
    for line in rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged").splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] == queue:
            return QueueCounts(int(fields[1]), int(fields[2]))
    raise LookupError(f"queue {queue!r} is not on the broker")


def terminate_worker_backends(dsn: str) -> int:
    """pg_terminate_backend on the workers' connections to the test's database; how many."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'dbimport-worker'",
            (database_name(dsn),),
        ).fetchone()
    return int(row[0]) if row else 0


def backends_waiting_on_a_lock(dsn: str) -> int:
    """Workers' connections to the test's database that wait for another's lock now."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'dbimport-worker' AND wait_event_type = 'Lock'",
            (database_name(dsn),),
        ).fetchone()
    return int(row[0]) if row else 0
