"""The worker: the consume loop, the one place that settles (publishes and acks)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from .broker import Broker, Outgoing, DEAD_REASON_HEADER, DEAD_SOURCE_HEADER
from .catalog import Catalog, read_catalog
from .config import Settings, log_safe
from .errors import BrokerUnavailable, ConfigError, DatabaseUnavailable, Transient
from .housekeeping import prune
from .pipeline import Batch, Outcome, Pipeline, log_error_results
from .retry import service_retry
from .plugins import Registry, get_plugin_manager
from .schema import current_version, installed_version
from .stats import Stats, ThroughputReporter
from .store import Store

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 600.0
# While idle, wait this long for a first message before checking stop flags.
IDLE_WAIT_S = 0.5


class ServiceUnavailable(Exception):
    """A service stayed unreachable past the start deadline (exit 69)."""


@dataclass(frozen=True)
class RunLimits:
    until_empty: bool = False
    max_messages: int | None = None
    max_runtime_s: float | None = None


class Worker:
    """Consumes batches, hands them to the pipeline, settles their outcomes."""

    def __init__(
        self, settings: Settings, *, plugin_manager: pluggy.PluginManager | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.plugin_manager = plugin_manager or get_plugin_manager()
        self.registry = Registry(self.plugin_manager)
        self.store = Store(settings.postgres_dsn)
        self.broker = Broker(settings)
        self.catalog = Catalog(loader=self._read_catalog)
        self.pipeline = Pipeline(
            settings=settings, registry=self.registry, catalog=self.catalog,
            store=self.store, plugin_manager=self.plugin_manager, holds=self.broker.holds,
        )
        self.stats = Stats()
        self._clock = clock
        self._stopping = False

    def stop(self) -> None:
        """Finish the batch in hand, settle it, and return from `run` (signal-safe)."""
        self._stopping = True

    # --- the loop ------------------------------------------------------------------

    def run(self, limits: RunLimits = RunLimits()) -> Stats:
        started = self._clock()
        deadline = None if limits.max_runtime_s is None else started + limits.max_runtime_s
        connect_deadline = started + self.settings.connect_timeout_s if limits.until_empty else None
        if not self._connect(connect_deadline):
            return self.stats
        reporter = ThroughputReporter(self.stats, interval_s=self.settings.log_interval_s, depth=self._depth)
        next_housekeeping = self._clock()
        try:
            while not self._stopping:
                if deadline is not None and self._clock() >= deadline:
                    log.info("--max-runtime reached; stopping")
                    break
                wanted = self.settings.batch_size
                if limits.max_messages is not None:
                    wanted = min(wanted, limits.max_messages - self.stats.handled)
                    if wanted <= 0:
                        log.info("--max-messages reached; stopping")
                        break
                try:
                    if not self._step(wanted, limits):
                        break
                except DatabaseUnavailable as exc:
                    if not self._outlast_database_outage(exc, limits):
                        break
                except BrokerUnavailable as exc:
                    if not self._reconnect(exc, limits):
                        break
                reporter.maybe_report()
                if self._clock() >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = self._clock() + HOUSEKEEPING_INTERVAL_S
        finally:
            self._shutdown()
        return self.stats

    def _step(self, wanted: int, limits: RunLimits) -> bool:
        """One batch; False when the queue is drained in --until-empty mode."""
        batch_wait_s = self.settings.batch_wait_ms / 1000
        # Draining for --until-empty needs no long idle wait: the depth check decides.
        first_wait_s = batch_wait_s if limits.until_empty else IDLE_WAIT_S
        deliveries = self.broker.fetch(
            wanted, max_bytes=self.settings.batch_max_bytes,
            first_wait_s=first_wait_s, batch_wait_s=batch_wait_s,
        )
        if not deliveries:
            if not limits.until_empty:
                return True
            # The depth's reply comes after any delivery sent before it: check the buffer after.
            depth = self.broker.queue_depth()
            return not (depth == 0 and self.broker.buffered == 0)
        started = self._clock()
        self.catalog.refresh_if_stale()
        batch = self.pipeline.handle(deliveries, sleep=self.broker.sleep)
        self.settle(batch.outcomes)
        self._count(batch, self._clock() - started)
        return True

    # --- settling: the only place that publishes results and acks ------------------

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Publish results and dead letters durably, then requeue or ack each delivery."""
        s = self.settings
        outgoing: list[Outgoing] = []
        for outcome in outcomes:
            result = outcome.result
            if result is None:
                continue
            outgoing.append(Outgoing(
                queue=s.result_queue,
                body=result.to_json(),
                correlation_id=outcome.delivery.correlation_id or result.feedback_id or None,
            ))
            if outcome.dead_reason is not None:
                outgoing.append(Outgoing(
                    queue=s.dead_queue,
                    body=outcome.delivery.body,
                    headers={DEAD_REASON_HEADER: outcome.dead_reason[:1000], DEAD_SOURCE_HEADER: s.import_queue},
                    source=outcome.delivery,
                ))
        self.broker.publish(outgoing)
        log_error_results(outcomes)
        answered = [o.delivery.tag for o in outcomes if o.result is not None]
        for outcome in outcomes:
            if outcome.result is None:
                self.broker.requeue(outcome.delivery.tag)
        if answered:
            self.broker.ack_through(max(answered))

    def _count(self, batch: Batch, seconds: float) -> None:
        st = self.stats
        st.observe_batch(seconds)
        st.created += batch.created
        st.updated += batch.updated
        for outcome in batch.outcomes:
            if outcome.result is None:
                st.requeued += 1
                continue
            st.handled += 1
            st.by_code[outcome.result.error] += 1
            st.replayed += outcome.replayed
            st.dead += outcome.dead_reason is not None

    # --- connections -----------------------------------------------------------------

    def _restart_deadline(self, limits: RunLimits) -> float | None:
        return self._clock() + self.settings.connect_timeout_s if limits.until_empty else None

    def _connect(self, deadline: float | None) -> bool:
        """Both services, retried with backoff: False if stopped meanwhile,
        ServiceUnavailable past `deadline` (None: retry for ever)."""
        retrying = service_retry(
            attempt="start", sleep=self._pause, stopping=lambda: self._stopping,
            deadline=deadline, clock=self._clock,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        self._check_schema()
                        self.broker.connect()
                        self.broker.start_consuming()
                    except Transient:
                        self.broker.close()
                        raise
        except Transient as exc:
            if self._stopping:
                return False
            raise ServiceUnavailable(self._safe(exc)) from None
        tries = retrying.statistics.get("attempt_number", 1)
        if tries > 1:
            log.info("connected after %d attempts", tries)
        return True

    def _pause(self, seconds: float) -> None:
        """Sleep without a broker connection, waking for a stop request."""
        end = self._clock() + seconds
        while not self._stopping and self._clock() < end:
            time.sleep(min(0.2, max(0.0, end - self._clock())))

    def _check_schema(self) -> None:
        with self.store.transaction() as conn:
            version = installed_version(conn)
        if version != current_version():
            raise ConfigError(
                "POSTGRES_DSN",
                f"the store's schema is at version {version}, this worker needs "
                f"{current_version()}: run `dbimport-worker init-db`",
            )
        self.catalog.reload()

    def _reconnect(self, exc: BrokerUnavailable, limits: RunLimits) -> bool:
        """After RabbitMQ was lost: unacked messages went back with the connection."""
        log.warning("lost RabbitMQ: %s; reconnecting", self._safe(exc))
        self.broker.close()
        return self._connect(self._restart_deadline(limits))

    def _outlast_database_outage(self, exc: DatabaseUnavailable, limits: RunLimits) -> bool:
        """PostgreSQL stayed away past IMPORT_DB_RETRY_S: give the messages back so other
        workers can take them, wait for the database (answering heartbeats), resume."""
        log.warning("PostgreSQL unavailable: %s; giving unsettled messages back to the queue", self._safe(exc))
        try:
            self.broker.give_back()
            self._wait_for_database()
            if self._stopping:
                return False
            self.broker.start_consuming()
            return True
        except BrokerUnavailable as lost:
            return self._reconnect(lost, limits)

    def _wait_for_database(self) -> None:
        """Until PostgreSQL answers (or a stop request), sleeping through heartbeats."""
        retrying = service_retry(
            attempt="PostgreSQL", sleep=self.broker.sleep, stopping=lambda: self._stopping, clock=self._clock,
        )
        try:
            for attempt in retrying:
                with attempt:
                    with self.store.transaction() as conn:
                        conn.execute("SELECT 1")
        except DatabaseUnavailable:
            return  # stopping
        log.info("PostgreSQL is back")

    def _housekeeping(self) -> None:
        try:
            prune(self.store, retention_s=self.settings.dedup_retention_s)
        except DatabaseUnavailable as exc:
            log.warning("housekeeping skipped: %s", self._safe(exc))

    def _read_catalog(self) -> dict[str, list[tuple[Any, ...]]]:
        with self.store.transaction() as conn:
            return read_catalog(conn)

    def _depth(self) -> int | None:
        try:
            return self.broker.queue_depth()
        except BrokerUnavailable:
            return None

    def _shutdown(self) -> None:
        try:
            self.broker.stop_consuming()
        except BrokerUnavailable:
            pass
        self.broker.close()
        self.store.close()

    def _safe(self, value: object) -> str:
        return log_safe(str(value), self.settings)
