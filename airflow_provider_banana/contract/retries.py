"""Decide what may be sent again, and after how long: the one retry policy of both hooks."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.contract.validation import validate_count, validate_seconds
from airflow_provider_banana.contract.wire import CHECK, START
from airflow_provider_banana.exceptions import (
    BananaCertificateError,
    BananaConnectError,
    BananaHTTPError,
    BananaProtocolError,
    BananaReplyTooLargeError,
    BananaResponseLostError,
)

if TYPE_CHECKING:
    import tenacity


def start_refused(status_code: int | None, retry_after: float | None) -> bool:
    """
    Return whether an HTTP status proves that the server refused a Start without taking it.

    Only the server's own "come back later" proves it: ``429 Too Many Requests`` (with or without
    ``Retry-After``), and ``503 Service Unavailable`` *with* a valid ``Retry-After``. A bare 503,
    like every other 5xx (500, 502, 504 ...), is what a gateway (Envoy, Istio, an ingress) answers
    when the app failed or the connection broke *after* the Start was forwarded to it ("upstream
    connect error or disconnect/reset before headers"): the Start may have been taken and billed.

    :param status_code: the reply's HTTP status.
    :param retry_after: the seconds its valid ``Retry-After`` asked for, or ``None`` if it gave none.
    """
    return status_code == 429 or (status_code == 503 and retry_after is not None)


def is_retryable(error: BaseException, endpoint: str) -> bool:
    """
    Return whether a request that raised ``error`` may be sent again.

    Check is idempotent: connection failures, lost answers, garbled bodies, 5xx and 429 are retried.
    Start is billed per call: it is sent again only where it provably was not taken: no connection,
    or a refusal (:func:`start_refused`: 429, or 503 with ``Retry-After``); never after a lost
    answer or any other 5xx. A failed inference (:class:`BananaCallError`) is never retried here.

    :param error: what the request raised.
    :param endpoint: :data:`START` or :data:`CHECK`.
    """
    if isinstance(error, BananaCertificateError):  # nothing was sent, but the same certificate fails again
        return False
    if isinstance(error, BananaConnectError):
        return True
    if isinstance(error, BananaReplyTooLargeError):  # the same request would bring the same reply
        return False
    if isinstance(error, BananaHTTPError):
        status = error.status_code or 0
        if endpoint == START:
            return start_refused(status, error.retry_after)
        return status == 429 or status >= 500
    if isinstance(error, (BananaResponseLostError, BananaProtocolError)):
        return endpoint == CHECK
    return False


@dataclass(frozen=True)
class BananaRetryPolicy:
    """
    The retry policy of every request: bounded attempts, exponential backoff with jitter.

    :param max_attempts: tries of one request in all, the first included (1 means no retry).
    :param initial_delay: the first backoff, in seconds; it doubles with each attempt.
    :param max_delay: the longest pause between two attempts, ``Retry-After`` included.
    :param jitter: up to this many random seconds are added to each backoff, so that many
        clients that failed together do not come back together.
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        # Frozen: the checked values are set through object.__setattr__.
        object.__setattr__(self, "max_attempts", validate_count("max_attempts", self.max_attempts))
        for name in ("initial_delay", "max_delay", "jitter"):
            object.__setattr__(self, name, validate_seconds(name, getattr(self, name), zero_ok=True))

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """
        Return the pause before attempt ``attempt + 1``.

        The backoff is ``initial_delay * 2 ** (attempt - 1)`` plus jitter. A ``Retry-After`` the
        error carries lengthens the pause, never shortens it: ``Retry-After: 0`` (or a date in the
        past) still waits the backoff, so that a server cannot make every attempt go out at once.
        Either way the pause is at most ``max_delay``.

        :param attempt: the number of the attempt that just failed, from 1.
        :param error: what it raised; a ``Retry-After`` it carries is honoured.
        """
        backoff = min(self.initial_delay * 2 ** (attempt - 1) + random.uniform(0, self.jitter), self.max_delay)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(float(retry_after), backoff), self.max_delay)
        return backoff

    def pause_before_retry(
        self, endpoint: str, attempt: int, error: BaseException, *, deadline: float | None = None
    ) -> float | None:
        """
        Return the pause before sending a request again, or ``None`` if it must not be sent again.

        The same decisions as :meth:`tenacity_kwargs`, for a loop that needs no retry object per
        request (the async hook: one per long poll, thousands alive at once in a triggerer).

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param attempt: the number of the attempt that just failed, from 1.
        :param error: what it raised.
        :param deadline: a ``time.time()`` after which no retry starts (its pause would end past it).
        """
        if not is_retryable(error, endpoint) or attempt >= self.max_attempts:
            return None
        pause = self.delay(attempt, error)
        if deadline is not None and time.time() + pause >= deadline:
            return None
        return pause

    def tenacity_kwargs(
        self,
        endpoint: str,
        *,
        deadline: float | None = None,
        before_sleep: Callable[[tenacity.RetryCallState], Any] | None = None,
    ) -> dict[str, Any]:
        """
        Return the arguments of ``tenacity.Retrying`` / ``tenacity.AsyncRetrying`` for one request.

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param deadline: a ``time.time()`` after which no retry starts (its pause would end past it).
        :param before_sleep: called before each pause, to log it.
        """

        def retry(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            return error is not None and is_retryable(error, endpoint)

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.delay(state.attempt_number, error)

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return deadline is not None and time.time() + state.upcoming_sleep >= deadline

        kwargs: dict[str, Any] = {"retry": retry, "wait": wait, "stop": stop, "reraise": True}
        if before_sleep is not None:
            kwargs["before_sleep"] = before_sleep
        return kwargs


def describe_retry(state: tenacity.RetryCallState) -> tuple[int, float, str]:
    """
    Return ``(attempt, pause, reason)`` of a retry about to happen, for a log line.

    :param state: tenacity's state in ``before_sleep``.
    """
    error = state.outcome.exception() if state.outcome else None
    return state.attempt_number, state.upcoming_sleep, str(error)
