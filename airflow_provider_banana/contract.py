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

import decimal
import enum
import json
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urljoin, urlsplit

from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaConfigError,
    BananaConnectError,
    BananaError,
    BananaHTTPError,
    BananaProtocolError,
    BananaReplyTooLargeError,
    BananaResponseLostError,
    BananaTimeoutError,
    BananaTransportError,
)
from airflow_provider_banana.redact import Redactor

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

#: The longest duration any argument or setting takes, in seconds (30 days): past it a value is a
#: mistake (``1e300``), and it would overflow the clocks and sockets it is handed to.
MAX_SECONDS = 30 * 24 * 3600.0
#: The shortest ``poll_interval``: at most four Checks a second for one call, whatever the server does.
MIN_POLL_INTERVAL = 0.25
#: Default largest reply body, after decompression: real image outputs fit, a runaway body does not.
DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024
#: The smallest ``max_reply_bytes`` accepted: any Banana reply at all needs a few hundred bytes.
MIN_MAX_REPLY_BYTES = 1024
#: The longest callID accepted: it is stored in trigger kwargs, XCom and task state (v4 ids are 41).
MAX_CALL_ID_LENGTH = 512
#: The longest text of a reply kept in an exception or event (Banana's own messages are short).
MAX_MESSAGE_LENGTH = 2000

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
    :param message: Banana's ``message`` (may be ``""``), the key masked.
    :param api_version: Banana's free-form ``apiVersion`` label, for logs only.
    :param non_finite: where NaN or Infinity stand in ``model_outputs`` (see :func:`non_finite_paths`).
    """

    call_id: str | None
    finished: bool
    model_outputs: list[Any] | None
    message: str
    api_version: str | None
    non_finite: tuple[str, ...] = ()

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

    Every problem is found here, before any request: a URL the HTTP library would refuse later
    would otherwise read as a Start that "may have been billed" though nothing was sent.

    :param base_url: the connection's host, e.g. ``https://api.banana.dev/`` or ``http://127.0.0.1:8000``.
    :raises BananaConfigError: no http(s) scheme, no host, a bad port, credentials, a query or a
        fragment, or spaces and control characters. Credentials are never echoed.
    """
    url = (base_url or "").strip() or DEFAULT_BASE_URL
    if any(not char.isprintable() or char.isspace() for char in url):
        raise BananaConfigError("The Banana connection's host must not contain spaces or control characters")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise BananaConfigError(
            "The Banana connection's host must not carry credentials (user:password@): the API key goes in "
            "the connection's password, and a URL's credentials would be sent to the server and logged"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BananaConfigError(
            f"The Banana connection's host must be a URL with http:// or https://, got {url!r} "
            f"(for example {DEFAULT_BASE_URL!r} or 'http://127.0.0.1:8000/')"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not parts.hostname:
        raise BananaConfigError(
            f"The Banana connection's host {url!r} has no valid host name or port (a port is a number from 1 to 65535)"
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


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def validate_seconds(
    name: str, value: Any, *, zero_ok: bool = False, minimum: float | None = None, maximum: float = MAX_SECONDS
) -> float:
    """
    Return ``value`` as a float of seconds, or raise naming the argument and the bound it broke.

    The one check of every duration the provider takes: a number (not a bool), finite, positive
    (or zero with ``zero_ok``), at least ``minimum`` and at most ``maximum``.

    :param name: the argument's name, for the message.
    :param value: the number to check.
    :param zero_ok: accept 0 too.
    :param minimum: the least value accepted, when there is a floor above zero.
    :param maximum: the largest value accepted (default :data:`MAX_SECONDS`).
    :raises BananaConfigError: anything else.
    """
    if not _is_number(value) or value < 0 or (value == 0 and not zero_ok):
        what = "zero or a positive" if zero_ok else "a positive"
        raise BananaConfigError(f"{name} must be {what} number of seconds, got {value!r}")
    if minimum is not None and value < minimum:
        raise BananaConfigError(f"{name} must be at least {minimum:g} s, got {value!r}")
    if value > maximum:
        raise BananaConfigError(f"{name} must be at most {maximum:g} s, got {value!r}")
    return float(value)


def validate_poll_interval(value: Any, name: str = "poll_interval") -> float:
    """
    Return a ``poll_interval``, or raise if it is below :data:`MIN_POLL_INTERVAL` (or not seconds).

    The floor protects the server: a call is never Checked more than a few times a second, whatever
    the server answers and however the argument was set.

    :param value: the least seconds between the starts of two Checks of one call.
    :param name: the argument's name, for the message.
    :raises BananaConfigError: not a number of seconds, or below the floor.
    """
    return validate_seconds(name, value, minimum=MIN_POLL_INTERVAL)


#: The name the provider's seconds check had first; kept for callers that import it.
validate_positive = validate_seconds


def validate_count(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """
    Return ``value`` as an int, or raise naming the argument and the bound it broke.

    :param name: the argument's name, for the message.
    :param value: the count to check: an int (not a bool), or a float with no fraction.
    :param minimum: the least value accepted.
    :param maximum: the largest value accepted, if any.
    :raises BananaConfigError: anything else.
    """
    if isinstance(value, float) and _is_number(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BananaConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise BananaConfigError(f"{name} must be at most {maximum}, got {value!r}")
    return value


def number_from_extra(name: str, value: Any) -> Any:
    """
    Return a connection extra's value, with a number written as a string read as a number.

    A connection given as a URI can only carry strings in its extra (``?check_hold=120``), so
    ``"120"`` and ``"1.5"`` stand for their numbers; anything else is left for the validators.

    :param name: the extra's key, for the message.
    :param value: its value.
    :raises BananaConfigError: a string that is not a number.
    """
    if not isinstance(value, str):
        return value
    try:
        return float(value.strip())
    except ValueError:
        raise BananaConfigError(f"The connection extra {name!r} must be a number, got {value!r}") from None


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
        for name in _TIMEOUT_FIELDS:
            validate_seconds(name, getattr(self, name))

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> BananaTimeouts:
        """
        Return the timeouts a connection's extra sets, defaults elsewhere.

        :param extra: the connection's extra, as a dict; numbers may be strings (a URI connection's are).
        :raises BananaConfigError: a value that is not a positive number of seconds, or is absurdly large.
        """
        return cls(
            **{name: number_from_extra(name, extra[name]) for name in _TIMEOUT_FIELDS if extra.get(name) is not None}
        )

    def for_request(self, endpoint: str, *, waits: bool, remaining: float | None = None) -> RequestBudget:
        """
        Return the time one request may take: to connect, and in all, from sending to the last byte.

        The whole-request limit is the point: a server that trickles one byte a second satisfies
        any per-read timeout forever, so the I/O layers hold a request to ``total`` however the
        bytes arrive.

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param waits: the server may hold the request (a Start without startOnly, a long-poll Check).
        :param remaining: seconds left before the caller's deadline. A Check's limits are cut to it,
            since nothing is lost by abandoning a Check; a Start's never are, since its answer
            carries the only copy of the callID of a call already billed.
        """
        if not waits:
            total = self.quick_read
        else:
            total = (self.start_hold if endpoint == START else self.check_hold) + self.read_margin
        connect = self.connect_timeout
        if endpoint == CHECK and remaining is not None:
            total = max(min(total, remaining), 0.1)
            connect = min(connect, total)
        return RequestBudget(connect=connect, total=total)


_TIMEOUT_FIELDS = ("start_hold", "check_hold", "read_margin", "quick_read", "connect_timeout")


class RequestBudget(NamedTuple):
    """
    The time limits of one request, as :meth:`BananaTimeouts.for_request` sets them.

    :param connect: seconds to open a connection.
    :param total: seconds from sending the request to the last byte of its answer.
    """

    connect: float
    total: float


def max_reply_bytes_from_extra(extra: Mapping[str, Any]) -> int:
    """
    Return the largest reply body a connection accepts, after decompression, in bytes.

    :param extra: the connection's extra; ``max_reply_bytes`` may be a number or a string.
    :raises BananaConfigError: not a whole number of at least :data:`MIN_MAX_REPLY_BYTES`.
    """
    value = extra.get("max_reply_bytes")
    if value is None:
        return DEFAULT_MAX_REPLY_BYTES
    return validate_count("max_reply_bytes", number_from_extra("max_reply_bytes", value), minimum=MIN_MAX_REPLY_BYTES)


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
        except Exception:  # a hostile header may break the date parser in any way: ignore it
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


#: Python refuses to turn longer digit strings into ints (CVE-2020-10735's guard, 4300 digits).
_INT_DIGITS_GUARD = 4000


def _parse_int(digits: str) -> int:
    # A model may answer with a number of thousands of digits; int() refuses that from a string,
    # and a paid result must not become "not JSON". Decimal converts without the guard, exactly.
    return int(digits) if len(digits) < _INT_DIGITS_GUARD else int(decimal.Decimal(digits))


def _load_json(content: bytes) -> Any:
    # Bytes, not text: json detects UTF-8/16/32 and skips a byte-order mark (RFC 8259 allows one);
    # invalid UTF-8 is an error rather than U+FFFD silently written into a result.
    return json.loads(content, parse_int=_parse_int)


def non_finite_paths(outputs: Any, *, limit: int = 10) -> list[str]:
    """
    Return where NaN or Infinity stand in a JSON value, as paths like ``[0]["scores"][3]``.

    JSON has no such numbers, but Python's parser reads ``NaN``, ``Infinity`` and ``1e400`` as them,
    and Airflow's XCom stores them as null: the caller warns instead of letting that pass in silence.
    Iterative, so that deep outputs cannot exhaust the stack.

    :param outputs: the parsed ``modelOutputs``.
    :param limit: most paths to return.
    """
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", outputs)]
    while stack and len(found) < limit:
        path, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                found.append(path or "(the whole value)")
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            stack.extend((f"{path}[{json.dumps(key)}]", item) for key, item in reversed(list(value.items())))
    return found


def redirect_target(location: str | None, url: str) -> str:
    """
    Return the host a redirect points to, for an error text: never its credentials, path or query.

    :param location: the ``Location`` header, if any.
    :param url: the URL of the request that was redirected (a relative ``Location`` is under it).
    """
    if not location:
        return "(no Location given)"
    try:
        parts = urlsplit(urljoin(url, location.strip()))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an unreadable Location)"
    if not host:
        return "(a Location without a host)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def reply_too_large(endpoint: str, limit: int, *, call_id: str | None = None) -> BananaReplyTooLargeError:
    """
    Return the error for a reply whose body, decompressed, passed ``max_reply_bytes``.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param limit: the limit, in bytes.
    :param call_id: the call a Check was about.
    """
    text = (
        f"the reply is larger than max_reply_bytes ({_size(limit)}), so it was not read to the end; "
        "if the model's outputs really are that large, raise 'max_reply_bytes' in the connection's extra"
    )
    if endpoint == START:
        text += "; the Start may have been taken and billed, so it is not sent again"
    return BananaReplyTooLargeError(text, endpoint=endpoint, call_id=call_id, limit=limit)


def undecodable_reply(endpoint: str, detail: str, *, call_id: str | None = None) -> BananaProtocolError:
    """
    Return the error for a reply whose ``Content-Encoding`` (gzip, deflate ...) could not be undone.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param detail: the HTTP library's words.
    :param call_id: the call a Check was about.
    """
    text = f"the reply's compressed body could not be decoded ({_shorten(detail)})"
    if endpoint == START:
        text += "; the Start may have been taken and billed, so it is not sent again"
    return BananaProtocolError(text, endpoint=endpoint, call_id=call_id)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def parse_reply(
    endpoint: str,
    status_code: int,
    content: bytes | str,
    *,
    retry_after: str | None = None,
    location: str | None = None,
    url: str = "",
    call_id: str | None = None,
    secret: str | None = None,
    redactor: Redactor | None = None,
    truncated: bool = False,
) -> BananaResult:
    """
    Parse and classify one reply with the decision table of BANANA_API.md.

    The body is parsed exactly as sent: the key is masked in the texts that leave (messages, error
    details), never in the body, so ``modelOutputs`` are the server's, byte for byte.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param status_code: the HTTP status.
    :param content: the raw body.
    :param retry_after: the ``Retry-After`` header, if any.
    :param location: the ``Location`` header, if any (named in the error of a redirect).
    :param url: the URL the request went to (a relative ``Location`` is under it).
    :param call_id: for a Check, the call asked about.
    :param secret: the API key, masked in every text taken from the reply (or give ``redactor``).
    :param redactor: a :class:`Redactor` of the key, made once by the caller.
    :param truncated: ``content`` is only the start of the body (an error reply is read no further
        than its message needs).
    :return: the result of a call that is running or finished.
    :raises BananaHTTPError: a status other than 200 (rule 1), a redirect included: redirects are
        never followed, since the body they would re-send carries the key.
    :raises BananaProtocolError: a body that is not a JSON object with a string ``message`` (rule 2),
        a Start that neither finished nor gave a usable callID, or a Check answered for another call.
    :raises BananaCallError: "error" in ``message`` (rule 3); :class:`BananaCallNotFoundError` for an
        unknown or expired call.
    """
    redact = redactor or Redactor(secret)
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    if status_code != 200:
        raise _http_error(endpoint, status_code, raw, redact, retry_after, location, url, call_id, truncated)
    try:
        body = _load_json(raw)
    except (ValueError, RecursionError) as e:
        what = "too deeply nested" if isinstance(e, RecursionError) else "not JSON"
        excerpt = _excerpt(raw, redact, truncated=truncated) or "(empty body)"
        raise _protocol_error(endpoint, f"the reply is {what}: {excerpt}", call_id) from None
    if not isinstance(body, dict):
        raise _protocol_error(endpoint, f"the reply is JSON {type(body).__name__}, not an object", call_id)
    message = body.get("message")
    if not isinstance(message, str):
        raise _protocol_error(endpoint, "the reply has no string 'message'", call_id)
    reply_call_id = body.get("callID")
    if endpoint == CHECK:
        if reply_call_id not in (None, "", call_id):
            shown = _text(str(reply_call_id), redact, 80)
            raise _protocol_error(
                endpoint,
                f"the reply is about another call ({shown!r}); a proxy or the server mixed up answers",
                call_id,
            )
    elif isinstance(reply_call_id, str) and reply_call_id:
        _check_call_id(reply_call_id, redact)
        call_id = reply_call_id
    api_version = body.get("apiVersion")
    api_version = _text(api_version, redact, 80) if isinstance(api_version, str) else None
    if is_error_message(message):
        raise call_error(_text(message, redact), call_id)
    if endpoint == START:
        finished = body.get("finished") is True
        if not finished and not call_id:
            raise _protocol_error(endpoint, "the Start reply neither finished nor gave a callID to follow", None)
    else:
        finished = message.strip().lower() == "success"
    outputs = _normalise_outputs(body.get("modelOutputs")) if finished else None
    return BananaResult(
        call_id=call_id or None,
        finished=finished,
        model_outputs=outputs,
        message=_text(message, redact),
        api_version=api_version,
        non_finite=tuple(non_finite_paths(outputs)) if outputs else (),
    )


def _check_call_id(call_id: str, redact: Redactor) -> None:
    # The callID goes into trigger kwargs, XCom and task state, all stored in plain text.
    problem = None
    if len(call_id) > MAX_CALL_ID_LENGTH:
        problem = f"is {len(call_id)} characters long (at most {MAX_CALL_ID_LENGTH} are accepted)"
    elif not call_id.isprintable():
        problem = "holds control characters"
    elif redact.call_id_leaks(call_id):
        problem = "contains the API key (the server echoes the request)"
    if problem:
        raise _protocol_error(START, f"the reply's callID {problem}", None)


def _protocol_error(endpoint: str, text: str, call_id: str | None) -> BananaProtocolError:
    if endpoint == START:
        text += "; the Start may have been taken and billed, so it is not sent again"
    return BananaProtocolError(text, endpoint=endpoint, call_id=call_id, status_code=200)


def _http_error(
    endpoint: str,
    status_code: int,
    raw: bytes,
    redact: Redactor,
    retry_after: str | None,
    location: str | None,
    url: str,
    call_id: str | None,
    truncated: bool,
) -> BananaHTTPError:
    detail = f"HTTP {status_code}"
    if 300 <= status_code < 400:
        target = redact(redirect_target(location, url))
        detail += (
            f": a redirect to {target}, not followed (the request body carries the API key, and a "
            "redirected POST may lose it or its answer); set the connection's host to the URL that answers"
        )
    else:
        body_message = _message_of(raw)
        if body_message:
            detail += f": {_shorten(_text(body_message, redact))}"
        else:
            excerpt = _excerpt(raw, redact, truncated=truncated)
            detail += f": {excerpt}" if excerpt else ""
    return BananaHTTPError(
        detail,
        endpoint=endpoint,
        status_code=status_code,
        call_id=call_id,
        retry_after=parse_retry_after(retry_after),
    )


#: The most of a body looked at for an error's excerpt.
_EXCERPT_WINDOW = 64 * 1024


_LAST_RUN = re.compile(r"\s\S*\Z")


def _cut(text: str, length: int) -> str:
    # The cut may fall inside the key (in some encoding): a key has no whitespace, so dropping the
    # last run of non-space characters drops any part of it that the cut left.
    text = text[:length]
    if not text[-1:].strip():
        return text
    last_run = _LAST_RUN.search(text)
    return text[: last_run.start()] if last_run else ""


def _excerpt(raw: bytes, redact: Redactor, *, truncated: bool = False) -> str:
    text = raw[:_EXCERPT_WINDOW].decode("utf-8", "replace")
    if truncated or len(raw) > _EXCERPT_WINDOW:
        text = _cut(text, len(text))
    # Masked before it is shortened, so that shortening cannot leave part of the key behind a mask.
    return _shorten(redact(text))


def _text(text: str, redact: Redactor, length: int = MAX_MESSAGE_LENGTH) -> str:
    # A server's text bound for an exception, a log line or an event: bounded first (masking a
    # megabyte of text is work a server should not be able to make us do at every Check), masked,
    # then clipped.
    if len(text) > 4 * length:
        text = _cut(text, 4 * length)
    text = redact(text)
    return text if len(text) <= length else text[: length - 3] + "..."


def _message_of(raw: bytes) -> str | None:
    try:
        body = _load_json(raw)
    except (ValueError, RecursionError):
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
    #: Sent, and no whole answer within the request's time (however slowly the bytes came).
    READ_TIMEOUT = "sent, but no whole answer within the request's time limit"
    #: Sent, and the connection broke before the whole answer arrived.
    CONNECTION_LOST = "sent, but the connection broke before the whole answer arrived"
    #: Anything else: assume the request may have been taken.
    OTHER = "failed"


_NOT_SENT = {TransportFailure.CONNECT, TransportFailure.CONNECT_TIMEOUT, TransportFailure.POOL_TIMEOUT}


def transport_error(
    failure: TransportFailure,
    *,
    endpoint: str,
    detail: str = "",
    call_id: str | None = None,
    redactor: Redactor | None = None,
) -> BananaTransportError:
    """
    Return our exception for a transport failure.

    :param failure: what the I/O layer saw.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param detail: the library's own words. They may quote bytes the server sent (a malformed
        header line, say), so the key is masked in them.
    :param call_id: the call a Check was about.
    :param redactor: masks the key in ``detail``.
    """
    if detail and redactor is not None:
        detail = redactor(detail)
    text = failure.value + (f" ({_shorten(detail)})" if detail else "")
    if failure in _NOT_SENT:
        return BananaConnectError(text, endpoint=endpoint, call_id=call_id)
    if endpoint == START:
        text += "; the Start may have been taken and billed, so it is not sent again"
    return BananaResponseLostError(text, endpoint=endpoint, call_id=call_id)


def unusable_url(detail: str, *, redactor: Redactor | None = None) -> BananaConfigError:
    """
    Return the error for a base URL that the HTTP library refused before sending anything.

    :func:`validate_base_url` rejects what it can see; this covers what only the library knows
    (an unencodable host name, say). Nothing was sent, so nothing was billed.

    :param detail: the library's own words.
    :param redactor: masks the key in ``detail``.
    """
    if redactor is not None:
        detail = redactor(detail)
    return BananaConfigError(
        f"The Banana connection's host is not a URL the HTTP client can use ({_shorten(detail)}); nothing was sent"
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def unexpected_transport_error(
    error: BaseException, *, endpoint: str, call_id: str | None = None, redactor: Redactor | None = None
) -> BananaTransportError:
    """
    Return our exception for anything else the HTTP library raised while sending or reading.

    The provider raises only its own errors, and not knowing what happened means the request may
    have been taken: a Start is reported as possibly billed, never sent again.

    :param error: what the library raised.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param call_id: the call a Check was about.
    :param redactor: masks the key in the library's words.
    """
    return transport_error(
        TransportFailure.OTHER, endpoint=endpoint, detail=_describe(error), call_id=call_id, redactor=redactor
    )


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
    if isinstance(error, BananaReplyTooLargeError):  # the same request would bring the same reply
        return False
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
        timeout = validate_seconds("timeout", timeout)
        poll_interval = validate_poll_interval(poll_interval)
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


def error_event(call_id: str, error: BaseException, *, redactor: Redactor | None = None) -> dict[str, Any]:
    """
    Return the payload that reports ``error`` raised while waiting for a call.

    The payload is stored in Airflow's database: its message has the key masked.

    :param call_id: the call.
    :param error: a failed call (``failed``), our deadline (``timeout``), or anything else (``error``).
    :param redactor: masks the key in the message (our exceptions mask it already; this covers any other).
    """
    redact = redactor or Redactor(None)
    payload: dict[str, Any] = {"call_id": call_id, "model_outputs": None}
    if isinstance(error, BananaCallError):
        payload.update(status=EventStatus.FAILED.value, message=redact(error.message))
    elif isinstance(error, BananaTimeoutError):
        payload.update(
            status=EventStatus.TIMEOUT.value, message=redact(error.last_message or ""), timeout=error.timeout
        )
    else:
        payload.update(status=EventStatus.ERROR.value, message=redact(_describe(error)))
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
