"""The `dbimport-load` command line: options, plan, exit codes."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..checks import writable
from ..cli import positive_float, positive_int
from ..config import Settings, load
from ..errors import BrokerUnavailable, CannotCreate, ExitCode, Fatal
from .rows import (
    MessageBuilder,
    RowError,
    UsageError,
    csv_builder,
    csv_cell,
    parse_map,
    parse_target,
    read_csv_header,
)
from .run import DEFAULT_BATCH, DEFAULT_TIMEOUT_S, Load, Plan, summary

# The worker's exit codes (dbimport.errors.ExitCode): 0 every row published (and, with
# --wait, answered with error 0); 1 some row was rejected, answered with an error, or
# unanswered; 2 a bad command line or an unreadable FILE; 69 RabbitMQ unreachable;
# 70 an internal error; 73 the report cannot be written; 77 RabbitMQ refuses the
# credentials; 78 bad configuration. And the shell's own for Ctrl-C:
INTERRUPTED = 130

DESCRIPTION = """\
Publish one import message per row of FILE to IMPORT_QUEUE (database_import).

FILE is JSONL (.jsonl, .ndjson: one JSON object a line) or CSV (.csv, with a header
line). A JSONL line with a "data" key is a whole message; any other JSONL line, and
every CSV row, is mapped by --map target=column (default: the keys or headers as
they are). Targets that are message keys (email, phone, profile_id, field_name,
field_value, feedback_id, ...) go to the message; any other target is a data field.
The options --account-id, --db-id, ..., --set are defaults that a row's own values override.
"""

EPILOG = """\
examples:
  dbimport-load people.csv --account-id 1 --db-id 1 --map 'email=E-mail,_fname=First Name' --wait
  dbimport-load export.jsonl --account-id 1 --db-id 1 --matching custom --wait --report failed.csv

