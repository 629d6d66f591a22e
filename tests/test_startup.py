"""Starting up: each failure an operator can cause is one line naming the cause and the
fix, with its exit code (docs/operations.md, "Exit codes" and "Troubleshooting").

Each test that needs a refusal makes its own RabbitMQ user and vhost (rabbitmqctl) or
its own PostgreSQL role and database (SQL), and removes them afterwards.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conftest import ADMIN_DSN, Harness, msg, worker_env
from dbimport.config import CONFIG_PATH_ENV, Settings
from dbimport.errors import ExitCode
from dbimport.store import with_database
from faults.services import close_worker_connections, rabbitmqctl

# Long enough that an outage-style retry would show: a refusal must not wait for it.
CONNECT_TIMEOUT_S = "30"
COMMANDS = {
    "run": ["run", "--until-empty"],
    "check": ["check"],
    "init-db": ["init-db"],
}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    log: str

    @property
    def last_line(self) -> str:
        """The last line on stderr (`check` reports on stdout: its last line there)."""
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return lines[-1] if lines else ""


def start(settings: Settings, tmp_path: Path, *args: str, **env: str) -> Run:
    """`dbimport-worker ARGS` as an operator runs it, in a folder of its own."""
    environment = worker_env(settings, **{"IMPORT_CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S, **env})
    environment[CONFIG_PATH_ENV] = str(write_config(tmp_path))
    log_path = Path(environment["JOB_SERVER_LOG"])
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dbimport", *args], env=environment, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    log = log_path.read_text() if log_path.is_file() else ""
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started, log)


def load(settings: Settings, tmp_path: Path, **env: str) -> Run:
    """`dbimport-load` with a one-row file."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"account_id": 1, "db_id": 1, "email": "a@example.com", "data": {}}\n')
    environment = worker_env(settings, **{"IMPORT_CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S, **env})
    environment[CONFIG_PATH_ENV] = str(write_config(tmp_path))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dbimport.loader", str(rows), "--no-progress"],
                          env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started, "")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "main.json"
    if not path.exists():
        path.write_text("{}")
    return path


def assert_one_line(run: Run, code: ExitCode, text: str) -> None:
    """Exit `code`, and a line holding `text` last on stderr and in the job log; no traceback."""
    assert run.code == code, run
    assert text in run.last_line, run.stderr
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    if run.log:
        assert text in run.log, run.log


# --- a RabbitMQ account and a PostgreSQL role of the test's own -----------------------


@dataclass(frozen=True)
class AmqpAccount:
    user: str
    password: str
    vhost: str


@pytest.fixture
def amqp_account() -> Iterator[AmqpAccount]:
    """A user with full permissions on a vhost, both of the test's own."""
    name = f"dbimport-test-{uuid.uuid4().hex[:10]}"
    account = AmqpAccount(user=name, password=uuid.uuid4().hex, vhost=name)
    rabbitmqctl("add_vhost", account.vhost)
    rabbitmqctl("add_user", account.user, account.password)
    rabbitmqctl("set_permissions", "-p", account.vhost, account.user, ".*", ".*", ".*")
    # The tests' own connections (guest) watch the queues of that vhost.
    rabbitmqctl("set_permissions", "-p", account.vhost, "guest", ".*", ".*", ".*")
    yield account
    rabbitmqctl("delete_user", account.user)
    rabbitmqctl("delete_vhost", account.vhost)


def amqp_env(account: AmqpAccount, **changes: str) -> dict[str, str]:
    env = {"RABBITMQ_USER": account.user, "RABBITMQ_PASS": account.password, "RABBITMQ_VHOST": account.vhost}
    env.update(changes)
    return env


@pytest.fixture
def pg_role(database: str) -> Iterator[str]:
    """A login role of the test's own that may use the test's database; its name."""
    role = f"dbimport_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def as_role(dsn: str, role: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = role
    return psycopg.conninfo.make_conninfo("", **params)


# --- refusals: exit at once, 77 or 78 -------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_wrong_rabbitmq_password_exits_77_at_once_naming_the_keys_to_check(
    settings: Settings, tmp_path: Path, amqp_account: AmqpAccount, command: str,
) -> None:
    """Given the test's own RabbitMQ user with a wrong password, when an operator runs the
    command, then it exits 77 at once (not after IMPORT_CONNECT_TIMEOUT_S) with one line
    naming the user, the vhost and the keys to check."""
    run = start(settings, tmp_path, *COMMANDS[command], **amqp_env(amqp_account, RABBITMQ_PASS="wrong"))
    assert_one_line(run, ExitCode.NOPERM, f"RabbitMQ refused user '{amqp_account.user}' on vhost "
                    f"'{amqp_account.vhost}': ACCESS_REFUSED (check RABBITMQ_USER/RABBITMQ_PASS)")
    assert run.seconds < 10, run.seconds


