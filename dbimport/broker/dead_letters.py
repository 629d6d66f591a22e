"""Dead letters: the headers a buried message carries, and moving them back for a replay."""
from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from .connection import open_connection, wrapped
from .session import Delivery

DEAD_REASON_HEADER = "x-dbimport-dead-reason"
DEAD_SOURCE_HEADER = "x-dbimport-source-queue"
MAX_REASON_CHARS = 1000


def dead_letter_headers(reason: str, source_queue: str) -> dict[str, str]:
    return {DEAD_REASON_HEADER: reason[:MAX_REASON_CHARS], DEAD_SOURCE_HEADER: source_queue}


def move_dead_letters(
    settings: Settings, *, before_publish: Callable[[Delivery], None], max_messages: int | None = None
) -> int:
    """Move dead letters back to the import queue, one at a time, with publisher
    confirms: each is acked off the dead queue only once the import queue has it.

    `before_publish` runs first (it resets the message's failure count).
    Returns how many were moved.
    """
    moved = 0
    connection, _ = open_connection(settings, name="dbimport-replay")
    try:
        with wrapped(settings, "replay dead letters"):
            channel = connection.channel()
            channel.confirm_delivery()
            while max_messages is None or moved < max_messages:
                method, properties, body = channel.basic_get(settings.dead_queue, auto_ack=False)
                if method is None:
                    break
                delivery = Delivery.of(method, properties, body)
                before_publish(delivery)
                headers = {k: v for k, v in (properties.headers or {}).items()
                           if k not in (DEAD_REASON_HEADER, DEAD_SOURCE_HEADER)}
                properties.headers = headers or None
                channel.basic_publish("", settings.import_queue, body, properties, mandatory=True)
                channel.basic_ack(method.delivery_tag)
                moved += 1
    finally:
        if connection.is_open:
            connection.close()
    return moved
