"""Replicated services, configured: a RabbitMQ node list, quorum queues, a multi-host POSTGRES_DSN.

docs/configuration.md ("The keys": `RABBITMQ_HOST`, `IMPORT_QUEUE_TYPE`, `POSTGRES_DSN`) and
docs/scaling.md ("Replicated services"). These run on the default single-node broker and
PostgreSQL server: a single RabbitMQ node hosts quorum queues too, and a node list or a
host list in which one entry does not answer is enough to see the next one tried. The
failovers themselves, on a real cluster, are in test_failover.py.
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg.conninfo
import pytest

from conftest import ADMIN_DSN, RABBITMQ, Harness, amqp_connection, cli, free_port, msg, ok, worker_env
from dbimport.broker import Broker, declare_all
from dbimport.config import Settings, redact_dsn
from dbimport.store import describe_target, user_name
from faults.processes import WorkerProcess, log_lines, wait_for
from faults.proxy import TcpProxy
from faults.services import rabbitmqctl

EX_OK, EX_PROBLEMS, EX_UNAVAILABLE = 0, 1, 69
REAL_NODE = f"{RABBITMQ['host']}:{RABBITMQ['port']}"
THROUGHPUT = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"


def queue_types(*names: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """{queue: (type, arguments)} as the broker lists them."""
    rows = orjson.loads(rabbitmqctl("list_queues", "name", "type", "arguments", "--formatter", "json"))
    return {
        row["name"]: (row["type"], {key: value for key, _type, value in row["arguments"]})
        for row in rows if row["name"] in names
    }


def drop_queues(settings: Settings) -> None:
    conn = amqp_connection()
    try:
        channel = conn.channel()
        for name in (settings.import_queue, settings.result_queue, settings.dead_queue):
            channel.queue_delete(name)
    finally:
        conn.close()


def declare_as(settings: Settings, queue_type: str) -> None:
    """The three queues, declared afresh as `queue_type` queues (as the worker would)."""
    drop_queues(settings)
    conn = amqp_connection()
    try:
        declare_all(conn, settings.replace(queue_type=queue_type))
    finally:
        conn.close()


def check(settings: Settings, tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    """`dbimport-worker check`: its exit code and its queue lines."""
    config = tmp_path / "main.json"
    config.write_text("{}")
    done = cli("check", env=worker_env(settings, DBIMPORT_CONFIG=str(config), **env))
    return done.returncode, [line for line in done.stdout.splitlines() if line.startswith("queue ")]


# --- RABBITMQ_HOST: several nodes ---------------------------------------------------------------


def test_a_node_that_does_not_answer_is_skipped_and_the_node_in_use_is_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture,
) -> None:
    """Given RABBITMQ_HOST listing first a port where nothing listens and then the real
    broker, the worker connects to the second, logs `connected to RabbitMQ node HOST:PORT`,
    and drains the queue."""
    closed = f"127.0.0.1:{free_port()}"
    settings = harness.settings.replace(rabbitmq_host=f"{closed},{REAL_NODE}")
    harness.publish(*(msg(email=f"node-{i}@example.com", feedback_id=f"n{i}") for i in range(20)))
    with caplog.at_level(logging.INFO, logger="dbimport.broker.session"):
        harness.run(settings)
    assert len(ok(harness.results())) == 20
    assert [r.getMessage() for r in caplog.records if "connected to RabbitMQ node" in r.getMessage()] == [
        f"connected to RabbitMQ node {REAL_NODE}"
    ]


@pytest.mark.slow
def test_each_reconnect_tries_the_next_node_first(harness: Harness, tmp_path: Path) -> None:
    """Given two nodes (two proxies to the real broker), when the node the worker is on
    goes away mid-stream, the worker reconnects to the other one, logging it; when that
    one goes away in its turn, it comes back to the first. Every message is answered once."""
    messages = [msg(email=f"rr-{i % 50}@example.com", feedback_id=f"rr{i}", data={"_fname": f"n{i}"})
                for i in range(1500)]
    harness.publish(*messages)
    target = (RABBITMQ["host"], RABBITMQ["port"])
    with TcpProxy(target) as first, TcpProxy(target) as second:
        nodes = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        env = worker_env(harness.settings, RABBITMQ_HOST=",".join(nodes), IMPORT_BATCH_SIZE="20",
                         IMPORT_PREFETCH="40")
        worker = WorkerProcess(["run", "--until-empty"], env, tmp_path)
        try:
            def on(node: str) -> bool:
                return any(line.endswith(f"connected to RabbitMQ node {node}")
                           for line in log_lines(harness.settings, "connected to RabbitMQ node"))

            wait_for(lambda: on(nodes[0]), "the first node", while_alive=worker)
            first.refuse()
            wait_for(lambda: on(nodes[1]), "a reconnect to the second node", while_alive=worker)
            first.resume()
            second.refuse()
            wait_for(lambda: len(log_lines(harness.settings, "connected to RabbitMQ node")) >= 3,
                     "a reconnect back to the first node", while_alive=worker)
            second.resume()
            assert worker.wait(120) == EX_OK, worker.output()[-3000:]
        finally:
            worker.stop()
    connected = [line.rsplit(" ", 1)[1] for line in log_lines(harness.settings, "connected to RabbitMQ node")]
    assert connected[:3] == [nodes[0], nodes[1], nodes[0]], connected
    results = harness.results()
    by_id = Counter(r["feedback_id"] for r in ok(results))
    assert set(by_id) == {m["feedback_id"] for m in messages}
    # A connection lost between a batch's results and its ack answers that batch again.
    assert sum(by_id.values()) - len(by_id) <= 2 * 20, sum(by_id.values()) - len(by_id)
    assert harness.count("SELECT count(*) FROM events") == len(messages)


# --- IMPORT_QUEUE_TYPE=quorum ---------------------------------------------------------------------


def test_quorum_declares_the_three_queues_as_quorum_queues_with_the_result_ttl(
    settings: Settings, tmp_path: Path,
) -> None:
    """Given IMPORT_QUEUE_TYPE=quorum (on a single node: a quorum queue of one member),
    `init-db` declares the input, result and dead-letter queues as quorum queues, the
    result queue with x-message-ttl = RABBITMQ_X_MESSAGE_TTL x 1000; `check` is then
    content with them."""
    config = tmp_path / "main.json"
    config.write_text("{}")
    env = worker_env(settings, DBIMPORT_CONFIG=str(config), IMPORT_QUEUE_TYPE="quorum",
                     RABBITMQ_X_MESSAGE_TTL="3600")
    done = cli("init-db", env=env)
    assert done.returncode == EX_OK, done.stderr
    assert queue_types(settings.import_queue, settings.result_queue, settings.dead_queue) == {
        settings.import_queue: ("quorum", {"x-queue-type": "quorum"}),
        settings.result_queue: ("quorum", {"x-queue-type": "quorum", "x-message-ttl": 3600000}),
        settings.dead_queue: ("quorum", {"x-queue-type": "quorum"}),
    }
    assert check(settings, tmp_path, IMPORT_QUEUE_TYPE="quorum", RABBITMQ_X_MESSAGE_TTL="3600") == (EX_OK, [])


@pytest.mark.parametrize(("declared", "configured"), [("quorum", "classic"), ("classic", "quorum")])
def test_check_names_queues_of_the_other_type(
    settings: Settings, tmp_path: Path, declared: str, configured: str,
) -> None:
    declare_as(settings, declared)
    code, lines = check(settings, tmp_path, IMPORT_QUEUE_TYPE=configured)
    assert code == EX_PROBLEMS
    assert [line.split(";")[0] for line in lines] == [
        f"queue {name}: it is a {declared} queue, the configuration says {configured} (IMPORT_QUEUE_TYPE)"
        for name in (settings.import_queue, settings.result_queue, settings.dead_queue)
    ]
    assert all(line.endswith(f"or set IMPORT_QUEUE_TYPE={declared}") for line in lines), lines


def test_check_names_the_type_and_every_other_argument_that_differs(settings: Settings, tmp_path: Path) -> None:
    """Given a classic result queue with another TTL, and IMPORT_QUEUE_TYPE=quorum, `check`
    names both differences on the queue's one line, though RabbitMQ's first refusal
    names only the TTL."""
    declare_as(settings, "quorum")
    conn = amqp_connection()
    try:
        channel = conn.channel()
        channel.queue_delete(settings.result_queue)
        channel.queue_declare(settings.result_queue, durable=True, arguments={"x-message-ttl": 1000})
    finally:
        conn.close()
    code, lines = check(settings, tmp_path, IMPORT_QUEUE_TYPE="quorum")
    assert code == EX_PROBLEMS
    [line] = lines
    assert line.startswith(f"queue {settings.result_queue}: it is a classic queue, the configuration says quorum")
    assert line.endswith("x-message-ttl is 1000, the configuration says 86400000"), line


def test_a_worker_drains_quorum_queues_and_composes_increments(harness: Harness) -> None:
    """Given quorum queues on one node, the worker answers every message once and the
    increments add up exactly (an int field counted by `incr`)."""
    drop_queues(harness.settings)
    settings = harness.settings.replace(queue_type="quorum", batch_size=25, prefetch=50)
    conn = amqp_connection()
    try:
        declare_all(conn, settings)
    finally:
        conn.close()
    messages = [
        msg(email=f"q-{i % 30}@example.com", feedback_id=f"q{i}",
            data={"CRM_ID": {"action": "incr", "value": 1}} if (i // 30) % 3 else {"nickname": f"p{i % 30}"})
        for i in range(600)
    ]
    harness.publish(*messages)
    harness.run(settings)
    results = ok(harness.results())
    assert sorted(r["feedback_id"] for r in results) == sorted(m["feedback_id"] for m in messages)
    counts = dict(harness.rows("SELECT email, (fields->>'CRM_ID')::int FROM profiles"))
    expected = Counter(m["email"] for m in messages if "CRM_ID" in m["data"])
    assert counts == dict(expected)


# --- POSTGRES_DSN: several hosts ------------------------------------------------------------------


def multi_host(dsn: str, password: str, *, first_port: int) -> str:
    """`dsn` as a multi-host URL: 127.0.0.1:`first_port` first, then its own server,
    `target_session_attrs=read-write`, user and `password`."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
    return (f"postgresql://{user_name(dsn)}:{password}@127.0.0.1:{first_port},{host}:{port}/{params['dbname']}"
            "?target_session_attrs=read-write&connect_timeout=3")


