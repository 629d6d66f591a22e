"""Fixtures and helpers the test modules share: real RabbitMQ and PostgreSQL, a fresh database per test.

Also fresh queues per test; the Harness that publishes, runs a worker and reads the
results; one worker run shared by many cases of a module (`answer_cases`);
`dbimport-worker` run as a process; and the constants several modules check against
(the built-in modes, a result's keys).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
# The eleven built-in matching modes, in the order of docs/contract.md, "Matching modes".
BUILT_IN_MODES = (
    "email", "email_profile", "email_sub", "phone", "phone_sub", "profile_id",
    "push_sub", "custom", "custom_sub", "email_phone", "email_phone_sub",
)
# The keys of every result (docs/contract.md, "The result"), and the form of a profile id.
RESULT_KEYS = frozenset({"error", "error_text", "feedback_id", "matching_field", "profile_id"})
PROFILE_ID = re.compile(r"[0-9a-f]{24}")


def amqp_connection() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(**RABBITMQ))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cluster` need the replicated lab (docs/scaling.md, "The local
    replicated lab"): they are collected only when `-m` selects them (`make
    cluster-test`). Otherwise they are deselected, not skipped: the suite's own
    services are never optional, and a skip would read as one that was."""
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    lab = [item for item in items if "cluster" in item.keywords]
    if lab:
        config.hook.pytest_deselected(items=lab)
        items[:] = [item for item in items if "cluster" not in item.keywords]


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


def _copy_of(template: str) -> str:
    """A new database copied from `template`; its name."""
    name = f"dbimport_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


def _queue_names() -> dict[str, str]:
    prefix = f"test.{RUN_ID}.{uuid.uuid4().hex[:10]}"
    return {
        "import_queue": f"{prefix}.database_import",
        "result_queue": f"{prefix}.database_import_result",
        "dead_queue": f"{prefix}.database_import.dead",
    }


def _delete_queues(names: Sequence[str]) -> None:
    conn = amqp_connection()
    try:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        conn.close()


def _settings(dsn: str, queues: dict[str, str], log_path: Path) -> Settings:
    return Settings(
        postgres_dsn=dsn,
        rabbitmq_host=RABBITMQ["host"],
        rabbitmq_port=RABBITMQ["port"],
        log_path=str(log_path),
        batch_wait_ms=20,
        db_retry_s=10.0,
        connect_timeout_s=5.0,
        **queues,
    )


@pytest.fixture
def database(template_database: str) -> Iterator[str]:
    """The DSN of a fresh database of the test's own, migrated and seeded."""
    name = _copy_of(template_database)
    yield with_database(ADMIN_DSN, name)
    _drop(name)


@pytest.fixture
def queues(services: None) -> Iterator[dict[str, str]]:
    """Queue names of the test's own, deleted afterwards."""
    names = _queue_names()
    yield names
    _delete_queues(list(names.values()))


@pytest.fixture
def settings(database: str, queues: dict[str, str], tmp_path: Path) -> Settings:
    return _settings(database, queues, tmp_path / "job_server.log")


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


def events_of(harness: Harness, feedback_id: str) -> int:
    """How many trigger events the message with `feedback_id` recorded."""
    return harness.count("SELECT count(*) FROM events WHERE feedback_id = %s", feedback_id)


def interests_of(harness: Harness, profile_id: str) -> Any:
    """The tags the profile's `interests` field (a tags field of database 1) holds."""
    [(value,)] = harness.rows("SELECT fields->'interests' FROM profiles WHERE profile_id = %s", profile_id)
    return value


def answered(harness: Harness) -> int:
    """Results published so far (read without consuming them)."""
    return harness.queue_depth(harness.settings.result_queue)


