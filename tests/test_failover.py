"""Failover: a RabbitMQ node or the PostgreSQL primary lost mid-stream, nothing lost, nothing applied twice.

docs/scaling.md, "Replicated services" (what happens to the batches in flight on each
failover) and "The local replicated lab" (scripts/cluster); the checks are the fault
suite's (docs/operations.md, "The fault-injection suite"). These tests need the lab: they
are marked `cluster` and run only when selected, `make cluster-test` (which starts the
lab) or `pytest -m cluster`.

Each test makes its own database on the lab's primary (`init-db` through the multi-host
POSTGRES_DSN) and its own quorum queues on the three-node cluster (IMPORT_QUEUE_TYPE=quorum),
publishes 20,000 messages (creates and updates by e-mail, half of them with an `incr` of
the int field CRM_ID, some with an `add` of a tag), runs worker processes with
RABBITMQ_HOST = the node list and POSTGRES_DSN = the multi-host DSN, injects the failover
once a third of the results are in, lets the stream drain, and restores the lab. Then:
every message answered, identically where twice; no error result; one profile per
e-mail; every message applied once (one profile event each); every profile's CRM_ID is
exactly its number of `incr` messages, its tags the union of its `add`s. The gap the
failover caused (the longest time without a result, from the results' arrival times)
is printed.
"""
from __future__ import annotations

import itertools
import random
import re
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pika
import pika.exceptions
import psycopg
import pytest
from psycopg import sql

from conftest import RUN_ID, SEED_FILE, Harness, cli, msg
from dbimport.config import Settings
from dbimport.store import database_name, with_database
from faults.checks import assert_nothing_lost_nothing_twice
from faults.processes import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "cluster"
CLUSTER_TIMEOUT_S = 300
MESSAGES = 20_000
CREATE_EVERY = 5  # every fifth message creates a profile, the others update one
FAULT_AFTER = MESSAGES // 3  # results in before the failover
DRAIN_TIMEOUT_S = 240.0
# Small batches, so that the stream lasts and the failover lands mid-stream.
TUNING = {"IMPORT_BATCH_SIZE": "50", "IMPORT_PREFETCH": "100", "IMPORT_DB_RETRY_S": "120",
          "IMPORT_CONNECT_TIMEOUT_S": "120"}
PUBLISH_TX = 1000
_CONNECTED = re.compile(r"connected to RabbitMQ node 127\.0\.0\.1:(\d+)$")


