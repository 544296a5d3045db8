"""
Exceptions raised by the Banana provider.

Every exception carries structured attributes, so callers (and the retry
policy in :mod:`airflow_provider_banana.contract`) decide on types and fields,
never on message text. No exception text or repr ever contains the API key:
nothing here is ever given one.

The tree::

    AirflowException
    └── BananaError                        any problem talking to Banana
        ├── BananaConfigError (ValueError) bad argument or connection; raised before any request
        ├── BananaCallError                Banana says the call itself failed (call_id, message)
        │   ├── BananaCallNotFoundError    unknown or expired callID ("taskID does not exist")
        │   └── BananaBatchError           items of a batch failed after their retries (failures, size)
        ├── BananaOutputsNotStorableError  the call finished but Airflow cannot store its outputs (call_id,
        │                                  problems); never retried: a task retry reattaches to the call
        ├── BananaTimeoutError             our own deadline passed while the call ran on (call_id, timeout)
        │   └── BananaBatchTimeoutError    a batch's deadline passed with calls running (running, progress)
        ├── BananaOutputsError             outputs the trigger saw cannot be had as it saw them (call_id, size, sha256)
        │   ├── BananaOutputsExpiredError  the server no longer has them (its retention ended); never retried
        │   └── BananaOutputsMismatchError what the worker fetched differs from what the trigger saw
        ├── BananaStorageError             a batch's input or output file failed after the batch began (an outage,
        │                                  not a bad argument); the calls run on and a retry reattaches to them
        └── BananaTransportError           the exchange failed; says nothing about the call (endpoint, request_sent)
            ├── BananaConnectError         never reached the server: the request was not taken
            │   └── BananaCertificateError the server's TLS certificate is not trusted; never retried
            ├── BananaResponseLostError    the request was sent, its answer lost (read timeout, dropped connection)
            ├── BananaHTTPError            an HTTP status other than 200, redirects included (status_code, retry_after)
            └── BananaProtocolError        HTTP 200 whose body is not a Banana reply (not JSON, no message,
                │                          another call's answer)
                └── BananaReplyTooLargeError  the body passed max_reply_bytes (limit); never retried

``BananaCallError`` means "the inference failed" and is never retried as if it
were transport trouble; ``BananaTransportError`` means "we could not talk to
Banana" and is never reported as a failed inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from airflow.exceptions import AirflowException

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1 has it only in airflow.exceptions
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

__all__ = [
    "BananaBatchError",
    "BananaBatchTimeoutError",
    "BananaCallError",
    "BananaCallNotFoundError",
    "BananaCertificateError",
    "BananaConfigError",
    "BananaConnectError",
    "BananaError",
    "BananaHTTPError",
    "BananaOutputsError",
    "BananaOutputsExpiredError",
    "BananaOutputsMismatchError",
    "BananaOutputsNotStorableError",
    "BananaProtocolError",
    "BananaReplyTooLargeError",
    "BananaResponseLostError",
    "BananaStorageError",
    "BananaTimeoutError",
    "BananaTransportError",
]


class BananaError(AirflowException):
    """
    Base class of every error this provider raises.

    Pickling keeps every attribute (Airflow pickles exceptions across processes), for every
    subclass alike: the text and the structured fields are restored as they were, and no
    ``__init__`` runs again.
    """

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class BananaConfigError(BananaError, ValueError):
    """
    Reject a bad argument or connection setting before any request is sent.

    Also a :class:`ValueError`, so generic input validation catches it.
    """


class BananaCallError(BananaError):
    """
    Report that Banana ran the call and the call failed.

    :param message: Banana's ``message`` text, verbatim.
    :param call_id: the call's id, when known (a failed Start may have none).
    """

    def __init__(self, message: str, *, call_id: str | None = None) -> None:
        self.call_id = call_id
        self.message = message
        where = f"Banana call {call_id}" if call_id else "Banana call"
        super().__init__(f"{where} failed: {message}")


class BananaCallNotFoundError(BananaCallError):
    """Report a callID that Banana does not know: never existed, expired, or lost in a restart."""


class BananaOutputsNotStorableError(BananaError):
    """
    Report a call that finished with outputs Airflow cannot store (XCom, a trigger event, task state).

    The outputs are never altered to fit, and the error is not retried within the task. The call
    is kept: a retry of the task (with ``durable`` calls, Airflow 3.3+) reattaches to it with a
    Check, which is free, instead of paying for a new Start, and fails the same way.

    :param problems: ``(path, reason)`` for each value found, the path like ``[0]["image"]["x"]``.
    :param call_id: the call, when known.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], *, call_id: str | None = None) -> None:
        self.problems = [(str(path), str(reason)) for path, reason in problems]
        self.call_id = call_id
        where = "; ".join(f"at {path}: {reason}" for path, reason in self.problems)
        self.message = f"Airflow cannot store its outputs ({where})"
        call = f"Banana call {call_id}" if call_id else "The Banana call"
        super().__init__(
            f"{call} finished, but Airflow cannot store its outputs, which are left as they are: {where}. "
            "With durable calls (Airflow 3.3+), a retry of this task reattaches to the call (a Check, not a "
            "new Start) and fails the same way"
        )


