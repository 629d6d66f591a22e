"""Fixtures: real RabbitMQ and PostgreSQL, a fresh database and fresh queues per test."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pika
import pika.exceptions
import psycopg
import pytest
from psycopg import sql

from dbimport.config import CONFIG_PATH_ENV, Settings, keys
from dbimport.migrations import migrate
from dbimport.seed import load_seed, read_seed
from dbimport.stats import Stats
from dbimport.store import Store, with_database
from dbimport.worker import RunLimits, Worker

TESTS = Path(__file__).parent
SEED_FILE = TESTS / "data" / "seed.json"
EMPTY_CONFIG = TESTS / "data" / "empty-main.json"
# The server the tests create their databases on; its maintenance database.
ADMIN_DSN = os.environ.get("DBIMPORT_TEST_DSN", "postgresql://127.0.0.1:5432/postgres")
RABBITMQ = {
    "host": os.environ.get("DBIMPORT_TEST_RABBITMQ_HOST", "127.0.0.1"),
    "port": int(os.environ.get("DBIMPORT_TEST_RABBITMQ_PORT", "5672")),
}
RUN_ID = uuid.uuid4().hex[:8]


def amqp_connection() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(**RABBITMQ))


@pytest.fixture(scope="session")
def services() -> None:
    """Both services must answer: a missing service fails the run, it never skips."""
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}; start it (scripts/services)")
    try:
        amqp_connection().close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ}: {exc!r}; start it (scripts/services)")


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(ADMIN_DSN, autocommit=True)


def _drop(name: str) -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_database(services: None) -> Iterator[str]:
    """A migrated, seeded database that each test's database is copied from."""
    name = f"dbimport_test_template_{RUN_ID}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    store = Store(with_database(ADMIN_DSN, name))
    try:
        migrate(store)
        load_seed(store, read_seed(SEED_FILE))
    finally:
        store.close()
    yield name
    _drop(name)


@pytest.fixture
def database(template_database: str) -> Iterator[str]:
    """The DSN of a fresh database of the test's own, migrated and seeded."""
    name = f"dbimport_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_database))
        )
    yield with_database(ADMIN_DSN, name)
    _drop(name)


@pytest.fixture
def queues(services: None) -> Iterator[dict[str, str]]:
    """Queue names of the test's own, deleted afterwards."""
    prefix = f"test.{RUN_ID}.{uuid.uuid4().hex[:10]}"
    names = {
        "import_queue": f"{prefix}.database_import",
        "result_queue": f"{prefix}.database_import_result",
        "dead_queue": f"{prefix}.database_import.dead",
    }
    yield names
    conn = amqp_connection()
    try:
        channel = conn.channel()
        for name in names.values():
            channel.queue_delete(name)
    finally:
        conn.close()


@pytest.fixture
def settings(database: str, queues: dict[str, str], tmp_path: Path) -> Settings:
    return Settings(
        postgres_dsn=database,
        rabbitmq_host=RABBITMQ["host"],
        rabbitmq_port=RABBITMQ["port"],
        log_path=str(tmp_path / "job_server.log"),
        batch_wait_ms=20,
        db_retry_s=10.0,
        connect_timeout_s=5.0,
        **queues,
    )


class Harness:
    """Publishes messages, runs a worker until the queue is empty, reads results and rows."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._amqp = amqp_connection()
        self.channel = self._amqp.channel()
        for queue, args in (
            (settings.import_queue, None),
            (settings.result_queue, {"x-message-ttl": settings.result_ttl_ms}),
            (settings.dead_queue, None),
        ):
            self.channel.queue_declare(queue, durable=True, arguments=args)

    def publish(self, *messages: Any, properties: pika.BasicProperties | None = None) -> None:
        """Publish each message: bytes as they are, anything else as JSON."""
        for message in messages:
            body = message if isinstance(message, bytes) else orjson.dumps(message)
            self.channel.basic_publish(
                "", self.settings.import_queue, body,
                properties or pika.BasicProperties(delivery_mode=2),
            )

    def run(self, settings: Settings | None = None, **limits: Any) -> Stats:
        limits.setdefault("until_empty", True)
        return Worker(settings or self.settings).run(RunLimits(**limits))

    def results(self) -> list[dict[str, Any]]:
        """Every result on the result queue, in order, consumed."""
        return [orjson.loads(body) for _props, body in self.result_messages()]

    def result_messages(self) -> list[tuple[pika.BasicProperties, bytes]]:
        return self.messages(self.settings.result_queue)

    def messages(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Every message on `queue`, with its properties, in order, consumed."""
        out = []
        while True:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def import_(self, *messages: Any, **limits: Any) -> list[dict[str, Any]]:
        """Publish, drain, and return the results."""
        self.publish(*messages)
        self.run(**limits)
        return self.results()

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.postgres_dsn) as conn:
            return conn.execute(query.encode(), params).fetchall()  # type: ignore[arg-type]

    def count(self, query: str, *params: Any) -> int:
        return int(self.rows(query, *params)[0][0])

    def queue_depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        if self._amqp.is_open:
            self._amqp.close()


@pytest.fixture
def harness(settings: Settings) -> Iterator[Harness]:
    h = Harness(settings)
    yield h
    h.close()


def msg(**fields: Any) -> dict[str, Any]:
    """A valid message for account 1, database 1, with `fields` on top."""
    base: dict[str, Any] = {"account_id": 1, "db_id": 1, "data": {}}
    base.update(fields)
    return base


def worker_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """A worker process's environment: none of the caller's dbimport configuration
    (DBIMPORT_CONFIG names an empty main.json), the test's services, queues and log."""
    env = {k: v for k, v in os.environ.items() if k not in keys() and k != CONFIG_PATH_ENV}
    env[CONFIG_PATH_ENV] = str(EMPTY_CONFIG)
    if settings is not None:
        env.update(
            POSTGRES_DSN=settings.postgres_dsn,
            RABBITMQ_HOST=settings.rabbitmq_host,
            RABBITMQ_PORT=str(settings.rabbitmq_port),
            IMPORT_QUEUE=settings.import_queue,
            IMPORT_RESULT_QUEUE=settings.result_queue,
            IMPORT_DEAD_QUEUE=settings.dead_queue,
            JOB_SERVER_LOG=settings.log_path,
            IMPORT_BATCH_WAIT_MS=str(settings.batch_wait_ms),
            IMPORT_CONNECT_TIMEOUT_S=str(settings.connect_timeout_s),
        )
    env.update(extra)
    return env


def ok(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`results`, once every one of them is known to be error 0."""
    assert [r["error"] for r in results] == [0] * len(results), results
    return results


def counts(harness: Harness) -> tuple[int, int, int]:
    """(profiles, subscriptions, events): what "nothing written" compares."""
    return (
        harness.count("SELECT count(*) FROM profiles"),
        harness.count("SELECT count(*) FROM subscriptions"),
        harness.count("SELECT count(*) FROM events"),
    )