def test_the_loader_refused_by_rabbitmq_exits_77_too(
    settings: Settings, tmp_path: Path, amqp_account: AmqpAccount,
) -> None:
    run = load(settings, tmp_path, **amqp_env(amqp_account, RABBITMQ_PASS="wrong"))
    assert_one_line(run, ExitCode.NOPERM, "ACCESS_REFUSED (check RABBITMQ_USER/RABBITMQ_PASS)")
    assert run.seconds < 10, run.seconds


def test_a_user_without_permissions_on_the_vhost_exits_77_with_the_grant_to_run(
    settings: Settings, tmp_path: Path, amqp_account: AmqpAccount,
) -> None:
    rabbitmqctl("clear_permissions", "-p", amqp_account.vhost, amqp_account.user)
    run = start(settings, tmp_path, "run", "--until-empty", **amqp_env(amqp_account))
    assert_one_line(run, ExitCode.NOPERM, f"rabbitmqctl set_permissions -p {amqp_account.vhost} {amqp_account.user}")
    assert "NOT_ALLOWED" in run.last_line


def test_a_vhost_that_does_not_exist_exits_78_naming_rabbitmq_vhost(
    settings: Settings, tmp_path: Path, amqp_account: AmqpAccount,
) -> None:
    run = start(settings, tmp_path, "run", "--until-empty", **amqp_env(amqp_account, RABBITMQ_VHOST="no-such-vhost"))
    assert_one_line(run, ExitCode.CONFIG, "RabbitMQ has no vhost 'no-such-vhost': NOT_ALLOWED (check RABBITMQ_VHOST")


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_postgresql_database_that_does_not_exist_exits_78_and_says_to_run_init_db(
    settings: Settings, tmp_path: Path, command: str,
) -> None:
    missing = with_database(settings.postgres_dsn, f"dbimport_missing_{uuid.uuid4().hex[:8]}")
    run = start(settings, tmp_path, *COMMANDS[command], POSTGRES_DSN=missing)
    line = f"PostgreSQL database '{psycopg.conninfo.conninfo_to_dict(missing)['dbname']}' does not exist on "
    if command == "check":  # one line a problem, on stdout
        assert run.code == ExitCode.CONFIG, run
        assert any(line in out and "run `dbimport-worker init-db`" in out for out in run.stdout.splitlines()), run
    else:
        assert_one_line(run, ExitCode.CONFIG, line)
        assert "run `dbimport-worker init-db` to create it" in run.last_line
    assert run.seconds < 10, run.seconds


def test_a_postgresql_role_that_does_not_exist_exits_77(settings: Settings, tmp_path: Path) -> None:
    run = start(settings, tmp_path, "run", "--until-empty", POSTGRES_DSN=as_role(settings.postgres_dsn, "no_such_role"))
    assert_one_line(run, ExitCode.NOPERM, "PostgreSQL refused user 'no_such_role'")
    assert 'role "no_such_role" does not exist' in run.last_line
    assert run.seconds < 10, run.seconds


def test_a_role_refused_by_init_db_exits_77(settings: Settings, tmp_path: Path) -> None:
    run = start(settings, tmp_path, "init-db", POSTGRES_DSN=as_role(settings.postgres_dsn, "no_such_role"))
    assert_one_line(run, ExitCode.NOPERM, "PostgreSQL refused user 'no_such_role'")


