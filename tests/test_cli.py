"""The command line and its exit codes: `dbimport-worker`'s commands, and every failure at start.

docs/operations.md, "Exit codes" and "Troubleshooting"; README.md, "Operations":
`dbimport-worker` installed, its help and usage errors, how `run` stops (limits, signals,
the lock file, `--workers`), each failure at start as one line naming the cause and the
fix, refusals while running, and the `init-db`, `check` and `matchers` commands.

Each test that needs a refusal makes its own RabbitMQ user and vhost (rabbitmqctl) or
its own PostgreSQL role and database (SQL), and removes them afterwards. The crontab
line, the systemd unit and the logrotate stanza of docs/operations.md are tried in
test_operations.py; `dbimport-load`'s own options in test_loader.py.
"""
from __future__ import annotations

import importlib.metadata
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from conftest import (
    ADMIN_DSN,
    BUILT_IN_MODES,
    RABBITMQ,
    RESULT_KEYS,
    Harness,
    answered,
    cli,
    free_port,
    metric,
    msg,
    ok,
    scrape,
    spawn,
    worker_env,
)
from dbimport.config import CONFIG_PATH_ENV, Settings
from dbimport.errors import ExitCode
from dbimport.store import with_database
from faults.checks import email_stream
from faults.plugins import FAULT_MODE
from faults.processes import WorkerProcess, children_of, log_lines, wait_for
from faults.processes import command as worker_command
from faults.processes import worker_env as fault_env
from faults.proxy import TcpProxy
from faults.services import close_worker_connections, queue_counts, rabbitmqctl

EX_OK, EX_PROBLEMS, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 1, 2, 69, 78
REPO = Path(__file__).resolve().parent.parent
OPERATIONS_DOC = REPO / "docs" / "operations.md"
WAIT_S = 30.0
STOP_WITHIN_S = 5.0
RABBITMQ_AT = ("127.0.0.1", 5672)
POSTGRES_AT = ("127.0.0.1", 5432)
# Long enough that an outage-style retry would show: a refusal must not wait for it.
CONNECT_TIMEOUT_S = "30"
COMMANDS = {
    "run": ["run", "--until-empty"],
    "check": ["check"],
    "init-db": ["init-db"],
}


