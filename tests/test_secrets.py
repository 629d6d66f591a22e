"""Secrets: the RabbitMQ password and the DSN's credentials never reach a log, an error or a repr.

docs/security.md, "Secrets". Each worker process gets a RABBITMQ_PASS and a POSTGRES_DSN
password that are random strings (or, read from main.json, fixed ones), is made to fail
in a different way, and then its stdout, its stderr and its job log are searched for
both. (PostgreSQL here trusts local connections, so a DSN password is accepted whatever
it is: its failures come from unreachable ports.)
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg.conninfo
import pytest

from conftest import Harness, write_config
from dbimport.broker import Broker
from dbimport.broker.connection import parameters
from dbimport.config import CONFIG_PATH_ENV, Settings, keys, load_settings, redact_dsn
from dbimport.errors import ConfigError, DbimportError, ServiceUnavailable
from dbimport.store import Store
from dbimport.worker import RunLimits, Worker

UNREACHABLE_PORT = "1"
EX_UNAVAILABLE = 69
# Fixed secrets, for the tests that read them from main.json.
PG_SECRET = "pgS3cretValue"
MQ_SECRET = "mqS3cretValue"


@dataclass(frozen=True)
class Secrets:
    rabbitmq_pass: str
    dsn_password: str

    def found_in(self, text: str) -> list[str]:
        return [name for name, secret in (("RABBITMQ_PASS", self.rabbitmq_pass),
                                           ("the DSN password", self.dsn_password)) if secret in text]


@pytest.fixture
def secrets() -> Secrets:
    return Secrets(rabbitmq_pass=f"rmq-{uuid.uuid4().hex}", dsn_password=f"pg-{uuid.uuid4().hex}")


def url_dsn(database: str, password: str, *, port: str = "5432") -> str:
    """The test database's DSN as a URL with a user and password."""
    dbname = psycopg.conninfo.conninfo_to_dict(database)["dbname"]
    return f"postgresql://root:{password}@127.0.0.1:{port}/{dbname}"


def keyword_dsn(database: str, password: str, *, port: str = "5432") -> str:
    dbname = psycopg.conninfo.conninfo_to_dict(database)["dbname"]
    return f"host=127.0.0.1 port={port} dbname={dbname} user=root password='{password}' connect_timeout=3"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    log: str

    @property
    def everything(self) -> str:
        return "\n".join((self.stdout, self.stderr, self.log))


