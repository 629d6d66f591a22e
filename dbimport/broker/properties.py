"""The AMQP properties of what the worker publishes: valid whatever the input carried.

A property pika cannot encode, or a header frame larger than the connection's
frame_max, would fail the publish of a whole batch, or make the broker close the
connection; the message would come back and fail again, for ever. So every
property is bounded here, before anything is sent.
"""
from __future__ import annotations

from typing import Any

import pika
import pika.frame
import pika.spec

JSON = "application/json"
PERSISTENT = pika.DeliveryMode.Persistent
# An AMQP short string (correlation_id, message_id, header names) holds at most this many bytes.
MAX_SHORT_STRING_BYTES = 255


def fits_short_string(value: str | bytes) -> bool:
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return len(raw) <= MAX_SHORT_STRING_BYTES


def result_correlation_id(input_correlation_id: str | bytes | None, feedback_id: str) -> str | bytes | None:
    """The input's correlation_id (it came as a short string, so it fits), else its
    feedback_id when that fits a short string, else none."""
    if input_correlation_id:
        return input_correlation_id
    if feedback_id and fits_short_string(feedback_id):
        return feedback_id
    return None


def result_properties(correlation_id: str | bytes | None) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=JSON, delivery_mode=PERSISTENT, correlation_id=correlation_id)


def copy_properties(
    original: pika.BasicProperties | None, headers: dict[str, Any], *, body_size: int, frame_max: int
) -> pika.BasicProperties:
    """A copy of a delivery's properties with `headers` added, for its dead letter.

    If the copy cannot be encoded, or does not fit one frame, the original
    headers are left out (ours are kept): the copy must be publishable.
    """
    if original is not None:
        merged = dict(original.headers or {})
        merged.update(headers)
        copy = pika.BasicProperties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=merged,
            delivery_mode=PERSISTENT,
            correlation_id=original.correlation_id,
            message_id=original.message_id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
        )
        if encodable(copy, body_size=body_size, frame_max=frame_max):
            return copy
        copy.headers = {**headers, "x-dbimport-headers-dropped": True}
        if encodable(copy, body_size=body_size, frame_max=frame_max):
            return copy
    return pika.BasicProperties(delivery_mode=PERSISTENT, headers=headers)


def encodable(properties: pika.BasicProperties, *, body_size: int, frame_max: int) -> bool:
    """Whether pika can encode `properties` into one header frame of at most `frame_max` bytes."""
    try:
        size = len(pika.frame.Header(1, body_size, properties).marshal())
    except Exception:  # any encoding failure: the caller falls back to fewer properties
        return False
    return size <= frame_max
