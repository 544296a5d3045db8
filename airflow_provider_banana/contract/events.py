"""Build and read back the trigger event payloads, which Airflow stores in its database."""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from airflow_provider_banana.contract._text import describe_error
from airflow_provider_banana.contract.replies import BananaFinished, BananaResult, call_error
from airflow_provider_banana.contract.stepwise import dumps_in_steps
from airflow_provider_banana.contract.storable import check_storable
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaError,
    BananaOutputsExpiredError,
    BananaOutputsMismatchError,
    BananaOutputsNotStorableError,
    BananaTimeoutError,
)
from airflow_provider_banana.redact import Redactor

#: Most bytes of outputs (their :func:`canonical_outputs`) one trigger event carries: a call's, or
#: all of a batch wave's together. Airflow stores an event in ``task_instance.next_kwargs``, prints
#: it in the trigger's log ("Trigger fired event") and sends it through the triggerer's log socket
#: while every other trigger on that triggerer waits; past this the outputs stay on the server, and
#: the event carries their size and sha256 for the worker, which fetches them with one Check.
MAX_EVENT_OUTPUTS_BYTES = 64 * 1024


def event_fits_loop(reply_bytes: int) -> bool:
    """
    Return whether a finished call's event is built on the trigger's event loop, not in a thread.

    A reply of at most :data:`MAX_EVENT_OUTPUTS_BYTES` holds outputs whose :func:`canonical_outputs`
    are about as large (compact JSON, UTF-8), so checking and serializing them takes well under a
    millisecond; handing that to a thread costs more, when thousands of triggers finish together
    (the GIL changing hands: 0.3 ms of CPU a call at 1,000 at once, ``benchmarks/async_layers.py``).
    Larger replies are handled in a thread, so that megabytes never stall the loop.

    :param reply_bytes: the size of the reply that finished the call
        (:attr:`~airflow_provider_banana.contract.replies.BananaFinished.reply_bytes`).
    """
    return 0 < reply_bytes <= MAX_EVENT_OUTPUTS_BYTES


