"""The throughput benchmark: the real worker against the naive reference and the
messaging limit, in one run.

It fills identical queues with N messages (half creates, half updates, across
the modes email, email_profile and custom on CRM_ID) and drains them, each with
a process of its own: `python -m dbimport run --until-empty` (the worker),
bench/limit.py (a no-op worker on the project's broker layer: the messaging
limit), bench/naive.py (the naive reference) and, with `--compare REV`, the
worker of git revision REV. Each drain that writes has its own database made by
`init-db`. It checks that every message got one correct result and that each
store holds exactly the profiles the message stream implies (the limit: one
result per message). It prints msg/s, the ratios worker / naive, worker / limit
and worker / REV, the peak RSS, the worker's rate per 10% slice of the drain,
and the CPU each drain cost per message in the drain process, RabbitMQ and
PostgreSQL. `--repeat R` runs R rounds and prints medians and spreads.

    .venv/bin/python bench/throughput.py                 # 50,000 messages
    .venv/bin/python bench/throughput.py --messages 20000 --naive-messages 5000
    .venv/bin/python bench/throughput.py --messages 20000 --naive-messages 2000 --repeat 3 --compare main
    .venv/bin/python bench/throughput.py --messages 1000000 --skip-naive --skip-limit

See bench/README.md for what is measured and how.
"""
from __future__ import annotations

import argparse
import array
import compileall
import configparser
import dataclasses
import hashlib
import io
import itertools
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pika
import psycopg
import psycopg.conninfo
from psycopg import sql

from dbimport.config import Settings, parse_nodes
from dbimport.config import keys as config_keys
from dbimport.store import with_database

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
NAIVE_SCRIPT = BENCH_DIR / "naive.py"
LIMIT_SCRIPT = BENCH_DIR / "limit.py"

DEFAULT_MESSAGES = 50_000
DEFAULT_ADMIN_DSN = "postgresql://127.0.0.1:5432/postgres"
DEFAULT_SEED = 1
TARGET_RATIO = 6.0
TARGET_RSS_MB = 150.0
# Publishing: one AMQP transaction per this many messages (order is kept: one publisher).
PUBLISH_TX_MESSAGES = 1000
# How often the drain is sampled: result-queue depth and the process's VmHWM.
SAMPLE_S = 0.05
SLICES = 10
DRAIN_TIMEOUT_S = 4 * 3600.0

# The stream: account 1, database 1, one declared custom field.
ACCOUNT_ID = 1
DB_ID = 1
# The modes the stream may use (the naive reference knows these); --modes picks some.
MODES = ("email", "email_profile", "custom")
CUSTOM_FIELD = "CRM_ID"
CRM_BASE = 1_000_000
EMAIL_DOMAIN = "bench.example"
CITIES = (
    "Paris", "Lyon", "Berlin", "Hamburg", "Madrid", "Seville", "Rome", "Milan",
    "Vienna", "Prague", "Warsaw", "Lisbon", "Dublin", "Oslo", "Riga", "Sofia",
)
# --actions: a fraction of the messages also counts a purchase and adds a tag.
COUNTER_FIELD = "checks"
TAGS_FIELD = "interests"
TAGS = ("t0", "t1", "t2", "t3", "t4")
SEED_FILE_CONTENT = {"accounts": [{
    "id": ACCOUNT_ID,
    "databases": [{"id": DB_ID, "name": "Bench", "fields": [
        {"name": CUSTOM_FIELD, "type": "int"}, {"name": COUNTER_FIELD, "type": "int"},
        {"name": TAGS_FIELD, "type": "tags"}]}],
    "resources": [{"id": 24, "name": "News", "databases": [DB_ID]}],
}]}


# --- the message stream ------------------------------------------------------------


def email_of(entity: int) -> str:
    return f"user{entity}@{EMAIL_DOMAIN}"


def city(position: int) -> str:
    return CITIES[position % len(CITIES)]


def plan(n: int, seed: int, modes: Sequence[str] = MODES) -> Iterator[tuple[int, int, str]]:
    """(position, entity, mode) of each message. Even positions create a new
    entity; odd ones update an entity created earlier, picked uniformly from all
    created so far (so updates land anywhere from the same batch to far back).
    Deterministic: a shorter stream is a prefix of a longer one."""
    rng = random.Random(seed)
    created = 0
    for position in range(n):
        if position % 2 == 0:
            entity = created
            created += 1
            yield position, entity, modes[entity % len(modes)]
        else:
            yield position, rng.randrange(created), modes[rng.randrange(len(modes))]


def update_fields(position: int) -> dict[str, Any]:
    """An update's data: `_city` always, `_lname` every third, `_fname` set or cleared (null)."""
    ordinal = position // 2
    data: dict[str, Any] = {"_city": city(position)}
    if ordinal % 3 == 0:
        data["_lname"] = f"L{position}"
    if ordinal % 10 == 1:
        data["_fname"] = None
    elif ordinal % 4 == 0:
        data["_fname"] = f"F{position}"
    return data


def carries_actions(position: int, actions: float) -> bool:
    """Whether message `position` carries field actions: a fixed, spread-out `actions` share."""
    return actions > 0 and (position * 2654435761) % 1000 < actions * 1000


def tag_of(position: int) -> str:
    return TAGS[position % len(TAGS)]


def message(position: int, entity: int, mode: str, actions: float = 0.0) -> bytes:
    crm_id = CRM_BASE + entity
    if position % 2 == 0:
        data: dict[str, Any] = {"_fname": f"F{position}", "_lname": f"L{position}", "_city": city(position)}
        # Every profile ends up with both identities, so that any mode finds it later.
        if mode == "custom":
            data["email"] = email_of(entity)
        else:
            data[CUSTOM_FIELD] = crm_id
    else:
        data = update_fields(position)
    if carries_actions(position, actions):
        data[COUNTER_FIELD] = {"action": "incr", "value": 1}
        data[TAGS_FIELD] = {"action": "add", "value": [tag_of(position)]}
    body: dict[str, Any] = {
        "account_id": ACCOUNT_ID, "db_id": DB_ID, "feedback_id": f"b{position}",
        "matching": mode, "data": data,
    }
    # Every fifth message spells its match value differently: normalisation must hold.
    odd_spelling = position % 5 == 0
    if mode == "custom":
        body["field_name"] = CUSTOM_FIELD
        body["field_value"] = str(crm_id) if odd_spelling else crm_id
    else:
        body["email"] = f"  {email_of(entity).upper()} " if odd_spelling else email_of(entity)
    return orjson.dumps(body)


class Model:
    """What the store must hold after the first `n` messages, kept small enough for
    a million: per message its entity and mode, per entity the position of the
    message that last set each field (-1: cleared); with actions, per entity its
    purchases counted and the tags added, in order (3 bits a tag)."""

    def __init__(self, n: int, seed: int, modes: Sequence[str] = MODES, actions: float = 0.0) -> None:
        self.n = n
        self.modes = tuple(modes)
        self.actions = actions
        self.checks = array.array("l")
        self.tags = array.array("q")
        index = {mode: i for i, mode in enumerate(self.modes)}
        self.entity_of = array.array("l")
        self.mode_of = bytearray()
        self.fname = array.array("l")
        self.lname = array.array("l")
        self.city = array.array("l")
        for position, entity, mode in plan(n, seed, self.modes):
            self.entity_of.append(entity)
            self.mode_of.append(index[mode])
            if position % 2 == 0:
                for column in (self.fname, self.lname, self.city):
                    column.append(position)
                self.checks.append(0)
                self.tags.append(0)
            if carries_actions(position, actions):
                self.checks[entity] += 1
                self.tags[entity] = add_tag(self.tags[entity], TAGS.index(tag_of(position)))
            if position % 2 == 0:
                continue
            data = update_fields(position)
            self.city[entity] = position
            if "_lname" in data:
                self.lname[entity] = position
            if "_fname" in data:
                self.fname[entity] = -1 if data["_fname"] is None else position

    @property
    def entities(self) -> int:
        return len(self.city)

    @property
    def creates(self) -> int:
        return self.entities

    @property
    def updates(self) -> int:
        return self.n - self.entities

    def fields(self, entity: int) -> dict[str, Any]:
        expected: dict[str, Any] = {
            CUSTOM_FIELD: CRM_BASE + entity,
            "_city": city(self.city[entity]),
            "_lname": f"L{self.lname[entity]}",
        }
        if self.fname[entity] >= 0:
            expected["_fname"] = f"F{self.fname[entity]}"
        if self.checks[entity]:
            expected[COUNTER_FIELD] = self.checks[entity]
            expected[TAGS_FIELD] = tags_of(self.tags[entity])
        return expected

    def matching_field(self, position: int) -> str:
        return CUSTOM_FIELD if self.modes[self.mode_of[position]] == "custom" else "email"


