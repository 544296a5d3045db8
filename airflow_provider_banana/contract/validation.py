"""Validate what users give (arguments, connection fields) before any request is sent."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_banana.contract.depth import MAX_JSON_DEPTH, JsonTooDeepError, load_json, value_depth
from airflow_provider_banana.exceptions import (
    BananaConfigError,
)

DEFAULT_BASE_URL = "https://api.banana.dev/"


#: The longest duration any argument or setting takes, in seconds (30 days): past it a value is a
#: mistake (``1e300``), and it would overflow the clocks and sockets it is handed to.
MAX_SECONDS = 30 * 24 * 3600.0


#: The shortest ``poll_interval``: at most four Checks a second for one call, whatever the server does.
MIN_POLL_INTERVAL = 0.25


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


def validate_extra(extra: Any, conn_id: str | None = None) -> dict[str, Any]:
    """
    Return a connection's extra as a dict (none at all is an empty one), or raise if it is not one.

    :param extra: the connection's extra, parsed (``Connection.extra_dejson``).
    :param conn_id: the connection's id, for the message.
    :raises BananaConfigError: a JSON list, number, string or boolean instead of an object. Its
        content is not echoed: an extra may hold credentials (a proxy's, say).
    """
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        kind = {bool: "boolean", int: "number", float: "number", str: "string", list: "list"}.get(type(extra), "value")
        which = f"The extra of Banana connection {conn_id!r}" if conn_id else "The Banana connection's extra"
        raise BananaConfigError(
            f'{which} must be a JSON object (for example {{"model_key": "my-model"}}), got a JSON {kind}'
        )
    return dict(extra)


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
    :raises BananaConfigError: a string that is not JSON, JSON that is not an object, or inputs
        nested more than ``MAX_JSON_DEPTH`` (512) levels deep (or that contain themselves).
    :raises TypeError: a value that is neither a mapping nor a string, or that JSON cannot hold
        (a datetime, a set, NaN ...).
    """
    too_deep = (
        f"model_inputs nest more than {MAX_JSON_DEPTH} levels of objects and arrays deep (or contain "
        "themselves), past the provider's limit for JSON; nothing was sent"
    )
    if isinstance(model_inputs, (str, bytes)):
        document = model_inputs.encode("utf-8", "surrogatepass") if isinstance(model_inputs, str) else model_inputs
        try:
            model_inputs = load_json(document)
        except JsonTooDeepError:
            raise BananaConfigError(too_deep) from None
        except ValueError as e:
            raise BananaConfigError(f"model_inputs is a string but not valid JSON: {e}") from e
        if not isinstance(model_inputs, dict):
            raise BananaConfigError(f"model_inputs must be a JSON object, got JSON {type(model_inputs).__name__}")
    if not isinstance(model_inputs, Mapping):
        raise TypeError(f"model_inputs must be a dict (or a JSON object string), got {type(model_inputs).__name__}")
    model_inputs = dict(model_inputs)
    # Measured without recursion first: json.dumps recurses once per level, so 100,000 levels would
    # raise a bare RecursionError, and a depth near the limit would pass or fail with the stack.
    if value_depth(model_inputs) > MAX_JSON_DEPTH:
        raise BananaConfigError(too_deep)
    try:
        json.dumps(model_inputs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"model_inputs cannot be sent as JSON: {e}") from e
    except RecursionError:  # only from a caller whose own stack is already near the limit
        raise BananaConfigError(too_deep) from None
    return model_inputs


def validate_batch_inputs(model_inputs: Any) -> list[dict[str, Any]]:
    """
    Return a batch's inputs as a list of dicts, each checked by :func:`validate_model_inputs`, or raise naming one.

    :param model_inputs: an iterable of inputs, or a string holding a JSON array (what a template renders to).
    :raises BananaConfigError: a string that is not JSON, or an input that fails its check (naming its index).
    :raises TypeError: a value that is not a list of inputs, or an input that is not one.
    """
    value = model_inputs
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise BananaConfigError(f"model_inputs is a string but not a JSON array: {e}") from e
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"model_inputs must be a list of inputs, got {type(value).__name__}")
    inputs = []
    for index, item in enumerate(value):
        try:
            inputs.append(validate_model_inputs(item))
        except (TypeError, ValueError) as e:
            raise type(e)(f"model_inputs[{index}]: {e}") from e
    return inputs


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
    kind = type(value)
    if kind is float or kind is int:  # the usual case, decided with one call (a trigger checks five)
        return math.isfinite(value)
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


def absolute_deadline(value: Any, name: str = "deadline") -> float:
    """
    Return an absolute deadline (a ``time.time()``), or raise if it is not one.

    :param value: the deadline: a finite number of Unix seconds, not a bool, at most
        :data:`MAX_SECONDS` ahead.
    :param name: the argument's name, for the message.
    :raises BananaConfigError: anything else.
    """
    if not _is_number(value) or value <= 0:
        raise BananaConfigError(f"{name} must be an absolute time.time() (Unix seconds), got {value!r}")
    if value - time.time() > MAX_SECONDS:
        raise BananaConfigError(f"{name} must be at most {MAX_SECONDS:g} s from now, got {value!r}")
    return float(value)


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
