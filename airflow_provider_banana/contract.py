"""
Own the Banana v4 contract: every decision about a request or a reply, with no I/O.

The hook (``requests``), the async hook used by the trigger (``httpx``), the
operator and the sensor all call this module; none of them reads ``message``
itself. It covers:

* validating user input before any request is sent;
* building Start and Check bodies;
* parsing a reply and classifying it with the decision table of
  ``shared/BANANA_API.md`` (running, succeeded, failed), including the recorded
  quirks (a finished Start with ``message: ""`` and ``callID: ""``, "error" as a
  case-insensitive substring anywhere in ``message``);
* turning a transport failure, described by the I/O layer as a
  :class:`TransportFailure`, into our exception;
* the one retry policy (what may be retried, how long to wait), fed to both
  ``tenacity.Retrying`` and ``tenacity.AsyncRetrying``;
* the pacing of Checks and the request timeouts;
* the trigger event payload, built and read back.
"""

from __future__ import annotations

import enum
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaConfigError,
    BananaConnectError,
    BananaError,
    BananaHTTPError,
    BananaProtocolError,
    BananaResponseLostError,
    BananaTimeoutError,
    BananaTransportError,
)

if TYPE_CHECKING:
    import tenacity

DEFAULT_BASE_URL = "https://api.banana.dev/"
START = "start"
CHECK = "check"
_PATHS = {START: "start/v4/", CHECK: "check/v4/"}

#: Default seconds an inference may take, from Start to result.
DEFAULT_TIMEOUT = 3600.0
#: Default pause between Checks when long polling is off, or after a quick answer.
DEFAULT_POLL_INTERVAL = 5.0

_MAX_DETAIL = 300