def cli_env(tmp_path: Path, settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """A worker's environment reading tmp_path/main.json (empty unless the test wrote one)."""
    config = tmp_path / "main.json"
    if not config.exists():
        config.write_text("{}")
    env = worker_env(settings, **{CONFIG_PATH_ENV: str(config)})
    if settings is None:
        env["JOB_SERVER_LOG"] = str(tmp_path / "job_server.log")
    env.update(extra)
    return env


# --- install and layout -----------------------------------------------------------------------


def test_python_dash_m_dbimport_shows_the_program_help(tmp_path: Path) -> None:
    done = cli("--help", env=cli_env(tmp_path))
    assert done.returncode == EX_OK, done.stderr
    assert "usage: dbimport-worker" in done.stdout
    for command in ("run", "init-db", "check", "matchers"):
        assert command in done.stdout
    assert "exit codes" in done.stdout


def test_the_console_script_is_installed_next_to_the_interpreter(tmp_path: Path) -> None:
    """Given the editable install, then `dbimport-worker` is on the venv's PATH and runs."""
    bin_dir = Path(sys.executable).parent
    script = bin_dir / "dbimport-worker"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is missing"
    env = cli_env(tmp_path)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["dbimport-worker", "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == EX_OK, done.stderr
    assert "usage: dbimport-worker" in done.stdout


# --- help and usage: the command line is parsed, never edited ---------------------------------


@pytest.mark.parametrize("command, explains", [
    ("run", ["Consume the import queue", "--until-empty", "--max-messages", "--max-runtime", "SIGTERM"]),
    ("init-db", ["Create the database", "schema", "--seed"]),
    ("check", ["RabbitMQ", "PostgreSQL", "schema", "queues"]),
    ("matchers", ["matching mode", "plugin", "package"]),
])
def test_each_command_explains_itself_with_help(tmp_path: Path, command: str, explains: list[str]) -> None:
    done = cli(command, "--help", env=cli_env(tmp_path))
    assert done.returncode == EX_OK, done.stderr
    assert f"usage: dbimport-worker {command}" in done.stdout
    for text in explains:
        assert text in done.stdout, f"{command} --help does not mention {text!r}:\n{done.stdout}"


@pytest.mark.parametrize("args", [
    ["run", "--no-such-option"],
    ["run", "--max-messages", "0"],
    ["run", "--max-runtime", "soon"],
    ["frobnicate"],
    [],
])
def test_a_bad_command_line_exits_2_with_usage(tmp_path: Path, args: list[str]) -> None:
    done = cli(*args, env=cli_env(tmp_path))
    assert done.returncode == EX_USAGE, (done.stdout, done.stderr)
    assert "usage: dbimport-worker" in done.stderr


@pytest.mark.parametrize("abbreviated", [["--work", "2"], ["--lock", "x.lock"], ["--until"], ["--max-m", "3"]])
def test_an_abbreviated_option_is_refused_not_guessed(tmp_path: Path, abbreviated: list[str]) -> None:
    """`run --work 2` once spawned workers that spawned workers, and `run --lock F` made the
    children exit 0 at once: an option must be spelled out."""
    done = cli("run", *abbreviated, env=cli_env(tmp_path))
    assert done.returncode == EX_USAGE, done
    assert f"unrecognized arguments: {abbreviated[0]}" in done.stderr


def test_the_children_of_run_workers_get_their_command_line_from_the_parsed_options() -> None:
    from dbimport.cli import build_parser
    from dbimport.supervisor import child_command

    args = build_parser().parse_args([
        "--config", "/etc/dbimport/main.json", "run", "--workers=3", "--lock-file", "/run/w.lock",
        "--until-empty", "--max-messages", "10", "--max-runtime", "2.5", "--metrics-port", "9100",
    ])
    assert child_command(args) == [
        sys.executable, "-m", "dbimport", "--config", "/etc/dbimport/main.json", "run",
        "--until-empty", "--max-messages", "10", "--max-runtime", "2.5", "--metrics-port", "9100",
    ]


# --- run: limits and clean stops --------------------------------------------------------------


def test_run_until_empty_answers_everything_and_exits_0(harness: Harness, tmp_path: Path) -> None:
    harness.publish(*(msg(email=f"u{i}@example.com", feedback_id=f"u{i}") for i in range(3)))
    done = cli("run", "--until-empty", env=cli_env(tmp_path, harness.settings))
    assert done.returncode == EX_OK, done.stderr
    assert sorted(r["feedback_id"] for r in harness.results()) == ["u0", "u1", "u2"]
    assert harness.queue_depth(harness.settings.import_queue) == 0
    assert harness.count("SELECT count(*) FROM profiles") == 3


def test_run_max_messages_answers_exactly_n_and_leaves_the_rest_queued(harness: Harness, tmp_path: Path) -> None:
    harness.publish(*(msg(email=f"m{i}@example.com", feedback_id=f"m{i}") for i in range(5)))
    done = cli("run", "--max-messages", "2", env=cli_env(tmp_path, harness.settings))
    assert done.returncode == EX_OK, done.stderr
    assert [r["feedback_id"] for r in harness.results()] == ["m0", "m1"]
    assert harness.queue_depth(harness.settings.import_queue) == 3
    assert harness.count("SELECT count(*) FROM profiles") == 2


def test_run_max_runtime_exits_0_after_about_that_long_on_an_idle_queue(harness: Harness, tmp_path: Path) -> None:
    started = time.monotonic()
    done = cli("run", "--max-runtime", "1.5", env=cli_env(tmp_path, harness.settings))
    elapsed = time.monotonic() - started
    assert done.returncode == EX_OK, done.stderr
    # The deadline counts from the start of the run; interpreter start-up comes on top.
    assert 1.5 <= elapsed < 6.0, elapsed
    assert harness.results() == []


def take_all(harness: Harness, queue: str) -> list[dict[str, Any]]:
    """Every message left in `queue`, consumed."""
    out = []
    while True:
        method, _props, body = harness.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(orjson.loads(body))


def assert_acked_exactly_what_it_answered(harness: Harness, messages: list[dict[str, Any]]) -> set[str]:
    """After a clean stop: each message answered once and gone, or unanswered and still
    queued; none left unacked. The feedback_ids answered."""
    queue = harness.settings.import_queue
    wait_for(lambda: queue_counts(queue).unacked == 0, "the broker to settle the closed channel", timeout_s=10)
    results = harness.results()
    answered_ids = [r["feedback_id"] for r in results]
    assert len(answered_ids) == len(set(answered_ids)), "a message was answered twice"
    assert all(r["error"] == 0 for r in results)
    left = [m["feedback_id"] for m in take_all(harness, queue)]
    assert sorted(answered_ids + left) == sorted(m["feedback_id"] for m in messages)
    return set(answered_ids)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_batch_finishes_the_batch_in_hand_acks_exactly_what_was_answered_and_exits_0(
    harness: Harness, tmp_path: Path, signum: int,
) -> None:
    """Given a worker in the middle of 3,000 messages, inside the transaction of a batch,
    when it gets SIGTERM or SIGINT, then it finishes that batch (its messages are
    answered) and exits 0 within a few seconds; every message it answered is gone from
    the queue, every other one is still there, ready, and nothing is left unacked."""
    messages = email_stream("stop", matching=FAULT_MODE)
    # Message 100 is the first with its address: the worker holds the batch it is in.
    in_hand = messages[100]
    holding, release = tmp_path / "holding", tmp_path / "release"
    harness.publish(*messages)
    env = fault_env(harness.settings, FAULT_HOLD_EMAIL=in_hand["email"],
                     FAULT_HOLD_MARKER=str(holding), FAULT_HOLD_RELEASE=str(release))
    worker = WorkerProcess(["run"], env, tmp_path, launcher=True)
    try:
        wait_for(holding.exists, "a batch in hand", while_alive=worker)
        signalled = time.monotonic()
        worker.signal(signum)
        release.touch()
        assert worker.wait() == 0, worker.output()[-3000:]
        took_s = time.monotonic() - signalled
    finally:
        release.touch()
        worker.stop()

    assert took_s < STOP_WITHIN_S, f"took {took_s:.1f} s to stop"
    name = signal.Signals(signum).name
    assert len(log_lines(harness.settings, f"received {name}; finishing the batch in hand")) == 1
    answered_ids = assert_acked_exactly_what_it_answered(harness, messages)
    assert in_hand["feedback_id"] in answered_ids, "the batch in hand was not finished"
    assert len(answered_ids) < len(messages)


@pytest.mark.slow
def test_max_runtime_on_a_busy_queue_stops_in_time_and_acks_exactly_what_was_answered(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given 3,000 messages, paced so that they take longer than 2 s, when `run --max-runtime 2`
    works on them, then it stops after about 2 s with exit 0, as cleanly as on SIGTERM."""
    messages = email_stream("runtime", matching=FAULT_MODE)
    harness.publish(*messages)
    env = fault_env(harness.settings, FAULT_PACE_S="0.1")
    started = time.monotonic()
    worker = WorkerProcess(["run", "--max-runtime", "2"], env, tmp_path, launcher=True)
    assert worker.wait() == 0, worker.output()[-3000:]
    elapsed = time.monotonic() - started
    # The deadline is checked between batches; interpreter start-up comes on top.
    assert 2.0 <= elapsed < 2.0 + STOP_WITHIN_S + 3, elapsed
    assert len(log_lines(harness.settings, "--max-runtime reached; stopping")) == 1
    count = len(assert_acked_exactly_what_it_answered(harness, messages))
    assert 0 < count < len(messages)


# --- the lock file ----------------------------------------------------------------------------


def test_a_second_run_with_the_same_lock_file_exits_0_at_once_while_the_first_holds_it(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a worker running with --lock-file, when another run starts with the same lock
    file, then it exits 0 at once without consuming; the first goes on answering; once the
    first has stopped, a new run takes the lock and drains the queue."""
    lock = tmp_path / "worker.lock"
    env = fault_env(harness.settings)
    first = WorkerProcess(["run", "--lock-file", str(lock)], env, tmp_path)
    try:
        wait_for(lambda: log_lines(harness.settings, "starting:"), "the first run to start", while_alive=first)
        assert lock.read_text().strip() == str(first.pid)

        started = time.monotonic()
        second = subprocess.run(worker_command("run", "--lock-file", str(lock), "--until-empty"), env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert time.monotonic() - started < 10
        assert len(log_lines(harness.settings, f"another run holds {lock}; exiting")) == 1
        assert len(log_lines(harness.settings, "starting:")) == 1, "the second run must not consume"

        harness.publish(*(msg(email=f"lock{i}@example.com", feedback_id=f"lock{i}") for i in range(20)))
        wait_for(lambda: answered(harness) == 20, "the first run's answers", while_alive=first)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
    finally:
        first.stop()

    harness.publish(msg(email="after@example.com", feedback_id="after"))
    third = subprocess.run(worker_command("run", "--lock-file", str(lock), "--until-empty"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr
    assert sorted(r["feedback_id"] for r in harness.results()) == sorted([f"lock{i}" for i in range(20)] + ["after"])
    assert harness.queue_depth(harness.settings.import_queue) == 0
    assert len(log_lines(harness.settings, "starting:")) == 2


# --- run --workers N --------------------------------------------------------------------------


def test_workers_2_drains_without_duplicates_and_sigterm_stops_both_children(
    harness: Harness, tmp_path: Path
) -> None:
    """Given `run --workers 2` on a queue of 400 messages over 100 e-mails, then both
    children work, every message is answered once with one profile per e-mail; SIGTERM
    to the parent reaches both children, which finish and exit, and the parent exits 0."""
    emails = [f"w{i % 100}@example.com" for i in range(400)]
    harness.publish(*(msg(email=e, feedback_id=str(n), data={"_fname": f"F{n}"}) for n, e in enumerate(emails)))
    env = worker_env(harness.settings, IMPORT_BATCH_SIZE="20", IMPORT_PREFETCH="40")
    parent = spawn("run", "--workers", "2", env=env, cwd=tmp_path)
    try:
        wait_for(lambda: len(children_of(parent.pid)) == 2, "two workers", timeout_s=WAIT_S)
        children = children_of(parent.pid)
        wait_for(lambda: harness.queue_depth(harness.settings.result_queue) == 400, "400 results", timeout_s=WAIT_S)
        started = time.monotonic()
        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=WAIT_S)[0]
        stopped_s = time.monotonic() - started
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, output[-3000:]
    assert stopped_s < 10, stopped_s
    assert all(not Path(f"/proc/{pid}").exists() for pid in children), output[-2000:]
    handled = [int(n) for n in re.findall(r"stopped: handled=(\d+)", output)]
    assert len(handled) == 2 and sum(handled) == 400, output[-3000:]
    results = ok(harness.results())
    assert sorted(int(r["feedback_id"]) for r in results) == list(range(400))
    assert harness.count("SELECT count(*) FROM profiles") == 100
    assert harness.count("SELECT count(DISTINCT email) FROM profiles") == 100


def test_workers_share_the_parents_lock(harness: Harness, tmp_path: Path) -> None:
    """Given `run --workers 2 --lock-file L` running, then a second start with the same
    lock file exits 0 at once, whatever its --workers."""
    lock = tmp_path / "dbimport.lock"
    env = worker_env(harness.settings)
    first = spawn("run", "--workers", "2", "--lock-file", str(lock), env=env, cwd=tmp_path)
    try:
        wait_for(lambda: len(children_of(first.pid)) == 2, "two workers", timeout_s=WAIT_S)
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "dbimport", "run", "--workers", "3", "--lock-file", str(lock)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
        )
        assert second.returncode == 0, second.stderr
        assert time.monotonic() - started < 5
        assert "another run holds" in second.stderr
        assert len(children_of(first.pid)) == 2
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=WAIT_S)
    assert first.returncode == 0


# --- failures at start: one line and an exit code ---------------------------------------------


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
    environment[CONFIG_PATH_ENV] = str(empty_config(tmp_path))
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
    environment[CONFIG_PATH_ENV] = str(empty_config(tmp_path))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dbimport.loader", str(rows), "--no-progress"],
                          env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started, "")


def empty_config(tmp_path: Path) -> Path:
    """tmp_path/main.json, written empty unless the test wrote one."""
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


# --- refusals: exit at once, 77 or 78 ---------------------------------------------------------


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


def test_messages_queued_under_a_refused_start_stay_queued(harness: Harness, tmp_path: Path) -> None:
    """A refusal never answers or acks anything: the queue is as it was."""
    harness.publish(msg(email="kept@example.com"))
    refused = as_role(harness.settings.postgres_dsn, "nobody_here")
    run = start(harness.settings, tmp_path, "run", "--until-empty", POSTGRES_DSN=refused)
    assert run.code == ExitCode.NOPERM
    assert harness.queue_depth(harness.settings.import_queue) == 1
    assert harness.results() == []


# --- an outage at start: retried for the whole IMPORT_CONNECT_TIMEOUT_S, then 69 --------------


@pytest.mark.parametrize("command", ["run", "init-db", "check", "load"])
def test_an_unreachable_broker_is_retried_for_the_whole_connect_timeout_then_69(
    settings: Settings, tmp_path: Path, command: str,
) -> None:
    """IMPORT_CONNECT_TIMEOUT_S=4 is used whole: no exit before 4 s, and one soon after."""
    env = {"RABBITMQ_PORT": str(free_port()), "IMPORT_CONNECT_TIMEOUT_S": "4"}
    if command == "load":
        run = load(settings, tmp_path, **env)
    else:
        run = start(settings, tmp_path, *COMMANDS[command], **env)
    assert run.code == ExitCode.UNAVAILABLE, run
    final = run.stdout.strip().splitlines()[-1] if command == "check" else run.last_line
    assert "gave up after IMPORT_CONNECT_TIMEOUT_S=4 s" in final, (run.stdout, run.stderr)
    assert 4 <= run.seconds < 4 + 6, run.seconds
    assert "Traceback" not in run.stderr


def pointing_at(settings: Settings, service: str, port: int) -> dict[str, str]:
    """Environment overrides that send the worker to `port` for `service`."""
    if service == "RabbitMQ":
        return {"RABBITMQ_PORT": str(port)}
    params = psycopg.conninfo.conninfo_to_dict(settings.postgres_dsn)
    params.update(host="127.0.0.1", port=str(port))
    return {"POSTGRES_DSN": psycopg.conninfo.make_conninfo(**params)}


def attempt_delays(settings: Settings) -> list[float]:
    lines = log_lines(settings, "start attempt ")
    return [float(re.search(r"retrying in ([\d.]+) s", line).group(1)) for line in lines]  # type: ignore[union-attr]


@pytest.mark.parametrize("service", ["RabbitMQ", "PostgreSQL"])
def test_until_empty_with_a_service_unreachable_retries_with_backoff_then_exits_69(
    harness: Harness, tmp_path: Path, service: str,
) -> None:
    """Given the service at a closed port, when `run --until-empty` starts with
    IMPORT_CONNECT_TIMEOUT_S=3, then it logs each attempt with a doubling delay, and
    gives up with exit 69 in bounded time."""
    closed = TcpProxy(RABBITMQ_AT if service == "RabbitMQ" else POSTGRES_AT)  # never started: its port is closed
    env = fault_env(harness.settings, IMPORT_CONNECT_TIMEOUT_S="3",
                     **pointing_at(harness.settings, service, closed.port))
    started = time.monotonic()
    done = subprocess.run(worker_command("run", "--until-empty"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert elapsed < 3 + 10, elapsed
    attempts = log_lines(harness.settings, "start attempt ")
    assert len(attempts) >= 2 and all(service in line for line in attempts), attempts
    delays = attempt_delays(harness.settings)
    # Doubling, but the last wait ends at the deadline: the whole timeout is used.
    assert delays[:2] == [0.5, 1.0] and all(b == 2 * a for a, b in itertools.pairwise(delays[:-1])), delays
    assert 0 < delays[-1] <= 2 * delays[-2] and elapsed >= 3, (delays, elapsed)
    assert log_lines(harness.settings, "gave up after IMPORT_CONNECT_TIMEOUT_S=3 s")


@pytest.mark.parametrize("service", ["RabbitMQ", "PostgreSQL"])
def test_without_until_empty_the_worker_keeps_trying_and_drains_once_the_service_answers(
    harness: Harness, tmp_path: Path, service: str,
) -> None:
    """Given the service unreachable (a proxy in front of it that is not listening yet),
    when `run` starts, then it keeps trying; once the proxy listens, it connects and
    answers what was queued; SIGTERM then exits 0."""
    proxy = TcpProxy(RABBITMQ_AT if service == "RabbitMQ" else POSTGRES_AT)
    messages = [msg(email=f"late{i}@example.com", feedback_id=f"late{i}") for i in range(100)]
    harness.publish(*messages)
    env = fault_env(harness.settings, **pointing_at(harness.settings, service, proxy.port))
    worker = WorkerProcess(["run"], env, tmp_path)
    try:
        wait_for(lambda: len(log_lines(harness.settings, "start attempt ")) >= 2, "two attempts", while_alive=worker)
        assert answered(harness) == 0
        proxy.start()
        wait_for(lambda: answered(harness) == len(messages), "the answers", while_alive=worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    finally:
        worker.stop()
        proxy.close()
    assert log_lines(harness.settings, "connected after ")
    assert sorted(r["feedback_id"] for r in harness.results() if r["error"] == 0) == sorted(
        m["feedback_id"] for m in messages)


def test_sigterm_while_retrying_at_start_exits_0_at_once(harness: Harness, tmp_path: Path) -> None:
    closed = TcpProxy(RABBITMQ_AT)
    env = fault_env(harness.settings, **pointing_at(harness.settings, "RabbitMQ", closed.port))
    worker = WorkerProcess(["run"], env, tmp_path)
    try:
        wait_for(lambda: len(log_lines(harness.settings, "start attempt ")) >= 2, "two attempts", while_alive=worker)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        assert time.monotonic() - signalled < STOP_WITHIN_S
    finally:
        worker.stop()


# --- what the worker needs of its host: log, lock, port (73) ----------------------------------


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
                "--metrics-port", str(free_port()))
    assert run.code == ExitCode.OK, run
    assert run.stdout.startswith("ok:"), run.stdout
    assert not (tmp_path / "worker.lock").exists(), "check creates nothing"


# --- a bad value (78), a bug (70) -------------------------------------------------------------


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
    monkeypatch.setenv(CONFIG_PATH_ENV, str(empty_config(tmp_path)))
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


# --- refused while running: waited out like an outage -----------------------------------------


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

    port = free_port()
    env = worker_env(settings, **amqp_env(amqp_account))
    env[CONFIG_PATH_ENV] = str(empty_config(tmp_path))
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
        wait_for(lambda: (metric(scrape(port), "dbimport_service_refusals_total", '{service="rabbitmq"}') or 0) >= 3,
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

    port = free_port()
    settings = harness.settings
    env = worker_env(settings, POSTGRES_DSN=as_role(settings.postgres_dsn, pg_role), IMPORT_DB_RETRY_S="1")
    env[CONFIG_PATH_ENV] = str(empty_config(tmp_path))
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
        wait_for(lambda: (metric(scrape(port), "dbimport_service_refusals_total", '{service="postgresql"}') or 0) >= 3,
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


# --- init-db ----------------------------------------------------------------------------------


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


def test_the_readme_demo_imports_the_examples_end_to_end(settings: Settings, tmp_path: Path) -> None:
    """README.md, "Two commands": `scripts/demo` sets up the store, publishes
    examples/messages.jsonl, drains it with `run --until-empty` and prints one result per
    line, each with the contract's five keys, and a summary of the codes. Run here with the
    test's own (fresh) database, queues and log, which the demo takes from the environment
    over main.json."""
    fresh = with_database(settings.postgres_dsn, f"dbimport_test_demo_{uuid.uuid4().hex[:8]}")
    env = worker_env(settings, POSTGRES_DSN=fresh)
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "demo")], env=env, cwd=REPO, capture_output=True, text=True, timeout=240,
        )
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(psycopg.conninfo.conninfo_to_dict(fresh)["dbname"])))
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    messages = [line for line in (REPO / "examples" / "messages.jsonl").read_text().splitlines() if line.strip()]
    results = [orjson.loads(line.split(": ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("line ")]
    assert len(results) == len(messages), done.stdout
    assert all(set(result) == RESULT_KEYS for result in results), results
    codes = sorted(result["error"] for result in results)
    assert f"{len(messages)} of {len(messages)} results: {codes.count(0)} ok" in done.stdout, done.stdout
    assert {0, 400, 403, 404} <= set(codes), codes  # the examples show each kind of answer


# --- check ------------------------------------------------------------------------------------


def test_check_passes_on_a_good_setup(harness: Harness, tmp_path: Path) -> None:
    done = cli("check", env=cli_env(tmp_path, harness.settings))
    assert done.returncode == EX_OK, (done.stdout, done.stderr)
    assert done.stdout.strip().startswith("ok"), done.stdout


def without_database(queues: dict[str, str], tmp_path: Path, dsn: str) -> Settings:
    """Settings with the test's own queue names for a test that needs no seeded database."""
    return Settings(
        postgres_dsn=dsn, rabbitmq_host=RABBITMQ["host"], rabbitmq_port=RABBITMQ["port"],
        log_path=str(tmp_path / "job_server.log"), connect_timeout_s=1.0, **queues,
    )


def test_check_exits_69_when_postgresql_is_unreachable(queues: dict[str, str], tmp_path: Path) -> None:
    env = cli_env(tmp_path, without_database(queues, tmp_path, "postgresql://127.0.0.1:1/dbimport"))
    done = cli("check", env=env)
    assert done.returncode == EX_UNAVAILABLE, (done.stdout, done.stderr)
    assert "cannot connect to PostgreSQL" in done.stdout and "gave up after" in done.stdout


@pytest.fixture
def empty_database(services: None) -> Iterator[str]:
    """The DSN of a database of the test's own with no schema at all."""
    name = f"dbimport_test_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(ADMIN_DSN, name)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_check_names_a_missing_schema(queues: dict[str, str], empty_database: str, tmp_path: Path) -> None:
    done = cli("check", env=cli_env(tmp_path, without_database(queues, tmp_path, empty_database)))
    assert done.returncode not in (EX_OK, EX_UNAVAILABLE), (done.stdout, done.stderr)
    schema_lines = [line for line in done.stdout.splitlines() if line.startswith("schema:")]
    assert len(schema_lines) == 1, done.stdout
    assert "init-db" in schema_lines[0]


def test_run_on_a_store_without_schema_exits_78_naming_init_db(
    queues: dict[str, str], empty_database: str, tmp_path: Path,
) -> None:
    """Given a database that init-db never touched, then `run` stops at start as badly configured
    (exit 78, as --help's epilog says) with a line that says to run init-db, not a traceback."""
    done = cli("run", "--until-empty", env=cli_env(tmp_path, without_database(queues, tmp_path, empty_database)))
    assert done.returncode == EX_CONFIG, done.stderr
    assert any("POSTGRES_DSN" in line and "init-db" in line for line in done.stderr.splitlines()), done.stderr
    assert "Traceback" not in done.stderr


def test_check_names_a_missing_unique_index_on_its_own_line(harness: Harness, tmp_path: Path) -> None:
    """Given the store lost the unique index that keeps e-mails unique per database, then
    `check` prints a line naming that key and exits 1; the other checks still pass."""
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX profiles_email_key")
    done = subprocess.run(
        [sys.executable, "-m", "dbimport", "check"], env=worker_env(harness.settings),
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.splitlines() == ["schema: missing unique key on profiles (db_id, email)"], done.stdout


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


# --- matchers ---------------------------------------------------------------------------------


def test_matchers_lists_the_eleven_built_in_modes_with_plugin_and_package(tmp_path: Path) -> None:
    done = cli("matchers", env=cli_env(tmp_path))
    assert done.returncode == EX_OK, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["MODE", "PLUGIN", "PACKAGE"]
    listed = {row.split()[0]: row.split()[1:4] for row in rows if row.strip()}
    assert set(listed) == set(BUILT_IN_MODES)
    version = importlib.metadata.version("dbimport")
    for mode, (plugin, package, package_version) in listed.items():
        assert plugin == f"dbimport.matchers.{mode}", (mode, plugin)
        assert (package, package_version) == ("dbimport", version), mode


# --- exit codes, as docs/operations.md lists them ---------------------------------------------


def test_the_exit_codes_documented_for_operators_are_the_command_lines_own() -> None:
    section = OPERATIONS_DOC.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == set(ExitCode)