def add_tag(encoded: int, tag: int) -> int:
    """The tags in the order first added, 3 bits each (tag + 1; 0 ends the list)."""
    present = [(encoded >> (3 * i)) & 7 for i in range(len(TAGS))]
    if tag + 1 in present:
        return encoded
    return encoded | ((tag + 1) << (3 * present.index(0)))


def tags_of(encoded: int) -> list[str]:
    out = []
    while encoded:
        out.append(TAGS[(encoded & 7) - 1])
        encoded >>= 3
    return out


def entity_of_email(email: str | None) -> int | None:
    prefix, suffix = "user", f"@{EMAIL_DOMAIN}"
    if not email or not email.startswith(prefix) or not email.endswith(suffix):
        return None
    digits = email[len(prefix):-len(suffix)]
    return int(digits) if digits.isdigit() else None


# --- services ----------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    admin_dsn: str
    # One host, or a RabbitMQ cluster's node list as RABBITMQ_HOST takes it
    # (`host` or `host:port` each, comma-separated): the worker and the limit get it
    # whole; the bench's own connections and the naive reference use the first node.
    amqp_host: str
    amqp_port: int

    @property
    def amqp_nodes(self) -> tuple[tuple[str, int], ...]:
        return parse_nodes(self.amqp_host, self.amqp_port)

    def amqp(self) -> pika.BlockingConnection:
        host, port = self.amqp_nodes[0]
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=host, port=port, heartbeat=600, blocked_connection_timeout=300,
        ))

    def dsn(self, database: str) -> str:
        return with_database(self.admin_dsn, database)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    @property
    def postgres_port(self) -> int:
        """The server's port as the DSN gives it (the first, if it lists several)."""
        port = psycopg.conninfo.conninfo_to_dict(self.admin_dsn).get("port") or os.environ.get("PGPORT") or 5432
        return int(str(port).split(",")[0])


@dataclass(frozen=True)
class Target:
    """One drain's own database and queues."""

    label: str
    database: str
    queue: str
    result_queue: str
    dead_queue: str
    queue_type: str = "classic"  # IMPORT_QUEUE_TYPE: the three queues' type

    @classmethod
    def named(cls, run_id: str, label: str, queue_type: str = "classic") -> Target:
        return cls(
            label=label,
            database=f"bench_{run_id}_{label}",
            queue=f"bench.{run_id}.{label}.in",
            result_queue=f"bench.{run_id}.{label}.result",
            dead_queue=f"bench.{run_id}.{label}.dead",
            queue_type=queue_type,
        )

    @property
    def queues(self) -> tuple[str, str, str]:
        return (self.queue, self.result_queue, self.dead_queue)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any dbimport setting, plus `settings`:
    a POSTGRES_DSN or IMPORT_PREFETCH exported by the caller must not leak in."""
    ours = set(config_keys()) | {"DBIMPORT_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(settings)
    return env


def with_pythonpath(env: dict[str, str], tree: Path | None) -> dict[str, str]:
    """`env` with `tree` first on PYTHONPATH (a --compare revision's code), or as it is."""
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def init_database(
    services: Services, target: Target, workdir: Path, *,
    seed_content: dict[str, Any] | None = None, tree: Path | None = None,
) -> None:
    """`dbimport-worker init-db --seed` on a fresh database (dropped first if left over);
    with `tree`, the init-db of the revision whose code is there (see --compare)."""
    drop_database(services, target.database)
    seed = workdir / f"seed.{target.label}.json"
    seed.write_bytes(orjson.dumps(SEED_FILE_CONTENT if seed_content is None else seed_content))
    env = clean_env(
        POSTGRES_DSN=services.dsn(target.database), JOB_SERVER_LOG=str(workdir / "init-db.log"),
        RABBITMQ_HOST=services.amqp_host, RABBITMQ_PORT=str(services.amqp_port), IMPORT_QUEUE=target.queue,
        IMPORT_RESULT_QUEUE=target.result_queue, IMPORT_DEAD_QUEUE=target.dead_queue,
        IMPORT_QUEUE_TYPE=target.queue_type,
    )
    done = subprocess.run(
        [sys.executable, "-m", "dbimport", "init-db", "--seed", str(seed)],
        env=with_pythonpath(env, tree), cwd=workdir, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"init-db for {target.database} exited {done.returncode}: {done.stderr.strip()}")


def clone_database(services: Services, template: str, target: Target) -> None:
    drop_database(services, target.database)
    with services.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(target.database), sql.Identifier(template)))


def drop_database(services: Services, name: str) -> None:
    with services.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def declare_queues(channel: Any, target: Target) -> None:
    """The target's three queues, as the worker declares them with its IMPORT_QUEUE_TYPE."""
    typed = {} if target.queue_type == "classic" else {"x-queue-type": target.queue_type}
    channel.queue_declare(target.queue, durable=True, arguments=typed or None)
    channel.queue_declare(target.result_queue, durable=True,
                          arguments={**typed, "x-message-ttl": Settings().result_ttl_ms})
    channel.queue_declare(target.dead_queue, durable=True, arguments=typed or None)


def delete_queues(services: Services, targets: Iterable[Target]) -> None:
    connection = services.amqp()
    try:
        channel = connection.channel()
        for target in targets:
            for queue in target.queues:
                channel.queue_delete(queue)
    finally:
        connection.close()


def queue_depth(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


# --- filling -----------------------------------------------------------------------


@dataclass
class Fill:
    published: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


def fill(
    services: Services, counts: Sequence[tuple[Target, int]], seed: int, modes: Sequence[str] = MODES,
    actions: dict[str, float] | None = None,
) -> Fill:
    """Publish the stream's first `count` messages to each target's queue, in order:
    one publisher, persistent messages, one AMQP transaction per PUBLISH_TX_MESSAGES.
    `actions`: the share of messages with field actions, by target label (default 0)."""
    shares = actions or {}
    longest = max(count for _, count in counts)
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent)
    connection = services.amqp()
    published = 0
    started = time.monotonic()
    try:
        channel = connection.channel()
        for target, _ in counts:
            declare_queues(channel, target)
        channel.tx_select()
        for position, entity, mode in plan(longest, seed, modes):
            bodies: dict[float, bytes] = {}
            for target, count in counts:
                if position < count:
                    share = shares.get(target.label.split("_")[0], 0.0)
                    if share not in bodies:
                        bodies[share] = message(position, entity, mode, share)
                    channel.basic_publish("", target.queue, bodies[share], properties)
                    published += 1
                    if published % PUBLISH_TX_MESSAGES == 0:
                        channel.tx_commit()
        channel.tx_commit()
        seconds = time.monotonic() - started
        for target, count in counts:
            depth = queue_depth(channel, target.queue)
            if depth != count:
                raise RuntimeError(f"queue {target.queue} holds {depth} messages after filling, expected {count}")
    finally:
        connection.close()
    return Fill(published, seconds)


# --- CPU by process ----------------------------------------------------------------
#
# Read from /proc at the drain's start (just before the process starts) and at its
# end (when the result queue first holds every result), in clock ticks:
# - the drain process: its utime+stime, plus cutime+cstime (children it reaped),
#   plus the same of its children still alive (run --workers);
# - RabbitMQ: the beam.smp of the node serving the AMQP port (see find_rabbitmq);
# - PostgreSQL: the postmaster of the cluster on the DSN's port, its cutime+cstime
#   (every child it reaped: backends that exited) plus the utime+stime of its live
#   children (backends, walwriter, checkpointer, ...), so that a backend that
#   starts or ends inside the drain is counted once: alive at the end, as itself;
#   gone by then, in the postmaster's cutime.
# Both services are shared: whatever else runs on them (a test suite) is counted
# too. The drain's own backends (those whose process title names its database)
# are also summed, sampled every BACKEND_EVERY samples: that figure is ours alone.

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BACKEND_EVERY = 5
# Fields of /proc/<pid>/stat after the command name: ppid, utime, stime, cutime, cstime
# (fields 4 and 14 to 17 in proc(5), counted from state = 3).
STAT_PPID, STAT_UTIME, STAT_STIME, STAT_CUTIME, STAT_CSTIME = 1, 11, 12, 13, 14


def stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from the state on; None once the process is gone. The command
    name may hold spaces and parentheses: split after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def cpu_ticks(pid: int, *, reaped: bool = False) -> int | None:
    """utime+stime of `pid` (with `reaped`, plus cutime+cstime); None once it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    ticks = int(fields[STAT_UTIME]) + int(fields[STAT_STIME])
    if reaped:
        ticks += int(fields[STAT_CUTIME]) + int(fields[STAT_CSTIME])
    return ticks


def tree_ticks(pid: int) -> int | None:
    """CPU of `pid`, of the children it reaped, and of its live descendants."""
    ticks = cpu_ticks(pid, reaped=True)
    if ticks is None:
        return None
    return ticks + sum(tree_ticks(child) or 0 for child in children(pid))


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> list[int]:
    """The live children of `pid`: /proc/<pid>/task/*/children, else a scan of /proc."""
    try:
        found: list[int] = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
        return found
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return []
    except OSError:
        return []
    return [p for p in all_pids() if (fields := stat_fields(p)) is not None and int(fields[STAT_PPID]) == pid]


def listening_pids(port: int) -> set[int]:
    """The processes holding a TCP socket that listens on `port`: its inode from
    /proc/net/tcp{,6}, then the process whose /proc/<pid>/fd links to it (readable
    for our own processes, or all as root)."""
    sockets: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{parts[9]}]")
    owners: set[int] = set()
    for pid in all_pids() if sockets else []:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    owners.add(pid)
                    break
            except OSError:
                continue
    return owners


def node_name(pid: int) -> str:
    """The Erlang node name of a beam.smp: `-sname`/`-name` on its command line, else
    RABBITMQ_NODENAME in its environment (readable for our own processes, or as root)."""
    cmd = cmdline(pid)
    for i, arg in enumerate(cmd[:-1]):
        if arg in ("-sname", "-name"):
            return cmd[i + 1]
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"RABBITMQ_NODENAME="):
                    return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return ""


def find_rabbitmq(port: int) -> tuple[list[int], str]:
    """The beam.smp serving AMQP on `port`, and how it was chosen: the only one; else
    the one whose `-rabbit tcp_listeners` names the port; else the one listening on
    it; else (port 5672) the default node, named `rabbit@...` (see node_name)."""
    beams = [pid for pid in all_pids() if (cmd := cmdline(pid)) and os.path.basename(cmd[0]) == "beam.smp"]
    if not beams:
        return [], "no beam.smp process on this machine"
    if len(beams) == 1:
        return beams, f"beam.smp pid {beams[0]}, the only one"
    for pid in beams:
        cmd = cmdline(pid)
        for i, arg in enumerate(cmd[:-2]):
            if arg == "-rabbit" and cmd[i + 1] == "tcp_listeners" and re.search(rf"\b{port}\b", cmd[i + 2]):
                return [pid], f"beam.smp pid {pid}, whose -rabbit tcp_listeners names port {port}"
    owners = sorted(listening_pids(port) & set(beams))
    if owners:
        return owners, f"beam.smp pid {owners[0]}, listening on port {port} (of {len(beams)} beam.smp)"
    if port == 5672:
        default = [pid for pid in beams if node_name(pid).startswith("rabbit@")]
        if len(default) == 1:
            return default, f"beam.smp pid {default[0]}, the default node {node_name(default[0])} (of {len(beams)} beam.smp)"
    return [], f"{len(beams)} beam.smp processes, none found serving port {port}"


def backend_parent(dsn: str) -> int | None:
    """The parent of our own backend on `dsn` (SELECT pg_backend_pid()), if that backend
    is a postgres process on this machine: the postmaster serving the DSN."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            backend = int(row[0]) if row else 0
            fields = stat_fields(backend) if backend else None
            title = " ".join(cmdline(backend)) if backend else ""
    except (psycopg.Error, OSError):
        return None
    if fields is None or not title.startswith("postgres"):
        return None
    parent = int(fields[STAT_PPID])
    return parent if os.path.basename((cmdline(parent) or [""])[0]) in ("postgres", "postmaster") else None


def find_postmaster(port: int, dsn: str | None = None) -> tuple[int | None, str]:
    """The postmaster of the cluster serving `dsn` on `port`, and how it was chosen:
    the parent of our own backend (needs no privilege); else the one whose data
    directory's postmaster.pid names its pid and the port; else `-p`/`port=` in its
    command line; else the one listening on the port."""
    parent = backend_parent(dsn) if dsn else None
    if parent is not None:
        return parent, f"postmaster pid {parent}, the parent of our own backend (pg_backend_pid())"
    postmasters = [
        (pid, cmd) for pid in all_pids()
        if (cmd := cmdline(pid)) and os.path.basename(cmd[0]) in ("postgres", "postmaster")
    ]
    for pid, cmd in postmasters:
        if "-D" in cmd[:-1]:
            try:
                lines = (Path(cmd[cmd.index("-D") + 1]) / "postmaster.pid").read_text().splitlines()
            except OSError:
                continue
            if len(lines) > 3 and lines[0].strip() == str(pid) and lines[3].strip() == str(port):
                return pid, f"postmaster pid {pid}, named with port {port} in {cmd[cmd.index('-D') + 1]}/postmaster.pid"
    for pid, cmd in postmasters:
        for i, arg in enumerate(cmd):
            if (arg == "-p" and i + 1 < len(cmd) and cmd[i + 1] == str(port)) or arg.replace(" ", "") == f"port={port}":
                return pid, f"postmaster pid {pid}, given port {port} on its command line"
    owners = sorted(listening_pids(port) & {pid for pid, _ in postmasters})
    if owners:
        return owners[0], f"postmaster pid {owners[0]}, listening on port {port}"
    return None, f"no postmaster found for port {port}"


def system_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; idle and iowait are not busy."""
    with open("/proc/stat", "rb") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    total = sum(values)
    return total - values[3] - values[4], total


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    drain: int | None
    rabbitmq: int | None
    postgres: int | None
    busy: int
    total: int
    load: tuple[float, float, float]


@dataclass(frozen=True)
class CpuUse:
    """CPU over one drain's window, in clock ticks; None where the process was not found."""

    seconds: float
    drain: int | None
    rabbitmq: int | None
    postgres: int | None
    backends: int | None
    busy_cores: float
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]

    def us_per_message(self, messages: int) -> dict[str, float | None]:
        def per(ticks: int | None) -> float | None:
            return None if ticks is None or messages == 0 else ticks * 1e6 / CLOCK_TICKS / messages
        parts = {"drain": per(self.drain), "rabbitmq": per(self.rabbitmq), "postgres": per(self.postgres)}
        known = [v for v in parts.values() if v is not None]
        return {**parts, "total": sum(known) if known else None, "postgres_backends": per(self.backends)}


class CpuMeter:
    """Finds RabbitMQ's and PostgreSQL's processes once, then reads their CPU on demand."""

    def __init__(self, amqp_ports: Sequence[int], postgres_port: int, postgres_dsn: str | None = None) -> None:
        """`amqp_ports`: the AMQP port of every RabbitMQ node in use (a cluster's nodes all
        work for a quorum queue: its leader and its followers)."""
        found = [find_rabbitmq(port) for port in dict.fromkeys(amqp_ports)]
        self.rabbitmq = sorted({pid for pids, _ in found for pid in pids})
        self.rabbitmq_how = found[0][1] if len(found) == 1 else "; ".join(
            f"port {port}: {how}" for port, (_, how) in zip(dict.fromkeys(amqp_ports), found))
        if len(found) > 1 and any(not pids for pids, _ in found):
            self.rabbitmq = []  # a node not found: no figure rather than a partial one
        self.postmaster, self.postgres_how = find_postmaster(postgres_port, postgres_dsn)

    @classmethod
    def of(cls, services: Services) -> CpuMeter:
        return cls([port for _, port in services.amqp_nodes], services.postgres_port, services.admin_dsn)

    def describe(self) -> str:
        postgres = f"{self.postgres_how}, and its children" if self.postmaster else self.postgres_how
        return f"rabbitmq: {self.rabbitmq_how}; postgres: {postgres}"

    def rabbitmq_ticks(self) -> int | None:
        if not self.rabbitmq:
            return None
        ticks = [cpu_ticks(pid, reaped=True) for pid in self.rabbitmq]
        return None if None in ticks else sum(t for t in ticks if t is not None)

    def postgres_ticks(self) -> int | None:
        if self.postmaster is None:
            return None
        live = sum(cpu_ticks(child) or 0 for child in children(self.postmaster))
        own = cpu_ticks(self.postmaster, reaped=True)
        return None if own is None else own + live

    def backends(self, database: str) -> dict[int, int]:
        """utime+stime of each live backend whose process title names `database`."""
        if self.postmaster is None:
            return {}
        found: dict[int, int] = {}
        for pid in children(self.postmaster):
            if database in " ".join(cmdline(pid)).split():
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    found[pid] = ticks
        return found

    def snapshot(self, drain_pid: int | None) -> CpuSnapshot:
        busy, total = system_ticks()
        return CpuSnapshot(
            at=time.monotonic(),
            drain=0 if drain_pid is None else tree_ticks(drain_pid),
            rabbitmq=self.rabbitmq_ticks(),
            postgres=self.postgres_ticks(),
            busy=busy, total=total, load=os.getloadavg(),
        )

    @staticmethod
    def use(start: CpuSnapshot, end: CpuSnapshot, backends: dict[int, int] | None) -> CpuUse:
        def delta(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else b - a
        total = end.total - start.total
        return CpuUse(
            seconds=end.at - start.at,
            drain=delta(start.drain, end.drain),
            rabbitmq=delta(start.rabbitmq, end.rabbitmq),
            postgres=delta(start.postgres, end.postgres),
            backends=None if backends is None else sum(backends.values()),
            busy_cores=(end.busy - start.busy) / total * (os.cpu_count() or 1) if total > 0 else 0.0,
            load_start=start.load, load_end=end.load,
        )


# --- draining ----------------------------------------------------------------------


@dataclass
class Drain:
    """One process draining one queue: `seconds` from its start until the result
    queue held every result."""

    messages: int
    seconds: float
    exit_code: int
    peak_rss_kb: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    complete: bool = True
    log_tail: str = ""
    cpu: CpuUse | None = None
    # (seconds, VmRSS kB) at each sample.
    rss_samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024

    @property
    def first_result_s(self) -> float:
        """About when the first result arrived: the last sample of an empty result queue."""
        return max((t for t, depth in self.samples if depth == 0), default=0.0)

    @property
    def steady_rate(self) -> float:
        """msg/s from the first result to the last: the rate without the process's start."""
        span = self.seconds - self.first_result_s
        return self.messages / span if span > 0 else 0.0

    def slice_rates(self, slices: int = SLICES) -> list[float]:
        """msg/s over each 1/slices of the results, from the first result on
        (so the first slice does not carry the process's start)."""
        start = self.first_result_s
        bounds = [start] + [crossing(self.samples, self.messages * k / slices) for k in range(1, slices + 1)]
        size = self.messages / slices
        return [size / (b - a) if b > a else float("inf") for a, b in itertools.pairwise(bounds)]


def crossing(samples: Sequence[tuple[float, int]], level: float) -> float:
    """When the sampled depth reached `level`, interpolated between two samples."""
    previous = (0.0, 0)
    for t, depth in samples:
        if depth >= level:
            t0, d0 = previous
            if depth == d0 or t0 >= t:
                return t
            return t0 + (t - t0) * (level - d0) / (depth - d0)
        previous = (t, depth)
    return samples[-1][0] if samples else 0.0


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set so far (VmHWM), in kB; 0 once it is gone."""
    return memory_kb(pid)[0]


def memory_kb(pid: int) -> tuple[int, int]:
    """The process's peak and current resident set (VmHWM, VmRSS), in kB; 0 once it is gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except OSError:
        pass
    return hwm, rss


def drain(
    services: Services, command: Sequence[str], *, env: dict[str, str], workdir: Path,
    result_queue: str, expected: int, log_name: str, timeout_s: float = DRAIN_TIMEOUT_S,
    meter: CpuMeter | None = None, database: str | None = None,
) -> Drain:
    """Run `command` until it exits, sampling the result queue's depth and the
    process's VmHWM every SAMPLE_S. (VmHWM, not getrusage: on Linux a child's
    ru_maxrss also counts the parent's memory it had before exec.) CPU is read
    just before the start and when the result queue first holds every result
    (or when the process exits, if it never does); `database`'s backends are
    looked up every BACKEND_EVERY samples."""
    meter = meter or CpuMeter.of(services)
    connection = services.amqp()
    log_path = workdir / log_name
    samples: list[tuple[float, int]] = [(0.0, 0)]
    rss_samples: list[tuple[float, int]] = []
    peak_kb = 0
    done_at: float | None = None
    first = last = None
    backends: dict[int, int] | None = None if database is None else {}
    try:
        channel = connection.channel()
        with open(log_path, "wb") as out:
            first = meter.snapshot(None)
            started = time.monotonic()
            process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
            try:
                while True:
                    hwm_kb, rss_kb = memory_kb(process.pid)
                    peak_kb = max(peak_kb, hwm_kb)
                    # Exited but not reaped yet (WNOWAIT): its /proc entry still holds its CPU times.
                    exited = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
                    depth = queue_depth(channel, result_queue)
                    now = time.monotonic() - started
                    samples.append((now, depth))
                    if rss_kb:
                        rss_samples.append((now, rss_kb))
                    if backends is not None and (len(samples) % BACKEND_EVERY == 0 or depth >= expected):
                        backends.update(meter.backends(database or ""))
                    if done_at is None and depth >= expected:
                        done_at = now
                        last = meter.snapshot(process.pid)
                    if exited:
                        if last is None:
                            last = meter.snapshot(process.pid)
                        exit_code = process.wait()
                        break
                    if now > timeout_s:
                        process.kill()
                    time.sleep(SAMPLE_S)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        connection.close()
    complete = done_at is not None and exit_code == 0
    return Drain(
        messages=expected,
        seconds=done_at if done_at is not None else samples[-1][0],
        exit_code=exit_code,
        peak_rss_kb=peak_kb,
        samples=samples,
        complete=complete,
        log_tail="" if complete else tail(log_path),
        cpu=CpuMeter.use(first, last, backends) if first is not None and last is not None else None,
        rss_samples=rss_samples,
    )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def worker_env(
    services: Services, target: Target, *, prefetch: int, batch: int, workdir: Path, **more: str,
) -> dict[str, str]:
    """The worker's environment (also the limit's: the same broker settings)."""
    return clean_env(
        RABBITMQ_HOST=services.amqp_host,
        RABBITMQ_PORT=str(services.amqp_port),
        POSTGRES_DSN=services.dsn(target.database),
        IMPORT_QUEUE=target.queue,
        IMPORT_RESULT_QUEUE=target.result_queue,
        IMPORT_DEAD_QUEUE=target.dead_queue,
        JOB_SERVER_LOG=str(workdir / f"{target.label}.job_server.log"),
        IMPORT_PREFETCH=str(prefetch),
        IMPORT_BATCH_SIZE=str(batch),
        IMPORT_QUEUE_TYPE=target.queue_type,
        **more,
    )


def drain_worker(
    services: Services, target: Target, *, messages: int, prefetch: int, batch: int, workdir: Path,
    tree: Path | None = None, meter: CpuMeter | None = None, env: dict[str, str] | None = None,
) -> Drain:
    """`python -m dbimport run --until-empty`; with `tree`, that revision's code (--compare).
    `env` adds settings (e.g. IMPORT_BATCH_MAX_BYTES)."""
    environment = worker_env(services, target, prefetch=prefetch, batch=batch, workdir=workdir, **(env or {}))
    return drain(
        services, [sys.executable, "-m", "dbimport", "run", "--until-empty"],
        env=with_pythonpath(environment, tree), workdir=workdir,
        result_queue=target.result_queue, expected=messages, log_name=f"{target.label}.out",
        meter=meter, database=target.database,
    )


def drain_limit(
    services: Services, target: Target, *, messages: int, prefetch: int, batch: int, workdir: Path,
    meter: CpuMeter | None = None,
) -> Drain:
    """bench/limit.py --until-empty, with the worker's environment (it has no database)."""
    return drain(
        services, [sys.executable, str(LIMIT_SCRIPT), "--until-empty"],
        env=worker_env(services, target, prefetch=prefetch, batch=batch, workdir=workdir), workdir=workdir,
        result_queue=target.result_queue, expected=messages, log_name=f"{target.label}.out", meter=meter,
    )


def drain_naive(
    services: Services, target: Target, *, messages: int, workdir: Path, meter: CpuMeter | None = None,
) -> Drain:
    host, port = services.amqp_nodes[0]
    command = [
        sys.executable, str(NAIVE_SCRIPT), "--dsn", services.dsn(target.database),
        "--queue", target.queue, "--result-queue", target.result_queue,
        "--amqp-host", host, "--amqp-port", str(port), "--until-empty",
    ]
    return drain(
        services, command, env=clean_env(), workdir=workdir,
        result_queue=target.result_queue, expected=messages, log_name=f"{target.label}.out",
        meter=meter, database=target.database,
    )


# --- another revision's worker (--compare) -------------------------------------------

# setup.cfg's package_dir, for a revision without one.
DEFAULT_PACKAGE_DIRS = {"dbimport": "dbimport", "dbimport.matchers": "matchers", "dbimport.schemas": "schemas"}


@dataclass(frozen=True)
class Revision:
    """A git revision's worker, importable from `tree` (put first on PYTHONPATH)."""

    rev: str
    sha: str
    tree: Path


def package_dirs(src: Path) -> dict[str, str]:
    """setup.cfg's [options] package_dir of the checked-out revision in `src`."""
    config = configparser.ConfigParser()
    config.read(src / "setup.cfg")
    mapping = {}
    for line in config.get("options", "package_dir", fallback="").splitlines():
        package, sep, where = line.partition("=")
        if sep:
            mapping[package.strip()] = where.strip()
    return mapping or dict(DEFAULT_PACKAGE_DIRS)


def prepare_revision(rev: str, into: Path, repo: Path = REPO_DIR) -> Revision:
    """`git archive` of `rev` into `into`/src, then `into`/tree laid out as the package
    installs (setup.cfg's package_dir: dbimport/matchers <- matchers/, ...), compiled,
    and checked to be what `python -m dbimport` imports with it first on PYTHONPATH."""
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True, text=True,
    )
    if found.returncode != 0:
        raise RuntimeError(f"--compare {rev}: not a revision of {repo}")
    sha = found.stdout.strip()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha], capture_output=True, check=True)
    src, tree = into / "src", into / "tree"
    src.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(src, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(src)
    mapping = package_dirs(src)
    root = src / mapping.get("", ".")
    shutil.copytree(src / mapping["dbimport"] if "dbimport" in mapping else root / "dbimport", tree / "dbimport")
    for package, where in sorted(mapping.items()):
        if package.startswith("dbimport."):
            destination = tree.joinpath(*package.split("."))
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(src / where, destination)
    # Compiled now, so that the first drain does not pay for it.
    compileall.compile_dir(str(tree), quiet=1)
    probe = subprocess.run(
        [sys.executable, "-c", "import dbimport, dbimport.cli, dbimport.matchers, dbimport.schemas\n"
         "for m in (dbimport, dbimport.cli, dbimport.matchers, dbimport.schemas): print(m.__file__)"],
        env=with_pythonpath(clean_env(), tree), cwd=into, capture_output=True, text=True,
    )
    imported = probe.stdout.split()
    if probe.returncode != 0 or not imported or not all(path.startswith(str(tree) + os.sep) for path in imported):
        raise RuntimeError(
            f"--compare {rev}: with PYTHONPATH={tree}, python imports {imported or probe.stderr.strip()}, "
            "not the revision's code"
        )
    return Revision(rev=rev, sha=sha, tree=tree)


# --- checking ----------------------------------------------------------------------


@dataclass
class Verdict:
    """What a drain left behind, compared with the model of its stream."""

    label: str
    messages: int
    results: int = 0
    correct: int = 0
    profiles: int = 0
    expected_profiles: int = 0
    events: dict[str, int] = field(default_factory=dict)
    digest: str = ""
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    # Results counted, not read: the limit's results say nothing about profiles.
    counted: bool = False

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 10:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def verify(services: Services, target: Target, model: Model, label: str | None = None) -> Verdict:
    verdict = Verdict(label=label or target.label, messages=model.n, expected_profiles=model.entities)
    try:
        profile_ids = check_store(services, target, model, verdict)
    except psycopg.Error as exc:  # e.g. a --compare revision with another schema
        verdict.problem(f"cannot read the store: {type(exc).__name__}: {exc}".strip())
        profile_ids = bytearray(12 * model.entities)
    check_results(services, target, model, profile_ids, verdict)
    return verdict


def verify_count(services: Services, target: Target, messages: int, label: str | None = None) -> Verdict:
    """The limit's check: one result per message, none left in the input or dead queue."""
    verdict = Verdict(label=label or target.label, messages=messages, counted=True)
    connection = services.amqp()
    try:
        channel = connection.channel()
        verdict.results = queue_depth(channel, target.result_queue)
        left = queue_depth(channel, target.queue)
        dead = queue_depth(channel, target.dead_queue)
    finally:
        connection.close()
    if verdict.results != messages:
        verdict.problem(f"{verdict.results} results for {messages} messages")
    if left or dead:
        verdict.problem(f"{left} messages left in the input queue, {dead} in the dead-letter queue")
    verdict.correct = verdict.results if verdict.ok else 0
    return verdict


def check_store(services: Services, target: Target, model: Model, verdict: Verdict) -> bytearray:
    """Every profile as the model says, one per e-mail; returns the profile ids by entity."""
    profile_ids = bytearray(12 * model.entities)
    seen = bytearray(model.entities)
    digest = hashlib.sha256()
    with psycopg.connect(services.dsn(target.database)) as conn:
        # A server-side cursor: a million rows stream instead of landing in memory.
        with conn.cursor(name="bench_profiles") as cursor:
            cursor.itersize = 5000
            cursor.execute(
                "SELECT email, profile_id, fields FROM profiles WHERE db_id = %s ORDER BY email", (DB_ID,)
            )
            for email, profile_id, fields in cursor:
                verdict.profiles += 1
                digest.update(f"{email}\t".encode() + orjson.dumps(fields, option=orjson.OPT_SORT_KEYS) + b"\n")
                entity = entity_of_email(email)
                if entity is None or entity >= model.entities:
                    verdict.problem(f"unexpected profile {profile_id} with e-mail {email!r}")
                    continue
                if seen[entity]:
                    verdict.problem(f"two profiles with e-mail {email!r}")
                seen[entity] = 1
                profile_ids[12 * entity:12 * entity + 12] = bytes.fromhex(profile_id)
                expected = model.fields(entity)
                if fields != expected:
                    verdict.problem(f"profile {email}: fields {fields} != expected {expected}")
        verdict.events = dict(conn.execute(
            "SELECT kind, count(*) FROM events WHERE db_id = %s GROUP BY kind ORDER BY kind", (DB_ID,)
        ).fetchall())
    if verdict.profiles != model.entities:
        verdict.problem(f"{verdict.profiles} profiles, expected {model.entities}")
    wanted_events = {"profile_created": model.creates, "profile_updated": model.updates}
    if verdict.events != {k: v for k, v in wanted_events.items() if v}:
        verdict.problem(f"events {verdict.events}, expected {wanted_events}")
    verdict.digest = digest.hexdigest()
    return profile_ids


def check_results(
    services: Services, target: Target, model: Model, profile_ids: bytearray, verdict: Verdict,
) -> None:
    """One result per message: error 0, the right matching_field, its entity's profile id,
    correlation_id = feedback_id. Consumes the result queue."""
    answered = bytearray(model.n)
    connection = services.amqp()
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=5000)
        last_tag = acked_tag = 0
        if queue_depth(channel, target.result_queue) > 0:
            for method, properties, body in channel.consume(target.result_queue, inactivity_timeout=5):
                if method is None:
                    break
                last_tag = method.delivery_tag
                verdict.results += 1
                judge_result(body, properties, model, profile_ids, answered, verdict)
                if verdict.results % 1000 == 0:
                    channel.basic_ack(last_tag, multiple=True)
                    acked_tag = last_tag
                if verdict.results >= model.n and channel.get_waiting_message_count() == 0:
                    break
            if last_tag > acked_tag:
                channel.basic_ack(last_tag, multiple=True)
            channel.cancel()
        left = queue_depth(channel, target.result_queue)
    finally:
        connection.close()
    if left:
        verdict.problem(f"{left} more results than messages (duplicates?)")
    missing = model.n - sum(answered)
    if missing:
        verdict.problem(f"{missing} messages got no result")


def judge_result(
    body: bytes, properties: Any, model: Model, profile_ids: bytearray, answered: bytearray, verdict: Verdict,
) -> None:
    result = orjson.loads(body)
    feedback_id = result.get("feedback_id", "")
    position = int(feedback_id[1:]) if feedback_id[1:].isdigit() else -1
    if not 0 <= position < model.n:
        verdict.problem(f"result for an unknown message: {result}")
        return
    if answered[position]:
        verdict.problem(f"second result for {feedback_id}: {result}")
        return
    answered[position] = 1
    entity = model.entity_of[position]
    expected = {
        "error": 0, "error_text": "", "feedback_id": feedback_id,
        "matching_field": model.matching_field(position),
        "profile_id": profile_ids[12 * entity:12 * entity + 12].hex(),
    }
    if result != expected:
        verdict.problem(f"result {result} != expected {expected}")
    elif properties.correlation_id != feedback_id:
        verdict.problem(f"result for {feedback_id} has correlation_id {properties.correlation_id!r}")
    else:
        verdict.correct += 1


# --- reporting ---------------------------------------------------------------------


def drain_line(label: str, drain: Drain, extra: str = "") -> str:
    status = "" if drain.complete else f"  INCOMPLETE (exit {drain.exit_code})"
    return (
        f"{label + ':':<8} {drain.messages} msgs in {drain.seconds:.1f} s = {drain.rate:.0f} msg/s, "
        f"peak RSS {drain.peak_rss_mb:.0f} MB{extra}{status}"
    )


def slices_line(label: str, drain: Drain) -> str:
    rates = " ".join(f"{r:.0f}" for r in drain.slice_rates())
    return (f"{'slices:':<8} {label} msg/s per 10% of the results, first result on: {rates} "
            f"(overall {drain.steady_rate:.0f} msg/s after a {drain.first_result_s:.1f} s start)")


def verdict_line(verdict: Verdict) -> str:
    state = "OK" if verdict.ok else f"FAIL ({verdict.problem_count} problems)"
    if verdict.counted:
        return (f"{'check:':<8} {verdict.label}: {verdict.results} results for {verdict.messages} messages "
                f"(counted: the limit writes no profiles): {state}")
    events = " + ".join(f"{n} {kind.removeprefix('profile_')}" for kind, n in verdict.events.items())
    return (
        f"{'check:':<8} {verdict.label}: {verdict.correct}/{verdict.messages} correct results "
        f"({verdict.results} received), {verdict.profiles}/{verdict.expected_profiles} profiles "
        f"as the stream implies, events {events or 'none'}: {state}"
    )


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"{'load:':<8} {when}: load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def cpu_parts(label: str, per: dict[str, float | None]) -> str:
    return (f"cpu µs/msg: {label} {us(per['drain'])}, rabbitmq {us(per['rabbitmq'])}, "
            f"postgres {us(per['postgres'])}, total {us(per['total'])}")


def cpu_line(label: str, drain: Drain) -> str:
    """The CPU each process spent per message over the drain, the machine's busy
    cores and the 1-minute load average at the drain's start and end."""
    cpu = drain.cpu
    if cpu is None:
        return f"{'cpu:':<8} {label}: not measured"
    per = cpu.us_per_message(drain.messages)
    backends = "" if per["postgres_backends"] is None else (
        f"; postgres backends of its database {us(per['postgres_backends'])}")
    return (f"{'cpu:':<8} {label}: {cpu_parts(label, per)}{backends}; machine busy {cpu.busy_cores:.2f} "
            f"of {os.cpu_count()} cores over {cpu.seconds:.1f} s; load {cpu.load_start[0]:.2f} -> {cpu.load_end[0]:.2f}")


def median_cpu(drains: Sequence[Drain]) -> dict[str, float | None]:
    """Per process, the median over the drains of its µs per message."""
    pers = [d.cpu.us_per_message(d.messages) for d in drains if d.cpu is not None]
    keys = ("drain", "rabbitmq", "postgres", "total", "postgres_backends")
    medians: dict[str, float | None] = {}
    for key in keys:
        values = [v for per in pers if (v := per[key]) is not None]
        medians[key] = statistics.median(values) if values else None
    return medians


def median_drain(drains: Sequence[Drain]) -> Drain:
    """The drain with the median rate (the lower middle one of an even number)."""
    ranked = sorted(drains, key=lambda d: d.rate)
    return ranked[(len(ranked) - 1) // 2]


def median_rate(drains: Sequence[Drain]) -> float:
    return statistics.median(d.rate for d in drains)


def median_line(title: str, drains: Sequence[Drain]) -> str:
    rates = [d.rate for d in drains]
    return (f"{'median:':<8} {title}: {median_rate(drains):.0f} msg/s, spread {min(rates):.0f}-{max(rates):.0f} "
            f"over {len(rates)} rounds; {cpu_parts(title, median_cpu(drains))}")


# --- the run -----------------------------------------------------------------------

ROLES = ("worker", "limit", "naive")


@dataclass(frozen=True)
class Kind:
    """One kind of drain in each round: the worker, the limit, the naive reference,
    or a --compare revision's worker (role "worker", with its `revision`)."""

    title: str
    label: str
    role: str
    messages: int
    revision: Revision | None = None
    actions: float = 0.0  # the share of its messages that carry field actions
    queue_type: str = "classic"  # IMPORT_QUEUE_TYPE of its queues

    def target(self, run_id: str, round_: int, rounds: int) -> Target:
        return Target.named(run_id, self.label if rounds == 1 else f"{self.label}_{round_}", self.queue_type)

    def of_type(self, queue_type: str, *, plain: bool = False) -> Kind:
        """The same drain on queues of `queue_type`: titled `worker quorum` and labelled
        `workerq`, or, `plain`, under its own title and label."""
        if plain:
            return dataclasses.replace(self, queue_type=queue_type)
        return dataclasses.replace(self, title=f"{self.title} {queue_type}", label=f"{self.label}{queue_type[0]}",
                                   queue_type=queue_type)

    @property
    def tree(self) -> Path | None:
        return None if self.revision is None else self.revision.tree


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        description="Fill queues with N messages and drain them with the worker, the messaging limit "
        "(bench/limit.py), the naive reference (bench/naive.py) and any --compare revision's worker, "
        "each in a fresh database; print the rates, their ratios and the CPU per message.",
    )
    parser.add_argument("--messages", type=positive, default=DEFAULT_MESSAGES, metavar="N",
                        help=f"messages for the worker (default {DEFAULT_MESSAGES})")
    parser.add_argument("--naive-messages", type=positive, metavar="M",
                        help="messages for the naive reference, the first M of the same stream (default N); "
                        "fewer saves time, and a smaller store does not slow the reference down")
    parser.add_argument("--prefetch", type=positive, default=defaults.prefetch,
                        help=f"IMPORT_PREFETCH for the worker (default: the worker's, {defaults.prefetch})")
    parser.add_argument("--batch", type=positive, default=defaults.batch_size,
                        help=f"IMPORT_BATCH_SIZE for the worker (default: the worker's, {defaults.batch_size})")
    parser.add_argument("--repeat", type=positive, default=1, metavar="R",
                        help="rounds; each drains every kind once (default 1); medians and spreads are printed")
    parser.add_argument("--compare", action="append", default=[], metavar="REV",
                        help="also drain with the worker of git revision REV (e.g. main, 4403c5b); repeatable")
    parser.add_argument("--actions", type=share, default=0.0, metavar="F",
                        help="also drain, with the worker, the same stream where a share F of the messages "
                        "(e.g. 0.2) also carries field actions (incr of a counter, add of a tag); prints "
                        "its rate against the plain stream's")
    parser.add_argument("--queue-types", type=queue_type_list, default=("classic",), metavar="T1,T2",
                        help="drain every kind once per queue type, e.g. classic,quorum (IMPORT_QUEUE_TYPE of the "
                        "worker, the limit and --compare revisions; the fill declares matching queues); a kind "
                        "on quorum queues is titled `worker quorum` (default classic)")
    parser.add_argument("--skip-naive", action="store_true", help="no naive reference drain")
    parser.add_argument("--skip-limit", action="store_true", help="no messaging limit drain")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases, queues, logs and --compare trees for inspection")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the stream's random seed")
    add_modes_option(parser)
    add_service_options(parser)
    args = parser.parse_args(argv)
    if args.batch > args.prefetch:
        parser.error(f"--batch ({args.batch}) must not exceed --prefetch ({args.prefetch})")
    if args.naive_messages is None:
        args.naive_messages = args.messages
    taken = [rev for rev in args.compare if rev in ROLES]
    if taken or len(set(args.compare)) != len(args.compare):
        parser.error(f"--compare: each revision once, and none named {', '.join(ROLES)}")
    return args


def add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-dsn", default=os.environ.get("DBIMPORT_TEST_DSN", DEFAULT_ADMIN_DSN),
                        help="the server's maintenance database, where bench_* databases are created "
                        f"(default: $DBIMPORT_TEST_DSN, else {DEFAULT_ADMIN_DSN})")
    parser.add_argument("--amqp-host", default="127.0.0.1",
                        help="RabbitMQ host (guest/guest), or a cluster's nodes as RABBITMQ_HOST takes them, "
                        "comma-separated host or host:port (e.g. 127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683): "
                        "the worker and the limit get the list, the bench itself and the naive reference use "
                        "the first node, and RabbitMQ's CPU is every listed node's")
    parser.add_argument("--amqp-port", type=int, default=5672, help="the port of a node given without one")


def add_modes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modes", type=mode_list, default=MODES, metavar="M1,M2",
        help=f"the matching modes the stream uses (default {','.join(MODES)}); `--modes email` "
        "is the e-mail-only reference mix, half creates and half updates by e-mail",
    )


def mode_list(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [mode for mode in modes if mode not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(MODES)}")
    return modes


def queue_type_list(text: str) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not types or any(t not in ("classic", "quorum") for t in types):
        raise argparse.ArgumentTypeError("classic, quorum, or both: classic,quorum")
    return types


def share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be in (0, 1]")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Made:
    """What the run created, for the clean-up at the end (or --keep)."""

    targets: list[Target] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    cleaned: set[str] = field(default_factory=set)

    def clean(self, services: Services, targets: Sequence[Target]) -> None:
        left = [t for t in targets if t.label not in self.cleaned]
        for target in left:
            drop_database(services, target.database)
        if left:
            delete_queues(services, left)
        self.cleaned.update(t.label for t in left)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    services = Services(args.admin_dsn, args.amqp_host, args.amqp_port)
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"dbimport-bench-{run_id}-"))
    made = Made()
    report: dict[str, Any] = {
        "run_id": run_id, "messages": args.messages, "naive_messages": None if args.skip_naive else args.naive_messages,
        "prefetch": args.prefetch, "batch": args.batch, "seed": args.seed, "modes": list(args.modes),
        "repeat": args.repeat, "databases": made.databases, "queues": [],
    }
    try:
        return run(args, services, run_id, workdir, made, report)
    except RuntimeError as exc:  # a --compare revision that cannot be set up, a failed init-db
        say(f"{'error:':<8} {exc}")
        return 2
    finally:
        if args.keep:
            say(f"{'kept:':<8} databases {', '.join(made.databases)}; queues "
                f"{', '.join(q for t in made.targets for q in t.queues)}; logs and trees in {workdir}")
        else:
            made.clean(services, made.targets)
            shutil.rmtree(workdir, ignore_errors=True)


def run(
    args: argparse.Namespace, services: Services, run_id: str, workdir: Path, made: Made,
    report: dict[str, Any],
) -> int:
    n, m = args.messages, args.naive_messages
    say(load_line("start"))
    report["load_start"] = os.getloadavg()
    say(f"{'stream:':<8} {n} messages, {(n + 1) // 2} creates + {n // 2} updates, modes "
        f"{'/'.join(args.modes)}" + (f" (custom on {CUSTOM_FIELD})" if "custom" in args.modes else "")
        + f", seed {args.seed}"
        + ("" if args.queue_types == ("classic",) else f"; queues {' then '.join(args.queue_types)}"))
    kinds = [Kind("worker", "worker", "worker", n)]
    if args.actions:
        kinds.append(Kind(f"worker+actions {args.actions:g}", "actions", "worker", n, actions=args.actions))
    report["compare"] = []
    for i, rev in enumerate(args.compare, 1):
        revision = prepare_revision(rev, workdir / f"rev{i}")
        say(f"{'compare:':<8} {rev} = {revision.sha[:12]}: its dbimport laid out in {revision.tree}, first on "
            "PYTHONPATH (checked: python imports it from there); its own init-db makes its databases")
        kinds.append(Kind(rev, f"rev{i}", "worker", n, revision))
        report["compare"].append({"rev": rev, "sha": revision.sha})
    if not args.skip_limit:
        kinds.append(Kind("limit", "limit", "limit", n))
    if not args.skip_naive:
        kinds.append(Kind("naive", "naive", "naive", m))
    # The first queue type's drains keep the plain titles; each other type's follow
    # their counterpart, titled `worker quorum`.
    base_type, *other_types = args.queue_types
    kinds = [typed for kind in kinds
             for typed in (kind.of_type(base_type, plain=True), *(kind.of_type(t) for t in other_types))]
    meter = CpuMeter.of(services)
    say(f"{'cpu:':<8} measured from /proc: {meter.describe()}")
    report["cpu_processes"] = {"rabbitmq": meter.rabbitmq, "rabbitmq_how": meter.rabbitmq_how,
                               "postmaster": meter.postmaster, "postgres_how": meter.postgres_how}
    models = {
        (count, share): Model(count, args.seed, args.modes, share)
        for count, share in {(k.messages, k.actions) for k in kinds if k.role != "limit"}
    }
    drains: dict[str, list[Drain]] = {k.title: [] for k in kinds}
    verdicts: dict[str, list[Verdict]] = {k.title: [] for k in kinds}
    report["fills"], report["rounds"] = [], []
    ok = True
    for round_ in range(1, args.repeat + 1):
        # Odd rounds in one order, even rounds in the reverse: a drift in the machine's
        # load falls on every kind alike, and the worker sits next to any --compare.
        order = kinds if round_ % 2 == 1 else kinds[::-1]
        ok = run_round(args, services, run_id, round_, order, kinds, models, meter, workdir, made, report,
                       drains, verdicts) and ok

    if args.repeat > 1:
        for kind in kinds:
            say(median_line(kind.title, drains[kind.title]))
    worker_rate = median_rate(drains["worker"])
    ratios = {
        f"worker / {kind.title}": worker_rate / rate if (rate := median_rate(drains[kind.title])) else 0.0
        for kind in kinds if kind.title != "worker"
    }
    if args.actions:
        title = next(kind.title for kind in kinds if kind.label == "actions")
        kept = median_rate(drains[title]) / worker_rate if worker_rate else 0.0
        parts_actions = (f"{title} / worker {kept:.2f} (target >= 0.90: {'PASS' if kept >= 0.9 else 'FAIL'})")
        report["actions_ratio"] = kept
    rss_mb = max(d.peak_rss_mb for d in drains["worker"])
    rss_pass = rss_mb <= TARGET_RSS_MB
    parts = []
    if "naive" in drains:
        ratio = ratios["worker / naive"]
        parts.append(f"worker / naive {ratio:.2f}x (target >= {TARGET_RATIO:g}x: "
                     f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'})")
        report["ratio"] = ratio
    else:
        parts.append("worker / naive n/a (--skip-naive)")
    other_titles = {f"worker / {kind.title}" for kind in kinds if kind.queue_type != base_type}
    parts += [f"{name} {value:.2f}x" for name, value in ratios.items()
              if name != "worker / naive" and not name.startswith("worker / worker+actions")
              and name not in other_titles]
    if args.actions:
        parts.append(parts_actions)
    medians = f" (medians of {args.repeat} rounds)" if args.repeat > 1 else ""
    if other_types:
        queue_ratios = {
            f"{kind.title} / {base.title}": median_rate(drains[kind.title]) / rate
            for base in kinds if base.queue_type == base_type
            for kind in kinds if kind.queue_type != base_type and kind.title == f"{base.title} {kind.queue_type}"
            if (rate := median_rate(drains[base.title]))
        }
        say(f"{'queues:':<8} " + ", ".join(f"{name} {value:.2f}x" for name, value in queue_ratios.items())
            + f" (msg/s on {'/'.join(other_types)} queues against {base_type} ones, on the same broker"
            + (f"; medians of {args.repeat} rounds)" if args.repeat > 1 else ")"))
        report["queue_ratios"] = queue_ratios
    say(f"{'ratio:':<8} " + ", ".join(parts) + f"{medians}; RSS target <= {TARGET_RSS_MB:g} MB: "
        f"{'PASS' if rss_pass else 'FAIL'}")
    report["ratios"] = ratios
    for kind in kinds:
        report[kind.title] = kind_report(drains[kind.title], verdicts[kind.title])
    say(load_line("end"))
    report["load_end"] = os.getloadavg()
    report["ok"] = ok
    if args.json:
        print(orjson.dumps(report).decode(), flush=True)
    return 0 if ok else 1


def run_round(
    args: argparse.Namespace, services: Services, run_id: str, round_: int, order: Sequence[Kind],
    kinds: Sequence[Kind], models: dict[int, Model], meter: CpuMeter, workdir: Path, made: Made,
    report: dict[str, Any], drains: dict[str, list[Drain]], verdicts: dict[str, list[Verdict]],
) -> bool:
    """Fill a fresh queue per kind, drain each in `order`, check each; True if all went well."""
    if args.repeat > 1:
        say(f"{'round:':<8} {round_} of {args.repeat}: {', '.join(k.title for k in order)}")
    targets = {kind.title: kind.target(run_id, round_, args.repeat) for kind in order}
    made.targets.extend(targets.values())
    report["queues"].extend(q for t in targets.values() for q in t.queues)
    for kind in order:
        if kind.role != "limit":
            made.databases.append(targets[kind.title].database)
            init_database(services, targets[kind.title], workdir, tree=kind.tree)
    counts = [(targets[kind.title], kind.messages) for kind in order]
    filled = fill(services, counts, args.seed, args.modes, {kind.label: kind.actions for kind in order})
    say(f"{'fill:':<8} {filled.published} msgs in {filled.seconds:.1f} s = {filled.rate:.0f} msg/s "
        f"(persistent, one publisher, a transaction per {PUBLISH_TX_MESSAGES}; "
        + ", ".join(f"{kind.title} queue {kind.messages}" for kind in order) + ")")
    report["fills"].append({"messages": filled.published, "seconds": filled.seconds, "rate": filled.rate})
    report.setdefault("fill", report["fills"][0])

    this_round: dict[str, Drain] = {}
    for kind in order:
        target = targets[kind.title]
        if kind.role == "limit":
            drained = drain_limit(services, target, messages=kind.messages, prefetch=args.prefetch,
                                  batch=args.batch, workdir=workdir, meter=meter)
            note = f" (no-op worker on dbimport.broker, prefetch {args.prefetch}, batch {args.batch})"
        elif kind.role == "naive":
            drained = drain_naive(services, target, messages=kind.messages, workdir=workdir, meter=meter)
            note = "" if kind.messages == args.messages else (
                f" (only the first {kind.messages} messages of the same stream, on a smaller store)")
        else:
            drained = drain_worker(services, target, messages=kind.messages, prefetch=args.prefetch,
                                   batch=args.batch, workdir=workdir, tree=kind.tree, meter=meter)
            note = f" (prefetch {args.prefetch}, batch {args.batch})"
        say(drain_line(kind.title, drained, note))
        if kind.role == "worker":
            say(slices_line(kind.title, drained))
        say(cpu_line(kind.title, drained))
        this_round[kind.title] = drained
        drains[kind.title].append(drained)

    ok = True
    round_verdicts: dict[str, Verdict] = {}
    for kind in kinds:  # the checks in the same order every round
        target = targets[kind.title]
        if kind.role == "limit":
            verdict = verify_count(services, target, kind.messages, kind.title)
        else:
            verdict = verify(services, target, models[kind.messages, kind.actions], kind.title)
        say(verdict_line(verdict))
        for problem in verdict.problems:
            say(f"         {problem}")
        round_verdicts[kind.title] = verdict
        verdicts[kind.title].append(verdict)
        ok = ok and verdict.ok and this_round[kind.title].complete
    worker = round_verdicts["worker"]
    for kind in kinds:
        other = round_verdicts[kind.title]
        if kind.title == "worker" or kind.role == "limit" or kind.messages != args.messages or kind.actions:
            continue
        same = worker.digest == other.digest
        say(f"{'check:':<8} worker and {kind.title} stores hold the same profiles (e-mail and fields, "
            f"sha256 {worker.digest[:12]} vs {other.digest[:12]}): {'OK' if same else 'FAIL'}")
        ok = ok and same
    for kind in kinds:
        drained = this_round[kind.title]
        if not drained.complete:
            say(f"         {kind.title} process exited {drained.exit_code}; its output ends with:\n{drained.log_tail}")
    report["rounds"].append({
        kind.title: {**drain_report(this_round[kind.title]), "check": check_report(round_verdicts[kind.title])}
        for kind in kinds
    })
    if args.repeat > 1 and not args.keep:
        made.clean(services, list(targets.values()))
    return ok


def check_report(verdict: Verdict) -> dict[str, Any]:
    if verdict.counted:
        return {"results": verdict.results, "ok": verdict.ok}
    return {
        "correct_results": verdict.correct, "results": verdict.results, "profiles": verdict.profiles,
        "events": verdict.events, "ok": verdict.ok,
    }


def drain_report(drained: Drain) -> dict[str, Any]:
    report: dict[str, Any] = {
        "messages": drained.messages, "seconds": round(drained.seconds, 3), "rate": round(drained.rate, 1),
        "first_result_s": round(drained.first_result_s, 3), "steady_rate": round(drained.steady_rate, 1),
        "peak_rss_mb": round(drained.peak_rss_mb, 1), "complete": drained.complete,
        "exit_code": drained.exit_code, "slice_rates": [round(r, 1) for r in drained.slice_rates()],
    }
    if drained.cpu is not None:
        cpu = drained.cpu
        report["cpu"] = {
            "us_per_msg": {k: None if v is None else round(v, 1)
                           for k, v in cpu.us_per_message(drained.messages).items()},
            "seconds": round(cpu.seconds, 3), "busy_cores": round(cpu.busy_cores, 2),
            "load_start": cpu.load_start, "load_end": cpu.load_end,
        }
    return report


def kind_report(drained: Sequence[Drain], checks: Sequence[Verdict]) -> dict[str, Any]:
    """The median round's figures (all of them, with one round), the rates' spread,
    the median CPU per message, and the checks of every round."""
    rates = [d.rate for d in drained]
    failed = [v for v in checks if not v.ok]
    return {
        **drain_report(median_drain(drained)),
        "rate": round(median_rate(drained), 1),
        "rates": [round(r, 1) for r in rates], "rate_min": round(min(rates), 1), "rate_max": round(max(rates), 1),
        "peak_rss_mb": round(max(d.peak_rss_mb for d in drained), 1),
        "complete": all(d.complete for d in drained),
        "exit_code": next((d.exit_code for d in drained if d.exit_code), 0),
        "check": {**check_report(failed[0] if failed else checks[0]), "ok": not failed},
        "cpu_us_per_msg": {k: None if v is None else round(v, 1) for k, v in median_cpu(drained).items()},
    }


if __name__ == "__main__":
    sys.exit(main())
