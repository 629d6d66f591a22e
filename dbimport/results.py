"""The result: the one JSON answer every consumed message gets."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from .errors import BadInput

OK = 0
INTERNAL_ERROR = 500
MAX_ERROR_TEXT_CHARS = 500


@dataclass(frozen=True, slots=True)
class Result:
    """Exactly the contract's keys; `profile_id` is "" where nothing was written."""

    error: int
    error_text: str
    feedback_id: str
    matching_field: str
    profile_id: str

    @classmethod
    def ok(cls, *, feedback_id: str, matching_field: str, profile_id: str, left_out: Sequence[str] = ()) -> Result:
        """Written; `left_out` names the invalid subscriptions skip_invalid_subscriptions skipped."""
        text = one_line("left out invalid subscriptions: " + "; ".join(left_out)) if left_out else ""
        return cls(OK, text, feedback_id, matching_field, profile_id)

    @classmethod
    def failed(cls, exc: BadInput, *, feedback_id: str, matching_field: str = "") -> Result:
        return cls(exc.code, one_line(exc.text), feedback_id, matching_field, "")

    @classmethod
    def internal(cls, reason: str, *, feedback_id: str) -> Result:
        return cls(INTERNAL_ERROR, one_line(f"internal error: {reason}"), feedback_id, "", "")

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "error": self.error,
                "error_text": self.error_text,
                "feedback_id": self.feedback_id,
                "matching_field": self.matching_field,
                "profile_id": self.profile_id,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Result:
        data = orjson.loads(raw)
        return cls(**data)


def one_line(text: str) -> str:
    """`text` on one line, no longer than MAX_ERROR_TEXT_CHARS."""
    flat = " ".join(text.split())
    if len(flat) > MAX_ERROR_TEXT_CHARS:
        flat = flat[: MAX_ERROR_TEXT_CHARS - 1] + "…"
    return flat
