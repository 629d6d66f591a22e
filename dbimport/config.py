"""Settings: `main.json` plus environment overrides, checked once, frozen."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError
from .fields import Limits

DEFAULT_CONFIG_PATH = "main.json"
CONFIG_PATH_ENV = "DBIMPORT_CONFIG"

Parser = Callable[[str, Any], Any]


def _integer(low: int, high: int | None = None) -> Parser:
    def parse(key: str, value: Any) -> int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        if isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ConfigError(key, f"expected an integer, got {value!r}")
            value = int(text)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ConfigError(key, f"must be {bound}, got {value}")
        return value

    return parse


def _number(low: float) -> Parser:
    def parse(key: str, value: Any) -> float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)) or value != value:
            raise ConfigError(key, f"expected a number, got {value!r}")
        if value < low:
            raise ConfigError(key, f"must be >= {low}, got {value}")
        return float(value)

    return parse


def _text(*, empty: bool = False) -> Parser:
    def parse(key: str, value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type(value).__name__}")
        if not empty and not value.strip():
            raise ConfigError(key, "must not be empty")
        return value

    return parse


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _log_level(key: str, value: Any) -> str:
    text = str(value).strip().upper()
    if text == "WARN":
        text = "WARNING"
    if text not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(key, f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
    return text


def _choice(*options: str) -> Parser:
    def parse(key: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ConfigError(key, f"expected {' or '.join(options)}, got {value!r}")
        return text

    return parse


def parse_nodes(text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """`host`, `host:port` or `[v6 address]:port` entries, comma-separated."""
    nodes = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            raise ValueError("has an empty entry")
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?|([0-9A-Fa-f:]+)", entry)
        if match is None:
            raise ValueError(f"entry {entry!r} is not host, host:port or [address]:port")
        host = match.group(1) or match.group(3) or match.group(5)
        port_text = match.group(2) or match.group(4)
        port = int(port_text) if port_text else default_port
        if not 1 <= port <= 65535:
            raise ValueError(f"entry {entry!r} has a port out of 1-65535")
        nodes.append((host, port))
    return tuple(nodes)


def _hosts(key: str, value: Any) -> str:
    text: str = _text()(key, value)
    try:
        parse_nodes(text, 5672)
    except ValueError as exc:
        raise ConfigError(key, f"{exc} (a comma-separated list of host or host:port)") from None
    return text


def _dsn(key: str, value: Any) -> str:
    text: str = _text()(key, value)
    import psycopg.conninfo

    try:
        psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        raise ConfigError(key, "not a valid PostgreSQL connection string") from None
    return text


def setting(key: str, default: Any, parse: Parser, *, secret: bool = False) -> Any:
    """A settings field read from `key` in main.json or the environment."""
    return field(default=default, metadata={"key": key, "parse": parse, "secret": secret})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting the worker reads; build it with `load_settings`."""

    rabbitmq_host: str = setting("RABBITMQ_HOST", "127.0.0.1", _hosts)
    rabbitmq_port: int = setting("RABBITMQ_PORT", 5672, _integer(1, 65535))
    rabbitmq_vhost: str = setting("RABBITMQ_VHOST", "/", _text())
    rabbitmq_user: str = setting("RABBITMQ_USER", "guest", _text())
    rabbitmq_pass: str = setting("RABBITMQ_PASS", "guest", _text(empty=True), secret=True)
    rabbitmq_heartbeat_s: int = setting("RABBITMQ_HEARTBEAT_S", 30, _integer(0, 3600))
    rabbitmq_tls: bool = setting("RABBITMQ_TLS", False, _flag)
    rabbitmq_tls_ca: str = setting("RABBITMQ_TLS_CA", "", _text(empty=True))
    rabbitmq_tls_cert: str = setting("RABBITMQ_TLS_CERT", "", _text(empty=True))
    rabbitmq_tls_key: str = setting("RABBITMQ_TLS_KEY", "", _text(empty=True))
    result_ttl_s: int = setting("RABBITMQ_X_MESSAGE_TTL", 86400, _integer(1, 2**31 // 1000))
    postgres_dsn: str = setting(
        "POSTGRES_DSN", "postgresql://127.0.0.1:5432/dbimport", _dsn, secret=True
    )
    import_queue: str = setting("IMPORT_QUEUE", "database_import", _text())
    result_queue: str = setting("IMPORT_RESULT_QUEUE", "database_import_result", _text())
    dead_queue: str = setting("IMPORT_DEAD_QUEUE", "database_import.dead", _text())
    queue_type: str = setting("IMPORT_QUEUE_TYPE", "classic", _choice("classic", "quorum"))
    log_path: str = setting("JOB_SERVER_LOG", "job_server.log", _text())
    log_level: str = setting("DEFAULT_LOG_LEVEL", "INFO", _log_level)
    log_interval_s: float = setting("IMPORT_LOG_INTERVAL_S", 5.0, _number(0.1))
    prefetch: int = setting("IMPORT_PREFETCH", 3000, _integer(1, 65535))
    batch_size: int = setting("IMPORT_BATCH_SIZE", 500, _integer(1, 65535))
    batch_wait_ms: int = setting("IMPORT_BATCH_WAIT_MS", 50, _integer(0, 60000))
    # Parsed JSON takes up to ~26 times its bytes: this bounds a batch's memory.
    batch_max_bytes: int = setting("IMPORT_BATCH_MAX_BYTES", 16 * 1024 * 1024, _integer(1024))
    max_message_bytes: int = setting("IMPORT_MAX_MESSAGE_BYTES", 1024 * 1024, _integer(64))
    max_depth: int = setting("IMPORT_MAX_DEPTH", 32, _integer(2, 1000))
    max_string_chars: int = setting("IMPORT_MAX_STRING_CHARS", 65536, _integer(16))
    max_list_items: int = setting("IMPORT_MAX_LIST_ITEMS", 1000, _integer(1))
    max_subscriptions: int = setting("IMPORT_MAX_SUBSCRIPTIONS", 100, _integer(0))
    max_deliveries: int = setting("IMPORT_MAX_DELIVERIES", 5, _integer(1, 1000))
    db_retry_s: float = setting("IMPORT_DB_RETRY_S", 60.0, _number(0))
    connect_timeout_s: float = setting("IMPORT_CONNECT_TIMEOUT_S", 30.0, _number(0))
    dedup_retention_s: int = setting("IMPORT_DEDUP_RETENTION_S", 7 * 86400, _integer(60))

    def __post_init__(self) -> None:
        if self.prefetch < self.batch_size:
            raise ConfigError(
                "IMPORT_PREFETCH",
                f"must be at least IMPORT_BATCH_SIZE ({self.batch_size}), got {self.prefetch}",
            )
        if self.rabbitmq_tls:
            if bool(self.rabbitmq_tls_cert) != bool(self.rabbitmq_tls_key):
                raise ConfigError("RABBITMQ_TLS_CERT", "RABBITMQ_TLS_CERT and RABBITMQ_TLS_KEY go together")
            for key, path in (
                ("RABBITMQ_TLS_CA", self.rabbitmq_tls_ca),
                ("RABBITMQ_TLS_CERT", self.rabbitmq_tls_cert),
                ("RABBITMQ_TLS_KEY", self.rabbitmq_tls_key),
            ):
                if path and not os.access(path, os.R_OK):
                    raise ConfigError(key, f"cannot read {path}")

    @property
    def result_ttl_ms(self) -> int:
        return self.result_ttl_s * 1000

    @property
    def value_limits(self) -> Limits:
        """The limits every string and list of a message's data is held to."""
        return Limits(max_string_chars=self.max_string_chars, max_list_items=self.max_list_items)

    @property
    def rabbitmq_nodes(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each node of RABBITMQ_HOST, in the order given."""
        return parse_nodes(self.rabbitmq_host, self.rabbitmq_port)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "postgres_dsn":
                value = redact_dsn(value)
            elif f.metadata["secret"]:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


def keys() -> dict[str, dataclasses.Field[Any]]:
    """The configuration keys, by their main.json name."""
    return {f.metadata["key"]: f for f in dataclasses.fields(Settings)}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(str(path), f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "must hold a JSON object")
    return data


@dataclass(frozen=True)
class Loaded:
    """Settings, and the warnings to log once logging is set up."""

    settings: Settings
    warnings: tuple[str, ...] = ()


def load(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Loaded:
    """Defaults, then the file, then the environment, then `overrides` (by field name).

    With no `path`, `$DBIMPORT_CONFIG` is used, else `main.json` if it exists.
    Unknown keys in the file are allowed (main.json is shared with the rest of
    the platform), but one that is a typo of a known key is warned about.
    """
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_PATH_ENV) or None
        if path is None and Path(DEFAULT_CONFIG_PATH).exists():
            path = DEFAULT_CONFIG_PATH
    file_values = read_config_file(path) if path is not None else {}

    values: dict[str, Any] = {}
    for key, f in keys().items():
        if key in env:
            raw = env[key]
        elif key in file_values:
            raw = file_values[key]
        else:
            continue
        values[f.name] = f.metadata["parse"](key, raw)
    values.update(overrides)
    warnings = near_misses(file_values, f"in {path}") + near_misses(
        {k: v for k, v in env.items() if k.startswith(ENV_PREFIXES)}, "in the environment"
    )
    return Loaded(Settings(**values), tuple(warnings))


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """The settings alone (see `load`)."""
    return load(path, environ, **overrides).settings


# Environment variables with these prefixes are checked for typos of known keys.
ENV_PREFIXES = ("IMPORT_", "RABBITMQ_", "POSTGRES_")


def near_misses(given: Mapping[str, Any], where: str) -> list[str]:
    """One warning per unknown key that is one edit away from a known key."""
    known = keys()
    warnings = []
    for key in sorted(given):
        if key in known:
            continue
        close = [k for k in known if one_edit_apart(key, k)]
        if close:
            warnings.append(
                f"unknown configuration key {key!r} {where}: did you mean {close[0]!r}? "
                f"It is ignored; {close[0]} keeps its value"
            )
    return warnings


def one_edit_apart(a: str, b: str) -> bool:
    """Whether one insertion, deletion, substitution or swap of neighbours turns `a` into `b`."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        if len(diffs) == 1:
            return True
        i, j = diffs[0], diffs[-1]
        return len(diffs) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1:]


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_KW_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """`dsn` rendered for a log line or `repr`: its password as `***`, in either DSN form."""
    dsn = _URL_PASSWORD.sub(r"\1***@", dsn)
    return _KW_PASSWORD.sub(r"\1***", dsn)
