"""Retries, in one place: a batch's transaction after an outage or a race, and
reaching a service that is away."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import tenacity

from .errors import DatabaseUnavailable, Transient, WriteRace

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
RECONNECT_FIRST_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 30.0
# A race (deadlock, unique violation, serialization failure) that repeats this
# often is no race: the batch is then handled message by message.
MAX_RACE_ATTEMPTS = 5


def _stop(max_seconds: float) -> Callable[[tenacity.RetryCallState], bool]:
    def stop(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, WriteRace) and state.attempt_number >= MAX_RACE_ATTEMPTS:
            return True
        return (state.seconds_since_start or 0.0) >= max_seconds

    return stop


def _log_before_sleep(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "database attempt %d failed (%s); retrying the whole transaction in %.1f s",
        state.attempt_number, exc, delay,
    )


def database_retry(*, max_seconds: float, sleep: Callable[[float], None]) -> tenacity.Retrying:
    """Retry on an outage for up to `max_seconds`, on a race a few times.

    `sleep` keeps the AMQP connection alive while waiting (the broker's sleep).
    The last error is re-raised when the policy gives up.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((DatabaseUnavailable, WriteRace)),
        stop=_stop(max_seconds),
        wait=tenacity.wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S)
        + tenacity.wait_random(0, FIRST_DELAY_S),
        sleep=sleep,
        before_sleep=_log_before_sleep,
        reraise=True,
    )


def service_retry(
    *, attempt: str, sleep: Callable[[float], None], stopping: Callable[[], bool],
    deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
) -> tenacity.Retrying:
    """Retry reaching a service (any Transient) with a doubling delay, each attempt
    logged as "`attempt` attempt N: ...; retrying in S s".

    Gives up, re-raising the last error, once `stopping()` or when the next try
    would fall after `deadline` (None: never).
    """
    wait = tenacity.wait_exponential(multiplier=RECONNECT_FIRST_DELAY_S, max=RECONNECT_MAX_DELAY_S)

    def stop(state: tenacity.RetryCallState) -> bool:
        return stopping() or (deadline is not None and clock() + wait(state) > deadline)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s attempt %d: %s; retrying in %.1f s", attempt, state.attempt_number, exc, delay)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Transient),
        stop=stop, wait=wait, sleep=sleep, before_sleep=before_sleep, reraise=True,
    )