def test_a_multi_host_dsn_is_shown_with_every_host_and_without_its_password() -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://importer:{secret}@10.0.0.1:5441,10.0.0.2:5442/dbimport?target_session_attrs=read-write"
    keywords = (f"host=10.0.0.1,10.0.0.2 port=5441,5442 dbname=dbimport user=importer password='{secret}' "
                "target_session_attrs=read-write")
    for dsn in (url, keywords):
        assert describe_target(dsn) == "database 'dbimport' at 10.0.0.1:5441,10.0.0.2:5442"
        assert secret not in redact_dsn(dsn)
        assert secret not in repr(Settings(postgres_dsn=dsn))
    assert redact_dsn(url) == (
        "postgresql://importer:***@10.0.0.1:5441,10.0.0.2:5442/dbimport?target_session_attrs=read-write"
    )


def test_a_multi_host_dsn_reaches_the_server_that_answers(harness: Harness, tmp_path: Path) -> None:
    """Given POSTGRES_DSN listing first a port where nothing listens, then the real server,
    the worker drains through the second; the password is in no line it wrote."""
    secret = f"pw-{uuid.uuid4().hex}"
    dsn = multi_host(harness.settings.postgres_dsn, secret, first_port=free_port())
    harness.publish(*(msg(email=f"mh-{i}@example.com", feedback_id=f"mh{i}") for i in range(30)))
    done = cli("run", "--until-empty", env=worker_env(harness.settings, POSTGRES_DSN=dsn, DEFAULT_LOG_LEVEL="DEBUG"),
               timeout=60)
    assert done.returncode == EX_OK, done.stderr
    assert len(ok(harness.results())) == 30
    log = Path(harness.settings.log_path).read_text()
    assert "starting: Settings(" in log
    assert secret not in log + done.stdout + done.stderr