def _timestamp(line: str) -> float:
    """The time of a job log line (`2026-01-31 12:00:00,123 ...`), in seconds."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


# --- the lab ------------------------------------------------------------------------------------


def cluster(*args: str) -> str:
    """scripts/cluster ARGS; its stdout. A failure fails the test with its stderr."""
    done = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=CLUSTER_TIMEOUT_S)
    if done.returncode != 0:
        raise AssertionError(f"scripts/cluster {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass(frozen=True)
class Lab:
    """The lab's services as `scripts/cluster start` prints them."""

    nodes: tuple[str, ...]  # lab1@localhost, ...
    ports: tuple[int, ...]  # their AMQP ports, in the same order
    dsn: str  # the multi-host DSN, maintenance database
    admin_dsn: str

    @classmethod
    def of(cls, command: str) -> Lab:
        """From the variables `scripts/cluster COMMAND` prints (`start`, or `env` alone)."""
        env = dict(re.findall(r"^export (\w+)='(.*)'$", cluster(command), re.MULTILINE))
        return cls(
            nodes=tuple(env["DBIMPORT_CLUSTER_RABBITMQ_NODES"].split(",")),
            ports=tuple(int(p) for p in env["DBIMPORT_CLUSTER_RABBITMQ_PORTS"].split(",")),
            dsn=env["POSTGRES_DSN"],
            admin_dsn=env["DBIMPORT_CLUSTER_PG_ADMIN_DSN"],
        )

    def hosts(self, *order: int) -> str:
        """RABBITMQ_HOST listing the nodes of indexes `order` first, then the others."""
        rest = [i for i in range(len(self.ports)) if i not in order]
        return ",".join(f"127.0.0.1:{self.ports[i]}" for i in (*order, *rest))

    def index_of(self, node: str) -> int:
        return self.nodes.index(node)

    def healthy(self) -> bool:
        """Every node takes an AMQP connection; the primary has a synchronous standby."""
        try:
            for port in self.ports:
                pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1,
                                                                  socket_timeout=5)).close()
            with psycopg.connect(self.admin_dsn, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_replication "
                                   "WHERE state = 'streaming' AND sync_state = 'sync'").fetchone()
            return bool(row and row[0] >= 1)
        except (pika.exceptions.AMQPError, OSError, psycopg.Error):
            return False


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The lab; `scripts/cluster start` (idempotent) unless it already answers."""
    found = Lab.of("env")
    return found if found.healthy() else Lab.of("start")


@pytest.fixture
def healthy_lab(lab: Lab) -> Lab:
    """The lab, repaired first if an earlier test left it broken."""
    if not lab.healthy():
        Lab.of("start")
    return lab


# --- the stream -----------------------------------------------------------------------------------


def stream(tag: str, *, count: int = MESSAGES, seed: int = 7) -> list[dict[str, Any]]:
    """`count` messages: every CREATE_EVERY-th creates a profile, the others update one
    created earlier (picked at random); each sets the profile's nickname, half add 1 to
    CRM_ID, a third add a tag to `interests`."""
    rng = random.Random(seed)
    messages = []
    profiles = 0
    for i in range(count):
        if i % CREATE_EVERY == 0:
            entity = profiles
            profiles += 1
        else:
            entity = rng.randrange(profiles)
        data: dict[str, Any] = {"nickname": f"p{entity}"}
        if rng.random() < 0.5:
            data["CRM_ID"] = {"action": "incr", "value": 1}
        if rng.random() < 0.3:
            data["interests"] = {"action": "add", "value": [f"t{i % 7}"]}
        messages.append(msg(email=f"{tag}-{entity}@example.com", feedback_id=f"{tag}-{i}", data=data))
    return messages


def assert_fields_as_the_stream_implies(harness: Harness, messages: list[dict[str, Any]]) -> None:
    """Every committed write kept: CRM_ID counts the profile's `incr` messages exactly,
    `interests` is the union of its `add`s, `nickname` is its own."""
    incr: Counter[str] = Counter()
    tags: dict[str, set[str]] = defaultdict(set)
    nickname = {}
    for m in messages:
        data = m["data"]
        nickname[m["email"]] = data["nickname"]
        if "CRM_ID" in data:
            incr[m["email"]] += 1
        if "interests" in data:
            tags[m["email"]].update(data["interests"]["value"])
    stored = dict(harness.rows("SELECT email, fields FROM profiles"))
    assert set(stored) == set(nickname)
    wrong = [
        (email, fields) for email, fields in stored.items()
        if fields.get("nickname") != nickname[email]
        or fields.get("CRM_ID") != (incr[email] or None)
        or set(fields.get("interests") or ()) != tags[email]
    ]
    assert wrong == [], f"{len(wrong)} profiles differ from the stream, e.g. {wrong[:3]}"


# --- the test's own queues, database and processes --------------------------------------------


class LabHarness(Harness):
    """conftest's Harness on a lab node: rows through the multi-host DSN."""

    def __init__(self, settings: Settings, port: int) -> None:  # no call to Harness.__init__: no default broker
        self.settings = settings
        self._amqp = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        self.channel = self._amqp.channel()


