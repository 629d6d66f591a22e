"""Big messages: the worker's peak memory and throughput on messages of ~900 KB.

It fills a queue with N valid import messages (default 1,000) of about S bytes
each (default 900 KiB, under the default IMPORT_MAX_MESSAGE_BYTES of 1 MiB),
drains it with `python -m dbimport run --until-empty` at the worker's default
settings (or --prefetch/--batch/--batch-max-bytes), sampling the worker's VmHWM
and VmRSS every 50 ms, and prints the peak RSS, msg/s and MB/s. It checks that
every message got a result with error 0 and that every profile holds its whole
object field.

Each message creates a profile by e-mail and carries most of its bytes in a
declared custom field of type `object` (HISTORY), a list of small order records
of one fixed serialised size, so the size is exact and the parsed form is
typical of real documents: many small objects, not one long string (a string
field is limited to IMPORT_MAX_STRING_CHARS; an `object` field is bounded only
by the message's size).

The bound it checks (PASS/FAIL) is the worker's documented memory bound
(docs/security.md, "Memory") once its window has adapted: baseline + the
window's bodies + 2 x BATCH_BYTES x (2 + f), with the baseline at its
documented top (80 MB), the window's bodies what WINDOW_BATCHES batches of
bytes hold of these messages (never more than IMPORT_PREFETCH of them),
BATCH_BYTES the bodies of one batch (IMPORT_BATCH_MAX_BYTES, or
IMPORT_BATCH_SIZE messages if less), and f what one of these messages takes
once parsed, per byte, measured here with tracemalloc as the documentation
measured its worst shapes (26). Over it, the worker holds more than its window
and two batches: run it at a few --prefetch and --batch-max-bytes values to
see. The worst case, with IMPORT_PREFETCH bodies in place of the window, is
printed too.

    .venv/bin/python bench/bigmessages.py
    .venv/bin/python bench/bigmessages.py --messages 200 --size 500000 --prefetch 100
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import string
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pika
import psycopg
from throughput import (
    Drain,
    Services,
    Target,
    add_service_options,
    cpu_line,
    crossing,
    declare_queues,
    delete_queues,
    drain_report,
    drain_worker,
    drop_database,
    init_database,
    load_line,
    positive,
    queue_depth,
    say,
)

from dbimport.broker.window import WINDOW_BATCHES
from dbimport.config import Settings

DEFAULT_MESSAGES = 1000
DEFAULT_SIZE = 900 * 1024
# The worker's baseline (interpreter, drivers, compiled validators): 50-80 MB in
# docs/security.md; ~50 MB on the throughput benchmark. Its top, for allocator slack.
BASE_MB = 80.0
ACCOUNT_ID = 1
DB_ID = 1
OBJECT_FIELD = "HISTORY"
SEED = {"accounts": [{
    "id": ACCOUNT_ID,
    "databases": [{"id": DB_ID, "name": "Big", "fields": [{"name": OBJECT_FIELD, "type": "object"}]}],
}]}
POOL = 20_000
# One AMQP transaction per this many messages while filling (~9 MB at the default size).
PUBLISH_TX_MESSAGES = 10
NOTE_CHARS = 40


# --- the messages ------------------------------------------------------------------


def record_pool(seed: int) -> list[dict[str, Any]]:
    """Order records that all serialise to the same length."""
    rng = random.Random(seed)
    letters = string.ascii_letters + " "
    return [
        {
            "id": f"o{i:09d}",
            "sku": f"SKU-{rng.randrange(100000):05d}",
            "qty": rng.randrange(1, 10),
            "price": f"{rng.randrange(100, 100000) / 100:09.2f}",
            "at": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T12:00:00Z",
            "note": "".join(rng.choice(letters) for _ in range(NOTE_CHARS)),
        }
        for i in range(POOL)
    ]


def envelope(position: int, orders: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "account_id": ACCOUNT_ID, "db_id": DB_ID, "feedback_id": f"big{position}", "matching": "email",
        "email": f"big{position}@bench.example",
        "data": {"_city": "Lyon", OBJECT_FIELD: {"orders": orders}},
    }


def records_per_message(pool: list[dict[str, Any]], size: int) -> int:
    """How many records bring a message to about `size` bytes (not over it)."""
    record = len(orjson.dumps(pool[0])) + 1  # with its comma
    overhead = len(orjson.dumps(envelope(10**6, [])))
    return max(1, (size - overhead) // record)


def message(position: int, pool: list[dict[str, Any]], count: int) -> bytes:
    """Message `position`: `count` records from a place of the pool of its own."""
    start = (position * 7919) % len(pool)
    orders = (pool[start:] + pool[:start])[:count] if count <= len(pool) else [
        pool[(start + i) % len(pool)] for i in range(count)
    ]
    return orjson.dumps(envelope(position, orders))


def parsed_factor(body: bytes) -> float:
    """How many times its bytes the message takes once parsed (Python objects)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parsed = orjson.loads(body)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del parsed
    return (after - before) / len(body)


# --- fill, drain, check ------------------------------------------------------------


