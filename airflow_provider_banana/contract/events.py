"""Build and read back the trigger event payloads, which Airflow stores in its database."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from airflow_provider_banana.contract._text import describe_error
from airflow_provider_banana.contract.replies import call_error
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaError,
    BananaTimeoutError,
)
from airflow_provider_banana.redact import Redactor


class EventStatus(str, enum.Enum):
    """
    The ``status`` of a trigger event: how the wait for a call ended.

    The values are the payload's words, stored in Airflow's database with every event, so they
    never change; the member names follow the contract's one name per state (``FINISHED``).
    """

    #: The call finished; its outputs are in the event.
    FINISHED = "success"
    #: The call failed (Banana's "error" message).
    FAILED = "failed"
    #: Our deadline passed while the call ran on.
    TIMEOUT = "timeout"
    #: Waiting failed for another reason (transport trouble that outlived the retries, a bad connection).
    ERROR = "error"
    #: The name 0.1.0 gave ``FINISHED``: an alias, kept for code written against it.
    SUCCESS = "success"


def classify_error(error: BaseException, redactor: Redactor | None = None) -> tuple[EventStatus, str]:
    """
    Return how a wait that raised ``error`` ended, and the text that says so (the key masked).

    The one mapping of an exception to an outcome: trigger events and batch waves both use it.

    :param error: what the wait raised.
    :param redactor: masks the key in the text (our exceptions mask it already; this covers any other).
    """
    redact = redactor or Redactor(None)
    if isinstance(error, BananaCallError):
        return EventStatus.FAILED, redact(error.message)
    if isinstance(error, BananaTimeoutError):
        return EventStatus.TIMEOUT, redact(error.last_message or "")
    return EventStatus.ERROR, redact(describe_error(error))


def success_event(call_id: str, model_outputs: list[Any], message: str = "success", **summary: float) -> dict[str, Any]:
    """
    Return the payload of a call that finished.

    :param call_id: the call.
    :param model_outputs: its ``modelOutputs`` list.
    :param message: Banana's message.
    :param summary: the watch's figures for the task's log (``checks``, ``elapsed``): added keys,
        which a reader of an older payload does without.
    """
    return {
        "status": EventStatus.FINISHED.value,
        "call_id": call_id,
        "model_outputs": model_outputs,
        "message": message,
        **summary,
    }


def error_event(
    call_id: str, error: BaseException, *, redactor: Redactor | None = None, **summary: float
) -> dict[str, Any]:
    """
    Return the payload that reports ``error`` raised while waiting for a call.

    The payload is stored in Airflow's database: its message has the key masked.

    :param call_id: the call.
    :param error: a failed call (``failed``), our deadline (``timeout``), or anything else (``error``).
    :param redactor: masks the key in the message (our exceptions mask it already; this covers any other).
    :param summary: the watch's figures for the task's log, as for :func:`success_event`.
    """
    status, message = classify_error(error, redactor)
    payload: dict[str, Any] = {
        "status": status.value,
        "call_id": call_id,
        "model_outputs": None,
        "message": message,
        **summary,
    }
    if isinstance(error, BananaTimeoutError):
        payload["timeout"] = error.timeout
    return payload


def event_summary(event: Any) -> str:
    """
    Return the trigger's summary an event carries, for the task's log ("" if it has none).

    Airflow 3.3 truncates a trigger's log at each deferral of the same try, so the task's own log
    keeps this line.

    :param event: the payload handed to ``execute_complete``.
    """
    if not isinstance(event, Mapping):
        return ""
    elapsed, checks = event.get("elapsed"), event.get("checks")
    if not isinstance(elapsed, (int, float)) or not isinstance(checks, int) or isinstance(checks, bool):
        return ""
    return f"{elapsed:.1f} s after its Start, Checks from the triggerer: {checks}"


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
    if status is EventStatus.FINISHED:
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
