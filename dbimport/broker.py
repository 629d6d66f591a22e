"""The RabbitMQ boundary: queues, deliveries, durable results and acks; pika stays here."""
from __future__ import annotations

import collections
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from .config import Settings
from .errors import BrokerUnavailable, ResultUnroutable

log = logging.getLogger(__name__)

JSON = "application/json"
PERSISTENT = pika.DeliveryMode.Persistent
PRECONDITION_FAILED = 406
# The broker drops a connection that blocks publishing (memory/disk alarm) for this long.
BLOCKED_CONNECTION_TIMEOUT_S = 300
SOCKET_TIMEOUT_S = 10
DEAD_REASON_HEADER = "x-dbimport-dead-reason"
DEAD_SOURCE_HEADER = "x-dbimport-source-queue"


@dataclass(slots=True)
class Delivery:
    """One consumed message; `properties` is opaque to everything but this module."""

    tag: int
    body: bytes
    redelivered: bool
    correlation_id: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    properties: Any = None
    # Which connection of this worker it came on (see Broker.holds).
    connection: int = 0

    @classmethod
    def of(cls, method: Any, properties: pika.BasicProperties, body: bytes, *, connection: int = 0) -> Delivery:
        """A delivery from pika's basic.deliver or basic.get-ok."""
        return cls(
            tag=method.delivery_tag,
            body=body,
            redelivered=bool(method.redelivered),
            correlation_id=properties.correlation_id,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            properties=properties,
            connection=connection,
        )


@dataclass(slots=True)
class Outgoing:
    """A message to publish durably: a result, or a dead letter's copy."""

    queue: str
    body: bytes
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    source: Delivery | None = None  # a dead letter keeps its original properties


def connection_parameters(settings: Settings) -> pika.ConnectionParameters:
    ssl_options = None
    if settings.rabbitmq_tls:
        context = ssl.create_default_context(cafile=settings.rabbitmq_tls_ca or None)
        if settings.rabbitmq_tls_cert:
            context.load_cert_chain(settings.rabbitmq_tls_cert, settings.rabbitmq_tls_key)
        ssl_options = pika.SSLOptions(context, server_hostname=settings.rabbitmq_host)
    return pika.ConnectionParameters(
        host=settings.rabbitmq_host,
        port=settings.rabbitmq_port,
        virtual_host=settings.rabbitmq_vhost,
        credentials=pika.PlainCredentials(settings.rabbitmq_user, settings.rabbitmq_pass),
        heartbeat=settings.rabbitmq_heartbeat_s,
        blocked_connection_timeout=BLOCKED_CONNECTION_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        ssl_options=ssl_options,
        # Shown by `rabbitmqctl list_connections client_properties` and the management UI.
        client_properties={
            "connection_name": f"dbimport-worker pid={os.getpid()} queue={settings.import_queue}"
        },
        connection_attempts=1,
    )


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    """pika's and the socket's errors, as BrokerUnavailable."""
    try:
        yield
    except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as exc:
        raise BrokerUnavailable(f"RabbitMQ {action}: {type(exc).__name__}: {exc}".rstrip(": ")) from None


