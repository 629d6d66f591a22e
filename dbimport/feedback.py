"""The feedback_id a result echoes: found in a decoded message, or at the start of a
body too large to decode."""
from __future__ import annotations

import re
from typing import Any

import orjson

UTF8_BOM = b"\xef\xbb\xbf"
# A 413's feedback_id is looked for in this much of the body, never more.
PREFIX_BYTES = 64 * 1024
_WHITESPACE = b" \t\r\n"
_NUMBER = re.compile(rb"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = (b"true", b"false", b"null")


def feedback_id_of(message: Any) -> str:
    """The message's top-level `feedback_id` as text: a string unchanged (whatever
    its length), a number as its decimal text, any other JSON value as its JSON
    text; "" when there is none (or it is null)."""
    if not isinstance(message, dict):
        return ""
    return as_text(message.get("feedback_id"))


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return ""


def feedback_id_in_prefix(body: bytes, *, limit: int = PREFIX_BYTES) -> str:
    """The top-level `feedback_id` of a JSON object body, read from its first
    `limit` bytes only (a 413's body is never decoded whole); "" if not there."""
    scanner = _Scanner(body[:limit])
    try:
        return scanner.top_level_feedback_id()
    except (_Incomplete, orjson.JSONDecodeError):
        return ""


class _Incomplete(Exception):
    """The prefix ended, or is not JSON: no feedback_id can be read from it."""


class _Scanner:
    """Just enough of a JSON reader to walk an object's top-level keys."""

    def __init__(self, data: bytes) -> None:
        self.data = data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data
        self.pos = 0

    def top_level_feedback_id(self) -> str:
        self._expect(b"{")
        while True:
            self._skip_whitespace()
            if self._peek() == b"}":
                return ""
            key = orjson.loads(self._string())
            self._expect(b":")
            self._skip_whitespace()
            start = self.pos
            self._skip_value()
            if key == "feedback_id":
                if self.pos >= len(self.data):
                    raise _Incomplete  # the value may go on past the prefix
                return as_text(orjson.loads(self.data[start:self.pos]))
            self._skip_whitespace()
            if self._peek() == b",":
                self.pos += 1
            else:
                return ""

    def _peek(self) -> bytes:
        if self.pos >= len(self.data):
            raise _Incomplete
        return self.data[self.pos:self.pos + 1]

    def _skip_whitespace(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos:self.pos + 1] in _WHITESPACE:
            self.pos += 1

    def _expect(self, char: bytes) -> None:
        self._skip_whitespace()
        if self._peek() != char:
            raise _Incomplete
        self.pos += 1

    def _string(self) -> bytes:
        """The string token at the position, quotes included."""
        if self._peek() != b'"':
            raise _Incomplete
        start, i = self.pos, self.pos + 1
        while i < len(self.data):
            byte = self.data[i]
            if byte == 0x5C:  # a backslash escapes the next byte
                i += 2
                continue
            if byte == 0x22:
                self.pos = i + 1
                return self.data[start:self.pos]
            i += 1
        raise _Incomplete

    def _skip_value(self) -> None:
        head = self._peek()
        if head == b'"':
            self._string()
        elif head in (b"{", b"["):
            self._skip_container()
        else:
            match = _NUMBER.match(self.data, self.pos)
            if match:
                self.pos = match.end()
                return
            for literal in _LITERALS:
                if self.data.startswith(literal, self.pos):
                    self.pos += len(literal)
                    return
            raise _Incomplete

    def _skip_container(self) -> None:
        depth = 0
        while True:
            head = self._peek()
            if head == b'"':
                self._string()
                continue
            self.pos += 1
            if head in (b"{", b"["):
                depth += 1
            elif head in (b"}", b"]"):
                depth -= 1
                if depth == 0:
                    return
