"""Parse and classify a reply with the decision table of BANANA_API.md."""

from __future__ import annotations

import decimal
import enum
import json
import math
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeAlias
from urllib.parse import urljoin, urlsplit

from airflow_provider_banana.contract._text import excerpt, server_text, shorten
from airflow_provider_banana.contract.depth import MAX_JSON_DEPTH, JsonTooDeepError, load_json
from airflow_provider_banana.contract.failures import note_start_taken
from airflow_provider_banana.contract.retries import start_refused
from airflow_provider_banana.contract.stepwise import loads_in_steps
from airflow_provider_banana.contract.validation import MAX_SECONDS
from airflow_provider_banana.contract.wire import CHECK, START
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaHTTPError,
    BananaProtocolError,
)
from airflow_provider_banana.redact import Redactor

#: The longest callID accepted: it is stored in trigger kwargs, XCom and task state (v4 ids are 41).
MAX_CALL_ID_LENGTH = 512


class CallState(str, enum.Enum):
    """Where a call stands, as decided by :func:`parse_reply` (a failed call raises instead)."""

    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True, kw_only=True)
class _Reply:
    message: str
    api_version: str | None = None

    @property
    def status_text(self) -> str:
        """Return the status a person reads in the log ("running", "queued", "success" ...)."""
        return self.message or self.state.value

    @property
    def state(self) -> CallState:
        """Return the call's state."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class BananaRunning(_Reply):
    """
    A reply saying the call runs on: follow it with Checks.

    :param call_id: the call's id (a Start that did not finish always gives one, or is refused).
    :param message: Banana's ``message`` (``running``, ``queued``, ``""`` ...), the key masked.
    :param api_version: Banana's free-form ``apiVersion`` label, for logs only.
    """

    call_id: str
    finished: ClassVar[bool] = False

    @property
    def state(self) -> CallState:
        """Return :attr:`CallState.RUNNING`."""
        return CallState.RUNNING


@dataclass(frozen=True, kw_only=True)
class BananaFinished(_Reply):
    """
    A reply carrying the call's result.

    :param call_id: the call's id; ``None`` when a Start finished at once and Banana sent ``""``.
    :param model_outputs: the ``modelOutputs`` list, exactly as sent (its one element is the
        model's JSON reply, which may itself be a list).
    :param message: Banana's ``message`` (``success``, or ``""`` on a finished Start), the key masked.
    :param api_version: Banana's free-form ``apiVersion`` label, for logs only.
    :param non_finite: where NaN or Infinity stand in ``model_outputs`` (see :func:`non_finite_paths`).
    :param reply_bytes: the size of the reply's body, which bounds what handling its outputs costs
        (see :func:`~airflow_provider_banana.contract.events.event_fits_loop`); not compared.
    """

    call_id: str | None
    model_outputs: list[Any]
    non_finite: tuple[str, ...] = ()
    reply_bytes: int = field(default=0, compare=False)
    finished: ClassVar[bool] = True

    @property
    def state(self) -> CallState:
        """Return :attr:`CallState.FINISHED`."""
        return CallState.FINISHED


#: What :func:`parse_reply` returns for a call that did not fail: running, or finished with its
#: outputs. ``isinstance(result, BananaFinished)`` tells them apart (``result.finished`` too).
BananaResult: TypeAlias = BananaRunning | BananaFinished


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """
    Return the seconds a valid ``Retry-After`` header asks for, or ``None`` if absent or invalid.

    Valid is what RFC 9110 allows: delta-seconds (ASCII digits only, so not ``-5``, ``1.5`` or
    ``inf``) or an HTTP date (one in the past asks for 0 s). Validity matters: a 503 is taken as
    a refusal of a Start, which may be sent again, only when it carries a valid one.

    :param value: the header: delta-seconds or an HTTP date.
    :param now: the current Unix time, for HTTP dates (default: the clock).
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_SECONDS)  # float("9" * 400) is inf: bounded, still valid
    try:
        when = parsedate_to_datetime(value).timestamp()
    except Exception:  # a hostile header may break the date parser in any way: ignore it
        return None
    seconds = when - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_SECONDS) if math.isfinite(seconds) else None