def worker(tmp_path: Path, settings: Settings, *args: str, **env_keys: str) -> Run:
    """Run `dbimport-worker ARGS` with the test's queues and `env_keys` in its environment."""
    log = tmp_path / f"job-{uuid.uuid4().hex[:6]}.log"
    config = tmp_path / "main.json"
    if not config.exists():
        config.write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in keys() and k != CONFIG_PATH_ENV}
    env.update({
        CONFIG_PATH_ENV: str(config), "JOB_SERVER_LOG": str(log), "IMPORT_QUEUE": settings.import_queue,
        "IMPORT_RESULT_QUEUE": settings.result_queue, "IMPORT_DEAD_QUEUE": settings.dead_queue,
        "IMPORT_CONNECT_TIMEOUT_S": "1", "RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_PORT": "5672",
        **env_keys,
    })
    done = subprocess.run([sys.executable, "-m", "dbimport", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr, log.read_text() if log.exists() else "")


def assert_secret_free(run: Run, secrets: Secrets) -> None:
    leaked = secrets.found_in(run.everything)
    assert not leaked, f"{', '.join(leaked)} found in the output or the job log:\n{run.everything[-3000:]}"


# --- worker processes that fail -------------------------------------------------------------


def test_rabbitmq_unreachable(tmp_path: Path, settings: Settings, secrets: Secrets) -> None:
    """Given RabbitMQ on a port where nothing listens, `run --until-empty` exits 69
    naming the failure; neither secret appears anywhere, though the start line
    prints every setting."""
    run = worker(tmp_path, settings, "run", "--until-empty", RABBITMQ_PORT=UNREACHABLE_PORT,
                 RABBITMQ_PASS=secrets.rabbitmq_pass, POSTGRES_DSN=url_dsn(settings.postgres_dsn, secrets.dsn_password))
    assert run.code == 69, run
    assert "starting: Settings(" in run.log and "***" in run.log
    assert "RabbitMQ" in run.log
    assert_secret_free(run, secrets)


def test_rabbitmq_refuses_the_password(tmp_path: Path, settings: Settings, secrets: Secrets) -> None:
    """Given the real broker and a wrong password for guest (at DEBUG level, where pika
    logs its connection steps), the worker stops at once with 77 (a refusal is no
    outage), and the password it sent is nowhere in what it printed or logged."""
    run = worker(tmp_path, settings, "run", "--until-empty", RABBITMQ_PASS=secrets.rabbitmq_pass,
                 DEFAULT_LOG_LEVEL="DEBUG", POSTGRES_DSN=keyword_dsn(settings.postgres_dsn, secrets.dsn_password))
    assert run.code == 77, run
    assert "ACCESS_REFUSED" in run.everything, run.everything[-2000:]
    assert_secret_free(run, secrets)


@pytest.mark.parametrize("dsn_form", ["url", "keyword"])
def test_postgresql_unreachable(tmp_path: Path, settings: Settings, secrets: Secrets, dsn_form: str) -> None:
    """Given a DSN (URL or keyword form) naming a port where nothing listens, `run`
    exits 69 and `init-db` and `check` fail naming PostgreSQL; no secret appears."""
    make = url_dsn if dsn_form == "url" else keyword_dsn
    dsn = make(settings.postgres_dsn, secrets.dsn_password, port=UNREACHABLE_PORT)
    common = {"RABBITMQ_PASS": secrets.rabbitmq_pass, "POSTGRES_DSN": dsn}
    runs = [
        worker(tmp_path, settings, "run", "--until-empty", **common),
        worker(tmp_path, settings, "init-db", **common),
        worker(tmp_path, settings, "check", **common),
    ]
    assert [r.code for r in runs] == [69, 69, 69], runs
    for run in runs:
        assert "PostgreSQL" in run.everything or "postgresql" in run.everything
        assert_secret_free(run, secrets)


def test_check_with_both_services_unreachable(tmp_path: Path, settings: Settings, secrets: Secrets) -> None:
    """`check` prints one line per unreachable service, without a secret."""
    run = worker(tmp_path, settings, "check", RABBITMQ_PORT=UNREACHABLE_PORT, RABBITMQ_PASS=secrets.rabbitmq_pass,
                 POSTGRES_DSN=url_dsn(settings.postgres_dsn, secrets.dsn_password, port=UNREACHABLE_PORT))
    assert run.code == 69, run
    lines = run.stdout.splitlines()
    assert any(line.startswith("cannot connect to PostgreSQL") for line in lines), run.stdout
    assert any(line.startswith("RabbitMQ connect to") for line in lines), run.stdout
    assert_secret_free(run, secrets)


@pytest.mark.parametrize("bad", [
    {"IMPORT_PREFETCH": "lots"},
    {"RABBITMQ_PORT": "amqp"},
    {"POSTGRES_DSN": "host=127.0.0.1 password={dsn} port"},
    {"POSTGRES_DSN": "postgresql://root:{dsn}@127.0.0.1:5432/x?sslmode"},
    {"POSTGRES_DSN": "postgresql://root:{dsn}@127.0.0.1:notaport/x"},
], ids=["prefetch", "port", "keyword-dsn", "url-dsn", "url-dsn-port"])
def test_bad_configuration_names_the_key_without_its_secret(
    tmp_path: Path, settings: Settings, secrets: Secrets, bad: dict[str, str],
) -> None:
    """Given a bad configuration value (some of them DSNs holding the password), the
    worker stops at start (78) or when it first connects (69), naming the key or the
    service, and neither secret appears."""
    env = {"RABBITMQ_PASS": secrets.rabbitmq_pass, "POSTGRES_DSN": url_dsn(settings.postgres_dsn, secrets.dsn_password)}
    env.update({k: v.format(dsn=secrets.dsn_password) for k, v in bad.items()})
    run = worker(tmp_path, settings, "run", "--until-empty", **env)
    assert run.code in (69, 78), run
    if run.code == 78:
        assert any(key in run.stderr for key in bad), run.stderr
    assert_secret_free(run, secrets)


def test_a_mistyped_secret_in_main_json_is_not_echoed(tmp_path: Path, settings: Settings, secrets: Secrets) -> None:
    """Given main.json holding the password where a string belongs in a list, and the
    DSN as an object, the worker stops with 78 naming the key, without echoing either."""
    (tmp_path / "main.json").write_text(
        f'{{"RABBITMQ_PASS": ["{secrets.rabbitmq_pass}"], "POSTGRES_DSN": {{"password": "{secrets.dsn_password}"}}}}'
    )
    run = worker(tmp_path, settings, "check")
    assert run.code == 78, run
    assert "RABBITMQ_PASS" in run.stderr or "POSTGRES_DSN" in run.stderr, run.stderr
    assert_secret_free(run, secrets)


CLOSED_PORT_DSNS = {
    "url": f"postgresql://importer:{PG_SECRET}@127.0.0.1:1/dbimport",
    "key=value": f"host=127.0.0.1 port=1 user=importer password={PG_SECRET} dbname=dbimport",
}


# The secrets of the two tests below, written in main.json or in a DSN of a known form.
FIXED_SECRETS = Secrets(rabbitmq_pass=MQ_SECRET, dsn_password=PG_SECRET)


@pytest.mark.parametrize("form", sorted(CLOSED_PORT_DSNS))
def test_a_failing_start_exits_69_and_logs_no_password(tmp_path: Path, settings: Settings, form: str) -> None:
    """Given RABBITMQ_PASS in main.json and a DSN with a password pointing at a closed port,
    when `run --until-empty` gives up, then it exits 69 and neither the job log nor stderr
    holds a password."""
    write_config(tmp_path, {"RABBITMQ_PASS": MQ_SECRET})
    run = worker(tmp_path, settings, "run", "--until-empty", POSTGRES_DSN=CLOSED_PORT_DSNS[form])
    assert run.code == EX_UNAVAILABLE, run
    assert "gave up after IMPORT_CONNECT_TIMEOUT_S" in run.log, run.log
    assert_secret_free(run, FIXED_SECRETS)


def test_a_broker_refusing_the_start_logs_no_password(tmp_path: Path, settings: Settings) -> None:
    """Given RABBITMQ_PASS in main.json, a closed RABBITMQ_PORT, and a reachable store
    whose DSN carries a password, when `run --until-empty` gives up, then it exits 69 and
    no password is in the job log, stderr or stdout."""
    write_config(tmp_path, {"RABBITMQ_PASS": MQ_SECRET})
    # Trust authentication ignores the password; the worker must still hide it.
    run = worker(tmp_path, settings, "run", "--until-empty", RABBITMQ_PORT=UNREACHABLE_PORT,
                 POSTGRES_DSN=f"{settings.postgres_dsn} password={PG_SECRET}")
    assert run.code == EX_UNAVAILABLE, run
    assert "RabbitMQ" in run.log, run.log
    assert_secret_free(run, FIXED_SECRETS)


# --- in process: repr and errors ------------------------------------------------------------


def test_settings_repr_masks_every_secret(secrets: Secrets) -> None:
    """repr and str of Settings mask RABBITMQ_PASS and the DSN's password in either DSN
    form, and keep the rest readable."""
    for dsn in (
        f"postgresql://root:{secrets.dsn_password}@db.example:5432/dbimport?sslmode=require",
        f"host=db.example user=root password={secrets.dsn_password} dbname=dbimport",
        f"host=db.example user=root password='{secrets.dsn_password} with spaces' dbname=dbimport",
        f"postgresql://db.example/dbimport?user=root&password={secrets.dsn_password}",
    ):
        settings = load_settings(None, environ={"RABBITMQ_PASS": secrets.rabbitmq_pass, "POSTGRES_DSN": dsn})
        for text in (repr(settings), str(settings), f"{settings!r}", repr(Store(dsn))):
            assert not secrets.found_in(text), text
            assert "db.example" in text
        assert "rabbitmq_pass='***'" in repr(settings)
        assert settings.rabbitmq_pass == secrets.rabbitmq_pass  # masked in the repr only
        assert secrets.dsn_password not in redact_dsn(dsn)


@pytest.mark.parametrize("dsn", [
    f"postgresql://importer:{PG_SECRET}@db.internal:5432/dbimport",
    f"postgres://importer:{PG_SECRET}@db.internal/dbimport?sslmode=require",
    f"host=db.internal user=importer password={PG_SECRET} dbname=dbimport",
    f"host=db.internal password = '{PG_SECRET} with space' dbname=dbimport",
])
def test_passwords_never_appear_in_repr(dsn: str) -> None:
    s = Settings(postgres_dsn=dsn, rabbitmq_pass=MQ_SECRET)
    for text in (repr(s), str(s), f"{s}", repr(s.replace(import_queue="q2")), repr([s])):
        assert PG_SECRET not in text
        assert MQ_SECRET not in text
    # Still useful to an operator: the host is shown.
    assert "db.internal" in repr(s)


def test_errors_raised_by_failures_hold_no_secret(settings: Settings, secrets: Secrets) -> None:
    """The errors of a bad DSN, an unreachable PostgreSQL, an unreachable or refusing
    RabbitMQ and a worker that gives up hold no secret in str() or repr()."""
    bad_dsn = settings.replace(postgres_dsn=f"postgresql://root:{secrets.dsn_password}@127.0.0.1:1/x",
                               rabbitmq_pass=secrets.rabbitmq_pass, connect_timeout_s=1.0)
    raised: list[BaseException] = []
    with pytest.raises(ConfigError) as config_error:
        load_settings(None, environ={"POSTGRES_DSN": f"host=x password={secrets.dsn_password} port"})
    raised.append(config_error.value)
    with pytest.raises(DbimportError) as db_error:
        with Store(bad_dsn.postgres_dsn).transaction():
            pass
    raised.append(db_error.value)
    for port in (1, 5672):  # nothing listening; the broker refusing the password
        broker = Broker(bad_dsn.replace(rabbitmq_port=port))
        with pytest.raises(DbimportError) as broker_error:
            broker.connect()
        broker.close()
        raised.append(broker_error.value)
    with pytest.raises(ServiceUnavailable) as gave_up:
        Worker(bad_dsn).run(RunLimits(until_empty=True))
    raised.append(gave_up.value)
    for exc in raised:
        for text in (str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)):
            assert not secrets.found_in(text), text
    params = parameters(bad_dsn, "127.0.0.1", 1, name="test")
    assert not secrets.found_in(repr(params) + repr(params.credentials)), repr(params.credentials)


def test_user_data_holding_the_passwords_text_is_logged_as_it_is(harness: Harness) -> None:
    """Secrets are kept out of the log by never formatting them, not by rewriting lines:
    given RABBITMQ_PASS=guest, a bad message whose feedback_id is `guest-123` is logged
    with that feedback_id, unmasked."""
    settings = harness.settings.replace(rabbitmq_pass="guest")
    from dbimport import logs

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure(settings, stderr=False)
        harness.publish({"account_id": 1, "db_id": 1, "email": "nope", "feedback_id": "guest-123", "data": {}})
        harness.run(settings)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    assert [r["feedback_id"] for r in harness.results()] == ["guest-123"]
    text = Path(settings.log_path).read_text()
    assert "feedback_id='guest-123'" in text and "***-123" not in text, text
