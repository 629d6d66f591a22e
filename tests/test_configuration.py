"""Configuration: main.json and the environment, how values are read, bad values, typos of keys.

docs/configuration.md: where the settings come from, how values are read, bad values
(exit 78), every key documented, and typos of keys.

Secrets in the configuration are kept out of logs, errors and reprs: test_secrets.py.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import ADMIN_DSN, cli, config_env, write_config
from dbimport.config import CONFIG_PATH_ENV, keys, load, load_settings
from dbimport.errors import ConfigError
from dbimport.store import with_database

EX_CONFIG = 78


# --- values ---------------------------------------------------------------------------


def test_values_may_be_numbers_or_numeric_strings(tmp_path: Path) -> None:
    """Given the platform's main.json, which writes some numbers as strings, then both read alike."""
    config = write_config(tmp_path, {
        "RABBITMQ_X_MESSAGE_TTL": "86400",
        "RABBITMQ_PORT": "5673",
        "IMPORT_PREFETCH": 2000,
        "IMPORT_BATCH_SIZE": "250",
        "IMPORT_MAX_MESSAGE_BYTES": 2097152,
        "IMPORT_LOG_INTERVAL_S": "0.5",
    })
    s = load_settings(config, environ={})
    assert (s.result_ttl_s, s.result_ttl_ms) == (86400, 86_400_000)
    assert (s.rabbitmq_port, s.prefetch, s.batch_size) == (5673, 2000, 250)
    assert s.max_message_bytes == 2 * 1024 * 1024
    assert s.log_interval_s == 0.5


def test_the_defaults_are_the_contracts(tmp_path: Path) -> None:
    s = load_settings(write_config(tmp_path, {}), environ={})
    assert (s.rabbitmq_host, s.rabbitmq_port, s.rabbitmq_vhost, s.rabbitmq_user) == ("127.0.0.1", 5672, "/", "guest")
    assert (s.import_queue, s.result_queue, s.dead_queue) == (
        "database_import", "database_import_result", "database_import.dead")
    assert (s.result_ttl_ms, s.log_path, s.log_level, s.max_message_bytes) == (
        86_400_000, "job_server.log", "INFO", 1024 * 1024)


def test_an_environment_variable_overrides_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"RABBITMQ_HOST": "from-file", "RABBITMQ_X_MESSAGE_TTL": 60, "IMPORT_QUEUE": "q.file"})
    s = load_settings(config, environ={"RABBITMQ_HOST": "from-env", "RABBITMQ_X_MESSAGE_TTL": "120"})
    assert s.rabbitmq_host == "from-env"
    assert s.result_ttl_ms == 120_000
    assert s.import_queue == "q.file"


def test_the_config_path_may_come_from_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"IMPORT_QUEUE": "q.by-env-path"})
    assert load_settings(environ={CONFIG_PATH_ENV: str(config)}).import_queue == "q.by-env-path"


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    """main.json is shared with the rest of the platform: its other keys are not ours to judge."""
    config = write_config(tmp_path, {"REDIS_HOST": "10.0.0.1", "MAILER": {"pool": [1, 2]}, "IMPORT_QUEUE": "q"})
    assert load_settings(config, environ={}).import_queue == "q"


@pytest.mark.parametrize("key, value", [
    ("RABBITMQ_PORT", "abc"),
    ("RABBITMQ_PORT", 70000),
    ("IMPORT_PREFETCH", 0),
    ("IMPORT_BATCH_SIZE", "1.5"),
    ("DEFAULT_LOG_LEVEL", "LOUD"),
    ("RABBITMQ_X_MESSAGE_TTL", "a day"),
    ("RABBITMQ_X_MESSAGE_TTL", -1),
    ("IMPORT_MAX_MESSAGE_BYTES", True),
    ("IMPORT_LOG_INTERVAL_S", "often"),
    ("IMPORT_QUEUE", ""),
    ("POSTGRES_DSN", "host=x port"),
])
def test_a_bad_value_is_refused_naming_its_key(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config(tmp_path, {key: value}), environ={})
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{key}: ")


@pytest.mark.parametrize("key, value", [
    ("RABBITMQ_PORT", "abc"),
    ("IMPORT_PREFETCH", 0),
    ("DEFAULT_LOG_LEVEL", "LOUD"),
])
def test_run_with_a_bad_value_exits_78_with_one_line_naming_the_key(tmp_path: Path, key: str, value: Any) -> None:
    done = cli("run", "--until-empty", env=config_env(write_config(tmp_path, {key: value})))
    assert done.returncode == EX_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert key in lines[0]