def fill(services: Services, target: Target, n: int, pool: list[dict[str, Any]], count: int) -> tuple[int, float]:
    """Publish the N messages, persistent, one transaction per PUBLISH_TX_MESSAGES;
    returns (bytes, seconds)."""
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent)
    connection = services.amqp()
    total = 0
    started = time.monotonic()
    try:
        channel = connection.channel()
        declare_queues(channel, target)
        channel.tx_select()
        for position in range(n):
            body = message(position, pool, count)
            total += len(body)
            channel.basic_publish("", target.queue, body, properties)
            if (position + 1) % PUBLISH_TX_MESSAGES == 0:
                channel.tx_commit()
        channel.tx_commit()
        seconds = time.monotonic() - started
        depth = queue_depth(channel, target.queue)
        if depth != n:
            raise RuntimeError(f"queue {target.queue} holds {depth} messages after filling, expected {n}")
    finally:
        connection.close()
    return total, seconds


def check(services: Services, target: Target, n: int, count: int) -> list[str]:
    """One result per message, error 0, feedback ids big0..big{n-1}; n profiles, each
    with its `count` records. Consumes the result queue."""
    problems: list[str] = []
    seen: set[str] = set()
    connection = services.amqp()
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        if queue_depth(channel, target.result_queue):
            for method, _properties, body in channel.consume(target.result_queue, inactivity_timeout=5):
                if method is None:
                    break
                result = orjson.loads(body)
                if result.get("error") != 0 and len(problems) < 10:
                    problems.append(f"result {result}")
                seen.add(result.get("feedback_id", ""))
                channel.basic_ack(method.delivery_tag)
                if len(seen) >= n and channel.get_waiting_message_count() == 0:
                    break
            channel.cancel()
        dead = queue_depth(channel, target.dead_queue)
    finally:
        connection.close()
    missing = n - len(seen & {f"big{i}" for i in range(n)})
    if missing:
        problems.append(f"{missing} messages got no result")
    if dead:
        problems.append(f"{dead} messages in the dead-letter queue")
    with psycopg.connect(services.dsn(target.database)) as conn:
        profiles, complete = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE jsonb_array_length(fields->%s->'orders') = %s) "
            "FROM profiles WHERE db_id = %s",
            (OBJECT_FIELD, count, DB_ID),
        ).fetchone() or (0, 0)
    if profiles != n or complete != n:
        problems.append(f"{profiles} profiles, {complete} with all {count} records; expected {n}")
    return problems


def rss_at_tenths(drained: Drain) -> list[float]:
    """VmRSS (MB) when each further 10% of the results had arrived."""
    values = []
    for k in range(1, 11):
        when = crossing(drained.samples, drained.messages * k / 10)
        before = [kb for t, kb in drained.rss_samples if t <= when]
        values.append((before[-1] if before else 0) / 1024)
    return values


