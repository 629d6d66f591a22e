"""The bulk loader `dbimport-load`: a JSONL or CSV file in, one import message per row out.

It streams the file, turns each row into a message (docs/contract.md), publishes it to
IMPORT_QUEUE and, with `--wait`, collects this run's results from
IMPORT_RESULT_QUEUE, prints a summary and writes a report of the failed rows.
The usage guide is docs/loader.md.

Publishing: one AMQP transaction per batch (`tx_select`, N publishes, `tx_commit`),
on a BlockingConnection. RabbitMQ takes responsibility for a transaction's
persistent messages, durably, at commit ("Broker Semantics" in its docs), so a
committed batch is as safe as a confirmed one, and unroutable returns arrive
before commit-ok. Measured on the 2-core test machine with persistent ~200-byte messages
(see docs/loader.md for the figures): BlockingChannel in confirm mode waits for
each message's ack, ~1,000-1,800 msg/s; a transaction per 500-1,000 messages,
~8,000-12,000 msg/s; asynchronous confirms on a SelectConnection with a window of
1,000 unconfirmed, ~10,000-13,000 msg/s, i.e. up to a third faster but a callback
state machine for publishing and collecting alike. The broker is the bottleneck
(the client spends 25-40 % of the wall time on CPU) and the workers answer more
slowly than either method publishes, so the simpler transactional loop wins;
it is also how the worker publishes its results.

Memory stays bounded for any file size: rows are streamed and dropped once
published; `--wait` keeps one bit per line (`LineSet`) for the rows still
unanswered and for those that failed; failed rows go to a temporary on-disk
SQLite table, and their original text is read back from the file in a second
pass only to write the report.
"""
from __future__ import annotations

from ..broker.load_channel import Channel
from .cli import build_parser, execute, main, make_plan
from .rows import UsageError, count_rows, parse_map
from .run import Load, Plan, summary
from .tracking import LineSet

__all__ = [
    "Channel", "LineSet", "Load",
    "Plan", "UsageError", "build_parser", "count_rows", "execute", "main", "make_plan", "parse_map",
    "summary",
]
