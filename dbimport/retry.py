"""Retries, in one place: a batch's transaction after an outage or a race, and
reaching a service that is away."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from .errors import (
    DatabaseUnavailable,
    Refused,
    ServiceUnavailable,
    Transient,
    WriteRace,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
RECONNECT_FIRST_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 30.0
# A race (deadlock, unique violation, serialization failure) that repeats this
# often is no race: the batch is then handled message by message.
MAX_RACE_ATTEMPTS = 5

# (attempt number, the error, the delay before the next attempt in seconds)
Report = Callable[[int, BaseException, float], None]


def _stop(max_seconds: float, abort: Callable[[], bool]) -> Callable[[tenacity.RetryCallState], bool]:
    def stop(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, WriteRace) and state.attempt_number >= MAX_RACE_ATTEMPTS:
            return True
        return abort() or (state.seconds_since_start or 0.0) >= max_seconds

    return stop


def _log_before_sleep(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "database attempt %d failed (%s); retrying the whole transaction in %.1f s",
        state.attempt_number, exc, delay,
    )


def database_retry(
    *, max_seconds: float, sleep: Callable[[float], None], abort: Callable[[], bool] = lambda: False,
) -> tenacity.Retrying:
    """Retry on an outage for up to `max_seconds` (or until `abort()`), on a race a few times.

    `sleep` waits between attempts (on the worker's database thread: a wait that
    `abort` cuts short). The last error is re-raised when the policy gives up.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((DatabaseUnavailable, WriteRace)),
        stop=_stop(max_seconds, abort),
        wait=tenacity.wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S)
        + tenacity.wait_random(0, FIRST_DELAY_S),
        sleep=sleep,
        before_sleep=_log_before_sleep,
        reraise=True,
    )


def service_retry(
    *, attempt: str, sleep: Callable[[float], None], stopping: Callable[[], bool],
    deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
    retry_refused: bool = False, report: Report | None = None,
) -> tenacity.Retrying:
    """Retry reaching a service (any Transient) with a doubling delay, each failed
    attempt passed to `report` (default: logged as "`attempt` attempt N: ...;
    retrying in S s").

    A refusal (wrong credentials, no such database) is retried only with
    `retry_refused`: at start it must stop the worker at once; on a reconnect it
    is waited out like an outage. Gives up, re-raising the last error, once
    `stopping()`, or at `deadline` (None: never): the last attempt is made at
    the deadline, so the whole time is used.
    """
    doubling = tenacity.wait_exponential(multiplier=RECONNECT_FIRST_DELAY_S, max=RECONNECT_MAX_DELAY_S)

    def wait(state: tenacity.RetryCallState) -> float:
        delay = doubling(state)
        return delay if deadline is None else max(0.0, min(delay, deadline - clock()))

    def stop(state: tenacity.RetryCallState) -> bool:
        return stopping() or (deadline is not None and clock() >= deadline)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if exc is None:
            return
        if report is not None:
            report(state.attempt_number, exc, delay)
        else:
            log.warning("%s attempt %d: %s; retrying in %.1f s", attempt, state.attempt_number, exc, delay)

    retried: tuple[type[BaseException], ...] = (Transient, Refused) if retry_refused else (Transient,)
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retried),
        stop=stop, wait=wait, sleep=sleep, before_sleep=before_sleep, reraise=True,
    )


def reach(
    service: str, connect: Callable[[], T], *, timeout_s: float,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> T:
    """`connect()`, retried while `service` is unreachable, for `timeout_s` in all.

    A refusal is raised at once (waiting does not change it); an outage that
    outlasts `timeout_s` becomes ServiceUnavailable (exit 69).
    """
    retrying = service_retry(attempt=f"{service} connect", sleep=sleep, stopping=lambda: False,
                             deadline=clock() + timeout_s, clock=clock)
    try:
        return retrying(connect)
    except Transient as exc:
        raise ServiceUnavailable(gave_up(exc, timeout_s)) from None


def gave_up(exc: BaseException, timeout_s: float) -> str:
    return (
        f"{exc}; gave up after IMPORT_CONNECT_TIMEOUT_S={timeout_s:g} s (start the service, "
        "or check RABBITMQ_HOST/RABBITMQ_PORT and POSTGRES_DSN)"
    )


class Throttle:
    """Lets an action through at most once every `interval_s` (an error logged
    while a refusal lasts, say)."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return False
        self._last = now
        return True
