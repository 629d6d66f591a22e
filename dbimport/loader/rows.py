"""Rows in, messages out: reading JSONL and CSV, mapping columns to message keys."""
from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

READ_CHUNK_BYTES = 1 << 20
MAX_FEEDBACK_ID_CHARS = 255
# Top-level message keys (docs/contract.md); every other mapping target is a `data` field.
MESSAGE_KEYS = frozenset({
    "account_id", "db_id", "feedback_id", "skip_triggers", "update_only", "skip_invalid_subscriptions", "matching",
    "email", "phone", "profile_id", "field_name", "field_value", "resource_id",
    "provider", "subscription_id",
})
INT_KEYS = frozenset({"account_id", "db_id", "resource_id"})
BOOL_KEYS = frozenset({"skip_triggers", "update_only", "skip_invalid_subscriptions"})
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
_INTEGER = re.compile(r"\s*[+-]?\d{1,19}\s*")


class UsageError(Exception):
    """The command line or the file's header cannot work; exit 2."""


class RowError(Exception):
    """This row cannot become a message; it is reported, the load goes on."""


# --- mapping: column -> message key or data field -------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a column's value goes; `as_json` parses a CSV cell as JSON first."""

    name: str
    as_json: bool = False

    @property
    def in_message(self) -> bool:
        return self.name in MESSAGE_KEYS


def parse_map(specs: Sequence[str]) -> list[tuple[Target, str]]:
    """`--map email=Email,_fname=First Name` as (target, column) pairs.

    A piece without `=` continues the previous column's name, so that a column
    named "Name, First" can be mapped without quoting.
    """
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        for piece in spec.split(","):
            if "=" in piece:
                target, column = piece.split("=", 1)
                pairs.append((target.strip(), column.strip()))
            elif pairs and piece.strip():
                pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]},{piece}".strip())
            elif piece.strip():
                raise UsageError(f"--map: {piece.strip()!r} is not target=column")
    return [(parse_target(name), column) for name, column in pairs]


def parse_target(text: str) -> Target:
    name, _, kind = text.partition(":")
    if not name or name == "data" or kind not in ("", "json"):
        raise UsageError(f"--map: {text!r} is not a message key or data field (suffix :json is allowed)")
    return Target(name, as_json=kind == "json")


def csv_cell(target: Target, cell: str) -> Any:
    """A CSV cell as the JSON value its target takes; RowError if it cannot be."""
    if target.as_json:
        try:
            return orjson.loads(cell)
        except orjson.JSONDecodeError:
            raise RowError(f"{target.name}: {cell!r} is not valid JSON") from None
    if target.name in INT_KEYS:
        if not _INTEGER.fullmatch(cell):
            raise RowError(f"{target.name}: {cell!r} is not an integer")
        return int(cell)
    if target.name in BOOL_KEYS:
        word = cell.strip().lower()
        if word not in _TRUE | _FALSE:
            raise RowError(f"{target.name}: {cell!r} is not true or false")
        return word in _TRUE
    return cell


# --- reading: records with their line numbers ------------------------------------


@dataclass(slots=True)
class Record:
    """One row as read: CSV `fields` or a JSONL `text`, from physical line `line`."""

    line: int
    fields: list[str] | None = None
    text: str | None = None
    error: str | None = None

    def raw(self) -> str:
        """The row as the report keeps it: a JSONL line, or CSV fields as a JSON list."""
        if self.text is not None:
            return self.text
        return orjson.dumps(self.fields or []).decode()


