"""The RabbitMQ boundary: the only package that imports pika.

Everything above it sees deliveries, outgoing messages and dbimport's own
errors (BrokerUnavailable, BrokerRefused), never pika's.
"""
from __future__ import annotations

from .connection import open_connection
from .dead_letters import (
    DEAD_REASON_HEADER,
    DEAD_SOURCE_HEADER,
    dead_letter_headers,
    move_dead_letters,
)
from .properties import result_correlation_id
from .queues import QueueSpec, declare_all, problems, specs
from .session import Broker, Delivery, Outgoing

__all__ = [
    "DEAD_REASON_HEADER", "DEAD_SOURCE_HEADER", "Broker", "Delivery", "Outgoing", "QueueSpec",
    "dead_letter_headers", "declare_all", "move_dead_letters", "open_connection", "problems",
    "result_correlation_id", "specs",
]
