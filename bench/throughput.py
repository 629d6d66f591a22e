"""The throughput benchmark: the real worker against the naive reference, in one run.

It fills two identical queues with N messages (half creates, half updates,
across the modes email, email_profile and custom on CRM_ID), drains one with
`python -m dbimport run --until-empty` and the other with bench/naive.py, each
against its own database made by `dbimport-worker init-db`, then checks that
every message got one correct result and that both stores hold exactly the
profiles the message stream implies. It prints msg/s for both, their ratio,
the peak RSS, and the worker's rate per 10% slice of the drain.

    .venv/bin/python bench/throughput.py                 # 50,000 messages
    .venv/bin/python bench/throughput.py --messages 20000 --naive-messages 5000
    .venv/bin/python bench/throughput.py --messages 1000000 --skip-naive

See bench/README.md for what is measured and how.
"""
from __future__ import annotations

import argparse
import array
import hashlib
import os
import random
import shutil
import subprocess
import sys
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
from psycopg import sql

from dbimport.config import Settings, keys as config_keys
from dbimport.store import with_database

BENCH_DIR = Path(__file__).resolve().parent
NAIVE_SCRIPT = BENCH_DIR / "naive.py"

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
SEED_FILE_CONTENT = {"accounts": [{
    "id": ACCOUNT_ID,
    "databases": [{"id": DB_ID, "name": "Bench", "fields": [{"name": CUSTOM_FIELD, "type": "int"}]}],
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


def message(position: int, entity: int, mode: str) -> bytes:
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
    message that last set each field (-1: cleared)."""

    def __init__(self, n: int, seed: int, modes: Sequence[str] = MODES) -> None:
        self.n = n
        self.modes = tuple(modes)
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
        return expected

    def matching_field(self, position: int) -> str:
        return CUSTOM_FIELD if self.modes[self.mode_of[position]] == "custom" else "email"


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
    amqp_host: str
    amqp_port: int

    def amqp(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=self.amqp_host, port=self.amqp_port, heartbeat=600, blocked_connection_timeout=300,
        ))

    def dsn(self, database: str) -> str:
        return with_database(self.admin_dsn, database)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsn, autocommit=True)


@dataclass(frozen=True)
class Target:
    """One drain's own database and queues."""

    label: str
    database: str
    queue: str
    result_queue: str
    dead_queue: str

    @classmethod
    def named(cls, run_id: str, label: str) -> Target:
        return cls(
            label=label,
            database=f"bench_{run_id}_{label}",
            queue=f"bench.{run_id}.{label}.in",
            result_queue=f"bench.{run_id}.{label}.result",
            dead_queue=f"bench.{run_id}.{label}.dead",
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


def init_database(services: Services, target: Target, workdir: Path) -> None:
    """`dbimport-worker init-db --seed` on a fresh database (dropped first if left over)."""
    drop_database(services, target.database)
    seed = workdir / "seed.json"
    seed.write_bytes(orjson.dumps(SEED_FILE_CONTENT))
    done = subprocess.run(
        [sys.executable, "-m", "dbimport", "init-db", "--seed", str(seed)],
        env=clean_env(POSTGRES_DSN=services.dsn(target.database), JOB_SERVER_LOG=str(workdir / "init-db.log")),
        cwd=workdir, capture_output=True, text=True,
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
    channel.queue_declare(target.queue, durable=True)
    channel.queue_declare(target.result_queue, durable=True, arguments={"x-message-ttl": Settings().result_ttl_ms})
    channel.queue_declare(target.dead_queue, durable=True)


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


def fill(services: Services, counts: Sequence[tuple[Target, int]], seed: int, modes: Sequence[str] = MODES) -> Fill:
    """Publish the stream's first `count` messages to each target's queue, in order:
    one publisher, persistent messages, one AMQP transaction per PUBLISH_TX_MESSAGES."""
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
            body = message(position, entity, mode)
            for target, count in counts:
                if position < count:
                    channel.basic_publish("", target.queue, body, properties)
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
        return [size / (b - a) if b > a else float("inf") for a, b in zip(bounds, bounds[1:])]


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
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def drain(
    services: Services, command: Sequence[str], *, env: dict[str, str], workdir: Path,
    result_queue: str, expected: int, log_name: str, timeout_s: float = DRAIN_TIMEOUT_S,
) -> Drain:
    """Run `command` until it exits, sampling the result queue's depth and the
    process's VmHWM every SAMPLE_S. (VmHWM, not getrusage: on Linux a child's
    ru_maxrss also counts the parent's memory it had before exec.)"""
    connection = services.amqp()
    log_path = workdir / log_name
    samples: list[tuple[float, int]] = [(0.0, 0)]
    peak_kb = 0
    done_at: float | None = None
    try:
        channel = connection.channel()
        with open(log_path, "wb") as out:
            started = time.monotonic()
            process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
            try:
                while True:
                    peak_kb = max(peak_kb, vm_hwm_kb(process.pid))
                    exit_code = process.poll()
                    depth = queue_depth(channel, result_queue)
                    now = time.monotonic() - started
                    samples.append((now, depth))
                    if done_at is None and depth >= expected:
                        done_at = now
                    if exit_code is not None:
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
    )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def drain_worker(
    services: Services, target: Target, *, messages: int, prefetch: int, batch: int, workdir: Path,
) -> Drain:
    env = clean_env(
        RABBITMQ_HOST=services.amqp_host,
        RABBITMQ_PORT=str(services.amqp_port),
        POSTGRES_DSN=services.dsn(target.database),
        IMPORT_QUEUE=target.queue,
        IMPORT_RESULT_QUEUE=target.result_queue,
        IMPORT_DEAD_QUEUE=target.dead_queue,
        JOB_SERVER_LOG=str(workdir / f"{target.label}.job_server.log"),
        IMPORT_PREFETCH=str(prefetch),
        IMPORT_BATCH_SIZE=str(batch),
    )
    return drain(
        services, [sys.executable, "-m", "dbimport", "run", "--until-empty"], env=env, workdir=workdir,
        result_queue=target.result_queue, expected=messages, log_name=f"{target.label}.out",
    )


def drain_naive(services: Services, target: Target, *, messages: int, workdir: Path) -> Drain:
    command = [
        sys.executable, str(NAIVE_SCRIPT), "--dsn", services.dsn(target.database),
        "--queue", target.queue, "--result-queue", target.result_queue,
        "--amqp-host", services.amqp_host, "--amqp-port", str(services.amqp_port), "--until-empty",
    ]
    return drain(
        services, command, env=clean_env(), workdir=workdir,
        result_queue=target.result_queue, expected=messages, log_name=f"{target.label}.out",
    )


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

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 10:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def verify(services: Services, target: Target, model: Model) -> Verdict:
    verdict = Verdict(label=target.label, messages=model.n, expected_profiles=model.entities)
    profile_ids = check_store(services, target, model, verdict)
    check_results(services, target, model, profile_ids, verdict)
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
    events = " + ".join(f"{n} {kind.removeprefix('profile_')}" for kind, n in verdict.events.items())
    state = "OK" if verdict.ok else f"FAIL ({verdict.problem_count} problems)"
    return (
        f"{'check:':<8} {verdict.label}: {verdict.correct}/{verdict.messages} correct results "
        f"({verdict.results} received), {verdict.profiles}/{verdict.expected_profiles} profiles "
        f"as the stream implies, events {events or 'none'}: {state}"
    )


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"{'load:':<8} {when}: load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


# --- the run -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        description="Fill a queue with N messages and drain it with the worker and with the naive "
        "reference (bench/naive.py), each in a fresh database; print both rates and their ratio.",
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
    parser.add_argument("--skip-naive", action="store_true", help="drain with the worker only")
    parser.add_argument("--keep", action="store_true", help="keep the databases, queues and logs for inspection")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the stream's random seed")
    add_modes_option(parser)
    add_service_options(parser)
    args = parser.parse_args(argv)
    if args.batch > args.prefetch:
        parser.error(f"--batch ({args.batch}) must not exceed --prefetch ({args.prefetch})")
    if args.naive_messages is None:
        args.naive_messages = args.messages
    return args


def add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-dsn", default=os.environ.get("DBIMPORT_TEST_DSN", DEFAULT_ADMIN_DSN),
                        help="the server's maintenance database, where bench_* databases are created "
                        f"(default: $DBIMPORT_TEST_DSN, else {DEFAULT_ADMIN_DSN})")
    parser.add_argument("--amqp-host", default="127.0.0.1", help="RabbitMQ host (guest/guest)")
    parser.add_argument("--amqp-port", type=int, default=5672)


def add_modes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modes", type=mode_list, default=MODES, metavar="M1,M2",
        help=f"the matching modes the stream uses (default {','.join(MODES)}); `--modes email` "
        "is issue 4's reference mix, half creates and half updates by e-mail",
    )


def mode_list(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [mode for mode in modes if mode not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(MODES)}")
    return modes


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    services = Services(args.admin_dsn, args.amqp_host, args.amqp_port)
    run_id = uuid.uuid4().hex[:8]
    worker_target = Target.named(run_id, "worker")
    naive_target = Target.named(run_id, "naive")
    targets = [worker_target] if args.skip_naive else [worker_target, naive_target]
    workdir = Path(tempfile.mkdtemp(prefix=f"dbimport-bench-{run_id}-"))
    report: dict[str, Any] = {
        "run_id": run_id, "messages": args.messages, "naive_messages": None if args.skip_naive else args.naive_messages,
        "prefetch": args.prefetch, "batch": args.batch, "seed": args.seed, "modes": list(args.modes),
        "databases": [t.database for t in targets], "queues": [q for t in targets for q in t.queues],
    }
    try:
        return run(args, services, worker_target, naive_target, targets, workdir, report)
    finally:
        if args.keep:
            say(f"{'kept:':<8} databases {', '.join(t.database for t in targets)}; queues "
                f"{', '.join(q for t in targets for q in t.queues)}; logs in {workdir}")
        else:
            for target in targets:
                drop_database(services, target.database)
            delete_queues(services, targets)
            shutil.rmtree(workdir, ignore_errors=True)


def run(
    args: argparse.Namespace, services: Services, worker_target: Target, naive_target: Target,
    targets: list[Target], workdir: Path, report: dict[str, Any],
) -> int:
    n, m = args.messages, args.naive_messages
    say(load_line("start"))
    report["load_start"] = os.getloadavg()
    say(f"{'stream:':<8} {n} messages, {(n + 1) // 2} creates + {n // 2} updates, modes "
        f"{'/'.join(args.modes)}" + (f" (custom on {CUSTOM_FIELD})" if "custom" in args.modes else "")
        + f", seed {args.seed}")
    for target in targets:
        init_database(services, target, workdir)
    counts = [(worker_target, n)] + ([] if args.skip_naive else [(naive_target, m)])
    filled = fill(services, counts, args.seed, args.modes)
    say(f"{'fill:':<8} {filled.published} msgs in {filled.seconds:.1f} s = {filled.rate:.0f} msg/s "
        f"(persistent, one publisher, a transaction per {PUBLISH_TX_MESSAGES}; "
        + ", ".join(f"{t.label} queue {c}" for t, c in counts) + ")")
    report["fill"] = {"messages": filled.published, "seconds": filled.seconds, "rate": filled.rate}

    worker = drain_worker(
        services, worker_target, messages=n, prefetch=args.prefetch, batch=args.batch, workdir=workdir
    )
    say(drain_line("worker", worker, f" (prefetch {args.prefetch}, batch {args.batch})"))
    say(slices_line("worker", worker))
    report["worker"] = drain_report(worker)
    naive: Drain | None = None
    if not args.skip_naive:
        naive = drain_naive(services, naive_target, messages=m, workdir=workdir)
        note = "" if m == n else f" (only the first {m} messages of the same stream, on a smaller store)"
        say(drain_line("naive", naive, note))
        report["naive"] = drain_report(naive)

    model = Model(n, args.seed, args.modes)
    verdicts = [verify(services, worker_target, model)]
    if naive is not None:
        verdicts.append(verify(services, naive_target, model if m == n else Model(m, args.seed, args.modes)))
    ok = worker.complete and (naive is None or naive.complete)
    for verdict in verdicts:
        say(verdict_line(verdict))
        for problem in verdict.problems:
            say(f"         {problem}")
        report[verdict.label]["check"] = {
            "correct_results": verdict.correct, "results": verdict.results, "profiles": verdict.profiles,
            "events": verdict.events, "ok": verdict.ok,
        }
        ok = ok and verdict.ok
    if len(verdicts) == 2 and n == m:
        same = verdicts[0].digest == verdicts[1].digest
        say(f"{'check:':<8} worker and naive stores hold the same profiles (e-mail and fields, "
            f"sha256 {verdicts[0].digest[:12]} vs {verdicts[1].digest[:12]}): {'OK' if same else 'FAIL'}")
        ok = ok and same
    for drained in (worker, naive):
        if drained is not None and not drained.complete:
            say(f"         process exited {drained.exit_code}; its output ends with:\n{drained.log_tail}")

    rss_pass = worker.peak_rss_mb <= TARGET_RSS_MB
    if naive is not None:
        ratio = worker.rate / naive.rate if naive.rate else 0.0
        say(f"{'ratio:':<8} {ratio:.2f}x   target >= {TARGET_RATIO:g}x: {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}"
            f"   RSS target <= {TARGET_RSS_MB:g} MB: {'PASS' if rss_pass else 'FAIL'}")
        report["ratio"] = ratio
    else:
        say(f"{'ratio:':<8} n/a (--skip-naive)   RSS target <= {TARGET_RSS_MB:g} MB: {'PASS' if rss_pass else 'FAIL'}")
    say(load_line("end"))
    report["load_end"] = os.getloadavg()
    report["ok"] = ok
    if args.json:
        print(orjson.dumps(report).decode(), flush=True)
    return 0 if ok else 1


def drain_report(drained: Drain) -> dict[str, Any]:
    return {
        "messages": drained.messages, "seconds": round(drained.seconds, 3), "rate": round(drained.rate, 1),
        "first_result_s": round(drained.first_result_s, 3), "steady_rate": round(drained.steady_rate, 1),
        "peak_rss_mb": round(drained.peak_rss_mb, 1), "complete": drained.complete,
        "exit_code": drained.exit_code, "slice_rates": [round(r, 1) for r in drained.slice_rates()],
    }


if __name__ == "__main__":
    sys.exit(main())