def is_error_message(message: str) -> bool:
    """
    Return whether a ``message`` reports a failure: "error" anywhere in it, in any case.

    :param message: Banana's ``message``.
    """
    return "error" in message.lower()


def is_key_refused(message: str) -> bool:
    """
    Return whether a failure ``message`` says the server refused the API key ("error: invalid apiKey").

    :param message: Banana's ``message`` (contains "error").
    """
    return "apikey" in "".join(message.lower().split()).replace("_", "").replace("-", "")


def call_error(message: str, call_id: str | None, conn_id: str | None = None) -> BananaCallError:
    """
    Return the exception for a ``message`` that reports a failure.

    :param message: Banana's ``message`` (contains "error").
    :param call_id: the call it is about, if known.
    :param conn_id: the Airflow connection the request used, named when the server refused its key.
    """
    # The recorded form: "inference server error: taskID does not exist: task_...". It is terminal:
    # the call is unknown, expired, or was lost when the server restarted.
    if "does not exist" in message.lower():
        return BananaCallNotFoundError(message, call_id=call_id)
    if conn_id is not None and is_key_refused(message):
        # The server's text says "apiKey"; the person fixing it edits an Airflow connection.
        message = (
            f"{message} (the server refused the API key: check the API key, the Password field, "
            f"of Airflow connection {conn_id!r})"
        )
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


def _load_json(content: bytes, *, in_steps: bool = False) -> Any:
    # Bytes, not text: json detects UTF-8/16/32 and skips a byte-order mark (RFC 8259 allows one);
    # invalid UTF-8 is an error rather than U+FFFD silently written into a result. Nesting past
    # MAX_JSON_DEPTH is refused before parsing, so the outcome never depends on the caller's stack.
    if in_steps:
        return loads_in_steps(content, parse_int=_parse_int)
    return load_json(content, parse_int=_parse_int)


# Digits become "0", exponent letters "e", a plus "p": a number's shape, found by fast substring search.
_NUMBER_SHAPES = bytes.maketrans(b"0123456789eE+", b"0000000000eep")
# Bytes looked through in one call, so that a thread doing it lets the event loop run between two.
_SCAN_STEP = 1024 * 1024


def may_hold_non_finite(raw: bytes) -> bool:
    """
    Return whether a JSON body may parse to NaN or Infinity somewhere; ``False`` is certain.

    Python's parser gives them for the tokens ``NaN``, ``Infinity``, ``-Infinity``, and for a number
    too large for a float, whose exponent is then positive with three digits, or whose digits run 200
    long (no two-digit exponent reaches 1e309 from fewer). None of these in the bytes, none in the value, and
    :func:`non_finite_paths` need not walk a million records to find nothing. Strings may hold them
    too: then the answer is ``True`` and the walk decides.

    :param raw: the reply's body.
    """
    for start in range(0, len(raw), _SCAN_STEP):
        chunk = raw[start : start + _SCAN_STEP + 256]  # overlapping: a token cut in two is still seen
        if b"NaN" in chunk or b"Infinity" in chunk:
            return True
        shapes = chunk.translate(_NUMBER_SHAPES)
        if b"e000" in shapes or b"ep000" in shapes or b"0" * 200 in shapes:
            return True
    return False


def non_finite_paths(outputs: Any, *, limit: int = 10) -> list[str]:
    """
    Return where NaN or Infinity stand in a JSON value, as paths like ``[0]["scores"][3]``.

    JSON has no such numbers, but Python's parser reads ``NaN``, ``Infinity`` and ``1e400`` as them,
    and Airflow's XCom stores them as null: the caller warns instead of letting that pass in silence.
    Iterative, so that deep outputs cannot exhaust the stack.

    :param outputs: the parsed ``modelOutputs``.
    :param limit: most paths to return.
    """
    if not isinstance(outputs, (list, dict)):
        return ["(the whole value)"] if isinstance(outputs, float) and not math.isfinite(outputs) else []
    found: list[str] = []
    # One iterator per open container and the key that leads to it; a path is spelled only for a
    # value found. Nothing is made per element: a walk that made a tuple for each of a million
    # values kept them all alive at once, and Python's collector stalled every thread to scan them.
    keys: list[Any] = []
    stack: list[Any] = [_members(outputs)]
    while stack:
        for key, value in stack[-1]:
            if isinstance(value, float):
                if not math.isfinite(value):
                    found.append("".join(_path_step(k) for k in (*keys, key)))
                    if len(found) >= limit:
                        return found
            elif isinstance(value, (list, dict)):
                keys.append(key)
                stack.append(_members(value))
                break
        else:
            stack.pop()
            if keys:
                keys.pop()
    return found


