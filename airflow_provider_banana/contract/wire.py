"""Build what goes on the wire: the endpoints' URLs and the Start and Check bodies."""

from __future__ import annotations

import functools
import time
import uuid
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