class CallState(str, enum.Enum):
    """Where a call stands, as decided by :func:`parse_reply`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class BananaResult:
    """
    One parsed Start or Check reply that did not report a failure.

    :param call_id: the call's id; ``None`` when a Start finished at once and Banana sent ``""``.
    :param finished: whether the call is done and ``model_outputs`` holds its result.
    :param model_outputs: the ``modelOutputs`` list when finished (its one element is the
        model's JSON reply, which may itself be a list), else ``None``.
    :param message: Banana's ``message``, verbatim (may be ``""``).
    :param api_version: Banana's free-form ``apiVersion`` label, for logs only.
    """

    call_id: str | None
    finished: bool
    model_outputs: list[Any] | None
    message: str
    api_version: str | None

    @property
    def state(self) -> CallState:
        """Return the call's state."""
        return CallState.SUCCEEDED if self.finished else CallState.RUNNING

    @property
    def status_text(self) -> str:
        """Return the status a person reads in the log ("running", "queued", "success" ...)."""
        return self.message or self.state.value


# ---------------------------------------------------------------------------------------------------------
# Input validation: every check runs before any request is sent.


def validate_api_key(api_key: str | None) -> str:
    """
    Return the API key, or raise if it is missing or blank.

    :param api_key: the connection's password.
    :raises BananaConfigError: no key. The key itself is never put in the message.
    """
    if not isinstance(api_key, str) or not api_key.strip():
        raise BananaConfigError("The Banana connection has no API key: set the connection's password to your API key")
    return api_key.strip()


def validate_base_url(base_url: str | None) -> str:
    """
    Return the base URL with a trailing slash, defaulting to Banana's public API.

    :param base_url: the connection's host, e.g. ``https://api.banana.dev/`` or ``http://127.0.0.1:8000``.
    :raises BananaConfigError: a URL without an http(s) scheme or host.
    """
    url = (base_url or "").strip() or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BananaConfigError(
            f"The Banana connection's host must be a URL with http:// or https://, got {url!r} "
            f"(for example {DEFAULT_BASE_URL!r} or 'http://127.0.0.1:8000/')"
        )
    if parts.query or parts.fragment:
        raise BananaConfigError(f"The Banana base URL must not have a query or fragment, got {url!r}")
    return url if url.endswith("/") else url + "/"


def endpoint_url(base_url: str, endpoint: str) -> str:
    """
    Return the full URL of an endpoint under a validated base URL.

    :param base_url: the output of :func:`validate_base_url`.
    :param endpoint: :data:`START` or :data:`CHECK`.
    """
    return urljoin(base_url, _PATHS[endpoint])


def validate_model_key(model_key: str | None) -> str:
    """
    Return the model key, or raise if there is none.

    :param model_key: the argument, or the connection extra's ``model_key``.
    :raises BananaConfigError: missing, blank or not a string.
    """
    if not isinstance(model_key, str) or not model_key.strip():
        raise BananaConfigError("No Banana model key: pass model_key=..., or set 'model_key' in the connection's extra")
    return model_key.strip()


def validate_model_inputs(model_inputs: Any) -> dict[str, Any]:
    """
    Return model inputs as a dict that is valid JSON, or raise naming the problem.

    :param model_inputs: a mapping, or a string holding a JSON object (what a template renders to).
    :raises BananaConfigError: a string that is not JSON, or JSON that is not an object.
    :raises TypeError: a value that is neither a mapping nor a string, or that JSON cannot hold
        (a datetime, a set, NaN ...).
    """
    if isinstance(model_inputs, (str, bytes)):
        try:
            model_inputs = json.loads(model_inputs)
        except ValueError as e:
            raise BananaConfigError(f"model_inputs is a string but not valid JSON: {e}") from e
        if not isinstance(model_inputs, dict):
            raise BananaConfigError(f"model_inputs must be a JSON object, got JSON {type(model_inputs).__name__}")
    if not isinstance(model_inputs, Mapping):
        raise TypeError(f"model_inputs must be a dict (or a JSON object string), got {type(model_inputs).__name__}")
    model_inputs = dict(model_inputs)
    try:
        json.dumps(model_inputs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"model_inputs cannot be sent as JSON: {e}") from e
    return model_inputs


def validate_call_id(call_id: Any) -> str:
    """
    Return a call id, or raise if it is empty.

    :param call_id: a callID from Start, e.g. ``call_0d82c386-...``.
    :raises BananaConfigError: not a non-empty string.
    """
    if not isinstance(call_id, str) or not call_id.strip():
        raise BananaConfigError(f"A Banana call id must be a non-empty string, got {call_id!r}")
    return call_id.strip()


def validate_positive(name: str, value: Any, *, zero_ok: bool = False) -> float:
    """
    Return ``value`` as a float, or raise if it is not a positive finite number.

    :param name: the argument's name, for the message.
    :param value: the number to check.
    :param zero_ok: accept 0 too.
    :raises BananaConfigError: zero (unless ``zero_ok``), negative, not finite, or not a number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        ok = False
    else:
        ok = value >= 0 if zero_ok else value > 0
    if not ok:
        what = "zero or a positive" if zero_ok else "a positive"
        raise BananaConfigError(f"{name} must be {what} number of seconds, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------
# Request bodies.


def _envelope(api_key: str) -> dict[str, Any]:
    # The official SDKs send a fresh uuid4 and integer Unix seconds; the id is not an idempotency key.
    return {"id": str(uuid.uuid4()), "created": int(time.time()), "apiKey": api_key}


def build_start_body(api_key: str, model_key: str, model_inputs: dict[str, Any], *, start_only: bool) -> dict[str, Any]:
    """
    Return the JSON body of a Start request.

    :param api_key: a validated API key.
    :param model_key: a validated model key.
    :param model_inputs: validated model inputs.
    :param start_only: ask Banana to answer at once with a callID instead of holding for the result.
    """
    return {
        **_envelope(api_key),
        "modelKey": model_key,
        "startOnly": start_only,
        "modelInputs": model_inputs,
    }


def build_check_body(api_key: str, call_id: str, *, long_poll: bool) -> dict[str, Any]:
    """
    Return the JSON body of a Check request.

    :param api_key: a validated API key.
    :param call_id: the call to ask about.
    :param long_poll: ask Banana to hold the request until the call finishes (up to 50 s).
    """
    return {**_envelope(api_key), "longPoll": long_poll, "callID": call_id}


@dataclass(frozen=True)
class BananaTimeouts:
    """
    The client's request timeouts, derived from how long the server holds requests.

    Banana holds a Start up to ~60 s and a long-poll Check up to 50 s; a self-hosted server may
    hold for other times. Each field can be set in the connection's extra under its own name.

    :param start_hold: longest time the server holds a Start that waits for its result.
    :param check_hold: longest time the server holds a long-poll Check.
    :param read_margin: added to a hold to get the read timeout: the answer must have time to
        arrive after the hold ends, or every long poll that comes back "running" would look lost.
    :param quick_read: read timeout of a request the server does not hold.
    :param connect_timeout: time allowed to open a connection.
    """

    start_hold: float = 60.0
    check_hold: float = 50.0
    read_margin: float = 15.0
    quick_read: float = 30.0
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("start_hold", "check_hold", "read_margin", "quick_read", "connect_timeout"):
            validate_positive(name, getattr(self, name))

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> BananaTimeouts:
        """
        Return the timeouts a connection's extra sets, defaults elsewhere.

        :param extra: the connection's extra, as a dict.
        :raises BananaConfigError: a value that is not a positive number.
        """
        names = ("start_hold", "check_hold", "read_margin", "quick_read", "connect_timeout")
        return cls(**{name: extra[name] for name in names if extra.get(name) is not None})

    def for_request(self, endpoint: str, *, waits: bool, remaining: float | None = None) -> tuple[float, float]:
        """
        Return the ``(connect, read)`` timeouts of one request.

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param waits: the server may hold the request (a Start without startOnly, a long-poll Check).
        :param remaining: seconds left before the caller's deadline. A Check's read timeout is cut to
            it, since nothing is lost by abandoning a Check; a Start's never is, since its answer
            carries the only copy of the callID of a call already billed.
        """
        if not waits:
            read = self.quick_read
        else:
            read = (self.start_hold if endpoint == START else self.check_hold) + self.read_margin
        if endpoint == CHECK and remaining is not None:
            read = max(min(read, remaining), 0.1)
        return self.connect_timeout, read


# ---------------------------------------------------------------------------------------------------------
# Replies.


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """
    Return the seconds a ``Retry-After`` header asks for, or ``None`` if absent or unreadable.

    :param value: the header: delta-seconds or an HTTP date.
    :param now: the current Unix time, for HTTP dates (default: the clock).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def is_error_message(message: str) -> bool:
    """
    Return whether a ``message`` reports a failure: "error" anywhere in it, in any case.

    :param message: Banana's ``message``.
    """
    return "error" in message.lower()


def call_error(message: str, call_id: str | None) -> BananaCallError:
    """
    Return the exception for a ``message`` that reports a failure.

    :param message: Banana's ``message`` (contains "error").
    :param call_id: the call it is about, if known.
    """
    # The recorded form: "inference server error: taskID does not exist: task_...". It is terminal:
    # the call is unknown, expired, or was lost when the server restarted.
    if "does not exist" in message.lower():
        return BananaCallNotFoundError(message, call_id=call_id)
    return BananaCallError(message, call_id=call_id)


def _normalise_outputs(outputs: Any) -> list[Any]:
    # modelOutputs is documented as a one-element list; a server that sends the bare reply is
    # tolerated rather than failing an inference that was paid for.
    if outputs is None:
        return []
    return outputs if isinstance(outputs, list) else [outputs]


def parse_reply(
    endpoint: str,
    status_code: int,
    content: bytes | str,
    *,
    retry_after: str | None = None,
    call_id: str | None = None,
    secret: str | None = None,
) -> BananaResult:
    """
    Parse and classify one reply with the decision table of BANANA_API.md.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param status_code: the HTTP status.
    :param content: the raw body.
    :param retry_after: the ``Retry-After`` header, if any.
    :param call_id: for a Check, the call asked about.
    :param secret: the API key, scrubbed from the body before any of it reaches a result or an
        exception text, in case a server echoes it.
    :return: the result of a call that is running or finished.
    :raises BananaHTTPError: a status other than 200 (rule 1).
    :raises BananaProtocolError: a body that is not a JSON object with a string ``message`` (rule 2),
        or a Start that neither finished nor gave a callID.
    :raises BananaCallError: "error" in ``message`` (rule 3); :class:`BananaCallNotFoundError` for an
        unknown or expired call.
    """
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    if secret and secret in text:
        text = text.replace(secret, "***")
    if status_code != 200:
        detail = f"HTTP {status_code}"
        body_message = _message_of(text)
        if body_message:
            detail += f": {_shorten(body_message)}"
        elif text.strip():
            detail += f": {_shorten(text)}"
        raise BananaHTTPError(
            detail,
            endpoint=endpoint,
            status_code=status_code,
            call_id=call_id,
            retry_after=parse_retry_after(retry_after),
        )
    try:
        body = json.loads(text)
    except ValueError:
        raise BananaProtocolError(
            f"the reply is not JSON: {_shorten(text) or '(empty body)'}",
            endpoint=endpoint,
            call_id=call_id,
            status_code=status_code,
        ) from None
    if not isinstance(body, dict):
        raise BananaProtocolError(
            f"the reply is JSON {type(body).__name__}, not an object",
            endpoint=endpoint,
            call_id=call_id,
            status_code=status_code,
        )
    message = body.get("message")
    if not isinstance(message, str):
        raise BananaProtocolError(
            "the reply has no string 'message'",
            endpoint=endpoint,
            call_id=call_id,
            status_code=status_code,
        )
    reply_call_id = body.get("callID")
    if isinstance(reply_call_id, str) and reply_call_id:
        call_id = reply_call_id
    api_version = body.get("apiVersion")
    api_version = api_version if isinstance(api_version, str) else None
    if is_error_message(message):
        raise call_error(message, call_id)
    if endpoint == START:
        finished = body.get("finished") is True
        if not finished and not call_id:
            raise BananaProtocolError(
                "Start reply neither finished nor gave a callID, so the call cannot be followed",
                endpoint=endpoint,
                status_code=status_code,
            )
    else:
        finished = message.strip().lower() == "success"
    return BananaResult(
        call_id=call_id or None,
        finished=finished,
        model_outputs=_normalise_outputs(body.get("modelOutputs")) if finished else None,
        message=message,
        api_version=api_version,
    )


def _message_of(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else None


# ---------------------------------------------------------------------------------------------------------
# Transport failures and retries.


class TransportFailure(enum.Enum):
    """What went wrong below HTTP, as the I/O layer saw it; decides whether the request was taken."""

    #: Refused, DNS failure, TLS handshake failure: nothing reached the server.
    CONNECT = "could not connect"
    #: No connection within the connect timeout: nothing reached the server.
    CONNECT_TIMEOUT = "timed out connecting"
    #: No free connection in the client's own pool: nothing was sent.
    POOL_TIMEOUT = "timed out waiting for a free connection"
    #: Sent, and no answer within the read timeout.
    READ_TIMEOUT = "sent, but no answer within the read timeout"
    #: Sent, and the connection broke before the whole answer arrived.
    CONNECTION_LOST = "sent, but the connection broke before the whole answer arrived"
    #: Anything else: assume the request may have been taken.
    OTHER = "failed"


_NOT_SENT = {TransportFailure.CONNECT, TransportFailure.CONNECT_TIMEOUT, TransportFailure.POOL_TIMEOUT}


def transport_error(
    failure: TransportFailure, *, endpoint: str, detail: str = "", call_id: str | None = None
) -> BananaTransportError:
    """
    Return our exception for a transport failure.

    :param failure: what the I/O layer saw.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param detail: the library's own words (never containing the request body, so never the key).
    :param call_id: the call a Check was about.
    """
    text = failure.value + (f" ({_shorten(detail)})" if detail else "")
    if failure in _NOT_SENT:
        return BananaConnectError(text, endpoint=endpoint, call_id=call_id)
    if endpoint == START:
        text += "; the Start may have been taken and billed, so it is not sent again"
    return BananaResponseLostError(text, endpoint=endpoint, call_id=call_id)


#: HTTP statuses that prove a Start was refused before processing, so it may be sent again.
_START_RETRY_STATUSES = frozenset({429, 503})


def is_retryable(error: BaseException, endpoint: str) -> bool:
    """
    Return whether a request that raised ``error`` may be sent again.

    Check is idempotent: connection failures, lost answers, garbled bodies, 5xx and 429 are retried.
    Start is billed per call: it is retried only where the request provably was not taken
    (no connection, or 429/503 answered before processing), never after it was sent and the
    answer lost. A failed inference (:class:`BananaCallError`) is never retried here.

    :param error: what the request raised.
    :param endpoint: :data:`START` or :data:`CHECK`.
    """
    if isinstance(error, BananaConnectError):
        return True
    if isinstance(error, BananaHTTPError):
        status = error.status_code or 0
        if endpoint == START:
            return status in _START_RETRY_STATUSES
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
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise BananaConfigError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BananaConfigError(f"{name} must be a number >= 0, got {value!r}")

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """
        Return the pause before attempt ``attempt + 1``.

        :param attempt: the number of the attempt that just failed, from 1.
        :param error: what it raised; a ``Retry-After`` it carries is honoured.
        """
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), self.max_delay)
        backoff = self.initial_delay * 2 ** (attempt - 1) + random.uniform(0, self.jitter)
        return min(backoff, self.max_delay)

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