# --- an outage: retried for the whole IMPORT_CONNECT_TIMEOUT_S, then 69 ---------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("command", ["run", "init-db", "check", "load"])
def test_an_unreachable_broker_is_retried_for_the_whole_connect_timeout_then_69(
    settings: Settings, tmp_path: Path, command: str,
) -> None:
    """IMPORT_CONNECT_TIMEOUT_S=4 is used whole: no exit before 4 s, and one soon after."""
    env = {"RABBITMQ_PORT": str(closed_port()), "IMPORT_CONNECT_TIMEOUT_S": "4"}
    if command == "load":
        run = load(settings, tmp_path, **env)
    else:
        run = start(settings, tmp_path, *COMMANDS[command], **env)
    assert run.code == ExitCode.UNAVAILABLE, run
    final = run.stdout.strip().splitlines()[-1] if command == "check" else run.last_line
    assert "gave up after IMPORT_CONNECT_TIMEOUT_S=4 s" in final, (run.stdout, run.stderr)
    assert 4 <= run.seconds < 4 + 6, run.seconds
    assert "Traceback" not in run.stderr


# --- what the worker needs of its host: log, lock, port (73) -----------------------------


def test_a_job_log_that_cannot_be_written_exits_73_with_one_line_and_check_names_it(
    settings: Settings, tmp_path: Path,
) -> None:
    log = str(tmp_path / "missing" / "job_server.log")
    run = start(settings, tmp_path, "run", "--until-empty", JOB_SERVER_LOG=log)
    assert_one_line(run, ExitCode.CANTCREAT, f"cannot open the job log '{log}' for writing")
    checked = start(settings, tmp_path, "check", JOB_SERVER_LOG=log)
    assert checked.code == ExitCode.PROBLEMS, checked
    assert f"job log '{log}': its directory" in checked.stdout


def test_a_lock_file_in_a_missing_directory_exits_73_into_the_log_and_check_names_it(
    harness: Harness, tmp_path: Path,
) -> None:
    lock = str(tmp_path / "missing" / "worker.lock")
    run = start(harness.settings, tmp_path, "run", "--until-empty", "--lock-file", lock)
    assert_one_line(run, ExitCode.CANTCREAT, f"cannot create the lock file '{lock}'")
    assert f"create the directory '{tmp_path / 'missing'}'" in run.last_line
    assert "cannot create the lock file" in run.log, "the line is in the job log too"
    checked = start(harness.settings, tmp_path, "check", "--lock-file", lock)
    assert checked.code == ExitCode.PROBLEMS and f"lock file '{lock}'" in checked.stdout, checked