class BananaTimeoutError(BananaError):
    """
    Report that our deadline passed before the call finished.

    Banana v4 has no cancel endpoint: the call may still be running, and billed.

    :param call_id: the call that was still running.
    :param timeout: the timeout that ran out, in seconds.
    :param last_message: the last status Banana gave, if any.
    """

    def __init__(self, call_id: str | None, timeout: float, last_message: str | None = None) -> None:
        self.call_id = call_id
        self.timeout = timeout
        self.last_message = last_message
        status = f" (last status: {last_message!r})" if last_message else ""
        super().__init__(
            f"Banana call {call_id} did not finish within {timeout:g} s{status}; "
            "Banana v4 cannot cancel it, so it may still run and be billed"
        )


class BananaTransportError(BananaError):
    """
    Report that an exchange with Banana failed, saying nothing about the call itself.

    :param detail: what went wrong, in words.
    :param endpoint: ``"start"`` or ``"check"``.
    :param request_sent: whether the request may have reached the server. A Start that may
        have been taken must never be sent again: Banana bills every Start.
    :param call_id: the call a Check was about, if any.
    :param status_code: the HTTP status, when an answer came.
    """

    #: Whether the server may have taken the request; overridden by the subclasses that know.
    request_sent: bool = True

    def __init__(
        self,
        detail: str,
        *,
        endpoint: str,
        call_id: str | None = None,
        status_code: int | None = None,
        request_sent: bool | None = None,
    ) -> None:
        self.detail = detail
        self.endpoint = endpoint
        self.call_id = call_id
        # Shadows AirflowException's class-level HTTPStatus, which only Airflow's API server reads.
        self.status_code = status_code  # type: ignore[assignment]
        self.request_sent = type(self).request_sent if request_sent is None else request_sent
        about = f" for call {call_id}" if call_id else ""
        super().__init__(f"Banana {endpoint}{about}: {detail}")


class BananaConnectError(BananaTransportError):
    """Report that the server was never reached, so the request was provably not taken."""

    request_sent = False


class BananaCertificateError(BananaConnectError):
    """
    Report a server whose TLS certificate could not be verified: nothing was sent.

    The same certificate fails the same way on every attempt, so it is never retried: the CA that
    signed it must be trusted (connection extra ``ca_bundle``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``).
    """


class BananaResponseLostError(BananaTransportError):
    """Report that the request was sent and its answer lost; a Start may have been taken."""

    request_sent = True


