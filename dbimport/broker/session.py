"""The worker's session with RabbitMQ: deliveries in, durable results out, acks."""
from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from ..config import Settings
from ..errors import BrokerUnavailable, ResultUnroutable
from . import queues
from .connection import node_name, open_connection, wrapped
from .properties import copy_properties, result_properties
from .window import Window

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Delivery:
    """One consumed message; `properties` is opaque to everything but the broker layer."""

    tag: int
    body: bytes
    redelivered: bool
    correlation_id: str | bytes | None = None
    message_id: str | bytes | None = None
    timestamp: int | None = None
    properties: Any = None
    # Which connection of this worker it came on (see Broker.still_holds).
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
    correlation_id: str | bytes | None = None
    # A dead letter's headers (a result has none), added to its original's properties.
    headers: dict[str, Any] = field(default_factory=dict)
    source: Delivery | None = None


def _coalesce_output(connection: pika.BlockingConnection) -> None:
    """Join the frames queued for the socket into one buffer.

    pika's transport writes its queued frames one `send` each: a batch of results
    is three frames a message, so a thousand system calls where one will do (a
    third of the CPU the worker spent publishing). Joining them changes nothing
    else: the bytes and their order are the same. Left alone if this pika version
    keeps its buffers otherwise.
    """
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    if isinstance(buffers, collections.deque) and len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)


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
        # Tags of the deliveries received and not settled yet, oldest first.
        self._unacked: collections.deque[int] = collections.deque()
        self._window = Window.of(settings)
        self._connections = 0
        self._node = -1

    def _wrapped(self, action: str) -> Any:
        return wrapped(self.settings, action)

    # --- lifecycle ---------------------------------------------------------------

    def connect(self) -> None:
        """Connect to the next node of RABBITMQ_HOST that answers, and declare the queues."""
        s = self.settings
        self._connection, self._node = open_connection(
            s, name=f"dbimport-worker pid={os.getpid()} queue={s.import_queue}", first=self._node + 1
        )
        self._connections += 1
        if len(s.rabbitmq_nodes) > 1 or self._connections > 1:
            log.info("connected to RabbitMQ node %s", node_name(s, self._node))
        queues.declare_all(self._connection, s)
        with self._wrapped("open the result channel"):
            self._publish = self._connection.channel()
            self._publish.tx_select()
            self._publish.add_on_return_callback(self._on_return)

    def start_consuming(self) -> None:
        assert self._connection is not None
        with self._wrapped("consume"):
            self._consume = self._connection.channel()
            self._consume.basic_qos(prefetch_count=self._window.deliveries)
            self._consumer_tag = self._consume.basic_consume(self.settings.import_queue, self._on_message)
            self._consume.add_on_cancel_callback(self._on_cancel)

    def _resize_window(self, deliveries: int) -> None:
        """Consume again with a window of `deliveries`. Deliveries already received stay
        ours (acked on this channel as usual); any the old consumer had in transit go
        back to the queue, as redeliveries."""
        assert self._consume is not None and self._consumer_tag is not None
        with self._wrapped("consume"):
            self._consume.basic_cancel(self._consumer_tag)
            self._consume.basic_qos(prefetch_count=deliveries)
            self._consumer_tag = self._consume.basic_consume(self.settings.import_queue, self._on_message)
        log.info("consumer window: %d deliveries (messages of about %d bytes)",
                 deliveries, self._window.message_bytes)

    def stop_consuming(self) -> None:
        """Stop new deliveries; the buffered ones go back to the queue with the channel."""
        if self._consume is None or not self._consume.is_open or self._consumer_tag is None:
            return
        with self._wrapped("cancel"):
            self._consume.basic_cancel(self._consumer_tag)
        self._consumer_tag = None

    def give_back(self) -> None:
        """Stop consuming and return every unsettled delivery to the queue, so that
        other workers can take them while this one waits for the database."""
        self.stop_consuming()
        self._buffer.clear()
        self._unacked.clear()
        if self._consume is not None and self._last_tag:
            with self._wrapped("nack"):
                self._consume.basic_nack(delivery_tag=self._last_tag, multiple=True, requeue=True)

    def close(self) -> None:
        self._buffer.clear()
        self._unacked.clear()
        self._last_tag = 0
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass
        self._connection = self._consume = self._publish = None

    # --- consuming -------------------------------------------------------------------

    def _on_message(
        self, _ch: BlockingChannel, method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties, body: bytes,
    ) -> None:
        self._last_tag = method.delivery_tag
        self._unacked.append(method.delivery_tag)
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
        with self._wrapped("receive"):
            if self._consume is not None and self._consumer_tag is None and self._consume.is_open:
                raise BrokerUnavailable("consumer was cancelled by the broker")
            if not self._buffer:
                self._wait(lambda: bool(self._buffer), first_wait_s)
            if len(self._buffer) < max_count:
                self._wait(lambda: len(self._buffer) >= max_count, batch_wait_s)
        return self._take(max_count, max_bytes)

    def _take(self, max_count: int, max_bytes: int) -> list[Delivery]:
        batch: list[Delivery] = []
        size = 0
        while self._buffer and len(batch) < max_count:
            size += len(self._buffer[0].body)
            if batch and size > max_bytes:
                break
            batch.append(self._buffer.popleft())
        if batch and self._consumer_tag is not None:
            taken = sum(len(delivery.body) for delivery in batch)
            resized = self._window.taken(len(batch), taken, held=len(self._unacked))
            if resized is not None:
                self._resize_window(resized)
        return batch

    def _wait(self, done: Callable[[], bool], seconds: float) -> None:
        assert self._connection is not None
        deadline = time.monotonic() + seconds
        while True:
            self._connection.process_data_events(time_limit=max(0.0, deadline - time.monotonic()))
            if done() or time.monotonic() >= deadline:
                return

    def still_holds(self, delivery: Delivery) -> bool:
        """Whether `delivery` is still ours to settle: its connection is the current one and
        still open, as the main thread last read it (it reads the socket every few
        milliseconds while it waits). Safe to call from the database thread: it only
        reads state."""
        connection, consume = self._connection, self._consume
        if connection is None or delivery.connection != self._connections:
            return False
        return bool(connection.is_open and consume is not None and consume.is_open)

    def pump(self, seconds: float = 0.0) -> None:
        """Read what the broker sent (deliveries, heartbeats, a close), waiting up to `seconds`."""
        assert self._connection is not None
        with self._wrapped("receive"):
            self._connection.process_data_events(time_limit=seconds)

    def take(self, max_count: int, *, max_bytes: int) -> list[Delivery]:
        """A full batch from what was received already (`max_count` deliveries, or
        `max_bytes` of bodies), or nothing: no waiting."""
        size = 0
        enough = len(self._buffer) >= max_count
        if not enough:
            for delivery in self._buffer:
                size += len(delivery.body)
                if size > max_bytes:
                    enough = True
                    break
        return self._take(max_count, max_bytes) if enough else []

    def queue_depth(self, queue: str | None = None) -> int:
        """Ready messages in `queue` (the input queue by default)."""
        assert self._publish is not None
        return queues.depth(self._publish, self.settings, queue or self.settings.import_queue)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- settling --------------------------------------------------------------------

    def publish(self, messages: Sequence[Outgoing]) -> dict[int, Exception]:
        """Publish durably in one AMQP transaction; ResultUnroutable if any came back.

        A message that cannot be encoded is left out and returned as
        {index: error}: pika encodes a message's frames before it writes any, so
        nothing of it was sent, and the others are published all the same.
        """
        if not messages:
            return {}
        assert self._connection is not None and self._publish is not None
        unencodable: dict[int, Exception] = {}
        with self._wrapped("publish"):
            self._returned.clear()
            # BlockingChannel.basic_publish writes to the socket after every message;
            # the channel implementation's only queues the frames, and tx_commit
            # writes them all at once: a third of the cost of a result.
            publish = self._publish._impl.basic_publish
            frame_max = self._connection._impl.params.frame_max
            for index, message in enumerate(messages):
                try:
                    publish(
                        exchange="",
                        routing_key=message.queue,
                        body=message.body,
                        properties=self._properties(message, frame_max),
                        mandatory=True,
                    )
                except Exception as exc:
                    if not self._connection.is_open or not self._publish.is_open:
                        raise
                    unencodable[index] = exc
            _coalesce_output(self._connection)
            self._publish.tx_commit()
            # A basic.return precedes tx.commit-ok; dispatch it now.
            self._connection.process_data_events(time_limit=0)
        if self._returned:
            raise ResultUnroutable(
                f"{len(self._returned)} message(s) were returned as unroutable "
                f"(does queue {messages[0].queue!r} exist?)"
            )
        return unencodable

    @staticmethod
    def _properties(message: Outgoing, frame_max: int) -> pika.BasicProperties:
        if message.headers:
            original = message.source.properties if message.source is not None else None
            return copy_properties(original, message.headers, body_size=len(message.body), frame_max=frame_max)
        return result_properties(message.correlation_id)

    def _on_return(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        self._returned.append(body)

    def ack_through(self, tag: int) -> None:
        """Ack every unsettled delivery up to and including `tag`."""
        assert self._consume is not None
        with self._wrapped("ack"):
            self._consume.basic_ack(delivery_tag=tag, multiple=True)
        while self._unacked and self._unacked[0] <= tag:
            self._unacked.popleft()

    def requeue(self, tag: int) -> None:
        assert self._consume is not None
        with self._wrapped("nack"):
            self._consume.basic_nack(delivery_tag=tag, multiple=False, requeue=True)
        if tag in self._unacked:
            self._unacked.remove(tag)

    # --- waiting -----------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Sleep while answering heartbeats; a lost connection wakes us as BrokerUnavailable."""
        if self._connection is None or not self._connection.is_open:
            time.sleep(seconds)
            return
        with self._wrapped("heartbeat"):
            self._connection.sleep(seconds)
