"""Connecting to RabbitMQ: the nodes tried in turn, and pika's errors as dbimport's."""
from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions

from ..config import Settings
from ..errors import BrokerRefused, BrokerUnavailable, DbimportError, ExitCode

log = logging.getLogger(__name__)

# The broker drops a connection that blocks publishing (memory/disk alarm) for this long.
BLOCKED_CONNECTION_TIMEOUT_S = 300
SOCKET_TIMEOUT_S = 10
ACCESS_REFUSED = 403
NOT_FOUND = 404
PRECONDITION_FAILED = 406
NOT_ALLOWED = 530

# Errors that mean the connection or channel is gone: the broker, the network, a node
# shutting down. Everything else pika raises (an over-long short string, a field type
# it cannot encode) is a problem of what we tried to send, not an outage.
_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ConsumerCancelled,
    OSError,
    ssl.SSLError,
)
_REPLY = re.compile(r"\((\d{3})\)\s*'?([^']*)")


def parameters(settings: Settings, host: str, port: int, *, name: str) -> pika.ConnectionParameters:
    """Connection parameters for one node; `name` shows in `rabbitmqctl list_connections`."""
    ssl_options = None
    if settings.rabbitmq_tls:
        context = ssl.create_default_context(cafile=settings.rabbitmq_tls_ca or None)
        if settings.rabbitmq_tls_cert:
            context.load_cert_chain(settings.rabbitmq_tls_cert, settings.rabbitmq_tls_key)
        ssl_options = pika.SSLOptions(context, server_hostname=host)
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=settings.rabbitmq_vhost,
        credentials=pika.PlainCredentials(settings.rabbitmq_user, settings.rabbitmq_pass),
        heartbeat=settings.rabbitmq_heartbeat_s,
        blocked_connection_timeout=BLOCKED_CONNECTION_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        ssl_options=ssl_options,
        client_properties={"connection_name": name},
        connection_attempts=1,
    )


def open_connection(settings: Settings, *, name: str, first: int = 0) -> tuple[pika.BlockingConnection, int]:
    """A connection to the first node of RABBITMQ_HOST that takes us, starting at
    index `first`; returns it with the node's index.

    A node that refuses us (credentials, vhost) ends the search: the nodes of a
    cluster share their users. BrokerUnavailable when no node answered.
    """
    nodes = settings.rabbitmq_nodes
    failures = []
    for step in range(len(nodes)):
        index = (first + step) % len(nodes)
        host, port = nodes[index]
        try:
            with wrapped(settings, f"connect to {host}:{port}"):
                return pika.BlockingConnection(parameters(settings, host, port, name=name)), index
        except BrokerUnavailable as exc:
            failures.append(str(exc))
    raise BrokerUnavailable("; ".join(failures))


def node_name(settings: Settings, index: int) -> str:
    host, port = settings.rabbitmq_nodes[index]
    return f"{host}:{port}"


@contextmanager
def wrapped(settings: Settings, action: str) -> Iterator[None]:
    """pika's and the socket's errors as BrokerUnavailable or BrokerRefused.

    Anything else pika raises passes through unchanged: it is about what was
    sent, and must never look like a lost broker (that would reconnect, get the
    same message back, and fail again for ever).
    """
    try:
        yield
    except Exception as exc:
        translated = translate(exc, settings, action)
        if translated is None:
            raise
        raise translated from None


def translate(exc: BaseException, settings: Settings, action: str) -> DbimportError | None:
    """`exc` as dbimport's error, or None if it is not the broker's doing."""
    user, vhost = settings.rabbitmq_user, settings.rabbitmq_vhost
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        return BrokerRefused(
            f"RabbitMQ refused user {user!r} on vhost {vhost!r}: ACCESS_REFUSED "
            "(check RABBITMQ_USER/RABBITMQ_PASS)",
            exit_code=ExitCode.NOPERM,
        )
    code, text = reply_of(exc)
    if code == NOT_ALLOWED or isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        if "not found" in text:
            return BrokerRefused(
                f"RabbitMQ has no vhost {vhost!r}: NOT_ALLOWED (check RABBITMQ_VHOST, "
                f"or create it: rabbitmqctl add_vhost {vhost})",
                exit_code=ExitCode.CONFIG,
            )
        return BrokerRefused(
            f"RabbitMQ refused user {user!r} access to vhost {vhost!r}: NOT_ALLOWED "
            f"(grant it: rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*')",
            exit_code=ExitCode.NOPERM,
        )
    if code == ACCESS_REFUSED:
        return BrokerRefused(
            f"RabbitMQ refused user {user!r} to {action}: ACCESS_REFUSED - {text} (grant the user "
            f"configure, write and read permissions on the queues: rabbitmqctl set_permissions -p {vhost} ...)",
            exit_code=ExitCode.NOPERM,
        )
    if isinstance(exc, _LOST):
        return BrokerUnavailable(f"RabbitMQ {action}: {describe(exc)}")
    return None


def reply_of(exc: BaseException) -> tuple[int | None, str]:
    """The AMQP reply code and text a close carried, wherever pika put them."""
    if isinstance(exc, (pika.exceptions.ConnectionClosed, pika.exceptions.ChannelClosed)):
        return exc.reply_code, exc.reply_text
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, BaseException):
            found = reply_of(arg)
            if found[0] is not None:
                return found
        match = _REPLY.search(str(arg))
        if match:
            return int(match.group(1)), match.group(2)
    return None, ""


def describe(exc: BaseException) -> str:
    """One line: the error's type and text, or the socket error pika wrapped."""
    cause = _socket_error(exc)
    if cause is not None:
        return cause.strerror or type(cause).__name__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _socket_error(exc: BaseException, depth: int = 0) -> OSError | None:
    if isinstance(exc, OSError) and exc.strerror:
        return exc
    if depth > 4:
        return None
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, BaseException):
            found = _socket_error(arg, depth + 1)
            if found is not None:
                return found
    for attr in ("exception", "__cause__"):
        inner = getattr(exc, attr, None)
        if isinstance(inner, BaseException) and inner is not exc:
            found = _socket_error(inner, depth + 1)
            if found is not None:
                return found
    return None


def is_precondition_failed(exc: Any) -> bool:
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == PRECONDITION_FAILED