class BananaHTTPError(BananaTransportError):
    """
    Report an HTTP status other than 200.

    :param retry_after: seconds the server asked us to wait (``Retry-After``), if it said.
    :param request_sent: ``False`` when the status proves the server refused the request without
        taking it (a Start answered 429, or 503 with ``Retry-After``); the contract decides.
    """

    def __init__(
        self,
        detail: str,
        *,
        endpoint: str,
        status_code: int,
        call_id: str | None = None,
        retry_after: float | None = None,
        request_sent: bool | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(detail, endpoint=endpoint, call_id=call_id, status_code=status_code, request_sent=request_sent)


class BananaProtocolError(BananaTransportError):
    """Report an HTTP 200 whose body is not a Banana reply (not a JSON object, or no string ``message``)."""


class BananaReplyTooLargeError(BananaProtocolError):
    """
    Report a reply body that passed ``max_reply_bytes`` (after decompression); reading stopped there.

    The same request would bring the same reply, so it is never retried.

    :param limit: the limit, in bytes.
    """

    def __init__(self, detail: str, *, endpoint: str, call_id: str | None = None, limit: int) -> None:
        self.limit = limit
        super().__init__(detail, endpoint=endpoint, call_id=call_id, status_code=200)


class BananaBatchError(BananaCallError):
    """
    Report the items of a batch that failed after their retries.

    :param failures: input index to Banana's last message for it (or why its Start may have been
        billed without an answer).
    :param size: the number of inputs in the batch.
    """

    def __init__(self, failures: Mapping[int, str], size: int) -> None:
        self.failures = dict(sorted(failures.items()))
        self.size = size
        shown = "; ".join(f"item {index}: {message}" for index, message in list(self.failures.items())[:20])
        more = f"; and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
        self.call_id = None
        self.message = f"{len(self.failures)} of {size} Banana batch items failed: {shown}{more}"
        BananaError.__init__(self, self.message)


class BananaBatchTimeoutError(BananaTimeoutError):
    """
    Report that a batch's deadline passed with calls still running.

    :param running: input index to call id, for the calls still running (they run on, billed;
        a retry of the task reattaches to them).
    :param timeout: the seconds the deadline stood for.
    :param progress: the batch's counts when it stopped.
    """

    def __init__(self, running: Mapping[int, str], timeout: float, progress: Mapping[str, int]) -> None:
        self.running = dict(sorted(running.items()))
        self.progress = dict(progress)
        self.call_id = None
        self.timeout = timeout
        self.last_message = None
        calls = ", ".join(f"item {i}: {c}" for i, c in list(self.running.items())[:10])
        more = f" and {len(self.running) - 10} more" if len(self.running) > 10 else ""
        counts = ", ".join(f"{v} {k}" for k, v in self.progress.items())
        BananaError.__init__(
            self,
            f"Banana batch did not finish within {timeout:g} s ({counts}); still running: {calls}{more}. "
            "Banana v4 cannot cancel them; a retry of this task reattaches to them",
        )


class BananaOutputsError(BananaError):
    """
    Report that a finished call's outputs, too large for the trigger event, cannot be had as the trigger saw them.

    :param call_id: the call.
    :param size: the outputs' size the trigger saw (bytes of their canonical JSON).
    :param sha256: their digest the trigger saw.
    :param detail: what went wrong.
    """

    def __init__(self, call_id: str, size: int, sha256: str, detail: str) -> None:
        self.call_id = call_id
        self.size = size
        self.sha256 = sha256
        self.detail = detail
        super().__init__(f"Banana call {call_id} finished with {size} bytes of outputs, but {detail}")


class BananaOutputsExpiredError(BananaOutputsError, AirflowFailException):
    """
    Report that the server forgot a finished call before the worker fetched its outputs.

    Also an ``AirflowFailException``: a retry cannot bring the outputs back, and a new Start would
    be billed again, so the task fails without retrying.
    """


class BananaOutputsMismatchError(BananaOutputsError):
    """Report outputs fetched by the worker that differ from those the trigger saw (size or sha256)."""


def _rebuild(cls, args, state):
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class BananaStorageError(BananaError):
    """
    Report that a batch's input or output file failed after the batch began: a storage outage, not a bad argument.

    A path that cannot be used at all is a :class:`BananaConfigError`, raised before any Start; this
    one comes mid-batch (a part of the output file, the assembled file, or an input line read again),
    with calls started and perhaps billed. What was recorded stays: a retry of the task reattaches
    to the calls in flight and writes the parts again.
    """