# ---------------------------------------------------------------------------------------------------------
# Waiting for a call.


@dataclass(frozen=True)
class WaitStep:
    """
    What to do after one Check while waiting for a call.

    :param outputs: the ``modelOutputs`` list once the call finished, else ``None``.
    :param pause: seconds to sleep before the next Check.
    :param status_changed: the status differs from the last one seen (worth a log line).
    """

    outputs: list[Any] | None
    pause: float
    status_changed: bool


@dataclass
class CallWaiter:
    """
    Decide, Check after Check, how waiting for one call goes: the sync and async loops only send.

    :param call_id: the call.
    :param deadline: ``time.time()`` after which the wait fails with :class:`BananaTimeoutError`.
    :param timeout: the seconds the deadline stands for, for the error text.
    :param long_poll: use long-poll Checks.
    :param poll_interval: least seconds between the starts of two Checks.
    :param started_at: ``time.time()`` when the call was started.
    """

    call_id: str
    deadline: float
    timeout: float
    long_poll: bool
    poll_interval: float
    started_at: float
    last_status: str | None = None
    checks: int = 0

    @classmethod
    def begin(
        cls,
        call_id: str,
        *,
        timeout: float,
        started_at: float | None = None,
        long_poll: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> CallWaiter:
        """
        Return a waiter for a call, validating the arguments.

        :param call_id: the call.
        :param timeout: seconds the call may take from ``started_at``.
        :param started_at: ``time.time()`` of the Start (default: now).
        :param long_poll: use long-poll Checks.
        :param poll_interval: least seconds between the starts of two Checks.
        :raises BananaConfigError: a bad timeout or poll interval.
        """
        timeout = validate_positive("timeout", timeout)
        poll_interval = validate_positive("poll_interval", poll_interval)
        started_at = time.time() if started_at is None else started_at
        return cls(
            call_id=call_id,
            deadline=started_at + timeout,
            timeout=timeout,
            long_poll=long_poll,
            poll_interval=poll_interval,
            started_at=started_at,
        )

    def remaining(self) -> float:
        """Return the seconds left before the deadline (negative once passed)."""
        return self.deadline - time.time()

    def elapsed(self) -> float:
        """Return the seconds since the call was started."""
        return time.time() - self.started_at

    def expired_error(self) -> BananaTimeoutError:
        """Return the error that reports the deadline passed."""
        return BananaTimeoutError(self.call_id, self.timeout, self.last_status)

    def raise_if_expired(self) -> None:
        """
        Raise if the deadline has passed.

        :raises BananaTimeoutError: it has.
        """
        if self.remaining() <= 0:
            raise self.expired_error()

    def failure(self, error: BananaError) -> BananaError:
        """
        Return what a Check's error means for the wait.

        A Check abandoned because the deadline came (its read timeout is cut to the deadline) is
        the deadline, not transport trouble; anything else stands as it is.

        :param error: what the Check raised.
        """
        if isinstance(error, BananaTransportError) and self.remaining() <= 0:
            return self.expired_error()
        return error

    def observe(self, result: BananaResult, *, waited: float) -> WaitStep:
        """
        Take one Check's result and return what to do next.

        :param result: the Check's result.
        :param waited: seconds the Check took.
        """
        self.checks += 1
        status = result.status_text
        changed = status != self.last_status
        self.last_status = status
        if result.finished:
            return WaitStep(outputs=result.model_outputs or [], pause=0.0, status_changed=changed)
        return WaitStep(
            outputs=None,
            pause=pause_before_next_check(waited, self.poll_interval, self.remaining()),
            status_changed=changed,
        )


def pause_before_next_check(waited: float, poll_interval: float, remaining: float) -> float:
    """
    Return how long to sleep before the next Check.

    A long poll that was held for ``poll_interval`` or more has already waited: no sleep. A quick
    answer (long polling off, or a server that does not hold) is followed by the rest of
    ``poll_interval``, so a call is never checked in a tight loop. Never sleeps past the deadline.

    :param waited: seconds the last Check took.
    :param poll_interval: the minimum time between the starts of two Checks.
    :param remaining: seconds left before the deadline.
    """
    return max(0.0, min(poll_interval - waited, remaining))


class Reattach(str, enum.Enum):
    """What a new try does with a call an earlier try of the same task instance started."""

    #: Still running: wait for it instead of paying for a new one.
    WAIT = "wait"
    #: Finished: its outputs are the task's result.
    DONE = "done"
    #: Failed, expired or unknown: start a new call.
    RESTART = "restart"


def reattach_decision(outcome: BananaResult | BananaCallError) -> Reattach:
    """
    Return what to do with a stored call, given a Check of it.

    Transport trouble is not an outcome: it is raised, so the try fails without starting a second
    call for a call that may still run.

    :param outcome: the Check's result, or the :class:`BananaCallError` it raised.
    """
    if isinstance(outcome, BananaCallError):
        return Reattach.RESTART
    return Reattach.DONE if outcome.finished else Reattach.WAIT


# ---------------------------------------------------------------------------------------------------------
# Trigger events: the payload a trigger yields and the operator or sensor reads back.


class EventStatus(str, enum.Enum):
    """The ``status`` of a trigger event."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


def success_event(call_id: str, model_outputs: list[Any], message: str = "success") -> dict[str, Any]:
    """
    Return the payload of a call that finished.

    :param call_id: the call.
    :param model_outputs: its ``modelOutputs`` list.
    :param message: Banana's message.
    """
    return {
        "status": EventStatus.SUCCESS.value,
        "call_id": call_id,
        "model_outputs": model_outputs,
        "message": message,
    }


def error_event(call_id: str, error: BaseException) -> dict[str, Any]:
    """
    Return the payload that reports ``error`` raised while waiting for a call.

    :param call_id: the call.
    :param error: a failed call (``failed``), our deadline (``timeout``), or anything else (``error``).
    """
    payload: dict[str, Any] = {"call_id": call_id, "model_outputs": None}
    if isinstance(error, BananaCallError):
        payload.update(status=EventStatus.FAILED.value, message=error.message)
    elif isinstance(error, BananaTimeoutError):
        payload.update(status=EventStatus.TIMEOUT.value, message=error.last_message or "", timeout=error.timeout)
    else:
        payload.update(status=EventStatus.ERROR.value, message=f"{type(error).__name__}: {error}")
    return payload


def outputs_from_event(event: Any) -> tuple[str, list[Any]]:
    """
    Return ``(call_id, model_outputs)`` from a trigger event payload, or raise what it reports.

    :param event: the payload handed to ``execute_complete``.
    :raises BananaError: a missing or malformed event, or an unknown status.
    :raises BananaCallError: the call failed (:class:`BananaCallNotFoundError` if unknown).
    :raises BananaTimeoutError: the deadline passed.
    """
    if not isinstance(event, Mapping):
        raise BananaError(f"Expected a Banana trigger event (a dict), got {event!r}")
    call_id = event.get("call_id")
    message = event.get("message")
    message = message if isinstance(message, str) else ""
    try:
        status = EventStatus(event.get("status"))
    except ValueError:
        raise BananaError(f"Unknown Banana trigger event status {event.get('status')!r} for call {call_id}") from None
    if not isinstance(call_id, str) or not call_id:
        raise BananaError(f"Banana trigger event without a call id: {event!r}")
    if status is EventStatus.SUCCESS:
        outputs = event.get("model_outputs")
        if not isinstance(outputs, list):
            raise BananaError(f"Banana trigger event for call {call_id} reports success without model_outputs")
        return call_id, outputs
    if status is EventStatus.FAILED:
        raise call_error(message or "failed (no message)", call_id)
    if status is EventStatus.TIMEOUT:
        timeout = event.get("timeout")
        timeout = float(timeout) if isinstance(timeout, (int, float)) else 0.0
        raise BananaTimeoutError(call_id, timeout, message or None)
    raise BananaError(f"Waiting for Banana call {call_id} failed: {message}")