def test_a_metrics_port_in_use_exits_73_and_check_names_it(harness: Harness, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start(harness.settings, tmp_path, "run", "--until-empty", "--metrics-port", str(port))
        checked = start(harness.settings, tmp_path, "check", "--metrics-port", str(port))
    assert_one_line(run, ExitCode.CANTCREAT, f"cannot serve metrics on port {port}")
    assert checked.code == ExitCode.PROBLEMS and f"cannot serve metrics on port {port}" in checked.stdout, checked


def test_check_passes_when_log_lock_and_port_are_fine(harness: Harness, tmp_path: Path) -> None:
    run = start(harness.settings, tmp_path, "check", "--lock-file", str(tmp_path / "worker.lock"),
                "--metrics-port", str(closed_port()))
    assert run.code == ExitCode.OK, run
    assert run.stdout.startswith("ok:"), run.stdout
    assert not (tmp_path / "worker.lock").exists(), "check creates nothing"


def test_a_bad_value_exits_78_with_one_line_also_in_the_job_log(settings: Settings, tmp_path: Path) -> None:
    run = start(settings, tmp_path, "run", "--until-empty", IMPORT_PREFETCH="lots")
    assert_one_line(run, ExitCode.CONFIG, "IMPORT_PREFETCH: expected an integer, got 'lots'")
    assert "IMPORT_PREFETCH: expected an integer" in Path(settings.log_path).read_text()


def test_a_bug_at_start_is_70_with_one_line_and_the_traceback_only_in_the_log(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from dbimport import cli, worker

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(worker.Worker, "run", broken)
    monkeypatch.setenv(CONFIG_PATH_ENV, str(write_config(tmp_path)))
    for key, value in worker_env(settings).items():
        monkeypatch.setenv(key, value)
    import logging
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        code = cli.main(["run", "--until-empty"])
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved:
            root.addHandler(handler)
    err = capsys.readouterr().err
    assert code == ExitCode.SOFTWARE
    assert "internal error: KeyError: 'a bug'" in err and f"the traceback is in {settings.log_path}" in err
    assert "Traceback" not in err
    assert "Traceback (most recent call last)" in Path(settings.log_path).read_text()


# --- every command's exit codes come from one place ---------------------------------------


def test_an_abbreviated_option_is_refused_with_2(settings: Settings, tmp_path: Path) -> None:
    run = start(settings, tmp_path, "run", "--work", "2", "--until-empty")
    assert run.code == ExitCode.USAGE and "unrecognized arguments: --work" in run.stderr, run


def test_init_db_declares_the_queues_so_a_message_published_before_any_run_is_answered(
    settings: Settings, tmp_path: Path,
) -> None:
    """Given a fresh store and no queues at all, `init-db` declares the three queues; a message
    published then (before any worker ever started) is kept, and the first `run` answers it."""
    fresh = with_database(settings.postgres_dsn, f"dbimport_test_fresh_{uuid.uuid4().hex[:8]}")
    env = {"POSTGRES_DSN": fresh}
    try:
        before = start(settings, tmp_path, "check", **env)
        assert before.code == ExitCode.CONFIG, before  # no such database yet
        seed = Path(__file__).parent / "data" / "seed.json"
        assert start(settings, tmp_path, "init-db", "--seed", str(seed), **env).code == ExitCode.OK
        checked = start(settings, tmp_path, "check", **env)
        assert checked.code == ExitCode.OK, checked
        harness = Harness(settings.replace(postgres_dsn=fresh))
        try:
            harness.channel.basic_publish(
                "", settings.import_queue, b'{"account_id": 1, "db_id": 1, "email": "early@example.com", "data": {}}',
                mandatory=True,
            )
            run = start(settings, tmp_path, "run", "--until-empty", **env)
            assert run.code == ExitCode.OK, run
            assert [r["error"] for r in harness.results()] == [0]
        finally:
            harness.close()
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(psycopg.conninfo.conninfo_to_dict(fresh)["dbname"])))


def test_check_names_a_missing_queue_as_a_problem(harness: Harness, tmp_path: Path) -> None:
    harness.channel.queue_delete(harness.settings.dead_queue)
    run = start(harness.settings, tmp_path, "check")
    assert run.code == ExitCode.PROBLEMS, run
    assert f"queue {harness.settings.dead_queue}: missing" in run.stdout


def test_check_names_a_queue_with_other_arguments_as_a_problem(harness: Harness, tmp_path: Path) -> None:
    harness.channel.queue_delete(harness.settings.result_queue)
    harness.channel.queue_declare(harness.settings.result_queue, durable=True, arguments={"x-message-ttl": 1000})
    run = start(harness.settings, tmp_path, "check")
    assert run.code == ExitCode.PROBLEMS, run
    assert f"queue {harness.settings.result_queue}: arguments differ" in run.stdout


def test_messages_queued_under_a_refused_start_stay_queued(harness: Harness, tmp_path: Path) -> None:
    """A refusal never answers or acks anything: the queue is as it was."""
    harness.publish(msg(email="kept@example.com"))
    refused = as_role(harness.settings.postgres_dsn, "nobody_here")
    run = start(harness.settings, tmp_path, "run", "--until-empty", POSTGRES_DSN=refused)
    assert run.code == ExitCode.NOPERM
    assert harness.queue_depth(harness.settings.import_queue) == 1
    assert harness.results() == []


# --- refused while running: waited out like an outage -------------------------------------


def metric(port: int, name: str, labels: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{{{labels}}} in the metrics")


def error_lines(settings: Settings, containing: str) -> list[str]:
    path = Path(settings.log_path)
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if " ERROR " in line and containing in line]