# --- the run -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(description="Drain N messages of ~S bytes with the worker: peak RSS, msg/s, MB/s.")
    parser.add_argument("--messages", type=positive, default=DEFAULT_MESSAGES, metavar="N",
                        help=f"messages (default {DEFAULT_MESSAGES})")
    parser.add_argument("--size", type=positive, default=DEFAULT_SIZE, metavar="BYTES",
                        help=f"bytes per message, about (default {DEFAULT_SIZE}); keep it under "
                        f"IMPORT_MAX_MESSAGE_BYTES ({defaults.max_message_bytes}) for the messages to be valid")
    parser.add_argument("--prefetch", type=positive, default=defaults.prefetch,
                        help=f"IMPORT_PREFETCH (default: the worker's, {defaults.prefetch})")
    parser.add_argument("--batch", type=positive, default=defaults.batch_size,
                        help=f"IMPORT_BATCH_SIZE (default: the worker's, {defaults.batch_size})")
    parser.add_argument("--batch-max-bytes", type=positive, default=defaults.batch_max_bytes,
                        help=f"IMPORT_BATCH_MAX_BYTES (default: the worker's, {defaults.batch_max_bytes})")
    parser.add_argument("--rss-bound", type=float, metavar="MB",
                        help="the RSS bound to check, in MB (default: the batch bound, "
                        "80 + 2 x BATCH_BYTES x (1 + f), see the module's text)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database, queues and the worker's log")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    add_service_options(parser)
    args = parser.parse_args(argv)
    if args.batch > args.prefetch:
        parser.error(f"--batch ({args.batch}) must not exceed --prefetch ({args.prefetch})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    services = Services(args.admin_dsn, args.amqp_host, args.amqp_port)
    run_id = uuid.uuid4().hex[:8]
    target = Target.named(run_id, "big")
    workdir = Path(tempfile.mkdtemp(prefix=f"dbimport-bigmessages-{run_id}-"))
    try:
        return run(args, services, target, workdir)
    finally:
        if args.keep:
            say(f"{'kept:':<8} database {target.database}; queues {', '.join(target.queues)}; log in {workdir}")
        else:
            drop_database(services, target.database)
            delete_queues(services, [target])
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, services: Services, target: Target, workdir: Path) -> int:
    n = args.messages
    say(load_line("start"))
    load_start = os.getloadavg()
    pool = record_pool(args.seed)
    count = records_per_message(pool, args.size)
    sample = message(0, pool, count)
    factor = parsed_factor(sample)
    mib = 1024 * 1024
    per_batch = max(1, min(args.batch, args.batch_max_bytes // len(sample)))
    batch_mb = per_batch * len(sample) / mib
    prefetch_mb = min(args.prefetch, n) * len(sample) / mib
    window = max(1, min(args.prefetch, WINDOW_BATCHES * args.batch_max_bytes // len(sample)))
    window_mb = min(window, n) * len(sample) / mib
    batches_mb = 2 * batch_mb * (2 + factor)
    batch_bound_mb = BASE_MB + window_mb + batches_mb
    bound_mb = args.rss_bound if args.rss_bound is not None else batch_bound_mb
    say(f"{'stream:':<8} {n} messages of {len(sample)} bytes ({count} order records in the object field "
        f"{OBJECT_FIELD}); parsed, one takes {factor:.1f}x its bytes")
    say(f"{'bounds:':<8} a batch holds {per_batch} of them, {batch_mb:.0f} MB (IMPORT_BATCH_MAX_BYTES "
        f"{args.batch_max_bytes}, IMPORT_BATCH_SIZE {args.batch}); the window holds {window} of them, "
        f"{window_mb:.0f} MB; the prefetch ({args.prefetch}) could hold {prefetch_mb:.0f} MB")

    init_database(services, target, workdir, seed_content=SEED)
    total, seconds = fill(services, target, n, pool, count)
    say(f"{'fill:':<8} {n} msgs, {total / mib:.0f} MB in {seconds:.1f} s = {n / seconds:.0f} msg/s, "
        f"{total / mib / seconds:.0f} MB/s (persistent, a transaction per {PUBLISH_TX_MESSAGES})")

    drained = drain_worker(
        services, target, messages=n, prefetch=args.prefetch, batch=args.batch, workdir=workdir,
        env={"IMPORT_BATCH_MAX_BYTES": str(args.batch_max_bytes)},
    )
    mb_s = total / mib / drained.seconds if drained.seconds > 0 else 0.0
    status = "" if drained.complete else f"  INCOMPLETE (exit {drained.exit_code})"
    say(f"{'worker:':<8} {n} msgs in {drained.seconds:.1f} s = {drained.rate:.1f} msg/s, {mb_s:.1f} MB/s, "
        f"peak RSS {drained.peak_rss_mb:.0f} MB (prefetch {args.prefetch}, batch {args.batch}, "
        f"batch max bytes {args.batch_max_bytes}){status}")
    say(cpu_line("worker", drained))
    tenths = rss_at_tenths(drained)
    say(f"{'rss:':<8} VmRSS (MB) when each further 10% of the results had arrived: "
        + " ".join(f"{v:.0f}" for v in tenths))
    problems = check(services, target, n, count)
    state = "OK" if not problems else f"FAIL ({len(problems)} problems)"
    say(f"{'check:':<8} {n} results with error 0 and {n} profiles, each with all {count} records: {state}")
    for problem in problems:
        say(f"         {problem}")
    if not drained.complete:
        say(f"         the worker exited {drained.exit_code}; its output ends with:\n{drained.log_tail}")
    rss_pass = drained.peak_rss_mb <= bound_mb
    documented_mb = BASE_MB + prefetch_mb + batches_mb
    how = "given" if args.rss_bound is not None else (
        f"{BASE_MB:g} + {window_mb:.0f} MB window + 2 x {batch_mb:.0f} MB x (2 + {factor:.1f})")
    say(f"{'memory:':<8} peak RSS {drained.peak_rss_mb:.0f} MB, bound {bound_mb:.0f} MB ({how}): "
        f"{'PASS' if rss_pass else 'FAIL'}")
    say(f"{'memory:':<8} the worst case, the prefetch's bodies in place of the window ({min(args.prefetch, n)} x "
        f"{len(sample) / mib:.2f} MB): {documented_mb:.0f} MB: {'PASS' if drained.peak_rss_mb <= documented_mb else 'FAIL'}")
    say(load_line("end"))
    ok = drained.complete and not problems
    if args.json:
        print(orjson.dumps({
            "messages": n, "message_bytes": len(sample), "records": count, "parsed_factor": round(factor, 2),
            "prefetch": args.prefetch, "batch": args.batch, "batch_max_bytes": args.batch_max_bytes,
            "fill": {"bytes": total, "seconds": seconds},
            "seconds": round(drained.seconds, 3), "rate": round(drained.rate, 2), "mb_per_s": round(mb_s, 2),
            "peak_rss_mb": round(drained.peak_rss_mb, 1), "rss_mb_at_tenths": [round(v, 1) for v in tenths],
            "rss_bound_mb": round(bound_mb, 1), "rss_pass": rss_pass, "documented_bound_mb": round(documented_mb, 1),
            "complete": drained.complete,
            "cpu": drain_report(drained).get("cpu"), "problems": problems, "load_start": load_start, "load_end": os.getloadavg(), "ok": ok,
        }).decode(), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
