"""A batch's way from deliveries to outcomes: decode, validate, match, write.

`prepare` (decode, validate, check tenancy and data: no database) and `apply`
(one transaction, retried) are separate steps, so that the worker can prepare
the next batch while the database applies this one. `apply` touches the store
and nothing else: it may run on a thread of its own. Nothing here publishes or
acks: the worker settles the outcomes.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import failures
from .broker import Delivery
from .catalog import Catalog, Database
from .config import Settings
from .errors import BadInput, Refused, Transient, WriteRace
from .events import TriggerEvent
from .feedback import feedback_id_in_prefix, feedback_id_of
from .jobs import Job
from .matcher import Matcher, Query
from .message import Envelope, MessageValidator, check_limits, parse
from .message_log import record
from .plugins import Registry
from .profile_data import ProfileWrite, check_data
from .results import Result
from .retry import database_retry
from .store import Store
from .writer import BatchOutcome, apply_batch

log = logging.getLogger(__name__)
results_log = logging.getLogger("dbimport.results")

UNKNOWN_DB_ID = 0  # failure counts of messages whose db_id was never read


@dataclass(slots=True)
class Outcome:
    """How one delivery is settled.

    `result` None: not answered, given back to the queue. `dead_reason` set:
    answered 500 and copied to the dead-letter queue.
    """

    delivery: Delivery
    result: Result | None
    dead_reason: str | None = None
    replayed: bool = False


@dataclass
class Batch:
    outcomes: list[Outcome]
    events: list[TriggerEvent] = field(default_factory=list)
    created: int = 0
    updated: int = 0


def message_key(delivery: Delivery) -> bytes:
    """What identifies a delivery across redeliveries: its body and the publisher's ids."""
    digest = hashlib.sha256()
    for part in (delivery.message_id, delivery.correlation_id, delivery.timestamp):
        digest.update(b"" if part is None else str(part).encode())
        digest.update(b"\x00")
    digest.update(delivery.body)
    return digest.digest()[:16]


def db_id_of(body: bytes, message: Any = None) -> int:
    """The body's db_id if it is a valid one, else UNKNOWN_DB_ID: the key of its failure count."""
    if message is None:
        try:
            message = parse(body, max_bytes=len(body))
        except BadInput:
            return UNKNOWN_DB_ID
    db_id = message.get("db_id") if isinstance(message, dict) else None
    if isinstance(db_id, int) and not isinstance(db_id, bool) and 1 <= db_id <= 2**31 - 1:
        return db_id
    return UNKNOWN_DB_ID


@dataclass(slots=True)
class _Internal:
    """A message that failed for a reason other than its input."""

    db_id: int
    reason: str


# A delivery after `prepare`: a job for the store, its answer already, or an internal failure.
Prepared = Job | Outcome | _Internal


