"""The worker: the consume loop, the one place that settles (publishes and acks).

The loop overlaps batches: while the database thread applies batch N (one
transaction), batch N+1 waits, prepared, in its queue, and the main thread
settles batch N-1 (publishes its results in one AMQP transaction, then acks it)
and takes in the next deliveries. Order and durability are kept: a batch is
applied only after the one before it committed (one database thread), and a
message is acked only after its batch committed and its result was stored by
the broker. pika is used by the main thread only.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from .broker import Broker, Delivery, Outgoing, dead_letter_headers, result_correlation_id
from .catalog import Catalog, read_catalog
from .config import Settings
from .errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    DatabaseRefused,
    DatabaseUnavailable,
    Refused,
    ServiceUnavailable,
    Transient,
)
from .housekeeping import prune
from .migrations import current_version, installed_version
from .pipeline import Batch, Outcome, Pipeline, log_error_results
from .plugins import Registry, get_plugin_manager
from .results import Result
from .retry import Throttle, gave_up, service_retry
from .stats import Stats, ThroughputReporter
from .store import Store

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 600.0
# While idle, wait this long for a first message before checking stop flags.
IDLE_WAIT_S = 0.5
# A refusal that lasts (credentials rotated under a running worker) is logged this often.
REFUSAL_LOG_INTERVAL_S = 60.0
# While the main thread waits for the database thread, it answers AMQP heartbeats
# and takes in deliveries this often.
PUMP_INTERVAL_S = 0.01
# Batches handed to the database thread at once: one applied, one ready behind it.
MAX_IN_FLIGHT = 2


@dataclass
class InFlight:
    """A batch handed to the database thread, not settled yet."""

    deliveries: list[Delivery]
    future: concurrent.futures.Future[Batch]
    started: float


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
        # The database thread's connection, and the main thread's (catalog, schema, probes).
        self.store = Store(settings.postgres_dsn)
        self.main_store = Store(settings.postgres_dsn, application_name="dbimport-worker catalog")
        self.broker = Broker(settings)
        self.catalog = Catalog(loader=self._read_catalog, limits=settings.value_limits)
        self.pipeline = Pipeline(
            settings=settings, registry=self.registry, catalog=self.catalog,
            store=self.store, plugin_manager=self.plugin_manager, holds=self.broker.still_holds,
        )
        self.stats = Stats()
        self._clock = clock
        self._stopping = False
        self._refusal_log = Throttle(REFUSAL_LOG_INTERVAL_S, clock=clock)
        self._db: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: collections.deque[InFlight] = collections.deque()
        # Set to cut the database thread's retries short (an outage the main thread outlasts).
        self._abort = threading.Event()

    def stop(self) -> None:
        """Finish the batch in hand, settle it, and return from `run` (signal-safe)."""
        self._stopping = True

    # --- the loop ------------------------------------------------------------------

    def run(self, limits: RunLimits = RunLimits()) -> Stats:
        started = self._clock()
        deadline = None if limits.max_runtime_s is None else started + limits.max_runtime_s
        connect_deadline = started + self.settings.connect_timeout_s if limits.until_empty else None
        if not self._connect(connect_deadline, at_start=True):
            return self.stats
        reporter = ThroughputReporter(self.stats, interval_s=self.settings.log_interval_s, depth=self._depth)
        next_housekeeping = self._clock()
        self._db = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbimport-db")
        try:
            while True:
                try:
                    if not self._step(self._wanted(limits, deadline), limits):
                        break
                except (DatabaseUnavailable, DatabaseRefused) as exc:
                    if not self._outlast_database_outage(exc, limits):
                        break
                except (BrokerUnavailable, BrokerRefused) as exc:
                    if not self._reconnect(exc, limits):
                        break
                reporter.maybe_report()
                if self._clock() >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = self._clock() + HOUSEKEEPING_INTERVAL_S
        finally:
            self._shutdown()
        return self.stats

    def _wanted(self, limits: RunLimits, deadline: float | None) -> int:
        """How many messages the next batch may take: 0 once the run must stop."""
        if self._stopping:
            return 0
        if deadline is not None and self._clock() >= deadline:
            log.info("--max-runtime reached; stopping")
            self._stopping = True
            return 0
        wanted = self.settings.batch_size
        if limits.max_messages is not None:
            in_flight = sum(len(batch.deliveries) for batch in self._in_flight)
            wanted = min(wanted, limits.max_messages - self.stats.handled - in_flight)
            if wanted <= 0 and in_flight == 0:
                log.info("--max-messages reached; stopping")
        return max(0, wanted)

    def _step(self, wanted: int, limits: RunLimits) -> bool:
        """Hand a batch to the database thread, or settle the oldest in hand, or wait a
        moment for either. False when the run is over: stopped, a limit reached, or the
        queue drained in --until-empty mode, with nothing left in hand."""
        in_flight = self._in_flight
        if wanted and len(in_flight) < MAX_IN_FLIGHT:
            deliveries = self._fetch(wanted, limits, busy=bool(in_flight))
            if deliveries:
                self._submit(deliveries)
                if len(in_flight) < MAX_IN_FLIGHT:
                    return True
        if in_flight:
            # Settle the oldest batch once it is applied; while it is, keep the
            # connection read (heartbeats, deliveries for the next batch).
            if in_flight[0].future.done() or len(in_flight) == MAX_IN_FLIGHT or not wanted:
                self._settle(in_flight.popleft())
            else:
                self.broker.pump(PUMP_INTERVAL_S)
            return True
        if not wanted:
            return False  # stopping, or a limit reached, and nothing in hand
        if not limits.until_empty:
            return True
        # The depth's reply comes after any delivery sent before it: check the buffer after.
        depth = self.broker.queue_depth()
        return not (depth == 0 and self.broker.buffered == 0)

    def _submit(self, deliveries: list[Delivery]) -> None:
        """Prepare a batch here, and queue it for the database thread."""
        self.catalog.refresh_if_stale()
        prepared = self.pipeline.prepare_all(deliveries)
        assert self._db is not None
        future = self._db.submit(self.pipeline.apply, deliveries, prepared, sleep=self._db_sleep,
                                 abort=self._abort.is_set)
        self._in_flight.append(InFlight(deliveries, future, self._clock()))

    def _fetch(self, wanted: int, limits: RunLimits, *, busy: bool) -> list[Delivery]:
        """The next batch. While one is in hand, only a full batch already received:
        settling the one in hand must not wait for new messages."""
        if busy:
            return self.broker.take(wanted, max_bytes=self.settings.batch_max_bytes)
        batch_wait_s = self.settings.batch_wait_ms / 1000
        # Draining for --until-empty needs no long idle wait: the depth check decides.
        first_wait_s = batch_wait_s if limits.until_empty else IDLE_WAIT_S
        return self.broker.fetch(
            wanted, max_bytes=self.settings.batch_max_bytes, first_wait_s=first_wait_s, batch_wait_s=batch_wait_s,
        )

    def _settle(self, batch_in_hand: InFlight) -> None:
        """Wait for the database thread's outcome of a batch, then settle it."""
        batch = self._result(batch_in_hand.future)
        self.pipeline.notify(batch.events)
        self.settle(batch.outcomes)
        self._count(batch, self._clock() - batch_in_hand.started)

    def _result(self, future: concurrent.futures.Future[Batch]) -> Batch:
        """The future's batch, answering heartbeats and taking in deliveries meanwhile."""
        while True:
            try:
                return future.result(timeout=PUMP_INTERVAL_S)
            except concurrent.futures.TimeoutError:
                self.broker.pump()

    def _db_sleep(self, seconds: float) -> None:
        """The database thread's wait between attempts, cut short by an abort."""
        self._abort.wait(seconds)

    def _drop_in_flight(self) -> None:
        """Let the batches in hand end (their retries cut short) and forget them: their
        deliveries go back to the queue, and what they committed is answered from the
        message log when they come back."""
        in_hand = list(self._in_flight)
        self._in_flight.clear()
        if not in_hand:
            return
        self._abort.set()
        try:
            for batch in in_hand:
                batch.future.cancel()  # not started yet: never applied
            concurrent.futures.wait([batch.future for batch in in_hand])
        finally:
            self._abort.clear()

    # --- settling: the only place that publishes results and acks ------------------

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Publish results and dead letters durably, then requeue or ack each delivery.

        Whatever a message carried, it is answered: a result that cannot be built
        or encoded becomes that message's 500 and a dead letter, never an error
        of the whole batch (which would be retried, and fail again, for ever).
        """
        outcomes = list(outcomes)
        outgoing: list[Outgoing] = []
        owner: list[int] = []  # outgoing[i] belongs to outcomes[owner[i]]
        for position, outcome in enumerate(outcomes):
            if outcome.result is None:
                continue
            try:
                built = self._messages_for(outcome)
            except Exception as exc:
                log.error("building the result of a message failed: %s", exc, exc_info=True)
                outcome = outcomes[position] = self._unpublishable(outcome, exc)
                built = self._messages_for(outcome)
            outgoing.extend(built)
            owner.extend([position] * len(built))
        unencodable = self.broker.publish(outgoing)
        if unencodable:
            again: list[Outgoing] = []
            for index, error in sorted(unencodable.items()):
                position = owner[index]
                if outcomes[position].dead_reason is not None and outgoing[index].source is not None:
                    continue  # its 500 is in the batch; the dead letter alone failed
                log.error("a result could not be encoded: %s", error)
                outcomes[position] = self._unpublishable(outcomes[position], error)
                again.extend(self._messages_for(outcomes[position], plain=True))
            self.broker.publish(again)
        log_error_results(outcomes)
        answered = [o.delivery.tag for o in outcomes if o.result is not None]
        for outcome in outcomes:
            if outcome.result is None:
                self.broker.requeue(outcome.delivery.tag)
        if answered:
            self.broker.ack_through(max(answered))

    def _messages_for(self, outcome: Outcome, *, plain: bool = False) -> list[Outgoing]:
        """The result of `outcome`, and its dead letter if it has one. `plain`: no
        property taken from the input (its correlation_id, its headers)."""
        s = self.settings
        result = outcome.result
        assert result is not None
        correlation_id = None if plain else result_correlation_id(
            outcome.delivery.correlation_id, result.feedback_id
        )
        messages = [Outgoing(queue=s.result_queue, body=result.to_json(), correlation_id=correlation_id)]
        if outcome.dead_reason is not None:
            messages.append(Outgoing(
                queue=s.dead_queue,
                body=outcome.delivery.body,
                headers=dead_letter_headers(outcome.dead_reason, s.import_queue),
                source=None if plain else outcome.delivery,
            ))
        return messages

    def _unpublishable(self, outcome: Outcome, exc: BaseException) -> Outcome:
        """A 500 and a dead letter for a message whose result could not be published."""
        reason = f"the result could not be published: {type(exc).__name__}: {exc}"
        feedback_id = outcome.result.feedback_id if outcome.result is not None else ""
        return Outcome(outcome.delivery, Result.internal(reason, feedback_id=feedback_id), dead_reason=reason)

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

    def _connect(self, deadline: float | None, *, at_start: bool = False) -> bool:
        """Both services, retried with backoff: False if stopped meanwhile.

        Past `deadline` (None: retry for ever) the last error is raised: a
        refusal as itself, an outage as ServiceUnavailable. At start a refusal
        (credentials, no such database) is raised at once; later it is waited
        out like an outage, logged as an error at most once a minute.
        """
        retrying = service_retry(
            attempt="start" if at_start else "reconnect", sleep=self._pause,
            stopping=lambda: self._stopping, deadline=deadline, clock=self._clock,
            retry_refused=not at_start, report=self._report_attempt("start" if at_start else "reconnect"),
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        self._check_schema()
                        self.broker.connect()
                        self.broker.start_consuming()
                    except (Transient, Refused):
                        self.broker.close()
                        raise
        except (Transient, Refused) as exc:
            if self._stopping:
                return False
            if isinstance(exc, Refused):
                raise
            raise ServiceUnavailable(gave_up(exc, self.settings.connect_timeout_s)) from None
        tries = retrying.statistics.get("attempt_number", 1)
        if tries > 1:
            log.info("connected after %d attempts", tries)
        return True

    def _report_attempt(self, attempt: str) -> Callable[[int, BaseException, float], None]:
        def report(number: int, exc: BaseException, delay_s: float) -> None:
            self._note(exc, f"{attempt} attempt {number}: %s; retrying in {delay_s:.1f} s")

        return report

    def _note(self, exc: BaseException, template: str) -> None:
        """Log a failure to reach a service: an outage as a warning; a refusal (which
        only an operator can end) counted, and as an error at most once a minute."""
        if not isinstance(exc, Refused):
            log.warning(template, exc)
            return
        self.stats.refusals["rabbitmq" if isinstance(exc, BrokerRefused) else "postgresql"] += 1
        if self._refusal_log.ready():
            log.error(template + " (a refusal is logged at most once a minute while it lasts)", exc)

    def _pause(self, seconds: float) -> None:
        """Sleep without a broker connection, waking for a stop request."""
        end = self._clock() + seconds
        while not self._stopping and self._clock() < end:
            time.sleep(min(0.2, max(0.0, end - self._clock())))

    def _check_schema(self) -> None:
        with self.main_store.transaction() as conn:
            version = installed_version(conn)
        if version != current_version():
            raise ConfigError(
                "POSTGRES_DSN",
                f"the store's schema is at version {version}, this worker needs "
                f"{current_version()}: run `dbimport-worker init-db`",
            )
        self.catalog.reload()

    def _reconnect(self, exc: BrokerUnavailable | BrokerRefused, limits: RunLimits) -> bool:
        """After RabbitMQ was lost: unacked messages went back with the connection."""
        self._note(exc, "lost RabbitMQ: %s; reconnecting")
        self._drop_in_flight()
        self.broker.close()
        return self._connect(self._restart_deadline(limits))

    def _outlast_database_outage(self, exc: DatabaseUnavailable | DatabaseRefused, limits: RunLimits) -> bool:
        """PostgreSQL stayed away past IMPORT_DB_RETRY_S, or refused us: give the messages
        back so other workers can take them, wait for the database (answering heartbeats),
        resume."""
        self._note(exc, "PostgreSQL unavailable: %s; giving unsettled messages back to the queue")
        self._drop_in_flight()
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
            retry_refused=True, report=self._report_attempt("PostgreSQL"),
        )
        try:
            for attempt in retrying:
                with attempt:
                    with self.main_store.transaction() as conn:
                        conn.execute("SELECT 1")
        except (DatabaseUnavailable, DatabaseRefused):
            return  # stopping
        log.info("PostgreSQL is back")

    def _housekeeping(self) -> None:
        """Prune the bookkeeping tables on the database thread, between two batches."""
        assert self._db is not None
        self._db.submit(self._prune)

    def _prune(self) -> None:
        try:
            prune(self.store, retention_s=self.settings.dedup_retention_s)
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            log.warning("housekeeping skipped: %s", exc)
        except Exception:
            log.exception("housekeeping failed")

    def _read_catalog(self) -> dict[str, list[tuple[Any, ...]]]:
        with self.main_store.transaction() as conn:
            return read_catalog(conn)

    def _depth(self) -> int | None:
        try:
            return self.broker.queue_depth()
        except BrokerUnavailable:
            return None

    def _shutdown(self) -> None:
        self._drop_in_flight()
        if self._db is not None:
            self._db.shutdown(wait=True, cancel_futures=True)
            self._db = None
        try:
            self.broker.stop_consuming()
        except BrokerUnavailable:
            pass
        self.broker.close()
        self.store.close()
        self.main_store.close()
