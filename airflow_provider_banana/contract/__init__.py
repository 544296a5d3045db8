"""
Own the Banana v4 contract: every decision about a request or a reply, with no I/O.

The hook (``requests``), the async hook used by the trigger (``aiohttp``), the operator and the
sensor all call this package; none of them reads ``message`` itself. Each module has one reason to
change:

* :mod:`.validation`: what users give (arguments, connection fields), checked before any request;
* :mod:`.wire`: the endpoints and the Start and Check bodies, and whether a Start is startOnly;
* :mod:`.limits`: how long one request may take and how large its reply may be;
* :mod:`.network`: how a request reaches the server (proxy, trusted CAs), the same for both halves;
* :mod:`.replies`: the decision table of ``shared/BANANA_API.md`` (running, finished, failed), with
  the recorded quirks (a finished Start with ``message: ""`` and ``callID: ""``, "error" as a
  case-insensitive substring anywhere in ``message``), and the key masked in every text it lets out;
* :mod:`.stepwise`: a large body parsed in short steps, so that a thread parsing it lets an event
  loop in the same process run;
* :mod:`.failures`: a transport failure, as the I/O layer saw it, turned into our exception (a
  reply too large, undecodable or not well-formed HTTP included);
* :mod:`.retries`: the one retry policy: ``tenacity.Retrying``'s arguments for the sync hook, and
  ``pause_before_retry`` (the same decisions) for the async hook's own loop;
* :mod:`.deadline`: when a wait must end (``timeout`` or ``execution_timeout``), and the error
  that says it did not;
* :mod:`.waiting`: the pacing of Checks and the reattachment of a retried task to its call;
* :mod:`.storable`: whether Airflow can store a call's outputs (XCom, trigger events, task state);
* :mod:`.events`: the trigger event payloads, stored in Airflow's database (a change there is a
  compatibility change): what goes in one (outputs inline up to 64 KiB, else their size and sha256),
  what one means, and the one mapping of an exception to an event's outcome.

Every public name is re-exported here: ``from airflow_provider_banana.contract import X`` works for
all of them.
"""

from __future__ import annotations

from airflow_provider_banana.contract.deadline import (
    batch_timeout_error,
    budget,
    call_timeout_error,
    deadline_for,
    task_started,
)
from airflow_provider_banana.contract.events import (
    MAX_EVENT_OUTPUTS_BYTES,
    EventOutputs,
    EventStatus,
    OutputsDigest,
    OutputsOnServer,
    OutputsWritten,
    canonical_outputs,
    classify_error,
    error_event,
    event_fits_loop,
    event_summary,
    outputs_from_event,
    storable_success_event,
    success_event,
    wave_outputs_event,
    wave_outputs_from_event,
)
from airflow_provider_banana.contract.failures import (
    START_MAY_BE_TAKEN,
    TransportFailure,
    malformed_reply,
    note_start_taken,
    reply_too_large,
    transport_error,
    undecodable_reply,
    unexpected_transport_error,
    untrusted_certificate,
    unusable_url,
)
from airflow_provider_banana.contract.framing import framing_problem, framing_problem_of_raw
from airflow_provider_banana.contract.limits import (
    DEFAULT_MAX_REPLY_BYTES,
    MIN_MAX_REPLY_BYTES,
    BananaTimeouts,
    RequestBudget,
    max_reply_bytes_from_extra,
)
from airflow_provider_banana.contract.network import (
    DIRECT,
    VERIFY_OFF_WARNING,
    BananaNetwork,
    bypasses_proxy,
    network_for,
    proxy_from_environment,
)
from airflow_provider_banana.contract.replies import (
    MAX_CALL_ID_LENGTH,
    BananaFinished,
    BananaResult,
    BananaRunning,
    CallState,
    call_error,
    is_error_message,
    may_hold_non_finite,
    non_finite_paths,
    parse_reply,
    parse_retry_after,
    redirect_target,
)
from airflow_provider_banana.contract.retries import (
    BananaRetryPolicy,
    describe_retry,
    is_retryable,
    start_refused,
)
from airflow_provider_banana.contract.storable import (
    MAX_OUTPUT_DEPTH,
    check_storable,
    unstorable_values,
)
from airflow_provider_banana.contract.validation import (
    DEFAULT_BASE_URL,
    MAX_SECONDS,
    MIN_POLL_INTERVAL,
    absolute_deadline,
    number_from_extra,
    validate_api_key,
    validate_base_url,
    validate_batch_inputs,
    validate_call_id,
    validate_count,
    validate_extra,
    validate_model_inputs,
    validate_model_key,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.contract.waiting import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    PROGRESS_EVERY,
    CallWaiter,
    Reattach,
    WaitStep,
    pause_before_next_check,
    reattach_decision,
)
from airflow_provider_banana.contract.wire import (
    CHECK,
    START,
    build_check_body,
    build_start_body,
    check_bodies,
    encode_body,
    endpoint_url,
    request_id,
    use_start_only,
)

__all__ = [
    "CHECK",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_REPLY_BYTES",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DIRECT",
    "MAX_CALL_ID_LENGTH",
    "MAX_EVENT_OUTPUTS_BYTES",
    "MAX_OUTPUT_DEPTH",
    "MAX_SECONDS",
    "MIN_MAX_REPLY_BYTES",
    "MIN_POLL_INTERVAL",
    "PROGRESS_EVERY",
    "START",
    "START_MAY_BE_TAKEN",
    "VERIFY_OFF_WARNING",
    "BananaFinished",
    "BananaNetwork",
    "BananaResult",
    "BananaRetryPolicy",
    "BananaRunning",
    "BananaTimeouts",
    "CallState",
    "CallWaiter",
    "EventOutputs",
    "EventStatus",
    "OutputsDigest",
    "OutputsOnServer",
    "OutputsWritten",
    "Reattach",
    "RequestBudget",
    "TransportFailure",
    "WaitStep",
    "absolute_deadline",
    "batch_timeout_error",
    "budget",
    "build_check_body",
    "build_start_body",
    "bypasses_proxy",
    "call_error",
    "call_timeout_error",
    "canonical_outputs",
    "check_bodies",
    "check_storable",
    "classify_error",
    "deadline_for",
    "describe_retry",
    "encode_body",
    "endpoint_url",
    "error_event",
    "event_fits_loop",
    "event_summary",
    "framing_problem",
    "framing_problem_of_raw",
    "is_error_message",
    "is_retryable",
    "malformed_reply",
    "max_reply_bytes_from_extra",
    "may_hold_non_finite",
    "network_for",
    "non_finite_paths",
    "note_start_taken",
    "number_from_extra",
    "outputs_from_event",
    "parse_reply",
    "parse_retry_after",
    "pause_before_next_check",
    "proxy_from_environment",
    "reattach_decision",
    "redirect_target",
    "reply_too_large",
    "request_id",
    "start_refused",
    "storable_success_event",
    "success_event",
    "task_started",
    "transport_error",
    "undecodable_reply",
    "unexpected_transport_error",
    "unstorable_values",
    "untrusted_certificate",
    "unusable_url",
    "use_start_only",
    "validate_api_key",
    "validate_base_url",
    "validate_batch_inputs",
    "validate_call_id",
    "validate_count",
    "validate_extra",
    "validate_model_inputs",
    "validate_model_key",
    "validate_poll_interval",
    "validate_seconds",
    "wave_outputs_event",
    "wave_outputs_from_event",
]
