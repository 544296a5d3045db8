"""Build what goes on the wire: the endpoints' URLs and the Start and Check bodies."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

START = "start"


CHECK = "check"


_PATHS = {START: "start/v4/", CHECK: "check/v4/"}


@functools.lru_cache(maxsize=64)  # urljoin costs ~10 us, and every Check of every trigger asks
def endpoint_url(base_url: str, endpoint: str) -> str:
    """
    Return the full URL of an endpoint under a validated base URL.

    :param base_url: the output of :func:`validate_base_url`.
    :param endpoint: :data:`START` or :data:`CHECK`.
    """
    return urljoin(base_url, _PATHS[endpoint])


#: ``json.dumps(body, separators=(",", ":"))``, the encoder made once instead of at every request.
_BODY_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: What turns 128 random bits into a version 4 (random), variant 1 (RFC 4122) UUID, as ``uuid.UUID`` does.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def encode_body(body: dict[str, Any]) -> bytes:
    """
    Return a request body as compact JSON bytes.

    :param body: what :func:`build_start_body` or :func:`build_check_body` built.
    """
    return _BODY_ENCODER.encode(body).encode()


def request_id() -> str:
    """
    Return a fresh random UUID, the ``id`` of a request: the text ``str(uuid.uuid4())`` gives.

    Written out, since ``uuid.uuid4()`` builds and checks a UUID object for the same 36 characters,
    and every Check of every trigger asks for one.
    """
    bits = f"{int.from_bytes(os.urandom(16), 'big') & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{bits[:8]}-{bits[8:12]}-{bits[12:16]}-{bits[16:20]}-{bits[20:]}"


def _fresh() -> dict[str, Any]:
    # What every body starts with, new at each request. The official SDKs send a fresh uuid4 and
    # integer Unix seconds; the id is not an idempotency key.
    return {"id": request_id(), "created": int(time.time())}


def _check_fields(api_key: str, call_id: str, long_poll: bool) -> dict[str, Any]:
    # The rest of a Check body, the same for every Check of a call.
    return {"apiKey": api_key, "longPoll": long_poll, "callID": call_id}


def build_start_body(api_key: str, model_key: str, model_inputs: dict[str, Any], *, start_only: bool) -> dict[str, Any]:
    """
    Return the JSON body of a Start request.

    :param api_key: a validated API key.
    :param model_key: a validated model key.
    :param model_inputs: validated model inputs.
    :param start_only: ask Banana to answer at once with a callID instead of holding for the result.
    """
    return {
        **_fresh(),
        "apiKey": api_key,
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
    return {**_fresh(), **_check_fields(api_key, call_id, long_poll)}


def check_bodies(api_key: str, call_id: str, *, long_poll: bool) -> Callable[[], bytes]:
    """
    Return what makes the bytes of one call's Check bodies, each with its own ``id`` and ``created``.

    The bytes :func:`encode_body` gives for :func:`build_check_body`'s body: the part that stays
    the same for the call (the key, the flag, the call id) is encoded once, not at every re-poll.

    :param api_key: a validated API key.
    :param call_id: the call to ask about.
    :param long_poll: ask Banana to hold the request until the call finishes (up to 50 s).
    """
    # _fresh()'s two fields, written per Check; then the call's own, encoded once.
    rest = encode_body(_check_fields(api_key, call_id, long_poll))
    template = b'{"id":"%s","created":%d,' + rest[1:].replace(b"%", b"%%")

    def fresh() -> bytes:
        return template % (request_id().encode(), int(time.time()))

    return fresh


def use_start_only(*, timeout: float, start_hold: float, hand_off: bool) -> bool:
    """
    Return whether a Start should be ``startOnly`` (answer at once with the callID).

    The one rule of every Start. A waiting Start holds its caller up to ``start_hold``, cannot be
    abandoned at a deadline (its answer is the only copy of the callID of a call already billed),
    and leaves nothing to reattach to if the process dies while it waits. So it waits only when
    the caller follows the call itself and the timeout leaves room for the whole hold.

    :param timeout: seconds the caller gives the call.
    :param start_hold: how long the server holds a waiting Start.
    :param hand_off: the call is followed elsewhere, or needs its id stored first (a trigger, a
        sensor, a durable call, a batch).
    """
    return hand_off or timeout < start_hold
