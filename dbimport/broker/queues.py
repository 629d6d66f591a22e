"""The three queues: names and arguments from the configuration, declared and inspected.

The worker, `init-db`, `check` and the loader all declare and inspect through
here, so the arguments can never differ between them.
"""
from __future__ import annotations

import logging
import re
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
    """What is wrong with the queue `spec` names, or None: missing, another type, or
    other arguments. A type that differs is named first, on its own terms."""
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
        channel.close()
        found = differences(connection, spec, settings.queue_type)
    if not found:
        return None
    parts = []
    typed = [d for d in found if d.key == QUEUE_TYPE_ARGUMENT]
    others = [d for d in found if d.key != QUEUE_TYPE_ARGUMENT]
    if typed:
        parts.append(
            f"it is a {typed[0].current or 'classic'} queue, the configuration says "
            f"{settings.queue_type} (IMPORT_QUEUE_TYPE); a queue's type cannot change: drain and "
            "delete the queue, then declare it anew (`dbimport-worker init-db`), or set "
            f"IMPORT_QUEUE_TYPE={typed[0].current or 'classic'}"
        )
    if others:
        parts.append(
            f"arguments differ from the configuration ({spec.describe()}): "
            + "; ".join(d.describe() for d in others)
        )
    return f"queue {spec.name}: " + "; and ".join(parts)


@dataclass(frozen=True)
class Difference:
    """One argument in which an existing queue differs from a declaration.

    `current` and `wanted` are None where the argument is absent. A reply that
    could not be read leaves `key` empty and RabbitMQ's text in `text`.
    """

    key: str
    current: Any = None
    wanted: Any = None
    text: str = ""

    def describe(self) -> str:
        if not self.key:
            return f"RabbitMQ says: {self.text}"
        return f"{self.key} is {_shown(self.current)}, the configuration says {_shown(self.wanted)}"


def _shown(value: Any) -> str:
    return "not set" if value is None else str(value)


# PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/':
#   received '2000' but current is '1000'
#   received none but current is the value 'quorum' of type 'longstr'
#   received the value 'quorum' of type 'longstr' but current is none
_INEQUIVALENT = re.compile(r"inequivalent arg '(?P<key>[^']+)' for queue .*: received (?P<received>.+?) "
                           r"but current is (?P<current>none|'.*'|the value '.*' of type '[^']+')$")
_TYPED_VALUE = re.compile(r"the value '(?P<value>.*)' of type '(?P<type>[^']+)'$")
_INTEGER_TYPES = {"signedint", "long", "short", "byte", "unsignedint", "unsignedshort", "unsignedbyte", "timestamp"}
# One 406 names one argument; a queue has few. A bound, should a reply repeat itself.
MAX_PROBES = 16


def differences(connection: pika.BlockingConnection, spec: QueueSpec, queue_type: str) -> list[Difference]:
    """Every argument in which the existing queue `spec.name` differs from `spec` with
    `x-queue-type` given explicitly (`classic` included), found by declaring it.

    RabbitMQ's 406 names one argument, with the queue's value: the next declare
    takes that value, until one is accepted (which changes nothing: the queue
    exists and the declaration is then equivalent). A passive declare says
    nothing of arguments, and AMQP has no other way to read them.
    """
    wanted: dict[str, Any] = {QUEUE_TYPE_ARGUMENT: queue_type, **spec.arguments}
    probe = dict(wanted)
    found: list[Difference] = []
    for _ in range(MAX_PROBES):
        channel = connection.channel()
        try:
            channel.queue_declare(spec.name, durable=True, arguments=probe)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if not is_precondition_failed(exc):
                raise
            difference = _read_difference(exc.reply_text, probe, wanted)
            seen = {d.key for d in found}
            if difference is None or difference.key in seen:
                found.append(Difference("", text=exc.reply_text))
                return found
            found.append(difference)
            if not difference.key.startswith("x-"):
                return found  # durable, exclusive, auto_delete: not an argument to probe with
            if difference.current is None:
                probe.pop(difference.key, None)
            else:
                probe[difference.key] = difference.current
            continue
        channel.close()
        return found
    return found


def _read_difference(text: str, probe: Mapping[str, Any], wanted: Mapping[str, Any]) -> Difference | None:
    """The argument a 406's text names and the queue's value of it, typed as AMQP needs
    it for the next declare; None if the text is not one we can read."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    key = match.group("key")
    try:
        current = _value(match.group("current"), probe.get(key))
        received = wanted[key] if key in wanted else _value(match.group("received"), None)
    except ValueError:
        return None
    return Difference(key, current, received)


def _value(text: str, sent: Any) -> Any:
    """A value as a 406 shows it: `none`, `'V'` (of the type of the value we sent), or
    `the value 'V' of type 'T'`."""
    if text == "none":
        return None
    typed = _TYPED_VALUE.match(text)
    if typed is not None:
        return _typed(typed.group("value"), typed.group("type"))
    if not (len(text) >= 2 and text[0] == text[-1] == "'"):
        raise ValueError(text)
    kind = "bool" if isinstance(sent, bool) else "long" if isinstance(sent, int) else "longstr"
    return _typed(text[1:-1], kind)


def _typed(raw: str, kind: str) -> Any:
    if kind in _INTEGER_TYPES:
        return int(raw)
    if kind == "bool":
        if raw not in ("true", "false"):
            raise ValueError(raw)
        return raw == "true"
    if kind in ("double", "float"):
        return float(raw)
    if kind in ("longstr", "shortstr"):
        return raw
    raise ValueError(kind)


def problems(connection: pika.BlockingConnection, settings: Settings) -> list[str]:
    return [p for spec in specs(settings) if (p := problem(connection, settings, spec)) is not None]


def depth(channel: Any, settings: Settings, queue: str) -> int:
    """Ready messages in `queue`."""
    with wrapped(settings, f"read the depth of {queue!r}"):
        return int(channel.queue_declare(queue, passive=True).method.message_count)