class Collector(threading.Thread):
    """Consumes the result queue on one node (one the test leaves up), noting each result's
    arrival time; acks after noting, so a result is never lost on the way."""

    def __init__(self, port: int, queue: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.queue = queue
        self.arrivals: list[tuple[float, bytes]] = []
        self.answered: set[str] = set()
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port))
            channel = conn.channel()
            channel.basic_qos(prefetch_count=2000)
            channel.basic_consume(self.queue, self._on_result)
            self._ready.set()
            while not self._stopping.is_set():
                conn.process_data_events(time_limit=0.05)
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self._ready.set()

    def _on_result(self, channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        self.arrivals.append((time.time(), body))
        self.answered.add(orjson.loads(body)["feedback_id"])
        channel.basic_ack(method.delivery_tag)

    def begin(self) -> Collector:
        self.start()
        self._ready.wait(30)
        assert self.error is None, f"the result collector could not start: {self.error!r}"
        return self

    def finish(self) -> None:
        self._stopping.set()
        self.join(30)

    def results(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.arrivals]


@dataclass
class Failover:
    """One test's database, queues, workers and results on the lab."""

    lab: Lab
    tmp_path: Path
    tag: str = field(default_factory=lambda: f"fo{uuid.uuid4().hex[:8]}")
    workers: list[WorkerProcess] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)  # each worker's job log, by pid
    collector: Collector | None = None
    fault_at: float = 0.0
    started_at: float = 0.0

    def __post_init__(self) -> None:
        name = f"dbimport_failover_{RUN_ID}_{self.tag}"
        prefix = f"failover.{RUN_ID}.{self.tag}"
        self.settings = Settings(
            postgres_dsn=with_database(self.lab.dsn, name),
            rabbitmq_host=self.lab.hosts(0),
            queue_type="quorum",
            import_queue=f"{prefix}.database_import",
            result_queue=f"{prefix}.database_import_result",
            dead_queue=f"{prefix}.database_import.dead",
            log_path=str(self.tmp_path / "job_server.log"),
            batch_wait_ms=20,
        )

    def env(self, hosts: str, **extra: str) -> dict[str, str]:
        return worker_env(self.settings, RABBITMQ_HOST=hosts, IMPORT_QUEUE_TYPE="quorum", **{**TUNING, **extra})

    def init_db(self, leader: int) -> None:
        """The database and schema through the multi-host DSN; the quorum queues declared
        on node `leader`, which leads them (RabbitMQ places a new quorum queue's leader on
        the node the declaring client is connected to)."""
        config = self.tmp_path / "main.json"
        config.write_text("{}")
        done = cli("init-db", "--seed", str(SEED_FILE),
                   env=self.env(self.lab.hosts(leader), DBIMPORT_CONFIG=str(config)), timeout=120)
        assert done.returncode == 0, done.stderr

    def leader(self) -> int:
        """The index of the node leading the input queue now."""
        return self.lab.index_of(cluster("queue-leader", self.settings.import_queue).strip())

    def publish(self, messages: list[dict[str, Any]], port: int) -> None:
        """Persistent messages, one AMQP transaction per PUBLISH_TX: all in the quorum queue
        before the workers start."""
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        try:
            channel = conn.channel()
            channel.tx_select()
            persistent = pika.BasicProperties(delivery_mode=2)
            for start in range(0, len(messages), PUBLISH_TX):
                for message in messages[start:start + PUBLISH_TX]:
                    channel.basic_publish("", self.settings.import_queue, orjson.dumps(message), persistent)
                channel.tx_commit()
        finally:
            conn.close()

    def collect_on(self, port: int) -> None:
        self.collector = Collector(port, self.settings.result_queue).begin()

    def start_worker(self, hosts: str) -> WorkerProcess:
        log = self.tmp_path / f"worker-{len(self.workers) + 1}.log"
        worker = WorkerProcess(["run"], self.env(hosts, JOB_SERVER_LOG=str(log)), self.tmp_path)
        self.workers.append(worker)
        self.logs[worker.pid] = log
        if not self.started_at:
            self.started_at = time.time()
        return worker

    def node_of(self, worker: WorkerProcess) -> list[int]:
        """The indexes of the nodes `worker` connected to, in order, from its log."""
        return [self.lab.ports.index(int(m.group(1)))
                for m in map(_CONNECTED.search, self.log_lines(worker)) if m]

    def log_lines(self, worker: WorkerProcess) -> list[str]:
        log = self.logs[worker.pid]
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def answered(self) -> int:
        assert self.collector is not None
        if self.collector.error is not None:
            raise AssertionError(f"the result collector lost its connection: {self.collector.error!r}")
        return len(self.collector.answered)

    def wait_for_results(self, count: int, what: str, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        def enough() -> bool:
            for worker in self.workers:
                if not worker.alive():
                    raise AssertionError(f"worker {worker.pid} exited {worker.process.returncode}:\n"
                                         f"{worker.output()[-3000:]}")
            return self.answered() >= count

        wait_for(enough, what, timeout_s)

    def drain(self, messages: int) -> None:
        """Until every message is answered and the input queue holds nothing, ready or unacked."""
        self.wait_for_results(messages, "every message answered")
        wait_for(lambda: self.input_queue_settled(), "the input queue to settle", 60)
        time.sleep(0.5)  # a result published at the last ack is on its way

    def input_queue_settled(self) -> bool:
        for node in self.lab.nodes:
            done = subprocess.run(
                ["rabbitmqctl", "-q", "-n", node, "list_queues", "name", "messages_ready", "messages_unacknowledged"],
                capture_output=True, text=True, timeout=60,
            )
            if done.returncode != 0:
                continue  # a node that is down
            for line in done.stdout.splitlines():
                fields = line.split("\t")
                if fields[0] == self.settings.import_queue:
                    return fields[1:] == ["0", "0"]
        raise AssertionError(f"no lab node lists {self.settings.import_queue}")

    def stop_workers(self) -> list[str]:
        """SIGTERM to each worker; the `stopped:` line of each."""
        lines = []
        for worker in self.workers:
            if worker.alive():
                worker.process.terminate()
                code = worker.wait(60)
                assert code == 0, f"worker {worker.pid} exited {code}:\n{worker.output()[-3000:]}"
            stopped = [line for line in self.log_lines(worker) if "stopped: handled=" in line]
            lines.append(stopped[-1] if stopped else "")
        return lines

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.collector is not None and self.collector.is_alive():
            self.collector.finish()
        for port in self.lab.ports:
            try:
                conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1))
            except pika.exceptions.AMQPError:
                continue
            try:
                channel = conn.channel()
                for queue in (self.settings.import_queue, self.settings.result_queue, self.settings.dead_queue):
                    channel.queue_delete(queue)
            finally:
                conn.close()
            break
        try:
            with psycopg.connect(self.lab.admin_dsn, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(database_name(self.settings.postgres_dsn))))
        except psycopg.Error:
            pass

    # --- what the failover cost ---

    def gaps(self) -> tuple[float, float, float, float]:
        """(the longest time without a result from the fault on, the longest before the
        fault, the longest stall of a deadlock in the whole stream, the time from the
        first worker's start to the last result), in seconds.

        Two workers on one stream of updates deadlock now and then (see docs/scaling.md,
        "Replicated services"): PostgreSQL detects it after deadlock_timeout, 1 s, and the
        batch is run again. A stretch without a result that ends in a deadlock's
        rollback is that stall, not the failover's: it is counted apart. Times are
        wall-clock, to compare with the job logs' lines.
        """
        assert self.collector is not None
        times = sorted(t for t, _ in self.collector.arrivals)
        deadlocks = self.deadlocks()

        def stalled(a: float, b: float) -> bool:
            return any(a <= t <= b + 0.2 for t in deadlocks)

        pairs = list(itertools.pairwise(times))
        before = [b - a for a, b in pairs if b < self.fault_at and not stalled(a, b)]
        # From the last result before the fault to the first after it, and every gap after.
        after = [b - a for a, b in pairs if b >= self.fault_at and not stalled(a, b)]
        stalls = [b - a for a, b in pairs if stalled(a, b)]
        return (max(after, default=0.0), max(before, default=0.0), max(stalls, default=0.0),
                times[-1] - self.started_at)

    def deadlocks(self) -> list[float]:
        """When the workers' batches were rolled back by PostgreSQL's deadlock detector."""
        return sorted(_timestamp(line) for worker in self.workers for line in self.log_lines(worker)
                      if "failed (DeadlockDetected" in line)

    def report(self, capsys: pytest.CaptureFixture[str], title: str, stopped: list[str], duplicated: int,
               extra: str = "") -> None:
        gap, before, stall, total = self.gaps()
        replayed = sum(int(m.group(1)) for line in stopped if (m := re.search(r"replayed=(\d+)", line)))
        deadlocks = len(self.deadlocks())
        with capsys.disabled():
            print(f"\nfailover gap: {title}: {gap:.2f} s without a result (longest before the fault "
                  f"{before:.2f} s); fault at {self.fault_at - self.started_at:.1f} s, {MESSAGES} messages in "
                  f"{total:.1f} s, replayed {replayed}, answered twice {duplicated}"
                  + (f", {deadlocks} deadlock{'s' if deadlocks > 1 else ''} retried (longest pause "
                     f"{stall:.2f} s)" if deadlocks else "")
                  + extra)

    def reconnect_s(self, worker: WorkerProcess) -> float | None:
        """From the worker's `lost RabbitMQ` line to its next `connected to RabbitMQ node`, by
        their timestamps."""
        lost = None
        for line in self.log_lines(worker):
            if lost is None and "lost RabbitMQ" in line:
                lost = _timestamp(line)
            elif lost is not None and "connected to RabbitMQ node" in line:
                return _timestamp(line) - lost
        return None