exit codes: 0 every row published (with --wait: and answered with error 0), 1 some row
failed (rejected, answered with an error, or unanswered), 2 usage or FILE unreadable,
69 RabbitMQ unreachable, 70 internal error, 73 the report cannot be written, 77 RabbitMQ
refuses the credentials, 78 bad configuration, 130 interrupted (Ctrl-C).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbimport-load", description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", type=Path, help="the JSONL or CSV file to load")
    p.add_argument("--format", choices=("jsonl", "csv"), help="file format (default: from the extension)")
    p.add_argument("--map", action="append", default=[], metavar="TARGET=COLUMN,...",
                   help="map columns (or JSONL keys) to message keys or data fields; TARGET:json "
                   "parses the cell as JSON; repeatable")
    p.add_argument("--set", action="append", default=[], metavar="TARGET=VALUE",
                   help="a value for every row (a message key or data field, e.g. field_name=CRM_ID); "
                   "TARGET:json parses VALUE as JSON; a row's own value wins; repeatable")
    p.add_argument("--delimiter", default=",", metavar="CHAR", help="CSV delimiter (default ,)")
    p.add_argument("--account-id", type=positive_int, metavar="N", help="account_id of every row")
    p.add_argument("--db-id", type=positive_int, metavar="N", help="db_id of every row")
    p.add_argument("--matching", metavar="MODE", help="matching mode (default: the worker's, email)")
    p.add_argument("--update-only", action="store_true", help="never create profiles")
    p.add_argument("--skip-triggers", action="store_true", help="record no trigger events")
    p.add_argument("--skip-invalid-subscriptions", action="store_true",
                   help="leave invalid subscriptions out (named in the result) instead of refusing the row")
    p.add_argument("--resource-id", type=positive_int, metavar="N", help="resource_id of every row")
    p.add_argument("--config", metavar="PATH", help="main.json to read (default: $DBIMPORT_CONFIG, else ./main.json)")
    p.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH, metavar="N",
                   help=f"messages per confirmed (committed) batch (default {DEFAULT_BATCH})")
    p.add_argument("--wait", action="store_true", help="collect this run's results, print a summary")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"with --wait: stop when no result came for S seconds (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="failed rows as CSV (default: FILE's name + .report.csv, in the current folder)")
    p.add_argument("--from-line", type=positive_int, default=1, metavar="N",
                   help="skip rows before line N (to resume an interrupted load)")
    p.add_argument("--dry-run", action="store_true", help="read and check every row, publish nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise UsageError(f"cannot tell the format of {path.name!r} from its extension: give --format jsonl or csv")


def cli_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The builder's defaults: message keys, and data fields under "default_data"."""
    message: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for text in args.set:
        name, equals, value = text.partition("=")
        if not equals:
            raise UsageError(f"--set: {text!r} is not target=value")
        target = parse_target(name.strip())
        try:
            (message if target.in_message else data)[target.name] = csv_cell(target, value)
        except RowError as exc:
            raise UsageError(f"--set: {exc}") from None
    for key in ("account_id", "db_id", "matching", "resource_id"):
        if getattr(args, key) is not None:
            message[key] = getattr(args, key)
    for key in ("update_only", "skip_triggers", "skip_invalid_subscriptions"):
        if getattr(args, key):
            message[key] = True
    return {"defaults": message, "default_data": data}


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan for `args`; UsageError or OSError if it cannot work."""
    fmt = file_format(args.file, args.format)
    if len(args.delimiter) != 1:
        raise UsageError("--delimiter must be one character")
    pairs = parse_map(args.map)
    common = dict(cli_defaults(args), feedback_name=args.file.name)
    with args.file.open("rb"):
        pass  # unreadable: OSError now, not after connecting
    if fmt == "csv":
        header = read_csv_header(args.file, args.delimiter)
        builder = csv_builder(header, pairs, **common)
        columns = header
    else:
        builder = MessageBuilder(pairs=pairs, **common)
        columns = ["row"]
    return Plan(
        path=args.file, format=fmt, delimiter=args.delimiter, builder=builder, report_columns=columns,
        batch=args.batch, wait=args.wait, timeout_s=args.timeout, from_line=args.from_line,
        dry_run=args.dry_run, progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args)
    except UsageError as exc:
        print(f"dbimport-load: {exc}", file=err)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"dbimport-load: cannot read {args.file}: {exc.strerror or exc}", file=err)
        return ExitCode.USAGE
    try:
        loaded = load(args.config)
        for warning in loaded.warnings:
            print(f"dbimport-load: warning: {warning}", file=err)
        report = args.report or Path(f"{args.file.name}.report.csv")
        unwritable = writable(str(report))
        if unwritable and not plan.dry_run:
            raise CannotCreate(f"cannot write the report {str(report)!r}: {unwritable} (choose another --report path)")
        return execute(plan, loaded.settings, report, out=out, err=err)
    except Fatal as exc:
        print(f"dbimport-load: {exc.text}", file=err)
        return exc.exit_code
    except Exception as exc:
        print(f"dbimport-load: internal error: {type(exc).__name__}: {exc}", file=err)
        return ExitCode.SOFTWARE


def execute(plan: Plan, settings: Settings, report: Path, *, out: TextIO, err: TextIO) -> int:
    """Run the load, write the report, print the summary; the exit code."""
    load_ = Load(plan, settings, err=err)
    code, stopped = int(ExitCode.OK), None
    try:
        try:
            load_.run()
        except BrokerUnavailable as exc:
            print(f"dbimport-load: {exc}", file=err)
            if not load_.tally.read:
                return ExitCode.UNAVAILABLE  # unreachable at start: nothing to report
            code, stopped = ExitCode.UNAVAILABLE, "not collected: the connection to RabbitMQ was lost"
        except KeyboardInterrupt:
            print("dbimport-load: interrupted", file=err)
            code, stopped = INTERRUPTED, "not collected: interrupted"
        if code != ExitCode.OK and load_.tally.read:
            # What is in the queue is committed; the rest can be sent again from here.
            print(f"dbimport-load: committed through line {load_.tally.committed_through}; resume with "
                  f"--from-line {load_.tally.committed_through + 1}", file=err)
        rows = load_.finish(report, stopped=stopped)
        for line in summary(plan, load_.tally, report, rows):
            print(line, file=out)
    finally:
        load_.close()
    if code == ExitCode.OK and load_.tally.failed:
        code = ExitCode.PROBLEMS
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
