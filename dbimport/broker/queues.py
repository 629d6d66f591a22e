"""The three queues: names and arguments from the configuration, declared and inspected.

The worker, `init-db`, `check` and the loader all declare and inspect through
here, so the arguments can never differ between them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from ..config import Settings
from .connection import NOT_FOUND, is_precondition_failed, wrapped

log = logging.getLogger(__name__)

QUEUE_TYPE_ARGUMENT = "x-queue-type"


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue as the configuration wants it."""

    role: str  # "input", "result" or "dead letters"
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.arguments.items())) or "no arguments"


def specs(settings: Settings) -> list[QueueSpec]:
    """The input, result and dead-letter queues, in that order."""
    typed: dict[str, Any] = {}
    if settings.queue_type != "classic":
        typed[QUEUE_TYPE_ARGUMENT] = settings.queue_type
    return [
        QueueSpec("input", settings.import_queue, dict(typed)),
        QueueSpec("result", settings.result_queue, {**typed, "x-message-ttl": settings.result_ttl_ms}),
        QueueSpec("dead letters", settings.dead_queue, dict(typed)),
    ]


def declare_all(
    connection: pika.BlockingConnection, settings: Settings, *, warn: Callable[[str], None] = log.warning
) -> None:
    """Declare the three queues (see `declare`)."""
    for spec in specs(settings):
        declare(connection, settings, spec, warn=warn)


def declare(
    connection: pika.BlockingConnection, settings: Settings, spec: QueueSpec,
    *, warn: Callable[[str], None] = log.warning,
) -> None:
    """Declare `spec` durable; one that exists with other arguments is used as it is.

    RabbitMQ answers a declare whose arguments differ from the queue's with 406
    PRECONDITION_FAILED and closes the channel: the queue is then used as it is
    (checked to exist with a passive declare) and `warn` gets one line naming
    the difference and the fix. Never a crash, never a reconnect loop.
    """
    with wrapped(settings, f"declare queue {spec.name!r}"):
        channel = connection.channel()
        try:
            channel.queue_declare(spec.name, durable=True, arguments=dict(spec.arguments) or None)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if not is_precondition_failed(exc):
                raise
            channel = connection.channel()
            channel.queue_declare(spec.name, passive=True)
            warn(
                f"queue {spec.name!r} exists with other arguments than ours ({spec.describe()}); "
                f"using it as it is. RabbitMQ says: {exc.reply_text}. To fix it, delete the queue "
                "while it is empty so that it is declared anew, or set the value with a policy "
                "(rabbitmqctl set_policy ...) and align the configuration"
            )
        if channel.is_open:
            channel.close()


def problem(connection: pika.BlockingConnection, settings: Settings, spec: QueueSpec) -> str | None:
    """What is wrong with the queue `spec` names, or None: missing, or other arguments."""
    with wrapped(settings, f"inspect queue {spec.name!r}"):
        channel = connection.channel()
        try:
            channel.queue_declare(spec.name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != NOT_FOUND:
                raise
            return (
                f"queue {spec.name}: missing ({spec.role} queue); messages published to it are "
                "dropped until it exists: run `dbimport-worker init-db`"
            )
        # A declare with our arguments is refused (406) when the queue's differ.
        try:
            channel.queue_declare(spec.name, durable=True, arguments=dict(spec.arguments) or None)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if not is_precondition_failed(exc):
                raise
            return (
                f"queue {spec.name}: arguments differ from the configuration ({spec.describe()}): "
                f"{exc.reply_text}"
            )
        channel.close()
    return None


def problems(connection: pika.BlockingConnection, settings: Settings) -> list[str]:
    return [p for spec in specs(settings) if (p := problem(connection, settings, spec)) is not None]


def depth(channel: Any, settings: Settings, queue: str) -> int:
    """Ready messages in `queue`."""
    with wrapped(settings, f"read the depth of {queue!r}"):
        return int(channel.queue_declare(queue, passive=True).method.message_count)