@pytest.fixture
def failover(healthy_lab: Lab, tmp_path: Path) -> Iterator[Failover]:
    run = Failover(healthy_lab, tmp_path)
    yield run
    run.cleanup()


def checked(run: Failover, messages: list[dict[str, Any]], port: int) -> set[str]:
    """The fault suite's checks and the fields' check; the feedback_ids answered twice."""
    assert run.collector is not None
    harness = LabHarness(run.settings, port)
    try:
        drain = assert_nothing_lost_nothing_twice(harness, messages, run.collector.results())
        assert_fields_as_the_stream_implies(harness, messages)
    finally:
        harness.close()
    return drain.duplicated


# --- the failovers --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_losing_the_node_that_leads_the_queues_loses_nothing_and_applies_nothing_twice(
    failover: Failover, capsys: pytest.CaptureFixture[str], how: str,
) -> None:
    """Given quorum queues led by one node and a worker connected to another, when the
    leader is stopped (`rabbitmqctl shutdown`) or killed (SIGKILL) mid-stream, the other
    two nodes elect new leaders and the worker goes on, on the same connection: every
    message answered once, every write kept."""
    lab = failover.lab
    failover.init_db(leader=2)
    leader = failover.leader()
    others = [i for i in range(len(lab.ports)) if i != leader]
    messages = stream(failover.tag)
    failover.publish(messages, lab.ports[others[0]])
    failover.collect_on(lab.ports[others[1]])
    worker = failover.start_worker(lab.hosts(others[0]))
    try:
        failover.wait_for_results(FAULT_AFTER, f"{FAULT_AFTER} results before the failover")
        assert failover.node_of(worker) == [others[0]]
        failover.fault_at = time.time()
        cluster(f"rabbit-{how}", str(leader + 1))
        failover.drain(len(messages))
        stopped = failover.stop_workers()
    finally:
        cluster("rabbit-start", str(leader + 1))
    failover.collector.finish()  # type: ignore[union-attr]
    assert failover.node_of(worker) == [others[0]], "the worker lost its connection to a node that stayed up"
    duplicated = checked(failover, messages, lab.ports[others[0]])
    failover.report(capsys, f"leader {lab.nodes[leader]} ({how}), worker on {lab.nodes[others[0]]}",
                    stopped, len(duplicated))
    assert duplicated == set(), f"{len(duplicated)} messages answered twice, e.g. {sorted(duplicated)[:5]}"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_losing_the_node_a_worker_is_connected_to_loses_nothing_and_applies_nothing_twice(
    failover: Failover, capsys: pytest.CaptureFixture[str], how: str,
) -> None:
    """Given quorum queues led by node 1 and two workers, one on node 2, one on node 3,
    when node 2 is stopped (its clients get connection.close 320 CONNECTION_FORCED) or
    killed (the TCP connection drops) mid-stream, the first worker reconnects to the next
    node of its list and its unacked messages go to the workers that remain: every
    message answered, twice only where a batch's results were published but its ack was
    lost with the connection, and then identically."""
    lab = failover.lab
    failover.init_db(leader=0)
    assert failover.leader() == 0
    messages = stream(failover.tag)
    failover.publish(messages, lab.ports[0])
    failover.collect_on(lab.ports[0])
    first = failover.start_worker(lab.hosts(1, 2))
    second = failover.start_worker(lab.hosts(2, 0))
    try:
        failover.wait_for_results(FAULT_AFTER, f"{FAULT_AFTER} results before the failover")
        assert failover.node_of(first) == [1] and failover.node_of(second) == [2]
        assert connection_ports(lab, first.pid) == [lab.ports[1]]
        failover.fault_at = time.time()
        cluster(f"rabbit-{how}", "2")
        failover.drain(len(messages))
        stopped = failover.stop_workers()
    finally:
        cluster("rabbit-start", "2")
    failover.collector.finish()  # type: ignore[union-attr]
    assert failover.node_of(first) == [1, 2], "the worker did not reconnect to the next node of its list"
    assert failover.node_of(second) == [2]
    duplicated = checked(failover, messages, lab.ports[0])
    reconnect = failover.reconnect_s(first)
    failover.report(capsys, f"{lab.nodes[1]} ({how}), the node of one of two workers", stopped, len(duplicated),
                    f"; that worker reconnected in {reconnect:.2f} s" if reconnect is not None else "")
    # At most the batches whose acks were in flight when the connection closed.
    assert len(duplicated) <= 2 * int(TUNING["IMPORT_PREFETCH"]), len(duplicated)