def test_credentials_rotated_under_a_running_worker_keep_its_messages_until_they_work_again(
    settings: Settings, tmp_path: Path, amqp_account: AmqpAccount,
) -> None:
    """Given a worker running as the test's own RabbitMQ user, when the user's password is
    changed and its connection closed, then the worker keeps retrying: what is published
    meanwhile stays queued, one ERROR line names the refusal (not one per attempt), and the
    refusals metric counts each attempt; once the password is back it drains the rest."""
    import pika

    from faults.processes import WorkerProcess, wait_for

    port = closed_port()
    env = worker_env(settings, **amqp_env(amqp_account))
    env[CONFIG_PATH_ENV] = str(write_config(tmp_path))
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", settings.rabbitmq_port, amqp_account.vhost))  # as guest
    channel = connection.channel()
    channel.queue_declare(settings.import_queue, durable=True)
    channel.queue_declare(settings.result_queue, durable=True, arguments={"x-message-ttl": settings.result_ttl_ms})

    def publish(prefix: str, n: int) -> None:
        for i in range(n):
            channel.basic_publish("", settings.import_queue,
                                  orjson_dumps(msg(email=f"{prefix}{i}@example.com", feedback_id=f"{prefix}{i}")))

    def depth(queue: str) -> int:
        return int(channel.queue_declare(queue, passive=True).method.message_count)

    worker = WorkerProcess(["run", "--metrics-port", str(port)], env, tmp_path)
    try:
        publish("before", 5)
        wait_for(lambda: depth(settings.result_queue) == 5, "the first answers", while_alive=worker)
        rabbitmqctl("change_password", amqp_account.user, "rotated")
        assert close_worker_connections(settings.import_queue, reason="credentials rotated")
        publish("during", 5)
        wait_for(lambda: metric(port, "dbimport_service_refusals_total", 'service="rabbitmq"') >= 3,
                 "three refused attempts", while_alive=worker)
        assert (depth(settings.import_queue), depth(settings.result_queue)) == (5, 5), "kept while refused"
        assert len(error_lines(settings, "ACCESS_REFUSED")) == 1, Path(settings.log_path).read_text()[-3000:]
        rabbitmqctl("change_password", amqp_account.user, amqp_account.password)
        wait_for(lambda: depth(settings.result_queue) == 10, "the answers after the fix", while_alive=worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    finally:
        worker.stop()
        if connection.is_open:
            connection.close()


def test_a_database_role_locked_under_a_running_worker_is_waited_out_without_an_answer(
    harness: Harness, tmp_path: Path, pg_role: str,
) -> None:
    """Given a worker connected as the test's own role, when the role may no longer log in
    and its sessions are ended, then messages published meanwhile get no answer (an outage
    is never an error result), one ERROR names the refusal, the metric counts it, and once
    the role may log in again every message is answered once, with error 0."""
    from faults.processes import WorkerProcess, wait_for

    port = closed_port()
    settings = harness.settings
    env = worker_env(settings, POSTGRES_DSN=as_role(settings.postgres_dsn, pg_role), IMPORT_DB_RETRY_S="1")
    env[CONFIG_PATH_ENV] = str(write_config(tmp_path))
    worker = WorkerProcess(["run", "--metrics-port", str(port)], env, tmp_path)
    answers: list[dict[str, object]] = []
    try:
        harness.publish(*(msg(email=f"before{i}@example.com", feedback_id=f"before{i}") for i in range(5)))
        wait_for(lambda: len(answers.__iadd__(harness.results()) or answers) >= 5, "the first answers",
                 while_alive=worker)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(pg_role)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (pg_role,))
        harness.publish(*(msg(email=f"during{i}@example.com", feedback_id=f"during{i}") for i in range(5)))
        wait_for(lambda: metric(port, "dbimport_service_refusals_total", 'service="postgresql"') >= 3,
                 "three refused attempts", while_alive=worker)
        answers += harness.results()
        assert len(answers) == 5, answers
        assert len(error_lines(settings, "is not permitted to log in")) == 1, Path(settings.log_path).read_text()[-3000:]
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(pg_role)))
        wait_for(lambda: len(answers.__iadd__(harness.results()) or answers) >= 10, "the answers after the fix",
                 while_alive=worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    finally:
        worker.stop()
    assert sorted(str(a["feedback_id"]) for a in answers) == sorted(
        [f"before{i}" for i in range(5)] + [f"during{i}" for i in range(5)])
    assert {a["error"] for a in answers} == {0}


def orjson_dumps(value: object) -> bytes:
    import orjson

    return orjson.dumps(value)
