"""The command line: install, `--help`, usage errors, run limits, `check` and `matchers`."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conftest import ADMIN_DSN, RABBITMQ, Harness, msg, worker_env
from dbimport.config import CONFIG_PATH_ENV, Settings
from dbimport.store import with_database

BUILT_IN_MODES = {
    "email", "email_profile", "email_sub", "phone", "phone_sub", "profile_id",
    "push_sub", "custom", "custom_sub", "email_phone", "email_phone_sub",
}
EX_OK, EX_PROBLEMS, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 1, 2, 69, 78


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


def cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # cwd is the config's folder, so that no ./main.json of the checkout is read.
    return subprocess.run(
        [sys.executable, "-m", "dbimport", *args], env=env, cwd=Path(env[CONFIG_PATH_ENV]).parent,
        capture_output=True, text=True, timeout=timeout,
    )


# --- install and layout ---------------------------------------------------------------


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


# --- help and usage -------------------------------------------------------------------


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


# --- run limits -----------------------------------------------------------------------


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


# --- check ----------------------------------------------------------------------------


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


# --- matchers -------------------------------------------------------------------------


def test_matchers_lists_the_eleven_built_in_modes_with_plugin_and_package(tmp_path: Path) -> None:
    done = cli("matchers", env=cli_env(tmp_path))
    assert done.returncode == EX_OK, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["MODE", "PLUGIN", "PACKAGE"]
    listed = {row.split()[0]: row.split()[1:4] for row in rows if row.strip()}
    assert set(listed) == BUILT_IN_MODES
    version = importlib.metadata.version("dbimport")
    for mode, (plugin, package, package_version) in listed.items():
        assert plugin == f"dbimport.matchers.{mode}", (mode, plugin)
        assert (package, package_version) == ("dbimport", version), mode



# --- the command line is parsed, never edited ---------------------------------------------


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