def test_promoting_the_standby_loses_no_committed_write_and_applies_nothing_twice(
    failover: Failover, capsys: pytest.CaptureFixture[str],
) -> None:
    """Given two workers on the multi-host POSTGRES_DSN, when the primary is stopped hard
    and the synchronous standby promoted mid-stream, the workers retry their batches
    until libpq finds the new primary (target_session_attrs=read-write): a batch that was
    not committed is run again, one that was is answered from the message log, and no
    committed write is lost."""
    lab = failover.lab
    failover.init_db(leader=0)
    messages = stream(failover.tag)
    failover.publish(messages, lab.ports[0])
    failover.collect_on(lab.ports[2])
    failover.start_worker(lab.hosts(0))
    failover.start_worker(lab.hosts(1))
    try:
        failover.wait_for_results(FAULT_AFTER, f"{FAULT_AFTER} results before the failover")
        failover.fault_at = time.time()
        new_primary = cluster("pg-failover").strip()
        assert new_primary == "127.0.0.1:5442", new_primary
        failover.drain(len(messages))
        # Both workers found the new primary through the multi-host DSN.
        with psycopg.connect(f"postgresql://postgres@{new_primary}/postgres", connect_timeout=10) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                               "AND application_name = 'dbimport-worker'",
                               (database_name(failover.settings.postgres_dsn),)).fetchone()
        assert row == (2,), row
        stopped = failover.stop_workers()
        failover.collector.finish()  # type: ignore[union-attr]
        duplicated = checked(failover, messages, lab.ports[0])
    finally:
        for worker in failover.workers:
            worker.stop()
        cluster("pg-repair")
    failover.report(capsys, "PostgreSQL primary stopped, standby promoted", stopped, len(duplicated))
    assert duplicated == set(), f"{len(duplicated)} messages answered twice, e.g. {sorted(duplicated)[:5]}"
    assert any("database attempt" in line for worker in failover.workers for line in failover.log_lines(worker)), \
        "no worker saw the failover"


def connection_ports(lab: Lab, worker_pid: int) -> list[int]:
    """The server ports of the AMQP connections of the worker with `worker_pid`, as the
    cluster lists them (`rabbitmqctl list_connections port client_properties`)."""
    done = subprocess.run(["rabbitmqctl", "-q", "-n", lab.nodes[0], "list_connections", "port", "client_properties"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [int(line.split("\t", 1)[0]) for line in done.stdout.splitlines()
            if f'"dbimport-worker pid={worker_pid} ' in line]