class Broker:
    """A consumer channel for deliveries and acks, and a transactional channel for results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: pika.BlockingConnection | None = None
        self._consume: BlockingChannel | None = None
        self._publish: BlockingChannel | None = None
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._returned: list[bytes] = []
        self._consumer_tag: str | None = None
        self._last_tag = 0
        self._connections = 0

    # --- lifecycle ---------------------------------------------------------------

    def connect(self) -> None:
        with _wrapped("connect"):
            self._connection = pika.BlockingConnection(connection_parameters(self.settings))
            self._connections += 1
            self._publish = self._connection.channel()
            self.declare_queues()
            self._publish.tx_select()
            self._publish.add_on_return_callback(self._on_return)

    def declare_queues(self) -> None:
        s = self.settings
        self._declare(s.import_queue, {})
        self._declare(s.result_queue, {"x-message-ttl": s.result_ttl_ms})
        self._declare(s.dead_queue, {})

    def _declare(self, name: str, arguments: dict[str, Any]) -> None:
        """Declare a durable queue; one that exists with other arguments is used as it is."""
        assert self._connection is not None and self._publish is not None
        try:
            self._publish.queue_declare(name, durable=True, arguments=arguments or None)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            self._publish = self._connection.channel()
            self._publish.queue_declare(name, passive=True)
            wanted = ", ".join(f"{k}={v}" for k, v in arguments.items()) or "no arguments"
            warning = (
                f"queue {name!r} exists with other arguments than ours ({wanted}); using it as it is. "
                f"RabbitMQ says: {exc.reply_text}. To fix it, delete the queue while it is empty so "
                f"the worker declares it anew, or set the value with a policy "
                f"(rabbitmqctl set_policy ...) and align the configuration"
            )
            log.warning(warning)

    def start_consuming(self) -> None:
        assert self._connection is not None
        with _wrapped("consume"):
            self._consume = self._connection.channel()
            self._consume.basic_qos(prefetch_count=self.settings.prefetch)
            self._consumer_tag = self._consume.basic_consume(self.settings.import_queue, self._on_message)
            self._consume.add_on_cancel_callback(self._on_cancel)

    def stop_consuming(self) -> None:
        """Stop new deliveries; the buffered ones go back to the queue with the channel."""
        if self._consume is None or not self._consume.is_open or self._consumer_tag is None:
            return
        with _wrapped("cancel"):
            self._consume.basic_cancel(self._consumer_tag)
        self._consumer_tag = None

    def give_back(self) -> None:
        """Stop consuming and return every unsettled delivery to the queue, so that
        other workers can take them while this one waits for the database."""
        self.stop_consuming()
        self._buffer.clear()
        if self._consume is not None and self._last_tag:
            with _wrapped("nack"):
                self._consume.basic_nack(delivery_tag=self._last_tag, multiple=True, requeue=True)

    def close(self) -> None:
        self._buffer.clear()
        self._last_tag = 0
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
        self._connection = self._consume = self._publish = None

    # --- consuming -------------------------------------------------------------------

    def _on_message(
        self, _ch: BlockingChannel, method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties, body: bytes,
    ) -> None:
        self._last_tag = method.delivery_tag
        self._buffer.append(Delivery.of(method, properties, body, connection=self._connections))

    def _on_cancel(self, _frame: Any) -> None:
        self._consumer_tag = None
        log.warning("RabbitMQ cancelled our consumer (was %s deleted?)", self.settings.import_queue)

    def fetch(
        self, max_count: int, *, max_bytes: int, first_wait_s: float, batch_wait_s: float
    ) -> list[Delivery]:
        """Up to `max_count` deliveries and `max_bytes` of bodies (at least one): wait
        up to `first_wait_s` for the first, then up to `batch_wait_s` for the rest."""
        assert self._connection is not None
        with _wrapped("receive"):
            if self._consume is not None and self._consumer_tag is None and self._consume.is_open:
                raise BrokerUnavailable("consumer was cancelled by the broker")
            if not self._buffer:
                self._wait(lambda: bool(self._buffer), first_wait_s)
            if len(self._buffer) < max_count:
                self._wait(lambda: len(self._buffer) >= max_count, batch_wait_s)
        batch: list[Delivery] = []
        size = 0
        while self._buffer and len(batch) < max_count:
            size += len(self._buffer[0].body)
            if batch and size > max_bytes:
                break
            batch.append(self._buffer.popleft())
        return batch

    def _wait(self, done: Callable[[], bool], seconds: float) -> None:
        assert self._connection is not None
        deadline = time.monotonic() + seconds
        while True:
            self._connection.process_data_events(time_limit=max(0.0, deadline - time.monotonic()))
            if done() or time.monotonic() >= deadline:
                return

    def holds(self, delivery: Delivery) -> bool:
        """Whether `delivery` is still ours to settle: its connection is the current one and
        still open. Reads what the broker sent, so a close it announced is seen."""
        if self._connection is None or delivery.connection != self._connections:
            return False
        try:
            self._connection.process_data_events(time_limit=0)
        except (pika.exceptions.AMQPError, OSError):
            return False
        return self._connection.is_open and self._consume is not None and self._consume.is_open

    def queue_depth(self, queue: str | None = None) -> int:
        """Ready messages in `queue` (the input queue by default)."""
        assert self._publish is not None
        with _wrapped("queue_declare"):
            frame = self._publish.queue_declare(queue or self.settings.import_queue, passive=True)
            return int(frame.method.message_count)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- settling --------------------------------------------------------------------

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish durably in one AMQP transaction; ResultUnroutable if any came back."""
        if not messages:
            return
        assert self._connection is not None and self._publish is not None
        with _wrapped("publish"):
            self._returned.clear()
            # BlockingChannel.basic_publish writes to the socket after every message;
            # the channel implementation's only queues the frames, and tx_commit
            # writes them all at once: a third of the cost of a result.
            publish = self._publish._impl.basic_publish
            for message in messages:
                publish(
                    exchange="",
                    routing_key=message.queue,
                    body=message.body,
                    properties=self._properties(message),
                    mandatory=True,
                )
            self._publish.tx_commit()
            # A basic.return precedes tx.commit-ok; dispatch it now.
            self._connection.process_data_events(time_limit=0)
        if self._returned:
            raise ResultUnroutable(
                f"{len(self._returned)} message(s) were returned as unroutable "
                f"(does queue {messages[0].queue!r} exist?)"
            )

    def _properties(self, message: Outgoing) -> pika.BasicProperties:
        if message.source is not None and message.source.properties is not None:
            original: pika.BasicProperties = message.source.properties
            headers = dict(original.headers or {})
            headers.update(message.headers)
            return pika.BasicProperties(
                content_type=original.content_type,
                content_encoding=original.content_encoding,
                headers=headers,
                delivery_mode=PERSISTENT,
                correlation_id=original.correlation_id,
                message_id=original.message_id,
                timestamp=original.timestamp,
                type=original.type,
                app_id=original.app_id,
            )
        return pika.BasicProperties(
            content_type=JSON,
            delivery_mode=PERSISTENT,
            correlation_id=message.correlation_id,
            headers=message.headers or None,
        )

    def _on_return(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        self._returned.append(body)

    def ack_through(self, tag: int) -> None:
        """Ack every unsettled delivery up to and including `tag`."""
        assert self._consume is not None
        with _wrapped("ack"):
            self._consume.basic_ack(delivery_tag=tag, multiple=True)

    def requeue(self, tag: int) -> None:
        assert self._consume is not None
        with _wrapped("nack"):
            self._consume.basic_nack(delivery_tag=tag, multiple=False, requeue=True)

    # --- waiting -----------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Sleep while answering heartbeats; a lost connection wakes us as BrokerUnavailable."""
        if self._connection is None or not self._connection.is_open:
            time.sleep(seconds)
            return
        with _wrapped("heartbeat"):
            self._connection.sleep(seconds)


def move_dead_letters(
    settings: Settings, *, before_publish: Callable[[Delivery], None], max_messages: int | None = None
) -> int:
    """Move dead letters back to the import queue, one at a time, with publisher
    confirms: each is acked off the dead queue only once the import queue has it.

    `before_publish` runs first (it resets the message's failure count).
    Returns how many were moved.
    """
    moved = 0
    with _wrapped("replay"):
        connection = pika.BlockingConnection(connection_parameters(settings))
        try:
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