def test_a_bad_value_in_the_environment_exits_78_too(tmp_path: Path) -> None:
    env = config_env(write_config(tmp_path, {"RABBITMQ_PORT": 5672}), RABBITMQ_PORT="abc")
    done = cli("run", "--until-empty", env=env)
    assert done.returncode == EX_CONFIG
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RABBITMQ_PORT" in lines[0], done.stderr


def test_a_config_file_that_is_not_json_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "main.json"
    config.write_text('{"RABBITMQ_PORT": 5672,')
    done = cli("run", "--until-empty", env=config_env(config))
    assert done.returncode == EX_CONFIG
    assert str(config) in done.stderr


# --- the keys, documented -------------------------------------------------------------------


def test_every_configuration_key_is_documented() -> None:
    """Given the keys the worker reads, then each is in the README's configuration table
    and in docs/configuration.md, and neither documents a key the worker does not read."""
    root = Path(__file__).parent.parent
    for doc, heading in ((root / "README.md", "## Configuration"), (root / "docs" / "configuration.md", "## The keys")):
        section = doc.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
        first_cells = re.findall(r"^\| ([^|]+) \|", section, re.M)
        documented = {key for cell in first_cells for key in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
        assert documented == set(keys()), (doc.name, set(keys()) ^ documented)


# --- typos --------------------------------------------------------------------------------


def test_a_key_one_edit_from_a_known_key_is_warned_about_naming_both(tmp_path: Path) -> None:
    """main.json is shared with the platform, so unknown keys are allowed; but a typo of a
    known key (one insertion, deletion, substitution or swap) gets a warning naming both."""
    config = write_config(tmp_path, {"IMPORT_QUEU": "orders", "RABBITMQ_HOTS": "h", "IMPORT_PERFETCH": 5})
    warnings = load(config, environ={}).warnings
    assert warnings == (
        f"unknown configuration key 'IMPORT_PERFETCH' in {config}: did you mean 'IMPORT_PREFETCH'? "
        "It is ignored; IMPORT_PREFETCH keeps its value",
        f"unknown configuration key 'IMPORT_QUEU' in {config}: did you mean 'IMPORT_QUEUE'? "
        "It is ignored; IMPORT_QUEUE keeps its value",
        f"unknown configuration key 'RABBITMQ_HOTS' in {config}: did you mean 'RABBITMQ_HOST'? "
        "It is ignored; RABBITMQ_HOST keeps its value",
    )


def test_environment_variables_of_our_prefixes_are_checked_for_typos_too(tmp_path: Path) -> None:
    env = {"RABBITMQ_PASSS": "x", "POSTGRES_DNS": "x", "IMPORT_BATCH_SIZ": "1", "HOME_QUEU": "x", "PATH": "/bin"}
    warnings = load(write_config(tmp_path, {}), environ=env).warnings
    assert [w.split("'")[1] for w in warnings] == ["IMPORT_BATCH_SIZ", "POSTGRES_DNS", "RABBITMQ_PASSS"]
    assert all("in the environment" in w for w in warnings)


def test_keys_far_from_every_known_key_are_left_alone(tmp_path: Path) -> None:
    """The platform's other keys (and our own, spelled right) draw no warning."""
    config = write_config(tmp_path, {
        "MAILER_HOST": "smtp", "REDIS_URL": "redis://", "IMPORT_QUEUE": "q", "IMPORT_QUEUE_LIMIT": 5,
        "RABBITMQ_MANAGEMENT_PORT": 15672,
    })
    assert load(config, environ={"IMPORT_SOMETHING_ELSE": "1", "POSTGRES_PASSWORD": "x"}).warnings == ()


def test_run_warns_about_a_typo_once_at_start_in_the_job_log(tmp_path: Path, queues: dict[str, str]) -> None:
    log = tmp_path / "job_server.log"
    absent = with_database(ADMIN_DSN, f"dbimport_test_absent_{uuid.uuid4().hex[:8]}")
    config = write_config(tmp_path, {"IMPORT_QUEU": "orders", "RABBITMQ_PORT": 1, "JOB_SERVER_LOG": str(log),
                                     "IMPORT_CONNECT_TIMEOUT_S": 0, "POSTGRES_DSN": absent})
    done = cli("run", "--until-empty", env=config_env(config, IMPORT_QUEUE=queues["import_queue"], IMPORT_RESULT_QUEUE=queues["result_queue"], IMPORT_DEAD_QUEUE=queues["dead_queue"]))
    warned = [line for line in log.read_text().splitlines() if "did you mean 'IMPORT_QUEUE'?" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], log.read_text()
    assert done.returncode == 78, done  # its store does not exist: the warning came first
