"""The `dbimport-worker` command line: its commands, options and exit codes."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from . import logs
from .config import Settings, load_settings, log_safe
from .errors import ConfigError, PluginError, Transient

log = logging.getLogger("dbimport.cli")

# Exit codes (sysexits.h where one fits).
EX_OK = 0  # done; also: another run holds --lock-file
EX_PROBLEMS = 1  # `check` found problems (each printed on its own line)
EX_USAGE = 2  # bad command line (argparse's own code)
EX_UNAVAILABLE = 69  # RabbitMQ or PostgreSQL unreachable at start
EX_SOFTWARE = 70  # an unexpected error; the traceback is in the log
EX_CONFIG = 78  # bad configuration, plugin, seed file, or schema not initialised

DESCRIPTION = """\
Import customer profiles into PostgreSQL from the RabbitMQ queue database_import,
answering one result per message on database_import_result.

Configuration comes from main.json (or --config, or $DBIMPORT_CONFIG), each key
overridable by an environment variable of the same name.
"""

EPILOG = """\
exit codes: 0 done, 1 check found problems, 2 usage, 69 a service unreachable at
start, 70 internal error, 78 bad configuration.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbimport-worker", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="main.json to read (default: $DBIMPORT_CONFIG, else ./main.json)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", help="consume database_import until stopped",
        description="Consume the import queue, write profiles, publish results. SIGTERM or "
        "SIGINT finishes and acks the batch in hand, then exits 0.",
    )
    run.add_argument("--until-empty", action="store_true",
                     help="exit 0 once the queue is drained (for cron and tests); give up with 69 "
                     "if a service stays unreachable for IMPORT_CONNECT_TIMEOUT_S")
    run.add_argument("--max-messages", type=positive_int, metavar="N", help="exit 0 after answering N messages")
    run.add_argument("--max-runtime", type=positive_float, metavar="S", help="exit 0 after S seconds")
    run.add_argument("--workers", type=positive_int, metavar="N", default=1,
                     help="run N worker processes under this one, which forwards SIGTERM/SIGINT "
                     "and restarts a worker that dies (default 1: work in this process)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics "
                     "(with --workers, worker i serves on PORT+i)")
    run.add_argument("--lock-file", metavar="PATH",
                     help="hold an exclusive lock on PATH; if another run holds it, exit 0 at once")

    init_db = commands.add_parser(
        "init-db", help="create the database and schema, load a seed",
        description="Create the database named in POSTGRES_DSN if missing, create or migrate the "
        "schema (idempotent), and load accounts, databases, resources and fields from --seed.",
    )
    init_db.add_argument("--seed", metavar="FILE", help="seed file (JSON) to load; loading it twice changes nothing")

    commands.add_parser(
        "check", help="check services, schema and queues",
        description="Connect to RabbitMQ and PostgreSQL, check the schema version and unique keys "
        "and the queues' arguments. Prints each problem on its own line; exits 1 if any, 69 if a "
        "service is unreachable.",
    )
    replay = commands.add_parser(
        "replay-dead", help="move dead letters back to the import queue",
        description="Move messages from IMPORT_DEAD_QUEUE back to IMPORT_QUEUE (each acked off the "
        "dead queue only after the broker confirmed the copy), resetting their failure counts so "
        "they are handled afresh. Fix the cause first: see the x-dbimport-dead-reason header.",
    )
    replay.add_argument("--max", type=positive_int, metavar="N", dest="max_messages",
                        help="move at most N messages (default: all)")
    commands.add_parser(
        "matchers", help="list the matching modes",
        description="List every matching mode with the plugin and package that provide it.",
    )
    return parser


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"dbimport-worker: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        handler = COMMANDS[args.command]
        return handler(args, settings, out)
    except (ConfigError, PluginError) as exc:
        _fatal(f"configuration error: {log_safe(str(exc), settings)}")
        return EX_CONFIG
    except Transient as exc:
        _fatal(f"service unavailable: {log_safe(str(exc), settings)}")
        return EX_UNAVAILABLE


def _fatal(message: str) -> None:
    """One line: through the log (file and stderr) once it is set up, else on stderr."""
    if logging.getLogger().handlers:
        log.error("%s", message)
    else:
        print(f"dbimport-worker: {message}", file=sys.stderr)


def cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from .worker import RunLimits, ServiceUnavailable, Worker

    logs.configure(settings)
    with _lock(args.lock_file) as held:
        if not held:
            log.info("another run holds %s; exiting", args.lock_file)
            return EX_OK
        if args.workers > 1:
            from .supervisor import Supervisor, child_command

            return Supervisor(child_command(args.argv), workers=args.workers).run()
        worker = Worker(settings)
        if args.metrics_port is not None:
            from .metrics import serve

            serve(worker.stats, args.metrics_port + _worker_slot())
        _stop_on_signals(worker.stop)
        log.info("starting: %r", settings)
        try:
            stats = worker.run(RunLimits(
                until_empty=args.until_empty, max_messages=args.max_messages, max_runtime_s=args.max_runtime
            ))
        except ServiceUnavailable as exc:
            log.error("a service stayed unreachable; giving up: %s", exc)
            return EX_UNAVAILABLE
        except (ConfigError, PluginError):
            raise
        except Exception:
            log.exception("the worker stopped on an unexpected error")
            return EX_SOFTWARE
        log.info(
            "stopped: handled=%d created=%d updated=%d errors=%d replayed=%d requeued=%d dead=%d",
            stats.handled, stats.created, stats.updated, stats.failed, stats.replayed,
            stats.requeued, stats.dead,
        )
    return EX_OK


def _worker_slot() -> int:
    """This process's slot under `run --workers` (0 when it runs alone)."""
    return int(os.environ.get("DBIMPORT_WORKER_SLOT", "0"))


@contextlib.contextmanager
def _lock(path: str | None) -> Iterator[bool]:
    """An exclusive flock on `path` (released when the process dies); True if held."""
    if path is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def _stop_on_signals(stop: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; finishing the batch in hand", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_init_db(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from .schema import create_database, migrate
    from .seed import load_seed, read_seed
    from .store import Store

    logs.configure(settings)
    seed = read_seed(args.seed) if args.seed else None
    created = create_database(settings.postgres_dsn)
    store = Store(settings.postgres_dsn, application_name="dbimport-init-db")
    try:
        applied = migrate(store)
        print(f"database: {'created' if created else 'exists'}; migrations applied: "
              f"{', '.join(map(str, applied)) or 'none (schema is current)'}", file=out)
        if seed is not None:
            changed = load_seed(store, seed)
            summary = ", ".join(f"{table} {n}" for table, n in sorted(changed.items()) if n) or "nothing new"
            print(f"seed {args.seed}: {summary}", file=out)
    finally:
        store.close()
    return EX_OK


def cmd_check(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from .checks import run_checks

    problems, unreachable = run_checks(settings)
    for line in problems:
        print(line, file=out)
    if unreachable:
        return EX_UNAVAILABLE
    if problems:
        return EX_PROBLEMS
    print("ok: services reachable, schema current, unique keys present, queues as configured", file=out)
    return EX_OK


def cmd_matchers(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from .plugins import build_registry

    registry = build_registry()
    rows = [(r.matcher.name, r.plugin, f"{r.package} {r.version}", r.matcher.description)
            for r in registry.registrations()]
    widths = [max(len(row[i]) for row in rows + [("MODE", "PLUGIN", "PACKAGE", "")]) for i in range(3)]
    print(f"{'MODE':<{widths[0]}}  {'PLUGIN':<{widths[1]}}  {'PACKAGE':<{widths[2]}}  DESCRIPTION", file=out)
    for mode, plugin, package, description in rows:
        print(f"{mode:<{widths[0]}}  {plugin:<{widths[1]}}  {package:<{widths[2]}}  {description}", file=out)
    return EX_OK


def cmd_replay_dead(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from .replay import replay_dead

    logs.configure(settings, stderr=False)
    moved = replay_dead(settings, max_messages=args.max_messages)
    print(f"replayed {moved} message(s) from {settings.dead_queue} to {settings.import_queue}", file=out)
    return EX_OK


COMMANDS = {
    "run": cmd_run,
    "init-db": cmd_init_db,
    "check": cmd_check,
    "matchers": cmd_matchers,
    "replay-dead": cmd_replay_dead,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
