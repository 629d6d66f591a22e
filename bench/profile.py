"""Where the worker's time goes: a sampling profile of one drain, by stage, per message.

It fills a queue with the benchmark's stream (bench/throughput.py), drains it with
`python -m dbimport run --until-empty` under py-spy (wall-clock samples of every
thread, idle ones included), and sorts each sample into its thread (the main
thread, which receives, prepares and settles, or the database thread, which
applies) and the stage its stack is in. It prints microseconds per message for
each stage and thread: a thread's total is the drain's wall time, and the
thread with the least waiting is the one that sets the pace. Then, from a second, in-process
drain of a smaller stream with psycopg's `execute` counted, the SQL statements and
round trips per batch.

    .venv/bin/python bench/profile.py --messages 50000 --modes email

py-spy must be installed in the virtualenv (`pip install py-spy`); it reads the
process with ptrace (root, or `kernel.yama.ptrace_scope=0`).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from throughput import (
    MODES,
    Services,
    Target,
    add_modes_option,
    add_service_options,
    clean_env,
    drop_database,
    fill,
    init_database,
    positive,
    worker_env,
)

SAMPLE_RATE_HZ = 250
# The stages, in the order they are checked against a sample's stack (outermost
# frames first): the first whose marker is in the stack takes the sample.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("settle: AMQP transaction commit (tx.commit round trip)", ("BlockingChannel.tx_commit (",)),
    ("settle: building and publishing results", ("Worker.settle (",)),
    ("database: commit", ("Transaction.__exit__ (psycopg", "_commit_gen (psycopg")),
    ("database: SQL round trips and server time", ("(psycopg/",)),
    ("matching: look-ups (Python side)", ("find_many (",)),
    ("building the writes (Python side)", ("apply_batch (dbimport/writer.py",)),
    ("decode and validate", ("parse (dbimport/message.py", "check_limits (dbimport/message.py",
                             "MessageValidator.validate (")),
    ("matching: prepare and data checks", ("Pipeline.prepare (",)),
    ("main thread: waiting for the database thread", ("Worker._result (",)),
    ("waiting for deliveries", ("Broker.fetch (", "Broker.pump (")),
    ("start-up and shut-down", ("Worker._connect (", "Worker._shutdown (", "<module> (dbimport/cli.py",
                                "_find_and_load", "exec_module")),
]


def stage_of(stack: str) -> str:
    for name, markers in STAGES:
        if any(marker in stack for marker in markers):
            return name
    return "the rest"


def run_profiled(command: Sequence[str], env: dict[str, str], out: Path, *, idle: bool = True) -> int:
    """`command` under py-spy, raw folded stacks to `out`; its exit code. Without
    `idle`, only samples of a thread on a CPU are kept."""
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    done = subprocess.run(
        [pyspy, "record", "--rate", str(SAMPLE_RATE_HZ), *(["--idle"] if idle else []), "--format", "raw",
         "--output", str(out), "--nonblocking", "--", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
    return done.returncode


# A frame of the database thread's stacks (a ThreadPoolExecutor's worker).
DATABASE_THREAD = "(concurrent/futures/thread.py"
THREADS = ("main", "database")


def stages(raw: Path) -> dict[str, collections.Counter[str]]:
    """Samples by thread and stage, from py-spy's raw output (`frame;frame;... count` a line)."""
    counts: dict[str, collections.Counter[str]] = {thread: collections.Counter() for thread in THREADS}
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            thread = "database" if DATABASE_THREAD in stack else "main"
            counts[thread][stage_of(stack)] += int(number)
    return counts


@contextmanager
def counted_sql() -> Iterator[dict[str, int]]:
    """Count psycopg's statements and round trips while the block runs in-process."""
    import psycopg

    counts: dict[str, Any] = {"statements": 0, "round_trips": 0, "seconds": collections.Counter()}
    real_execute = psycopg.Connection.execute
    real_pipeline = psycopg.Connection.pipeline
    real_commit = psycopg.Transaction.__exit__
    depth = [0]

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        counts["statements"] += 1
        if not depth[0]:
            counts["round_trips"] += 1
        started = time.perf_counter()
        try:
            return real_execute(self, query, *args, **kwargs)
        finally:
            if not depth[0]:  # inside a pipeline, the time is the pipeline's
                counts["seconds"][statement_name(query)] += time.perf_counter() - started

    @contextmanager
    def pipeline(self: Any) -> Iterator[Any]:
        depth[0] += 1
        started = time.perf_counter()
        try:
            with real_pipeline(self) as p:
                yield p
        finally:
            depth[0] -= 1
            if not depth[0]:
                counts["round_trips"] += 1
                counts["seconds"]["a pipeline (the segment's writes)"] += time.perf_counter() - started

    def commit(self: Any, *args: Any) -> Any:
        counts["round_trips"] += 1  # COMMIT (or ROLLBACK)
        started = time.perf_counter()
        try:
            return real_commit(self, *args)
        finally:
            counts["seconds"]["COMMIT"] += time.perf_counter() - started

    psycopg.Connection.execute = execute  # type: ignore[method-assign]
    psycopg.Connection.pipeline = pipeline  # type: ignore[method-assign,assignment]
    psycopg.Transaction.__exit__ = commit  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        psycopg.Connection.execute = real_execute  # type: ignore[method-assign]
        psycopg.Connection.pipeline = real_pipeline  # type: ignore[method-assign]
        psycopg.Transaction.__exit__ = real_commit  # type: ignore[method-assign]