# json.dumps with options builds an encoder per call; this one is made once (it keeps no state).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def canonical_outputs(model_outputs: list[Any], *, at_once: bool = False) -> bytes:
    """
    Return the bytes that the size, the sha256 and an output file of ``model_outputs`` are of.

    Compact JSON (``,`` and ``:`` separators, key order as sent, non-ASCII as UTF-8; NaN and
    Infinity as Python writes them, since the parser reads them): the parsed ``modelOutputs``
    serialized again, so the trigger and the worker, each parsing the same reply with
    :func:`~airflow_provider_banana.contract.parse_reply`, get the same bytes from the same outputs.

    The bytes are exactly ``json.dumps(model_outputs, ensure_ascii=False, separators=(",", ":"))``
    in UTF-8, written in short steps (:func:`~airflow_provider_banana.contract.stepwise.dumps_in_steps`):
    one ``json.dumps`` of tens of MiB is one C call that holds the GIL for seconds, and with it the
    triggerer's event loop, though it runs in a thread.

    :param model_outputs: the parsed ``modelOutputs`` list.
    :param at_once: the outputs are known to be small (their reply fit :func:`event_fits_loop`):
        one ``json.dumps``, the same bytes without the steps' cost.
    """
    if at_once:
        text = _COMPACT.encode(model_outputs)
    else:
        text = dumps_in_steps(model_outputs, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    # A JSON "\ud800" escape parses to a lone surrogate, which strict UTF-8 refuses to encode.
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class OutputsDigest:
    """
    The size and sha256 of outputs, over their :func:`canonical_outputs`.

    :param size: bytes.
    :param sha256: hex digest.
    """

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> OutputsDigest:
        """Return the digest of ``data`` (a :func:`canonical_outputs`)."""
        return cls(len(data), hashlib.sha256(data).hexdigest())

    def to_event(self) -> dict[str, Any]:
        """Return the event's fields for this digest."""
        return {"outputs_bytes": self.size, "outputs_sha256": self.sha256}

    @classmethod
    def from_event(cls, fields: Mapping[str, Any], what: str) -> OutputsDigest:
        """
        Read a digest back from an event's fields.

        :param fields: the event, or one entry of a wave's ``on_server``.
        :param what: the event's subject, for the error.
        :raises BananaError: the fields are missing or malformed.
        """
        size, sha256 = fields.get("outputs_bytes"), fields.get("outputs_sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BananaError(f"Banana trigger event for {what}: outputs_bytes is not a size: {size!r}")
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise BananaError(f"Banana trigger event for {what}: outputs_sha256 is not a sha256: {sha256!r}")
        return cls(size, sha256)


@dataclass(frozen=True)
class OutputsOnServer:
    """
    Outputs an event left on the server: the worker fetches them with one Check and verifies them.

    :param call_id: the finished call.
    :param digest: what the trigger saw.
    """

    call_id: str
    digest: OutputsDigest

    def outputs_from_check(self, outcome: BananaResult | BananaCallError) -> list[Any]:
        """
        Return the outputs a Check of the finished call brought, once they match what the trigger saw.

        :param outcome: the Check's result, or the call error it raised.
        :raises BananaOutputsExpiredError: the server no longer knows the call (its retention ended).
        :raises BananaOutputsMismatchError: the call now reads otherwise, or its outputs differ.
        """
        size, sha256 = self.digest.size, self.digest.sha256
        if isinstance(outcome, BananaCallNotFoundError):
            raise BananaOutputsExpiredError(
                self.call_id,
                size,
                sha256,
                "the server no longer has its result (its retention ended before the worker fetched the "
                "outputs, which were too large for the trigger event); raise the server's result retention. "
                f"No new call was started. Server: {outcome.message}",
            )
        if isinstance(outcome, BananaCallError):
            raise BananaOutputsMismatchError(
                self.call_id, size, sha256, f"a Check of it now reports a failure: {outcome.message}"
            )
        if not isinstance(outcome, BananaFinished):
            raise BananaOutputsMismatchError(
                self.call_id, size, sha256, f"a Check of it now reads {outcome.status_text!r}, not finished"
            )
        fetched = OutputsDigest.of(canonical_outputs(outcome.model_outputs))
        if fetched != self.digest:
            raise BananaOutputsMismatchError(
                self.call_id,
                size,
                sha256,
                f"the outputs fetched again differ from those the trigger saw ({fetched.size} bytes, "
                f"sha256 {fetched.sha256} against sha256 {sha256}); the server answered two Checks differently",
            )
        return outcome.model_outputs


@dataclass(frozen=True)
class OutputsWritten:
    """
    Outputs written to a file (``output_path``) by the process that held them.

    :param output_path: the file's URI.
    :param digest: the file's size and sha256 (it holds :func:`canonical_outputs`).
    """

    output_path: str
    digest: OutputsDigest

    def task_result(self) -> dict[str, Any]:
        """Return what the task returns instead of the outputs: ``{"output_path", "bytes", "sha256"}``."""
        return {"output_path": self.output_path, "bytes": self.digest.size, "sha256": self.digest.sha256}


#: What a finished call's event hands the worker: the outputs themselves (small), where to fetch
#: them (left on the server), or the file they were written to.
EventOutputs: TypeAlias = list[Any] | OutputsOnServer | OutputsWritten


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
    #: The call finished, but Airflow cannot store its outputs: the event names where and why
    #: (``problems``), never the outputs, and the task keeps the call for a retry to reattach to.
    NOT_STORABLE = "not_storable"


def classify_error(error: BaseException, redactor: Redactor | None = None) -> tuple[EventStatus, str]:
    """
    Return how a wait that raised ``error`` ended, and the text that says so (the key masked).

    The one mapping of an exception to an outcome: trigger events and batch waves both use it.

    :param error: what the wait raised.
    :param redactor: masks the key in the text (our exceptions mask it already; this covers any other).
    """
    redact = redactor or Redactor(None)
    if isinstance(error, BananaOutputsNotStorableError):
        return EventStatus.NOT_STORABLE, redact(error.message)
    if isinstance(error, BananaCallError):
        return EventStatus.FAILED, redact(error.message)
    if isinstance(error, BananaTimeoutError):
        return EventStatus.TIMEOUT, redact(error.last_message or "")
    return EventStatus.ERROR, redact(describe_error(error))


def success_event(
    call_id: str,
    model_outputs: list[Any],
    message: str = "success",
    *,
    written: OutputsWritten | None = None,
    canonical: bytes | None = None,
    **summary: float,
) -> dict[str, Any]:
    """
    Return the payload of a call that finished; its outputs inline only up to :data:`MAX_EVENT_OUTPUTS_BYTES`.

    Past it, ``model_outputs`` is ``None`` and ``outputs_bytes`` and ``outputs_sha256`` say what the
    worker must fetch; with ``written``, ``output_path`` names the file that holds them instead.
    Serializing the outputs takes time for large ones: a trigger calls this in a thread.

    :param call_id: the call.
    :param model_outputs: its ``modelOutputs`` list.
    :param message: Banana's message.
    :param written: the file the outputs were written to (``output_path``), if any.
    :param canonical: the outputs' :func:`canonical_outputs`, when the caller made them already.
    :param summary: the watch's figures for the task's log (``checks``, ``elapsed``): added keys,
        which a reader of an older payload does without.
    """
    event: dict[str, Any] = {
        "status": EventStatus.FINISHED.value,
        "call_id": call_id,
        "model_outputs": None,
        "message": message,
        **summary,
    }
    if written is not None:
        return {**event, "output_path": written.output_path, **written.digest.to_event()}
    data = canonical_outputs(model_outputs) if canonical is None else canonical
    if len(data) <= MAX_EVENT_OUTPUTS_BYTES:
        return {**event, "model_outputs": model_outputs}
    return {**event, **OutputsDigest.of(data).to_event()}


def storable_success_event(
    call_id: str, model_outputs: list[Any], *, small: bool = False, **summary: float
) -> dict[str, Any]:
    """
    Return :func:`success_event`'s payload for outputs Airflow can store; raise, naming why, for others.

    Outputs Airflow cannot store would break the event itself (and the task's resume): the caller
    turns the error into an event that names where and why, and the task keeps the call for a retry.

    :param call_id: the call.
    :param model_outputs: its ``modelOutputs`` list.
    :param small: the reply that carried them fit :func:`event_fits_loop`: their bytes are made in
        one call, size the event, and clear most outputs at a glance (:func:`check_storable`'s
        ``canonical``) instead of a walk; a trigger fires thousands of these a minute.
    :param summary: as for :func:`success_event`.
    :raises BananaOutputsNotStorableError: see :func:`check_storable`.
    """
    canonical = None
    if small:
        # An integer past 4,300 digits has no text (ValueError), and the walk names it; nesting deeper
        # than the stack allows goes the stepwise way, as large outputs do.
        with contextlib.suppress(ValueError, RecursionError):
            canonical = canonical_outputs(model_outputs, at_once=True)
    check_storable(model_outputs, call_id=call_id, canonical=canonical)
    return success_event(call_id, model_outputs, "success", written=None, canonical=canonical, **summary)


def wave_outputs_event(finished: Mapping[str, list[Any]]) -> dict[str, Any]:
    """
    Return a batch wave event's outputs: ``finished`` inline up to :data:`MAX_EVENT_OUTPUTS_BYTES` in all.

    Calls whose outputs do not fit go to ``on_server`` (call id to ``outputs_bytes`` and
    ``outputs_sha256``): the worker fetches them. A trigger calls this in a thread.

    :param finished: call id to ``modelOutputs``, for the calls that finished in the wave.
    """
    inline: dict[str, list[Any]] = {}
    on_server: dict[str, dict[str, Any]] = {}
    budget = MAX_EVENT_OUTPUTS_BYTES
    for call_id, outputs in finished.items():
        data = canonical_outputs(outputs)
        if len(data) <= budget:
            inline[call_id] = outputs
            budget -= len(data)
        else:
            on_server[call_id] = OutputsDigest.of(data).to_event()
    return {"finished": inline, "on_server": on_server}


def wave_outputs_from_event(event: Mapping[str, Any]) -> tuple[dict[str, list[Any]], dict[str, OutputsOnServer]]:
    """
    Return a batch wave event's outputs: those it carries, and those left on the server (fetch them).

    :param event: the wave's payload.
    :raises BananaError: malformed outputs.
    """
    finished, on_server = event.get("finished"), event.get("on_server") or {}
    if not isinstance(finished, Mapping) or not isinstance(on_server, Mapping):
        raise BananaError(f"Malformed Banana batch wave event: finished or on_server is not a mapping: {event!r}")
    inline = {str(k): v if isinstance(v, list) else [v] for k, v in finished.items()}
    left: dict[str, OutputsOnServer] = {}
    for call_id, fields in on_server.items():
        if not isinstance(fields, Mapping):
            raise BananaError(f"Malformed Banana batch wave event: on_server[{call_id!r}] is {fields!r}")
        left[str(call_id)] = OutputsOnServer(str(call_id), OutputsDigest.from_event(fields, f"call {call_id}"))
    return inline, left


def error_event(
    call_id: str, error: BaseException, *, redactor: Redactor | None = None, **summary: float
) -> dict[str, Any]:
    """
    Return the payload that reports ``error`` raised while waiting for a call.

    The payload is stored in Airflow's database: its message has the key masked.

    :param call_id: the call.
    :param error: a failed call (``failed``), our deadline (``timeout``), outputs Airflow cannot store
        (``not_storable``, with ``problems``: ``[path, reason]`` pairs), or anything else (``error``).
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
    if isinstance(error, BananaOutputsNotStorableError):
        redact = redactor or Redactor(None)
        payload["problems"] = [[redact(path), reason] for path, reason in error.problems]
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


def outputs_from_event(event: Any) -> tuple[str, EventOutputs]:
    """
    Return ``(call_id, outputs)`` from a trigger event payload, or raise what it reports.

    ``outputs`` is the ``modelOutputs`` list when the event carries it; an :class:`OutputsOnServer`
    when they were too large for it (fetch them: :meth:`OutputsOnServer.outputs_from_check`); an
    :class:`OutputsWritten` when the trigger wrote them to ``output_path``.

    :param event: the payload handed to ``execute_complete``.
    :raises BananaError: a missing or malformed event, or an unknown status.
    :raises BananaCallError: the call failed (:class:`BananaCallNotFoundError` if unknown).
    :raises BananaTimeoutError: the deadline passed.
    :raises BananaOutputsNotStorableError: the call finished with outputs Airflow cannot store.
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
        if isinstance(outputs, list):
            return call_id, outputs
        if outputs is None and "outputs_sha256" in event:
            digest = OutputsDigest.from_event(event, f"call {call_id}")
            path = event.get("output_path")
            if path is None:
                return call_id, OutputsOnServer(call_id, digest)
            if isinstance(path, str) and path:
                return call_id, OutputsWritten(path, digest)
            raise BananaError(f"Banana trigger event for call {call_id}: output_path is not a URI: {path!r}")
        raise BananaError(f"Banana trigger event for call {call_id} reports success without model_outputs")
    if status is EventStatus.FAILED:
        raise call_error(message or "failed (no message)", call_id)
    if status is EventStatus.TIMEOUT:
        timeout = event.get("timeout")
        timeout = float(timeout) if isinstance(timeout, (int, float)) else 0.0
        raise BananaTimeoutError(call_id, timeout, message or None)
    if status is EventStatus.NOT_STORABLE:
        problems = event.get("problems")
        if not isinstance(problems, list) or not all(isinstance(p, list) and len(p) == 2 for p in problems):
            problems = [["(unknown)", message or "no details in the event"]]
        raise BananaOutputsNotStorableError([(str(p[0]), str(p[1])) for p in problems], call_id=call_id)
    raise BananaError(f"Waiting for Banana call {call_id} failed: {message}")
