"""Parse Banana v4 Start and Check request bodies and build every reply shape, without I/O.

Reply shapes follow ``BANANA_API.md``: every reply carries ``id`` (the request's,
or a fresh one), ``message``, ``created`` (integer Unix seconds) and
``apiVersion``; Start replies and every error reply also carry ``callID``,
``finished`` and ``modelOutputs``.
"""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

#: Free-form label; clients log it and never parse it.
API_VERSION = "January 11, 2023"

# Enough for any sane modelInputs while keeping a buggy client from filling memory.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Echoed user input (a model key, a call id) is cut so a reply stays small.
_ECHO_LIMIT = 200
#: The longest request ``id`` served: it is echoed whole in the reply, and the SDKs send a uuid4
#: (36 characters). A longer one is refused (a v4 error reply, under a fresh id), never cut: a
#: client matching replies to requests by id would be told a different one.
MAX_ID_LENGTH = 256
# A JSON escape of a UTF-16 surrogate, "\ud800": a lone one decodes to a str that is no Unicode
# text, and cannot be encoded back (in the reply, the apiKey compare, a request to a model).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

_MISSING = object()


class RequestError(Exception):
    """A request that cannot be served; answered with HTTP 200 and ``error`` in ``message``.

    :param message: the reply's ``message``; always contains "error".
    :param request_id: the id to echo in the reply.
    """

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class StartRequest:
    """A validated Start request.

    :param request_id: the request's ``id``, echoed in the reply.
    :param model_key: the model to run.
    :param start_only: answer at once instead of holding for the result.
    :param model_inputs: any JSON, handed to the model verbatim.
    """

    request_id: str
    model_key: str
    start_only: bool
    model_inputs: Any = field(repr=False)


@dataclass(frozen=True)
class CheckRequest:
    """A validated Check request.

    :param request_id: the request's ``id``, echoed in the reply.
    :param call_id: the call asked about.
    :param long_poll: hold until the call finishes or the check hold passes.
    """

    request_id: str
    call_id: str
    long_poll: bool


def new_request_id() -> str:
    """Make an id for a request that did not send one."""
    return str(uuid.uuid4())


def new_call_id() -> str:
    """Make a fresh callID in Banana's ``call_<uuid4>`` form."""
    return f"call_{uuid.uuid4()}"


def task_id_for(call_id: str) -> str:
    """Name the task behind a call the way Banana's "taskID does not exist" message does.

    :param call_id: the callID the client sent.
    :return: ``task_<uuid>`` for ``call_<uuid>``, else ``task_<call_id>``.
    """
    suffix = call_id.removeprefix("call_")
    return f"task_{suffix[:_ECHO_LIMIT]}"


def parse_start(body: bytes, api_key: str | None) -> StartRequest:
    """Validate a Start body.

    :param body: the raw request body.
    :param api_key: the only accepted apiKey, or None to accept any.
    :return: the validated request.
    :raises RequestError: on malformed JSON, a bad apiKey or a missing or invalid field.
    """
    data, request_id = _decode_object(body, api_key)
    model_key = _required_string(data, "modelKey", request_id)
    if data.get("modelInputs", _MISSING) is _MISSING:
        raise RequestError("error: missing field 'modelInputs'", request_id)
    start_only = _optional_bool(data, "startOnly", request_id)
    return StartRequest(
        request_id=request_id,
        model_key=model_key,
        start_only=start_only,
        model_inputs=data["modelInputs"],
    )


def parse_check(body: bytes, api_key: str | None) -> CheckRequest:
    """Validate a Check body.

    :param body: the raw request body.
    :param api_key: the only accepted apiKey, or None to accept any.
    :return: the validated request.
    :raises RequestError: on malformed JSON, a bad apiKey or a missing or invalid field.
    """
    data, request_id = _decode_object(body, api_key)
    call_id = _required_string(data, "callID", request_id)
    long_poll = _optional_bool(data, "longPoll", request_id)
    return CheckRequest(request_id=request_id, call_id=call_id, long_poll=long_poll)


def echo(value: str) -> str:
    """Quote a piece of client input for an error message, cut to a bounded length.

    :param value: the client's text.
    :return: its repr, truncated.
    """
    text = repr(value)
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "…"


def error_reply(request_id: str, message: str) -> dict[str, Any]:
    """Build the reply to a request that failed before or while starting a call.

    :param request_id: the id to echo.
    :param message: the error text; contains "error".
    """
    return {**_base(request_id, message), "callID": "", "finished": False, "modelOutputs": None}