def _members(container: list[Any] | dict[str, Any]) -> Any:
    return enumerate(container) if isinstance(container, list) else iter(container.items())


def _path_step(key: int | str) -> str:
    return f"[{key}]" if isinstance(key, int) else f"[{json.dumps(key)}]"


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
    conn_id: str | None = None,
    in_steps: bool = False,
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
    :param conn_id: the Airflow connection the request used: an error names it when the server
        refused the API key.
    :param in_steps: parse in short steps (see :mod:`.stepwise`): slower in all, but a thread doing
        it never holds the GIL long, so an event loop in the same process keeps running.
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
        body = _load_json(raw, in_steps=in_steps)
    except (ValueError, RecursionError) as e:
        # RecursionError only if the interpreter's recursion limit was set below MAX_JSON_DEPTH.
        deep = isinstance(e, (JsonTooDeepError, RecursionError))
        what = f"too deeply nested (more than {MAX_JSON_DEPTH} levels of arrays and objects)" if deep else "not JSON"
        shown = excerpt(raw, redact, truncated=truncated) or "(empty body)"
        raise _protocol_error(endpoint, f"the reply is {what}: {shown}", call_id) from None
    if not isinstance(body, dict):
        raise _protocol_error(endpoint, f"the reply is JSON {type(body).__name__}, not an object", call_id)
    message = body.get("message")
    if not isinstance(message, str):
        raise _protocol_error(endpoint, "the reply has no string 'message'", call_id)
    reply_call_id = body.get("callID")
    if endpoint == CHECK:
        if reply_call_id not in (None, "", call_id):
            shown = server_text(str(reply_call_id), redact, 80)
            raise _protocol_error(
                endpoint,
                f"the reply is about another call ({shown!r}); a proxy or the server mixed up answers",
                call_id,
            )
    elif isinstance(reply_call_id, str) and reply_call_id:
        _check_call_id(reply_call_id, redact)
        call_id = reply_call_id
    api_version = body.get("apiVersion")
    api_version = server_text(api_version, redact, 80) if isinstance(api_version, str) else None
    if is_error_message(message):
        raise call_error(server_text(message, redact), call_id, conn_id)
    finished = body.get("finished") is True if endpoint == START else message.strip().lower() == "success"
    message = server_text(message, redact)
    if not finished:
        if not call_id:  # a Check is about the call asked, so only a Start can lack one
            raise _protocol_error(endpoint, "the Start reply neither finished nor gave a callID to follow", None)
        return BananaRunning(call_id=call_id, message=message, api_version=api_version)
    outputs = _normalise_outputs(body.get("modelOutputs"))
    return BananaFinished(
        call_id=call_id or None,
        model_outputs=outputs,
        message=message,
        api_version=api_version,
        non_finite=tuple(non_finite_paths(outputs)) if may_hold_non_finite(raw) else (),
        reply_bytes=len(raw),
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
    return BananaProtocolError(note_start_taken(endpoint, text), endpoint=endpoint, call_id=call_id, status_code=200)


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
            detail += f": {shorten(server_text(body_message, redact))}"
        else:
            shown = excerpt(raw, redact, truncated=truncated)
            detail += f": {shown}" if shown else ""
    seconds = parse_retry_after(retry_after)
    refused = endpoint == START and start_refused(status_code, seconds)
    if refused:
        detail += "; the server refused the Start without taking it, so it may be sent again"
    elif status_code >= 500:
        # A gateway answers 5xx after it forwarded the Start too: it may have run, and be billed.
        detail = note_start_taken(endpoint, detail)
    return BananaHTTPError(
        detail,
        endpoint=endpoint,
        status_code=status_code,
        call_id=call_id,
        retry_after=seconds,
        request_sent=False if refused else None,
    )


def _message_of(raw: bytes) -> str | None:
    try:
        body = _load_json(raw)
    except (ValueError, RecursionError):
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else None