def test_a_multi_host_dsn_that_reaches_no_server_names_every_host_and_not_the_password(
    settings: Settings, tmp_path: Path,
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    first, second = free_port(), free_port()
    dsn = (f"postgresql://{user_name(settings.postgres_dsn)}:{secret}@127.0.0.1:{first},127.0.0.1:{second}/x"
           "?target_session_attrs=read-write")
    done = cli("run", "--until-empty", env=worker_env(settings, POSTGRES_DSN=dsn, IMPORT_CONNECT_TIMEOUT_S="1"))
    assert done.returncode == EX_UNAVAILABLE, done.stderr
    assert f"database 'x' at 127.0.0.1:{first},127.0.0.1:{second}" in done.stderr, done.stderr
    log = Path(settings.log_path).read_text()
    assert secret not in log + done.stdout + done.stderr


def test_the_broker_layer_connects_to_quorum_queues_on_a_node_list(settings: Settings) -> None:
    """Broker.connect with a node list whose first entry is closed: it declares quorum
    queues on the node that answers, and names that node's connection as usual."""
    quorum = settings.replace(rabbitmq_host=f"127.0.0.1:{free_port()},{REAL_NODE}", queue_type="quorum")
    broker = Broker(quorum)
    try:
        broker.connect()
        broker.start_consuming()
        assert broker.queue_depth() == 0
    finally:
        broker.close()
    assert queue_types(settings.import_queue)[settings.import_queue][0] == "quorum"


# --- the benchmark on quorum queues ---------------------------------------------------------------


@pytest.mark.slow
def test_the_benchmark_drains_classic_and_quorum_queues_side_by_side(services: None) -> None:
    """bench/README.md, `--queue-types`: one run drains the worker and the limit on classic
    and on quorum queues of the same broker, checks all four, and compares the rates."""
    n = 200
    done = subprocess.run(
        [sys.executable, str(THROUGHPUT), "--admin-dsn", ADMIN_DSN, "--amqp-host", REAL_NODE,
         "--messages", str(n), "--skip-naive", "--queue-types", "classic,quorum"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for expected in (
        rf"stream: +{n} messages, .*; queues classic then quorum",
        rf"fill: +{4 * n} msgs .*worker queue {n}, worker quorum queue {n}, limit queue {n}, limit quorum queue {n}\)",
        rf"worker quorum: +{n} msgs in [\d.]+ s = \d+ msg/s, .*",
        rf"check: +worker quorum: {n}/{n} correct results .*: OK",
        rf"check: +limit quorum: {n} results for {n} messages .*: OK",
        r"check: +worker and worker quorum stores hold the same profiles .*: OK",
        r"queues: +worker quorum / worker [\d.]+x, limit quorum / limit [\d.]+x \(msg/s on quorum queues .*\)",
    ):
        assert any(re.fullmatch(expected, line) for line in lines), (expected, done.stdout[-3000:])