# --- a worker run shared by many cases --------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One message and the answer the contract gives it.

    `names` is the key (or data field) the error_text must name; "message" for
    a body that is not a JSON object at all.
    """

    id: str
    message: dict[str, Any] | bytes
    error: int
    names: str = ""
    feedback_id: str | None = None  # the echoed feedback_id, when the case fixes it

    def expected_feedback_id(self) -> str | None:
        """The feedback_id the result echoes: a string whole, a number as its decimal text."""
        if self.feedback_id is not None:
            return self.feedback_id
        if isinstance(self.message, dict) and "feedback_id" in self.message:
            value = self.message["feedback_id"]
            if value is None:
                return ""
            return value if isinstance(value, str) else orjson.dumps(value).decode()
        return None


@dataclass
class Answered:
    """The results of a batch of cases, by case id, and the harness that ran it."""

    harness: Harness
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def answer_cases(
    template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Sequence[Case]], Answered]]:
    """answer_cases(cases): publish them all to a fresh database and queues, run one
    worker until the queue is empty, and return each case's result.

    One run for a hundred cases keeps the suite fast; a parametrized test per case,
    reading its result from the module's run, keeps each failure readable."""
    databases: list[str] = []
    queues: list[str] = []
    harnesses: list[Harness] = []

    def answer(cases: Sequence[Case]) -> Answered:
        ids = [case.id for case in cases]
        assert len(set(ids)) == len(ids), "case ids must be unique"
        database = _copy_of(template_database)
        databases.append(database)
        names = _queue_names()
        queues.extend(names.values())
        settings = _settings(with_database(ADMIN_DSN, database), names,
                             tmp_path_factory.mktemp("log") / "job_server.log")
        harness = Harness(settings)
        harnesses.append(harness)
        results = harness.import_(*(case.message for case in cases))
        assert len(results) == len(cases), f"{len(cases)} messages got {len(results)} results"
        answered = Answered(harness)
        for case, result in zip(cases, results):
            # Accepted messages prove the results came back in publish order.
            if case.error == 0:
                assert result["feedback_id"] == case.expected_feedback_id(), (
                    f"results are out of publish order at case {case.id}: {result}"
                )
            answered.by_id[case.id] = result
        return answered

    yield answer
    for harness in harnesses:
        harness.close()
    _delete_queues(queues)
    for database in databases:
        _drop(database)


def names_key(text: str, key: str) -> bool:
    """Whether `text` names `key` as a whole key (not as part of a longer name)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text) is not None


def assert_answer(result: dict[str, Any], case: Case) -> None:
    assert set(result) == RESULT_KEYS, result
    assert result["error"] == case.error, result
    if case.error:
        assert result["profile_id"] == "", result
        assert result["error_text"], result
        assert "\n" not in result["error_text"], result
        if case.names:
            assert names_key(result["error_text"], case.names), (
                f"error_text does not name {case.names!r}: {result['error_text']!r}"
            )
    else:
        assert result["error_text"] == "", result
        assert PROFILE_ID.fullmatch(result["profile_id"]), result


# --- the command line, configuration files, ports ------------------------------------------


def cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`dbimport-worker ARGS`, run to its end. The working directory is the folder of
    the main.json that `env` names, so that no ./main.json of the checkout is read."""
    return subprocess.run(
        [sys.executable, "-m", "dbimport", *args], env=env, cwd=Path(env[CONFIG_PATH_ENV]).parent,
        capture_output=True, text=True, timeout=timeout,
    )


def spawn(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`dbimport-worker ARGS`, started in the background; stdout and stderr in one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "dbimport", *args], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def write_config(tmp_path: Path, values: dict[str, Any]) -> Path:
    """tmp_path/main.json holding `values`."""
    path = tmp_path / "main.json"
    path.write_text(json.dumps(values))
    return path


def config_env(config: Path, **extra: str) -> dict[str, str]:
    """A worker's environment reading `config`, and nothing of the caller's configuration."""
    return worker_env(**{CONFIG_PATH_ENV: str(config)}, **extra)


def free_port() -> int:
    """A port that nothing listens on now (the system's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    """The text of the worker's /metrics endpoint on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of metric `name{labels}` in scraped `text`, or None if it is not there."""
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None