class NumberedLines:
    """A file's lines, decoded; remembers the last line that was not valid UTF-8."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.number = 0
        self.last_bad = 0

    def __iter__(self) -> Iterator[str]:
        with self.path.open("rb") as f:
            for raw in f:
                self.number += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("utf-8", "replace")
                    self.last_bad = self.number
                if self.number == 1:
                    text = text.removeprefix("\ufeff")  # spreadsheets write a BOM
                yield text


def jsonl_records(path: Path) -> Iterator[Record]:
    lines = NumberedLines(path)
    for text in lines:
        if not text.strip():
            continue
        bad = "not valid UTF-8" if lines.last_bad == lines.number else None
        yield Record(lines.number, text=text.rstrip("\r\n"), error=bad)


def read_csv_header(path: Path, delimiter: str) -> list[str]:
    for fields in csv.reader(NumberedLines(path), delimiter=delimiter):
        if fields:
            return fields
    raise UsageError(f"{path}: no header line")


def csv_records(path: Path, delimiter: str) -> Iterator[Record]:
    """Data rows after the header; a record spanning lines is numbered by its first."""
    lines = NumberedLines(path)
    reader = csv.reader(lines, delimiter=delimiter)
    header_seen = False
    while True:
        start = lines.number + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(start, fields=[], error=f"not valid CSV: {exc}")
            continue
        if not fields:
            continue
        if not header_seen:
            header_seen = True
            continue
        bad = "not valid UTF-8" if lines.last_bad >= start else None
        yield Record(start, fields=fields, error=bad)


def count_rows(path: Path, *, header: bool) -> int:
    """Rows in the file for the progress bar's total, by counting newline bytes.

    A scan at memory speed (~40 ms for a 1M-row, 58 MB CSV) costs less than an
    estimate from the first rows would mislead; quoted newlines in CSV make it an
    upper bound.
    """
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - (1 if header else 0))


# --- rows to messages ---------------------------------------------------------------


@dataclass(frozen=True)
class MessageBuilder:
    """Turns records into messages: CLI defaults, then the row's own values."""

    defaults: dict[str, Any]
    feedback_name: str
    pairs: list[tuple[Target, str]]  # --map; empty: keys/headers are used as they are
    default_data: dict[str, Any] = field(default_factory=dict)  # --set of data fields
    csv_columns: list[tuple[Target, int]] = field(default_factory=list)
    csv_width: int = 0

    def feedback_id(self, line: int) -> str:
        suffix = f":{line}"
        return self.feedback_name[-(MAX_FEEDBACK_ID_CHARS - len(suffix)):] + suffix

    def build(self, record: Record) -> dict[str, Any]:
        if record.error:
            raise RowError(record.error)
        message = self._from_text(record.text) if record.text is not None else self._from_fields(record.fields or [])
        message.setdefault("feedback_id", self.feedback_id(record.line))
        for key, option in (("account_id", "--account-id"), ("db_id", "--db-id")):
            if message.get(key) is None:
                raise RowError(f"no {key}: give {option} or a column for it")
        return message

    def _from_fields(self, fields: list[str]) -> dict[str, Any]:
        if len(fields) != self.csv_width:
            raise RowError(f"has {len(fields)} fields, the header has {self.csv_width}")
        values = ((target, fields[index]) for target, index in self.csv_columns)
        return self._merge((target, csv_cell(target, cell)) for target, cell in values if cell != "")

    def _from_text(self, text: str) -> dict[str, Any]:
        try:
            row = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise RowError(f"not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise RowError(f"not a JSON object but {type(row).__name__}")
        if "data" in row:
            if not isinstance(row["data"], dict):
                raise RowError("data must be a JSON object")
            return {**self.defaults, **row, "data": {**self.default_data, **row["data"]}}
        if self.pairs:
            return self._merge((target, row[key]) for target, key in self.pairs if key in row)
        return self._merge((Target(key), value) for key, value in row.items())

    def _merge(self, values: Iterator[tuple[Target, Any]]) -> dict[str, Any]:
        message = dict(self.defaults)
        data = dict(self.default_data)
        for target, value in values:
            (message if target.in_message else data)[target.name] = value
        message["data"] = data
        return message


def csv_builder(header: list[str], pairs: list[tuple[Target, str]], **common: Any) -> MessageBuilder:
    """A builder whose columns are resolved against the header once, at start."""
    # An unnamed column (a trailing delimiter in the header) has nowhere to go.
    named = pairs or [(Target(name), name) for name in header if name.strip()]
    columns = []
    for target, column in named:
        if column not in header:
            raise UsageError(f"--map {target.name}={column}: no column {column!r} in the header {header}")
        if header.count(column) > 1:
            raise UsageError(f"column {column!r} appears {header.count(column)} times in the header")
        columns.append((target, header.index(column)))
    return MessageBuilder(pairs=pairs, csv_columns=columns, csv_width=len(header), **common)
