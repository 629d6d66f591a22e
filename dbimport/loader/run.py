"""One load: publish every row, collect the results, write the report."""
from __future__ import annotations

import csv
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
from tqdm import tqdm

from ..broker.load_channel import Channel, Outgoing
from ..config import Settings
from ..errors import BrokerUnavailable, CannotCreate
from ..retry import reach
from .rows import (
    MessageBuilder,
    Record,
    RowError,
    count_rows,
    csv_records,
    jsonl_records,
)
from .tracking import REJECTED, UNANSWERED, UNROUTABLE, Failures, LineSet, Tally

POLL_S = 0.25
DEFAULT_BATCH = 500
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Plan:
    """What to load and how: everything the command line decided."""

    path: Path
    format: str  # "jsonl" or "csv"
    delimiter: str
    builder: MessageBuilder
    report_columns: list[str]
    batch: int = DEFAULT_BATCH
    wait: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    from_line: int = 1
    dry_run: bool = False
    progress: bool = True

    def records(self) -> Iterator[Record]:
        if self.format == "csv":
            return csv_records(self.path, self.delimiter)
        return jsonl_records(self.path)


class Load:
    """One run of the loader: publish, collect, account for every row."""

    def __init__(self, plan: Plan, settings: Settings, *, err: TextIO = sys.stderr) -> None:
        self.plan = plan
        self.settings = settings
        self.err = err
        self.run_id = f"load-{uuid.uuid4().hex[:16]}"
        self.tally = Tally()
        self.failures = Failures()
        self.outstanding = LineSet()  # published, not yet answered
        self.failed = LineSet()  # answered with an error: its text is read back for the report
        self.answered = 0  # results of this run received, one per row
        self.channel = Channel(settings, self.run_id, warn=self._warn)

    def _warn(self, text: str) -> None:
        print(f"dbimport-load: warning: {text}", file=self.err)

    def _bar(self, **kwargs: Any) -> tqdm[Any]:
        # disable=None: tqdm shows itself only when stderr is a terminal.
        return tqdm(file=self.err, unit="row", dynamic_ncols=True, disable=None if self.plan.progress else True,
                    **kwargs)

    def run(self) -> Tally:
        self.start()
        self.publish_all()
        if self.plan.wait and not self.plan.dry_run:
            self.collect()
        return self.tally

    def start(self) -> None:
        """Connect; with --wait, consume results from the start, so the queue stays short."""
        if self.plan.dry_run:
            return
        reach("RabbitMQ", self.channel.open, timeout_s=self.settings.connect_timeout_s)
        if self.plan.wait:
            self.channel.consume_results(self._on_result)

    # --- publishing -------------------------------------------------------------------

    def publish_all(self) -> None:
        plan, tally = self.plan, self.tally
        total = count_rows(plan.path, header=plan.format == "csv")
        batch: list[Outgoing] = []
        with self._bar(total=total, desc="publish") as bar:
            for record in plan.records():
                if record.line < plan.from_line:
                    bar.update(1)
                    continue
                tally.read += 1
                try:
                    batch.append(Outgoing(record.line, orjson.dumps(plan.builder.build(record))))
                except RowError as exc:
                    self._reject(record, str(exc))
                except TypeError as exc:  # a value orjson cannot write, e.g. a huge integer
                    self._reject(record, f"cannot be written as JSON: {exc}")
                if len(batch) >= plan.batch:
                    self._flush(batch)
                    bar.update(len(batch))
                    batch = []
            self._flush(batch)
            bar.update(len(batch))
            bar.total = bar.n  # quoted newlines make the byte count an upper bound

    def _reject(self, record: Record, reason: str) -> None:
        self.tally.errors[REJECTED] += 1
        feedback_id = self.plan.builder.feedback_id(record.line)
        self.failures.add(record.line, feedback_id, REJECTED, reason, record.raw())

    def _flush(self, batch: list[Outgoing]) -> None:
        if not batch:
            return
        if not self.plan.dry_run:
            if self.plan.wait:
                # Before publishing: a fast worker's result may arrive with the commit.
                for item in batch:
                    self.outstanding.add(item.line)
            try:
                returned = self.channel.publish(batch)
            except BrokerUnavailable:
                for item in batch:
                    self.outstanding.discard(item.line)
                raise
            for line in returned:
                self._unroutable(line)
        self.tally.published += len(batch)
        self.tally.committed_through = batch[-1].line

    def _unroutable(self, line: int) -> None:
        self.tally.published -= 1
        self.tally.errors[UNROUTABLE] += 1
        self.outstanding.discard(line)
        self.failed.add(line)
        text = f"returned by RabbitMQ: no queue {self.settings.import_queue!r}"
        self.failures.add(line, self.plan.builder.feedback_id(line), UNROUTABLE, text, None)

    # --- results ---------------------------------------------------------------------------

    def _on_result(self, line: int, body: bytes) -> None:
        if not self.outstanding.discard(line):
            self.tally.duplicates += 1
            return
        self.answered += 1
        try:
            result = orjson.loads(body)
            code, text, feedback_id = int(result["error"]), str(result["error_text"]), str(result["feedback_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            code, text, feedback_id = 500, f"unreadable result: {body[:200]!r}", ""
        if code == 0:
            self.tally.ok += 1
            return
        self.tally.errors[str(code)] += 1
        self.failed.add(line)
        self.failures.add(line, feedback_id, str(code), text, None)

    def collect(self) -> None:
        """Wait for this run's results until all are in or none came for `timeout_s`."""
        last_news = time.monotonic()
        with self._bar(total=self.tally.published, initial=self.answered, desc="results") as bar:
            while self.outstanding.count and time.monotonic() - last_news < self.plan.timeout_s:
                before = self.answered
                self.channel.poll(min(POLL_S, self.plan.timeout_s))
                if self.answered > before:
                    last_news = time.monotonic()
                    bar.update(self.answered - bar.n)
        self.channel.release_held(now=True)

    # --- the report ----------------------------------------------------------------------

    def finish(self, report: Path, *, stopped: str | None = None) -> int:
        """Account for unanswered rows, read back failed rows' text, write `report`.

        `stopped` says why results stopped being collected, if not the timeout.
        """
        # The second pass may outlast the heartbeat; others' held results go back now.
        self.channel.close()
        unanswered = self.outstanding.count
        if unanswered:
            self.tally.errors[UNANSWERED] += unanswered
        if self.failed.count or unanswered:
            self._read_back(stopped or f"no result within {self.plan.timeout_s:g} s of the last one")
        return write_report(report, self.failures, self.plan.report_columns, self.plan.format)

    def _read_back(self, unanswered_text: str) -> None:
        """The second pass: the original text of rows that failed after publishing."""
        pending = self.failed.count + self.outstanding.count
        for record in self.plan.records():
            if pending == 0:
                return
            if record.line in self.failed:
                self.failures.set_raw(record.line, record.raw())
                pending -= 1
            elif record.line in self.outstanding:
                try:
                    feedback_id = str(self.plan.builder.build(record)["feedback_id"])
                except RowError:
                    feedback_id = self.plan.builder.feedback_id(record.line)
                self.failures.add(record.line, feedback_id, UNANSWERED, unanswered_text, record.raw())
                pending -= 1

    def close(self) -> None:
        self.channel.close()
        self.failures.close()


def write_report(path: Path, failures: Failures, columns: list[str], fmt: str) -> int:
    """The failed rows as CSV: line, feedback_id, error, error_text, then the row itself."""
    rows = 0
    try:
        f = path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise CannotCreate(
            f"cannot write the report {str(path)!r}: {exc.strerror or exc} (choose another --report path)"
        ) from None
    with f:
        writer = csv.writer(f)
        writer.writerow(["line", "feedback_id", "error", "error_text", *columns])
        for line, feedback_id, error, error_text, raw in failures.ordered():
            original: list[Any] = []
            if raw is not None:
                original = orjson.loads(raw) if fmt == "csv" else [raw]
            writer.writerow([line, feedback_id, error, error_text, *original])
            rows += 1
    return rows


def summary(plan: Plan, tally: Tally, report: Path, report_rows: int) -> list[str]:
    """The lines printed at the end."""
    rejected = tally.errors[REJECTED]
    lines = [f"{plan.path.name}: {tally.read} rows read, {tally.published} published"
             f"{' (dry run: nothing sent)' if plan.dry_run else ''}, {rejected} rejected"]
    if plan.wait and not plan.dry_run:
        codes = {c: n for c, n in tally.errors.items() if c not in (REJECTED, UNANSWERED)}
        by_code = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) or "none"
        lines.append(f"results: {tally.ok} ok (created or updated), errors by code: {by_code}; "
                     f"{tally.errors[UNANSWERED]} unanswered")
        if tally.duplicates:
            lines.append(f"{tally.duplicates} duplicate result(s) ignored")
    elif not plan.dry_run:
        lines.append("results not collected (use --wait)")
    lines.append(f"report: {report} ({report_rows} failed row{'s' if report_rows != 1 else ''})")
    return lines
