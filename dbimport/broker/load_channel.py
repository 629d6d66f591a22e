"""The loader's RabbitMQ channel: transactional publishing and collecting results."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ..config import Settings
from . import queues
from .connection import open_connection, wrapped
from .properties import JSON, PERSISTENT

# Results held unacked at once; others' results count too (see Channel.hold).
RESULT_PREFETCH = 2000
# Others' results are held at most this long, then requeued for their owner.
RELEASE_AFTER_S = 0.5


@dataclass(frozen=True, slots=True)
class Outgoing:
    line: int
    body: bytes


class Channel:
    """The loader's AMQP connection: a transactional channel that publishes, and a
    consumer of results that acks this run's and hands back everyone else's."""

    def __init__(self, settings: Settings, run_id: str, *, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.run_id = run_id
        self.warn = warn
        self.timestamp = int(time.time())
        self._connection: pika.BlockingConnection | None = None
        self._tx: BlockingChannel | None = None
        self._results: BlockingChannel | None = None
        self._returned: list[int] = []
        self._held: list[int] = []
        self._held_since = 0.0

    def open(self) -> None:
        self._connection, _ = open_connection(self.settings, name=f"dbimport-load {self.run_id}")
        input_queue = queues.specs(self.settings)[0]
        queues.declare(self._connection, self.settings, input_queue, warn=self.warn)
        with wrapped(self.settings, "open the publishing channel"):
            self._tx = self._connection.channel()
            self._tx.tx_select()
            self._tx.add_on_return_callback(self._on_return)

    def correlation_id(self, line: int) -> str:
        return f"{self.run_id}:{line}"

    def line_of(self, correlation_id: str | None) -> int | None:
        """The line a result answers, if it belongs to this run."""
        prefix = f"{self.run_id}:"
        if correlation_id and correlation_id.startswith(prefix) and correlation_id[len(prefix):].isdigit():
            return int(correlation_id[len(prefix):])
        return None

    def publish(self, batch: Sequence[Outgoing]) -> list[int]:
        """Publish `batch` in one transaction; returns the lines the broker returned."""
        assert self._connection is not None and self._tx is not None
        self._returned.clear()
        with wrapped(self.settings, "publish"):
            for item in batch:
                cid = self.correlation_id(item.line)
                self._tx.basic_publish("", self.settings.import_queue, item.body, pika.BasicProperties(
                    content_type=JSON, delivery_mode=PERSISTENT, message_id=cid,
                    correlation_id=cid, timestamp=self.timestamp, app_id="dbimport-load",
                ), mandatory=True)
            self._tx.tx_commit()
            # Returns come before tx.commit-ok; this also hands results to the consumer.
            self._connection.process_data_events(time_limit=0)
        self.release_held()
        return list(self._returned)

    def _on_return(self, _ch: Any, _method: Any, properties: pika.BasicProperties, _body: bytes) -> None:
        line = self.line_of(properties.correlation_id)
        if line is not None:
            self._returned.append(line)

    def consume_results(self, on_result: Callable[[int, bytes], None]) -> None:
        """Start consuming IMPORT_RESULT_QUEUE: `on_result(line, body)` for each of ours."""
        assert self._connection is not None
        s = self.settings

        def deliver(ch: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
            line = self.line_of(properties.correlation_id)
            if line is None:
                self.hold(method.delivery_tag)
                return
            on_result(line, body)
            ch.basic_ack(method.delivery_tag)

        queues.declare(self._connection, s, queues.specs(s)[1], warn=self.warn)
        with wrapped(s, "consume results"):
            self._results = self._connection.channel()
            self._results.basic_qos(prefetch_count=RESULT_PREFETCH)
            self._results.basic_consume(s.result_queue, deliver)

    def hold(self, tag: int) -> None:
        """Keep another publisher's result unacked for a moment, then requeue it.

        Requeued at once it would come straight back to us, round after round;
        held for RELEASE_AFTER_S it returns to the queue's head for its owner.
        """
        if not self._held:
            self._held_since = time.monotonic()
        self._held.append(tag)

    def release_held(self, *, now: bool = False) -> None:
        if not self._held or self._results is None:
            return
        if not now and time.monotonic() - self._held_since < RELEASE_AFTER_S:
            return
        # Ours are acked as they arrive, so every unsettled tag up to the last held is another's.
        self._results.basic_nack(delivery_tag=max(self._held), multiple=True, requeue=True)
        self._held.clear()

    def poll(self, seconds: float) -> None:
        assert self._connection is not None
        with wrapped(self.settings, "receive results"):
            self._connection.process_data_events(time_limit=seconds)
            self.release_held()

    def close(self) -> None:
        if self._connection is None or not self._connection.is_open:
            return
        try:
            self.release_held(now=True)
            self._connection.close()
        except Exception:  # closing requeues whatever is unacked anyway
            pass