def statement_name(query: Any) -> str:
    """A statement's first words and its table: enough to tell the batch's statements apart."""
    text = query.decode() if isinstance(query, bytes) else str(query)
    words = " ".join(text.split())
    for table in ("message_log", "match_claims", "profiles", "subscriptions", "events", "delivery_failures"):
        if table in words:
            return f"{words.split()[0]} ... {table}" + (" (look-up)" if words.startswith("SELECT") else "")
    return " ".join(words.split()[:3])


def sql_per_batch(services: Services, target: Target, env: dict[str, str]) -> tuple[dict[str, int], int, int]:
    """Drain `target` in this process with the SQL counted: (counts, batches, messages)."""
    import os

    from dbimport.config import load_settings
    from dbimport.worker import RunLimits, Worker

    os.environ.update(env)
    settings = load_settings(None)
    with counted_sql() as counts:
        worker = Worker(settings)
        stats = worker.run(RunLimits(until_empty=True))
    return counts, stats.batches, stats.handled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=positive, default=50_000, metavar="N")
    parser.add_argument("--sql-messages", type=positive, default=5_000, metavar="M",
                        help="messages of the in-process drain that counts SQL statements (default 5000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefetch", type=positive, default=None)
    parser.add_argument("--batch", type=positive, default=None)
    parser.add_argument("--actions", type=float, default=0.0, metavar="F",
                        help="the share of messages that also carry field actions, as throughput.py --actions")
    parser.add_argument("--cpu", action="store_true",
                        help="keep only samples of a thread on a CPU: where the worker's CPU goes, not its time")
    parser.add_argument("--raw", type=Path, default=None, metavar="FILE",
                        help="also keep py-spy's folded stacks in FILE (for a flame graph or a closer look)")
    add_modes_option(parser)
    add_service_options(parser)
    args = parser.parse_args(argv)
    modes = args.modes if args.modes else MODES
    services = Services(args.admin_dsn, args.amqp_host, args.amqp_port)
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"dbimport-profile-{run_id}-"))
    targets = [Target.named(run_id, "profiled"), Target.named(run_id, "counted")]
    from dbimport.config import Settings

    defaults = Settings()
    prefetch = args.prefetch or defaults.prefetch
    batch = args.batch or defaults.batch_size
    try:
        for target in targets:
            init_database(services, target, workdir)
        fill(services, [(targets[0], args.messages), (targets[1], args.sql_messages)], args.seed, modes,
             actions={target.label: args.actions for target in targets})
        env = worker_env(services, targets[0], prefetch=prefetch, batch=batch, workdir=workdir)
        raw = workdir / "profile.txt"
        started = time.monotonic()
        code = run_profiled([sys.executable, "-m", "dbimport", "run", "--until-empty"], env, raw, idle=not args.cpu)
        seconds = time.monotonic() - started
        if code != 0:
            print(f"the profiled worker exited {code}")
            return 1
        counts = stages(raw)
        if args.raw is not None:
            shutil.copyfile(raw, args.raw)
        print(f"profile: {args.messages} messages ({'/'.join(modes)}"
              + (f", a share {args.actions} with field actions" if args.actions else "") + f"), prefetch {prefetch}, batch {batch}: "
              f"{seconds:.1f} s = {args.messages / seconds:.0f} msg/s under py-spy at {SAMPLE_RATE_HZ} Hz "
              + ("(on-CPU samples of each thread)" if args.cpu
                 else "(wall-clock samples of each thread, waiting included)"))
        print(f"{'stage':<58} " + " ".join(f"{thread + ' µs/msg':>17}" for thread in THREADS))
        for name, _ in [*STAGES, ("the rest", ())]:
            if any(counts[thread].get(name) for thread in THREADS):
                print(f"{name:<58} " + " ".join(
                    f"{1e6 * counts[thread].get(name, 0) / SAMPLE_RATE_HZ / args.messages:17.1f}"
                    for thread in THREADS))
        print(f"{'all samples':<58} " + " ".join(
            f"{1e6 * sum(counts[thread].values()) / SAMPLE_RATE_HZ / args.messages:17.1f}" for thread in THREADS))

        counted_env = worker_env(services, targets[1], prefetch=prefetch, batch=batch, workdir=workdir)
        sql, batches, handled = sql_per_batch(services, targets[1], clean_env(**counted_env))
        print(f"sql:     {handled} messages in {batches} batches: {sql['statements'] / batches:.1f} statements "
              f"and {sql['round_trips'] / batches:.1f} round trips a batch (commit included), "
              f"{sql['statements'] / handled:.3f} statements a message")
        print("sql:     wall time by statement (round trip and server), µs a message:")
        for name, seconds in sql["seconds"].most_common(12):
            print(f"           {1e6 * seconds / handled:7.1f}  {name}")
    finally:
        for target in targets:
            drop_database(services, target.database)
        from throughput import delete_queues

        delete_queues(services, targets)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
