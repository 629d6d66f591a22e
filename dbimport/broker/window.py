"""The consumer's window: how many unacked deliveries the broker may send ahead.

AMQP bounds a consumer's prefetch by count only, so a fixed IMPORT_PREFETCH
holds up to that many bodies of whatever size: a thousand messages of 900 KB
are 900 MB in the worker before the first batch is written. The window bounds
the bytes instead. It aims at WINDOW_BATCHES batches of IMPORT_BATCH_MAX_BYTES
(enough for one batch applied, one ready and one arriving), at the size of the
messages lately taken, and never above IMPORT_PREFETCH. It starts as if every
message were as large as IMPORT_MAX_MESSAGE_BYTES, and adapts after each batch.

RabbitMQ fixes a consumer's prefetch when it starts consuming, so a new window
takes a new consumer (see Broker); that is done only when the window should
halve or at least double, not for every batch. A window that grows counts the
deliveries still held: the old and the new consumer together never hold more
than IMPORT_PREFETCH.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings

WINDOW_BATCHES = 4


@dataclass
class Window:
    """The window's size in deliveries, and what it was sized for."""

    most: int  # IMPORT_PREFETCH
    budget: int  # bytes of bodies the window aims at
    message_bytes: float  # the size of a message, as lately taken
    deliveries: int = 0
    _measured: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Window:
        window = cls(
            most=settings.prefetch,
            budget=WINDOW_BATCHES * settings.batch_max_bytes,
            message_bytes=float(settings.max_message_bytes),
        )
        window.deliveries = window.wanted()
        return window

    def wanted(self) -> int:
        """Deliveries whose bodies fill the budget at the current message size."""
        return max(1, min(self.most, int(self.budget // max(1.0, self.message_bytes))))

    def taken(self, count: int, body_bytes: int, *, held: int) -> int | None:
        """A batch of `count` deliveries and `body_bytes` was taken, `held` deliveries
        are unacked: the new window, when it should change, else None."""
        if count <= 0:
            return None
        mean = body_bytes / count
        # The first batch replaces the guess; later ones are averaged in.
        self.message_bytes = (self.message_bytes + mean) / 2 if self._measured else mean
        self._measured = True
        wanted = self.wanted()
        if wanted * 2 <= self.deliveries:
            self.deliveries = wanted
            return wanted
        if wanted >= 2 * self.deliveries:
            grown = max(self.deliveries, wanted - held)
            if 2 * grown >= 3 * self.deliveries:
                self.deliveries = grown
                return grown
        return None
