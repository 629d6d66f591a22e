"""The `dbimport-worker` command line: its commands, options and exit codes."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import logs
from .config import Settings, load
from .errors import CannotCreate, ExitCode, Fatal

log = logging.getLogger("dbimport.cli")

PROG = "dbimport-worker"

DESCRIPTION = """\
Import customer profiles into PostgreSQL from the RabbitMQ queue database_import,
answering one result per message on database_import_result.

Configuration comes from main.json (or --config, or $DBIMPORT_CONFIG), each key
overridable by an environment variable of the same name.
"""

EPILOG = """\
exit codes: 0 done, 1 check found problems, 2 usage, 69 a service unreachable at
start, 70 internal error, 73 a file or port it must create cannot be had, 77 a
service refuses the credentials or access, 78 bad configuration. Each failure at
start is one line naming the cause and the fix (docs/operations.md, Troubleshooting).
"""


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--work 2` is refused rather than taken for `--workers 2`.
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH",
                        help="main.json to read (default: $DBIMPORT_CONFIG, else ./main.json)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", help="consume database_import until stopped", allow_abbrev=False,
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
    _add_host_options(run)

    init_db = commands.add_parser(
        "init-db", help="create the database, schema and queues, load a seed", allow_abbrev=False,
        description="Create the database named in POSTGRES_DSN if missing, create or migrate the "
        "schema (idempotent), declare the three queues (so that messages published before the "
        "first run are kept), and load accounts, databases, resources and fields from --seed.",
    )
    init_db.add_argument("--seed", metavar="FILE", help="seed file (JSON) to load; loading it twice changes nothing")

    check = commands.add_parser(
        "check", help="check services, schema, queues, log, lock and port", allow_abbrev=False,
        description="Connect to RabbitMQ and PostgreSQL, check the schema version and unique keys, "
        "the queues and their arguments, that the job log is writable and, when given, that the "
        "lock file can be created and the metrics port is free. Prints each problem on its own "
        "line; exits 1 if any, 69 if a service is unreachable, 77 or 78 if one refuses us.",
    )
    _add_host_options(check)
    replay = commands.add_parser(
        "replay-dead", help="move dead letters back to the import queue", allow_abbrev=False,
        description="Move messages from IMPORT_DEAD_QUEUE back to IMPORT_QUEUE (each acked off the "
        "dead queue only after the broker confirmed the copy), resetting their failure counts so "
        "they are handled afresh. Fix the cause first: see the x-dbimport-dead-reason header.",
    )
    replay.add_argument("--max", type=positive_int, metavar="N", dest="max_messages",
                        help="move at most N messages (default: all)")
    commands.add_parser(
        "matchers", help="list the matching modes", allow_abbrev=False,
        description="List every matching mode with the plugin and package that provide it.",
    )
    return parser


def _add_host_options(parser: argparse.ArgumentParser) -> None:
    """What the worker needs of its host besides the services: `run` uses, `check` checks."""
    parser.add_argument("--metrics-port", type=port_number, metavar="PORT",
                        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics "
                        "(with --workers, worker i serves on PORT+i)")
    parser.add_argument("--lock-file", metavar="PATH",
                        help="hold an exclusive lock on PATH; if another run holds it, exit 0 at once")


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


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("must be at most 65535")
    return value


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    settings: Settings | None = None
    try:
        loaded = load(args.config)
        settings = loaded.settings
        return int(COMMANDS[args.command](args, settings, out, loaded.warnings))
    except Fatal as exc:
        logs.fatal(PROG, exc.text, settings, config_path=args.config)
        return int(exc.exit_code)
    except Exception as exc:
        # A bug: the traceback goes to the log, one line to the terminal.
        logs.internal_error(PROG, exc, settings, config_path=args.config)
        return int(ExitCode.SOFTWARE)


Command = Callable[[argparse.Namespace, Settings, TextIO, Sequence[str]], int]


def cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO, warnings: Sequence[str]) -> int:
    from .worker import RunLimits, Worker

    logs.configure(settings)
    logs.warn_all(warnings)
    with _lock(args.lock_file) as held:
        if not held:
            log.info("another run holds %s; exiting", args.lock_file)
            return ExitCode.OK
        if args.workers > 1:
            from .supervisor import Supervisor, child_command

            return Supervisor(child_command(args), workers=args.workers).run()
        worker = Worker(settings)
        if args.metrics_port is not None:
            from .metrics import serve

            serve(worker.stats, args.metrics_port + _worker_slot())
        _stop_on_signals(worker.stop)
        log.info("starting: %r", settings)
        stats = worker.run(RunLimits(
            until_empty=args.until_empty, max_messages=args.max_messages, max_runtime_s=args.max_runtime
        ))
        log.info(
            "stopped: handled=%d created=%d updated=%d errors=%d replayed=%d requeued=%d dead=%d",
            stats.handled, stats.created, stats.updated, stats.failed, stats.replayed,
            stats.requeued, stats.dead,
        )
    return ExitCode.OK


def _worker_slot() -> int:
    """This process's slot under `run --workers` (0 when it runs alone)."""
    return int(os.environ.get("DBIMPORT_WORKER_SLOT", "0"))