class Pipeline:
    """Turns deliveries into outcomes; one transaction per batch, retried as a whole."""

    def __init__(
        self, *, settings: Settings, registry: Registry, catalog: Catalog, store: Store,
        plugin_manager: pluggy.PluginManager, holds: Callable[[Delivery], bool] = lambda d: True,
    ) -> None:
        """`holds(delivery)`: whether the worker still holds it (see message_log)."""
        self.settings = settings
        self.registry = registry
        self.catalog = catalog
        self.store = store
        self.hooks = plugin_manager.hook
        self.holds = holds
        self.validator = MessageValidator({mode: m.schema for mode, m in registry.items()})
        self.limits = settings.value_limits

    # --- the batch -------------------------------------------------------------------

    def prepare_all(self, deliveries: Sequence[Delivery]) -> list[Prepared]:
        """Each delivery decoded, validated and checked: a Job, or its answer already."""
        return [self.prepare(i, d) for i, d in enumerate(deliveries)]

    def apply(
        self, deliveries: Sequence[Delivery], prepared: Sequence[Prepared], *,
        sleep: Callable[[float], None], abort: Callable[[], bool] = lambda: False,
    ) -> Batch:
        """Outcomes for `deliveries`, in order. Raises DatabaseUnavailable when the
        store stays away longer than IMPORT_DB_RETRY_S (or `abort()`): then nothing
        is answered."""
        try:
            batch = self._retried(deliveries, prepared, sleep, abort)
        except WriteRace as exc:
            log.warning("batch kept racing (%s); handling its messages one by one", exc)
            batch = self._one_by_one(deliveries, prepared, sleep, abort)
        except BadInput as exc:
            # Found only at commit (an increment out of its field's range): one message's fault.
            log.warning("batch refused at commit (%s); handling its messages one by one", exc)
            batch = self._one_by_one(deliveries, prepared, sleep, abort)
        except (Transient, Refused):
            raise
        except Exception as exc:
            log.error("batch failed: %s; handling its messages one by one", exc, exc_info=True)
            batch = self._one_by_one(deliveries, prepared, sleep, abort)
        return batch

    def _retried(
        self, deliveries: Sequence[Delivery], prepared: Sequence[Prepared], sleep: Callable[[float], None],
        abort: Callable[[], bool],
    ) -> Batch:
        """One transaction for the batch, run again on an outage or a race."""
        jobs = [p for p in prepared if isinstance(p, Job)]
        for attempt in database_retry(max_seconds=self.settings.db_retry_s, sleep=sleep, abort=abort):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    # The failed attempt's commit may have happened: check the log.
                    for job in jobs:
                        job.maybe_applied = True
                with self.store.transaction() as conn:
                    applied = apply_batch(conn, jobs) if jobs else BatchOutcome()
                return self._outcomes(deliveries, prepared, applied)
        raise AssertionError("unreachable: the retry policy re-raises")

    def _outcomes(
        self, deliveries: Sequence[Delivery], prepared: Sequence[Prepared], applied: BatchOutcome,
    ) -> Batch:
        outcomes: list[Outcome] = []
        for delivery, item in zip(deliveries, prepared):
            if isinstance(item, Outcome):
                outcomes.append(item)
            elif isinstance(item, _Internal):
                outcomes.append(self._internal_failure(delivery, item))
            else:
                outcomes.append(Outcome(delivery, applied.results[item.index], replayed=item.index in applied.replayed))
        return Batch(outcomes, applied.events, applied.created, applied.updated)

    def _one_by_one(
        self, deliveries: Sequence[Delivery], prepared: Sequence[Prepared], sleep: Callable[[float], None],
        abort: Callable[[], bool],
    ) -> Batch:
        """Each message in its own transaction, so a poison one harms only itself."""
        merged = Batch(outcomes=[])
        for delivery, item in zip(deliveries, prepared):
            try:
                single = self._retried([delivery], [item], sleep, abort)
            except BadInput as exc:
                # A matcher judged the input bad only while looking it up.
                result = Result.failed(exc, feedback_id=self._feedback_id(delivery))
                single = Batch([Outcome(delivery, result)])
            except Refused:
                raise
            except Transient as exc:
                if not isinstance(exc, WriteRace):
                    raise
                single = Batch([self._internal_failure(delivery, _Internal(db_id_of(delivery.body), str(exc)))])
            except Exception as exc:
                log.error("message failed: %s", exc, exc_info=True)
                reason = f"{type(exc).__name__}: {exc}"
                single = Batch([self._internal_failure(delivery, _Internal(db_id_of(delivery.body), reason))])
            merged.outcomes.extend(single.outcomes)
            merged.events.extend(single.events)
            merged.created += single.created
            merged.updated += single.updated
        return merged

    # --- one message -----------------------------------------------------------------

    def prepare(self, index: int, delivery: Delivery) -> Prepared:
        """Decode, validate, check tenancy and data: a Job, or the answer already."""
        message: Any = None
        try:
            message = parse(delivery.body, max_bytes=self.settings.max_message_bytes)
            check_limits(
                message, delivery.body,
                max_depth=self.settings.max_depth, max_string_chars=self.settings.max_string_chars,
            )
            envelope = self.validator.validate(message)
            db = self.catalog.database(envelope.account_id, envelope.db_id)
            matcher = self.registry[envelope.mode]
            try:
                query, write = self._match_and_check(envelope, matcher, db)
            except BadInput:
                # Maybe a field or resource was declared since the catalog was read.
                fresh = self.catalog.reloaded(db)
                if fresh is None:
                    raise
                db = fresh
                query, write = self._match_and_check(envelope, matcher, db)
        except BadInput as exc:
            feedback_id = feedback_id_in_prefix(delivery.body) if message is None else feedback_id_of(message)
            return Outcome(delivery, Result.failed(exc, feedback_id=feedback_id))
        except (Transient, Refused):
            raise
        except Exception as exc:
            log.error("preparing a message failed: %s", exc, exc_info=True)
            return _Internal(db_id_of(delivery.body, message), f"{type(exc).__name__}: {exc}")
        return Job(
            index=index,
            envelope=envelope,
            db=db,
            matcher=matcher,
            query=query,
            write=write,
            message_key=message_key(delivery),
            maybe_applied=delivery.redelivered,
            still_held=functools.partial(self.holds, delivery),
        )

    def _match_and_check(self, envelope: Envelope, matcher: Matcher, db: Database) -> tuple[Query, ProfileWrite]:
        if envelope.resource_id is not None:
            db.resource(envelope.resource_id)
        query = matcher.prepare(envelope.body, db)
        write = check_data(
            envelope.data, db, self.limits, max_subscriptions=self.settings.max_subscriptions,
            skip_invalid_subscriptions=envelope.skip_invalid_subscriptions,
        )
        return query, write

    def _internal_failure(self, delivery: Delivery, failure: _Internal) -> Outcome:
        """Count the failure; give the message back, or after too many, bury it."""
        key = message_key(delivery)
        feedback_id = self._feedback_id(delivery)
        with self.store.transaction() as conn:
            failed = failures.count(conn, failure.db_id, key, failure.reason)
            if failed < self.settings.max_deliveries:
                log.warning(
                    "message (feedback_id=%r) failed %d of %d times: %s; giving it back to the queue",
                    feedback_id, failed, self.settings.max_deliveries, failure.reason,
                )
                return Outcome(delivery, None)
            result = Result.internal(failure.reason, feedback_id=feedback_id)
            if failure.db_id != UNKNOWN_DB_ID:
                # Its last answer, whatever an earlier delivery of it logged.
                record(conn, failure.db_id, [(key, result)], overwrite=lambda _key: True)
        log.error(
            "message (feedback_id=%r) failed %d times; answering 500 and moving it to %s",
            feedback_id, failed, self.settings.dead_queue,
        )
        return Outcome(delivery, result, dead_reason=failure.reason)

    def _feedback_id(self, delivery: Delivery) -> str:
        try:
            return feedback_id_of(parse(delivery.body, max_bytes=self.settings.max_message_bytes))
        except BadInput:
            return feedback_id_in_prefix(delivery.body)

    # --- after commit ----------------------------------------------------------------

    def notify(self, events: list[TriggerEvent]) -> None:
        """Tell the plugins of a committed batch's events (before its results are published)."""
        if not events:
            return
        try:
            self.hooks.dbimport_events_committed(events=events)
        except Exception as exc:
            log.error("a dbimport_events_committed hook failed: %s", exc, exc_info=True)


def log_error_results(outcomes: Sequence[Outcome]) -> None:
    """Every error result goes to the job log with its feedback_id, code and text."""
    for outcome in outcomes:
        result = outcome.result
        if result is not None and result.error:
            results_log.warning(
                "error %d feedback_id=%r: %s", result.error, result.feedback_id, result.error_text
            )
