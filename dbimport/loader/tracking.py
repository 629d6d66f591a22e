"""Bookkeeping of a load: the lines outstanding, the failed rows, the tally."""
from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

# Report codes of rows that never got a result (results carry their numeric code).
REJECTED = "rejected"  # the row could not become a message; never published
UNROUTABLE = "unroutable"  # the broker returned it: IMPORT_QUEUE vanished mid-run
UNANSWERED = "unanswered"  # published, but no result came within --timeout


class LineSet:
    """A set of line numbers in one bit each: 125 kB for a million lines."""

    __slots__ = ("_bits", "count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, line: int) -> None:
        byte, bit = divmod(line, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self.count += 1

    def discard(self, line: int) -> bool:
        """Remove `line`; True if it was there."""
        if line not in self:
            return False
        self._bits[line >> 3] &= ~(1 << (line & 7)) & 0xFF
        self.count -= 1
        return True

    def __contains__(self, line: int) -> bool:
        byte = line >> 3
        return 0 <= byte < len(self._bits) and bool(self._bits[byte] >> (line & 7) & 1)


class Failures:
    """Failed rows in a private temporary SQLite file: memory stays flat however many fail."""

    def __init__(self) -> None:
        # "" is SQLite's private on-disk temporary database, deleted on close.
        self._db = sqlite3.connect("")
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(
            "CREATE TABLE failure (line INTEGER PRIMARY KEY, feedback_id TEXT, error TEXT, "
            "error_text TEXT, raw TEXT)"
        )

    def add(self, line: int, feedback_id: str, error: str, error_text: str, raw: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO failure VALUES (?, ?, ?, ?, ?)",
                         (line, feedback_id, error, error_text, raw))

    def set_raw(self, line: int, raw: str) -> None:
        self._db.execute("UPDATE failure SET raw = ? WHERE line = ?", (raw, line))

    def ordered(self) -> Iterator[tuple[int, str, str, str, str | None]]:
        yield from self._db.execute("SELECT line, feedback_id, error, error_text, raw FROM failure ORDER BY line")

    def close(self) -> None:
        self._db.close()


@dataclass
class Tally:
    """What happened to the rows: the summary's figures."""

    read: int = 0
    published: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by code, results and ours
    duplicates: int = 0  # a second result for one row (a worker crashed before its ack)
    committed_through: int = 0  # the last line of the last committed batch

    @property
    def failed(self) -> int:
        return sum(self.errors.values())