@contextlib.contextmanager
def _lock(path: str | None) -> Iterator[bool]:
    """An exclusive flock on `path` (released when the process dies); True if held."""
    if path is None:
        yield True
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CannotCreate(lock_problem(path, exc)) from None
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


def lock_problem(path: str, exc: OSError) -> str:
    folder = Path(path).parent
    fix = (f"create the directory {str(folder)!r}" if not folder.is_dir()
           else "choose a writable path, or fix the directory's permissions")
    return f"cannot create the lock file {path!r}: {exc.strerror or exc} ({fix}, or change --lock-file)"


def _stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; finishing the batch in hand", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_init_db(args: argparse.Namespace, settings: Settings, out: TextIO, warnings: Sequence[str]) -> int:
    from .broker import declare_all, open_connection
    from .migrations import create_database, migrate
    from .retry import reach
    from .seed import load_seed, read_seed
    from .store import Store

    logs.configure(settings)
    logs.warn_all(warnings)
    seed = read_seed(args.seed) if args.seed else None
    timeout_s = settings.connect_timeout_s
    created = reach("PostgreSQL", lambda: create_database(settings.postgres_dsn), timeout_s=timeout_s)
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
    connection, _ = reach("RabbitMQ", lambda: open_connection(settings, name="dbimport-init-db"), timeout_s=timeout_s)
    try:
        declare_all(connection, settings)
    finally:
        connection.close()
    print(f"queues: {settings.import_queue}, {settings.result_queue}, {settings.dead_queue} declared", file=out)
    return ExitCode.OK


def cmd_check(args: argparse.Namespace, settings: Settings, out: TextIO, warnings: Sequence[str]) -> int:
    from .checks import run_checks

    for warning in warnings:
        print(f"warning: {warning}", file=out)
    report = run_checks(settings, lock_file=args.lock_file, metrics_port=args.metrics_port)
    for line in report.problems:
        print(line, file=out)
    if report.exit_code != ExitCode.OK:
        return report.exit_code
    print("ok: services reachable, schema current, unique keys present, queues as configured, "
          "log writable", file=out)
    return ExitCode.OK


def cmd_matchers(args: argparse.Namespace, settings: Settings, out: TextIO, warnings: Sequence[str]) -> int:
    from .plugins import build_registry

    registry = build_registry()
    rows = [(r.matcher.name, r.plugin, f"{r.package} {r.version}", r.matcher.description)
            for r in registry.registrations()]
    widths = [max(len(row[i]) for row in [*rows, ("MODE", "PLUGIN", "PACKAGE", "")]) for i in range(3)]
    print(f"{'MODE':<{widths[0]}}  {'PLUGIN':<{widths[1]}}  {'PACKAGE':<{widths[2]}}  DESCRIPTION", file=out)
    for mode, plugin, package, description in rows:
        print(f"{mode:<{widths[0]}}  {plugin:<{widths[1]}}  {package:<{widths[2]}}  {description}", file=out)
    return ExitCode.OK


def cmd_replay_dead(args: argparse.Namespace, settings: Settings, out: TextIO, warnings: Sequence[str]) -> int:
    from .replay import replay_dead

    logs.configure(settings, stderr=False)
    logs.warn_all(warnings)
    moved = replay_dead(settings, max_messages=args.max_messages)
    print(f"replayed {moved} message(s) from {settings.dead_queue} to {settings.import_queue}", file=out)
    return ExitCode.OK


COMMANDS: dict[str, Command] = {
    "run": cmd_run,
    "init-db": cmd_init_db,
    "check": cmd_check,
    "matchers": cmd_matchers,
    "replay-dead": cmd_replay_dead,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