def start_finished_reply(request_id: str, call_id: str, output: Any, *, empty_message: bool) -> dict[str, Any]:
    """Build the reply to a Start whose call finished within the hold.

    :param request_id: the id to echo.
    :param call_id: the call's id.
    :param output: the model's reply, wrapped into ``modelOutputs``.
    :param empty_message: use the recorded real-world form with empty ``message`` and ``callID``.
    """
    return {
        **_base(request_id, "" if empty_message else "success"),
        "callID": "" if empty_message else call_id,
        "finished": True,
        "modelOutputs": [output],
    }


def start_pending_reply(request_id: str, call_id: str) -> dict[str, Any]:
    """Build the reply to a Start whose call has not finished (startOnly, or the hold ran out).

    :param request_id: the id to echo.
    :param call_id: the call's id, to Check later.
    """
    return {**_base(request_id, ""), "callID": call_id, "finished": False, "modelOutputs": None}


def start_failed_reply(request_id: str, call_id: str, message: str) -> dict[str, Any]:
    """Build the reply to a Start whose call failed within the hold.

    :param request_id: the id to echo.
    :param call_id: the call's id.
    :param message: the call's error text; contains "error".
    """
    return {**_base(request_id, message), "callID": call_id, "finished": False, "modelOutputs": None}


def check_reply(request_id: str, message: str, output: Any = _MISSING) -> dict[str, Any]:
    """Build a Check reply.

    :param request_id: the id to echo.
    :param message: ``queued``, ``running``, ``success`` or an error text.
    :param output: the model's reply when the call succeeded; omitted otherwise.
    """
    return {**_base(request_id, message), "modelOutputs": None if output is _MISSING else [output]}


def check_missing_reply(request_id: str, call_id: str) -> dict[str, Any]:
    """Build the Check reply for an unknown, forgotten or expired call.

    :param request_id: the id to echo.
    :param call_id: the callID the client sent.
    """
    return check_reply(request_id, f"inference server error: taskID does not exist: {task_id_for(call_id)}")


def encode(payload: Any) -> bytes:
    """Serialise a reply compactly.

    :param payload: any JSON-ready value.
    """
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate in a model's output (an external model may send "\ud800"): escaped, the
        # reply is valid JSON that carries it exactly as the model sent it.
        return json.dumps(payload, separators=(",", ":")).encode()


def _base(request_id: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "message": message, "created": int(time.time()), "apiVersion": API_VERSION}


def _decode_object(body: bytes, api_key: str | None) -> tuple[dict[str, Any], str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError("error: invalid JSON body", new_request_id()) from None
    if not isinstance(data, dict):
        raise RequestError("error: invalid JSON body: expected an object", new_request_id())
    request_id = data.get("id")
    if not isinstance(request_id, str) or not request_id:
        request_id = new_request_id()
    if _SURROGATE_ESCAPE.search(body):
        _refuse_lone_surrogates(data, request_id)
    if len(request_id) > MAX_ID_LENGTH:
        raise RequestError(
            f"error: field 'id' is {len(request_id)} characters long, longer than the {MAX_ID_LENGTH} allowed",
            new_request_id(),
        )
    if api_key is not None:
        sent = data.get("apiKey")
        # Constant-time compare: the key must not leak through response timing.
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), api_key.encode()):
            raise RequestError("error: invalid apiKey", request_id)
    return data, request_id


def _refuse_lone_surrogates(data: dict[str, Any], request_id: str) -> None:
    if not _holds_lone_surrogate(data):
        return
    where = next(
        (f"field {name!r}" for name in ("id", "apiKey", "modelKey", "callID") if not _encodable(data.get(name))),
        "a string in the body",
    )
    raise RequestError(
        f"error: invalid JSON body: {where} holds a lone UTF-16 surrogate (such as \\ud800), which is not text",
        request_id if _encodable(request_id) else new_request_id(),
    )


def _holds_lone_surrogate(data: Any) -> bool:
    # Only a body that spells a surrogate escape is looked at (an emoji written "\ud83d\ude00" is
    # one too): encoding the whole of it is the one sure test, and costs nothing for the rest.
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):  # whatever else is wrong is for the fields' checks to say
        return False
    return False


def _encodable(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _required_string(data: dict[str, Any], name: str, request_id: str) -> str:
    value = data.get(name, _MISSING)
    if value is _MISSING or value is None:
        raise RequestError(f"error: missing field {name!r}", request_id)
    if not isinstance(value, str) or not value:
        raise RequestError(f"error: field {name!r} must be a non-empty string", request_id)
    return value


def _optional_bool(data: dict[str, Any], name: str, request_id: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"error: field {name!r} must be a boolean", request_id)
    return value
