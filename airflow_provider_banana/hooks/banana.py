"""
Talk to a Banana-compatible inference API: connection, HTTP, retries.

:class:`BananaHook` is the synchronous half (``requests``, one keep-alive session per hook),
:class:`BananaAsyncHook` the asynchronous half used by the trigger (``aiohttp``). Both have the same
method names and send bytes only: every decision about a request or a reply is made in
:mod:`airflow_provider_banana.contract`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity
from airflow.sdk import BaseHook

from airflow_provider_banana import __version__, connection_ui_behaviour, metrics
from airflow_provider_banana.contract import (
    CHECK,
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    DIRECT,
    START,
    VERIFY_OFF_WARNING,
    BananaFinished,
    BananaNetwork,
    BananaResult,
    BananaRetryPolicy,
    BananaRunning,
    BananaTimeouts,
    CallWaiter,
    build_start_body,
    check_bodies,
    describe_retry,
    encode_body,
    endpoint_url,
    max_reply_bytes_from_extra,
    network_for,
    parse_reply,
    use_start_only,
    validate_api_key,
    validate_base_url,
    validate_call_id,
    validate_extra,
    validate_model_inputs,
    validate_model_key,
    validate_seconds,
)
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaConfigError,
    BananaError,
    BananaTransportError,
)
from airflow_provider_banana.hooks import _sessions, _transport
from airflow_provider_banana.redact import Redactor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    import aiohttp
    import requests
    from airflow.sdk import Connection

    from airflow_provider_banana.contract import OutputsOnServer

T = TypeVar("T")

_log = logging.getLogger(__name__)

_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": f"airflow-provider-banana/{__version__}",
}
#: Replies larger than this are parsed by the async hook in a worker thread and in short steps, so
#: that the event loop keeps the GIL most of the time (see contract.stepwise).
_PARSE_IN_THREAD_BYTES = 1024 * 1024
# A callID no server ever issued: test_connection checks it to prove the URL and key without
# starting (and paying for) an inference.
_PROBE_CALL_ID = "call_airflow-provider-banana-connection-test"


@dataclass(frozen=True)
class BananaSettings:
    """
    What a Banana connection holds, validated.

    :param base_url: the API's base URL, ending in ``/``.
    :param api_key: the API key (never in repr).
    :param model_key: the default model key from the connection's extra, if any.
    :param timeouts: the request timeouts (the extra may set the server's holds).
    :param max_reply_bytes: the largest reply body read, after decompression (extra ``max_reply_bytes``).
    :param network: the proxy and the trusted CAs, from the extra (``proxy``, ``ca_bundle``,
        ``verify``) and the environment; both halves use it alike.
    """

    base_url: str
    api_key: str = field(repr=False)
    model_key: str | None = None
    timeouts: BananaTimeouts = field(default_factory=BananaTimeouts)
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    network: BananaNetwork = DIRECT

    @property
    def redactor(self) -> Redactor:
        """Return what masks the API key in every text that leaves the provider."""
        return _redactor_for(self.api_key)

    @classmethod
    def from_connection(cls, conn: Connection) -> BananaSettings:
        """
        Read and validate a connection: password is the key, host the base URL, extra the model key.

        :param conn: the Airflow connection.
        :raises BananaConfigError: no key, a host that is not an http(s) URL, a bad timeout in extra,
            or a proxy or CA bundle (extra or environment) that cannot be used.
        """
        extra = validate_extra(conn.extra_dejson, conn.conn_id)
        model_key = extra.get("model_key") or None
        base_url = validate_base_url(conn.host)
        return cls(
            base_url=base_url,
            api_key=_api_key(conn),
            model_key=model_key if isinstance(model_key, str) else None,
            timeouts=BananaTimeouts.from_extra(extra),
            max_reply_bytes=max_reply_bytes_from_extra(extra),
            network=_network(base_url, extra),
        )

    def url(self, endpoint: str) -> str:
        """Return the URL of :data:`~airflow_provider_banana.contract.START` or ``CHECK``."""
        return endpoint_url(self.base_url, endpoint)

    def encode(self, body: dict[str, Any]) -> bytes:
        """Return a request body as JSON bytes."""
        return encode_body(body)


def _api_key(conn: Connection) -> str:
    api_key = validate_api_key(conn.password)
    if api_key != conn.password:
        # Stripped, not kept: a key pasted with a space or line break around it is the common case,
        # and a key that really starts or ends with one is unheard of. Said once per lookup, by
        # connection id only; the key, or any part of it, is never logged.
        _log.warning(
            "The password of Banana connection %r has spaces or line breaks around it; "
            "they were removed before the key was used",
            conn.conn_id,
        )
    return api_key


def _network(base_url: str, extra: dict[str, Any]) -> BananaNetwork:
    # Read when the connection is, so that a bad proxy or CA bundle fails before any request.
    network = network_for(base_url, extra, os.environ, exists=os.path.exists)
    try:
        _transport.ssl_context(network)  # built once per bundle and kept: both halves' certificates
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        raise BananaConfigError(
            f"The CA bundle {network.ca_bundle} (from {network.ca_source}) holds no usable certificate: {e}"
        ) from None
    return network


@functools.lru_cache(maxsize=32)
def _redactor_for(secret: str) -> Redactor:
    # Compiling the patterns costs ~0.1 ms: once per key, not once per hook (10,000 triggers).
    return Redactor(secret)


def _connection_test_result(settings: BananaSettings, error: BaseException | None) -> tuple[bool, str]:
    where = settings.base_url
    if error is None or isinstance(error, BananaCallNotFoundError):
        return True, f"Connected to {where} {settings.network.describe()}: Banana answered and accepted the API key"
    # Our errors' texts are masked already; masked again here, as a message that leaves the provider
    # (the connection form shows it), in case an error of another kind carries the key.
    if isinstance(error, BananaCallError):
        return False, settings.redactor(f"{where} answered but refused the request: {error.message}")
    return False, settings.redactor(f"Could not talk to Banana at {where}: {error}")


def _in_fresh_loop(probe: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # asyncio.run refuses to run inside a running loop: then it runs in a thread of its own, in a
    # copy of this context (Airflow keeps the connection being tested in a context variable).
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(probe())
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, asyncio.run, probe()).result()


class _BananaHookBase(BaseHook):
    """
    What the sync and async hooks share: the connection, request bodies, retries, reply parsing.

    No I/O here: the subclasses only send bytes (the pattern of httpx's ``BaseClient``).

    :param banana_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff of every request (see :class:`BananaRetryPolicy`).
    """

    conn_name_attr = "banana_conn_id"
    default_conn_name = "banana_default"
    conn_type = "banana"
    hook_name = "Banana"

    def __init__(
        self,
        banana_conn_id: str = default_conn_name,
        *,
        retry_policy: BananaRetryPolicy | None = None,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.banana_conn_id = banana_conn_id
        self.retry_policy = retry_policy or BananaRetryPolicy()

    @staticmethod
    def _start_body(settings: BananaSettings, model_inputs: Any, model_key: str | None, start_only: bool) -> bytes:
        inputs = validate_model_inputs(model_inputs)
        key = validate_model_key(model_key or settings.model_key)
        return settings.encode(build_start_body(settings.api_key, key, inputs, start_only=start_only))

    @staticmethod
    def _check_body(settings: BananaSettings, call_id: str, long_poll: bool) -> bytes:
        return check_bodies(settings.api_key, call_id, long_poll=long_poll)()

    def _retrying_kwargs(self, endpoint: str, deadline: float | None) -> dict[str, Any]:
        return self.retry_policy.tenacity_kwargs(endpoint, deadline=deadline, before_sleep=self._log_retry)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        attempt, pause, reason = describe_retry(state)
        self.log.warning("Banana request attempt %d failed (%s); retrying in %.1f s", attempt, reason, pause)

    def _attempt_sent(self, endpoint: str, attempt: int, model_key: str | None) -> float:
        """
        Send the metrics of a request attempt going out (see :mod:`airflow_provider_banana.metrics`).

        Nothing of it stays alive while the request is held: a triggerer holds thousands of long
        polls, and whatever each keeps for 50 s its garbage collector walks again and again.

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param attempt: the attempt's number, from 1: a Start's second attempt is a re-sent one.
        :param model_key: the Start's model key (a tag); ``None`` for a Check.
        :return: when it went out (``time.monotonic()``), for :meth:`_attempt_ended`.
        """
        tags = metrics.Tags(self.banana_conn_id, model_key)
        if endpoint == START:
            metrics.count(metrics.START_SENT, tags)
            if attempt > 1:  # the retry policy re-sends a Start only where it provably was not taken
                metrics.count(metrics.START_RETRIED, tags)
        else:
            metrics.count(metrics.CHECK_SENT, tags)
        return time.monotonic()

    def _attempt_ended(
        self,
        endpoint: str,
        model_key: str | None,
        began: float,
        *,
        result: BananaResult | None = None,
        error: BananaError | None = None,
    ) -> None:
        """
        Send the metrics of a request attempt that was answered (``result``) or failed (``error``).

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param model_key: the Start's model key (a tag); ``None`` for a Check.
        :param began: what :meth:`_attempt_sent` returned.
        :param result: the parsed reply.
        :param error: what the attempt raised.
        """
        if endpoint != START and not isinstance(error, BananaCallError):
            return  # a Check's answer has no metric of its own
        tags = metrics.Tags(self.banana_conn_id, model_key)
        if error is None:
            elapsed = time.monotonic() - began
            metrics.timing(metrics.START_DURATION, elapsed, tags)
            if isinstance(result, BananaFinished):  # finished within its Start: that was the call
                metrics.timing(metrics.CALL_DURATION, elapsed, tags)
        elif isinstance(error, BananaCallError):
            if endpoint == START:
                metrics.timing(metrics.START_DURATION, time.monotonic() - began, tags)
            # An unknown callID is a lookup's answer (test_connection's probe, an expired reattach).
            if not isinstance(error, BananaCallNotFoundError):
                metrics.count(metrics.CALL_FAILED, tags)
        elif isinstance(error, BananaTransportError) and error.request_sent:
            metrics.count(metrics.START_UNANSWERED, tags)

    def _exchange(
        self,
        settings: BananaSettings,
        endpoint: str,
        body: bytes,
        *,
        waits: bool,
        call_id: str | None,
        deadline: float | None,
        cut: float | None = None,
    ) -> _transport.Exchange:
        remaining = None if deadline is None else deadline - time.time()
        return _transport.Exchange(
            url=settings.url(endpoint),
            body=body,
            budget=settings.timeouts.for_request(endpoint, waits=waits, remaining=remaining),
            limit=settings.max_reply_bytes,
            endpoint=endpoint,
            call_id=call_id,
            redactor=settings.redactor,
            network=settings.network,
            cut=cut,
        )

    def _reply(
        self, exchange: _transport.Exchange, raw: _transport.RawReply, *, in_steps: bool = False
    ) -> BananaResult:
        result = parse_reply(
            exchange.endpoint,
            raw.status_code,
            raw.content,
            retry_after=raw.retry_after,
            location=raw.location,
            url=exchange.url,
            call_id=exchange.call_id,
            redactor=exchange.redactor,
            truncated=raw.truncated,
            conn_id=self.banana_conn_id,
            in_steps=in_steps,
        )
        if isinstance(result, BananaFinished) and result.non_finite:
            # Not an error: the server sent them. But Airflow's XCom stores NaN and Infinity as null.
            self.log.warning(
                "Banana call %s: the model outputs hold NaN or Infinity (which XCom stores as null) at %s",
                result.call_id,
                ", ".join(result.non_finite),
            )
        return result


class BananaHook(_BananaHookBase):
    """
    Run inference on a Banana-compatible API, synchronously.

    The connection's password is the API key, its host the base URL (default
    ``https://api.banana.dev/``), and its extra may hold a default ``model_key``.

    :param banana_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff of every request (see :class:`BananaRetryPolicy`).
    """

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form's layout (Airflow before 3.2 reads it from here)."""
        # Defined on this class itself: Airflow 3.1 looks only at methods the registered hook class
        # defines, not ones it inherits, and sent no field labels or placeholders before.
        return connection_ui_behaviour()

    @functools.cached_property
    def settings(self) -> BananaSettings:
        """Return the validated connection settings (looked up once)."""
        settings = BananaSettings.from_connection(self.get_connection(self.banana_conn_id))
        _mask(settings.api_key)
        if not settings.network.verify:
            self.log.warning(VERIFY_OFF_WARNING, self.banana_conn_id)
        return settings

    @functools.cached_property
    def session(self) -> requests.Session:
        """Return the hook's keep-alive HTTP session."""
        # requests is imported there, not at the top: every DAG file that imports the operator pays for
        # the module's imports at each parse, and requests with urllib3 costs ~150 ms (benchmarks/).
        return _transport.new_session(_HEADERS)

    def get_conn(self) -> requests.Session:
        """Return the hook's HTTP session."""
        return self.session

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    def __enter__(self) -> BananaHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, model_inputs: Any, model_key: str | None = None, *, start_only: bool = False) -> BananaResult:
        """
        Start one inference (billed), and wait for its result unless ``start_only``.

        A Start is sent again only where it provably was not taken: no connection, or the server
        refused it (429, or 503 with ``Retry-After``); never after another 5xx or a lost answer.

        :param model_inputs: the model's inputs: a dict, or a string holding a JSON object.
        :param model_key: the model; defaults to the connection extra's ``model_key``.
        :param start_only: answer at once with the callID instead of holding up to ~60 s.
        :return: the result: ``finished`` with ``model_outputs``, or running with ``call_id``.
        :raises BananaConfigError: missing key or model key, before any request.
        :raises TypeError: inputs JSON cannot hold, before any request.
        :raises BananaCallError: Banana reports the Start failed.
        :raises BananaTransportError: the exchange failed (see its ``request_sent``).
        """
        body = self._start_body(self.settings, model_inputs, model_key, start_only)
        result = self._send(START, body, waits=not start_only, model_key=model_key or self.settings.model_key)
        self.log.info(
            "Banana Start: call %s, %s (apiVersion %s)",
            result.call_id or "(no id: finished at once)",
            result.status_text if isinstance(result, BananaRunning) else "finished",
            result.api_version,
        )
        return result

    def check(self, call_id: str, *, long_poll: bool = True, deadline: float | None = None) -> BananaResult:
        """
        Ask how a call stands; Checks are free and idempotent, so transport trouble is retried.

        :param call_id: the callID from Start.
        :param long_poll: let the server hold the request up to 50 s until the call finishes.
        :param deadline: a ``time.time()`` past which not to wait for the answer or retry.
        :return: the result, finished or running.
        :raises BananaCallError: the call failed; :class:`BananaCallNotFoundError` if unknown or expired.
        :raises BananaTransportError: the exchange failed on every attempt.
        """
        call_id = validate_call_id(call_id)
        body = self._check_body(self.settings, call_id, long_poll)
        return self._send(CHECK, body, waits=long_poll, call_id=call_id, deadline=deadline)

    def fetch_outputs(self, left: OutputsOnServer) -> list[Any]:
        """
        Fetch the outputs a trigger event left on the server: one Check (free, not held), verified.

        :param left: the finished call, and the size and sha256 of the outputs the trigger saw.
        :return: the ``modelOutputs`` list, exactly what the trigger saw.
        :raises BananaOutputsExpiredError: the server no longer has the result (its retention ended).
        :raises BananaOutputsMismatchError: the outputs differ from those the trigger saw.
        :raises BananaTransportError: the exchange failed on every attempt.
        """
        outcome: BananaResult | BananaCallError
        try:
            outcome = self.check(left.call_id, long_poll=False)
        except BananaCallError as e:
            outcome = e
        return left.outputs_from_check(outcome)

    def wait(
        self,
        call_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        started_at: float | None = None,
        long_poll: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        deadline: float | None = None,
    ) -> list[Any]:
        """
        Check a call until it finishes, fails or the deadline passes; log each status change.

        :param call_id: the callID from Start.
        :param timeout: seconds the call may take, counted from ``started_at``.
        :param started_at: ``time.time()`` when the call was started (default: now).
        :param deadline: the absolute ``time.time()`` the wait ends at, instead of ``timeout``.
        :param long_poll: use long-poll Checks (one request per 50 s of waiting).
        :param poll_interval: least seconds between the starts of two Checks.
        :return: the ``modelOutputs`` list.
        :raises BananaTimeoutError: the timeout passed first; the call may run on.
        :raises BananaCallError: the call failed.
        :raises BananaTransportError: Banana could not be reached within the retry policy.
        """
        waiter = CallWaiter.begin(
            validate_call_id(call_id),
            timeout=timeout,
            deadline=deadline,
            started_at=started_at,
            long_poll=long_poll,
            poll_interval=poll_interval,
        )
        return self.follow(waiter)

    def follow(self, waiter: CallWaiter) -> list[Any]:
        """
        Check the call a :class:`CallWaiter` describes until it ends, logging its life.

        Each status change is logged, and while nothing changes a progress line at most once per
        long poll (``check_hold``): elapsed time and Checks so far.

        :param waiter: the call, its deadline and pacing; it counts the Checks.
        :return: the ``modelOutputs`` list.
        :raises BananaTimeoutError: the deadline passed first; the call may run on.
        :raises BananaCallError: the call failed.
        :raises BananaTransportError: Banana could not be reached within the retry policy.
        """
        while True:
            waiter.raise_if_expired()
            began = time.monotonic()
            try:
                result = self.check(waiter.call_id, long_poll=waiter.long_poll, deadline=waiter.deadline)
            except BananaError as e:
                raise waiter.failure(e) from e
            step = waiter.observe(result, waited=time.monotonic() - began)
            if step.log_line:
                self.log.info(*step.log_line)
            if step.outputs is not None:
                metrics.timing(metrics.CALL_DURATION, waiter.elapsed(), metrics.Tags(self.banana_conn_id))
                return step.outputs
            if step.pause:
                time.sleep(step.pause)

    def run(self, model_inputs: Any, model_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        """
        Run one inference to the end: a waiting Start, then long-poll Checks.

        :param model_inputs: the model's inputs: a dict, or a string holding a JSON object.
        :param model_key: the model; defaults to the connection extra's ``model_key``.
        :param timeout: seconds the inference may take, from Start to result.
        :return: the ``modelOutputs`` list.
        :raises BananaTimeoutError: not finished within ``timeout``; the call may run on.
        :raises BananaCallError: the inference failed.
        """
        timeout = validate_seconds("timeout", timeout)
        started_at = time.time()
        start_only = use_start_only(timeout=timeout, start_hold=self.settings.timeouts.start_hold, hand_off=False)
        result = self.start(model_inputs, model_key, start_only=start_only)
        if isinstance(result, BananaFinished):
            return result.model_outputs
        return self.wait(result.call_id, timeout=timeout, started_at=started_at)

    def test_connection(self) -> tuple[bool, str]:
        """
        Prove that the URL answers and accepts the key, without starting an inference.

        Sends a Check for a callID no server issued: a server that knows the key answers
        "taskID does not exist"; one that refuses it says why. Both halves try it, each its own way
        (the worker's ``requests``, then the triggerer's ``aiohttp`` in a fresh event loop), since a
        deferred task needs both: the message says which one failed.

        :return: ``(ok, message)``; the message never contains the key.
        """
        try:
            settings = self.settings
        except BananaError as e:
            return False, str(e)
        error: BaseException | None = None
        try:
            self.check(_PROBE_CALL_ID, long_poll=False)
        except BananaError as e:
            error = e
        ok, message = _connection_test_result(settings, error)
        if not ok:
            return False, f"The worker's half (requests) failed: {message}"
        ok, message = _connection_test_result(settings, _in_fresh_loop(self._probe_async_half))
        if not ok:
            return False, f"The triggerer's half (aiohttp) failed (the worker's half, requests, connected): {message}"
        return True, f"{message}, from both the worker's half (requests) and the triggerer's half (aiohttp)"

    async def _probe_async_half(self) -> BaseException | None:
        try:
            async with BananaAsyncHook(self.banana_conn_id, retry_policy=self.retry_policy) as hook:
                await hook.check(_PROBE_CALL_ID, long_poll=False)
        except BananaError as e:
            return e
        return None

    def _send(
        self,
        endpoint: str,
        body: bytes,
        *,
        waits: bool,
        call_id: str | None = None,
        deadline: float | None = None,
        model_key: str | None = None,
    ) -> BananaResult:
        settings = self.settings
        retrying = tenacity.Retrying(**self._retrying_kwargs(endpoint, deadline))
        for attempt in retrying:
            with attempt:
                began = self._attempt_sent(endpoint, attempt.retry_state.attempt_number, model_key)
                try:
                    exchange = self._exchange(settings, endpoint, body, waits=waits, call_id=call_id, deadline=deadline)
                    result = self._reply(exchange, _transport.post(self.session, exchange))
                except BananaError as error:
                    self._attempt_ended(endpoint, model_key, began, error=error)
                    raise
                self._attempt_ended(endpoint, model_key, began, result=result)
                return result
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


async def _resolve(conn_id: str, lookup: Callable[[str], Awaitable[Connection]]) -> BananaSettings:
    settings = BananaSettings.from_connection(await lookup(conn_id))
    await _amask(settings.api_key)
    return settings


class BananaAsyncHook(_BananaHookBase):
    """
    Talk to a Banana-compatible API from an event loop (the trigger's half of :class:`BananaHook`).

    Use it as ``async with BananaAsyncHook(conn_id) as hook:``: entering resolves the connection
    without blocking the loop and leases the ``aiohttp.ClientSession`` that every hook of the same
    event loop and connection shares; exiting gives it back, and the last user closes it. A session
    is bound to the loop it was made in, and ``dag.test()`` runs each deferral in a fresh loop, so
    sessions are never kept past their loop.

    :param banana_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff of every request (see :class:`BananaRetryPolicy`).
    """

    def __init__(
        self,
        banana_conn_id: str = _BananaHookBase.default_conn_name,
        *,
        retry_policy: BananaRetryPolicy | None = None,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(banana_conn_id, retry_policy=retry_policy, logger_name=logger_name)
        self._settings: BananaSettings | None = None
        self._session: aiohttp.ClientSession | None = None
        self._share: _sessions.LoopSessions | None = None

    async def __aenter__(self) -> BananaAsyncHook:
        share = _sessions.loop_share()
        self._settings = await share.settings(
            self.banana_conn_id, functools.partial(_resolve, lookup=self.aget_connection)
        )
        self._session = share.lease(self._lease_key, _HEADERS)
        self._share = share  # the same loop's, given back on exit
        if not self._settings.network.verify:
            self.log.warning(VERIFY_OFF_WARNING, self.banana_conn_id)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        share, self._share = self._share, None
        if self._session is not None and share is not None:
            self._session = None
            await share.release(self._lease_key)

    @property
    def _lease_key(self) -> tuple[str, str]:
        return self.settings.base_url, self.settings.api_key

    @property
    def settings(self) -> BananaSettings:
        """Return the validated connection settings (resolved on entering the hook)."""
        if self._settings is None:
            raise BananaError("Use BananaAsyncHook as 'async with BananaAsyncHook(...) as hook:'")
        return self._settings

    async def start(self, model_inputs: Any, model_key: str | None = None, *, start_only: bool = False) -> BananaResult:
        """
        Start one inference (billed); see :meth:`BananaHook.start`.

        :param model_inputs: the model's inputs.
        :param model_key: the model; defaults to the connection extra's ``model_key``.
        :param start_only: answer at once with the callID.
        :return: the result.
        """
        body = self._start_body(self.settings, model_inputs, model_key, start_only)
        return await self._send(START, body, waits=not start_only, model_key=model_key or self.settings.model_key)

    async def check(self, call_id: str, *, long_poll: bool = True, deadline: float | None = None) -> BananaResult:
        """
        Ask how a call stands; see :meth:`BananaHook.check`.

        :param call_id: the callID from Start.
        :param long_poll: let the server hold the request up to 50 s.
        :param deadline: a ``time.time()`` past which not to wait for the answer or retry.
        :return: the result, finished or running.
        """
        call_id = validate_call_id(call_id)
        body = self._check_body(self.settings, call_id, long_poll)
        return await self._send(CHECK, body, waits=long_poll, call_id=call_id, deadline=deadline)

    async def wait(
        self,
        call_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        started_at: float | None = None,
        long_poll: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        quiet: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        """
        Check a call until it finishes, fails or the deadline passes; see :meth:`BananaHook.wait`.

        :param call_id: the callID from Start.
        :param timeout: seconds the call may take, counted from ``started_at``.
        :param started_at: ``time.time()`` when the call was started (default: now).
        :param deadline: the absolute ``time.time()`` the wait ends at, instead of ``timeout``.
        :param long_poll: use long-poll Checks.
        :param poll_interval: least seconds between the starts of two Checks.
        :param quiet: log status changes at debug level (a batch logs its progress instead).
        :return: the ``modelOutputs`` list.
        """
        waiter = CallWaiter.begin(
            validate_call_id(call_id),
            timeout=timeout,
            deadline=deadline,
            started_at=started_at,
            long_poll=long_poll,
            poll_interval=poll_interval,
        )
        return await self.follow(waiter, quiet=quiet)

    async def follow(self, waiter: CallWaiter, *, quiet: bool = False) -> list[Any]:
        """
        Check the call a :class:`CallWaiter` describes until it ends; see :meth:`BananaHook.follow`.

        The first long poll is abandoned unanswered at the waiter's :meth:`~CallWaiter.hold_cut` and
        sent again at once, so that waits begun together (a triggerer's) do not re-poll in step.

        :param waiter: the call, its deadline and pacing; it counts the Checks.
        :param quiet: log at debug level (a batch logs its progress instead).
        :return: the ``modelOutputs`` list.
        """
        level = logging.DEBUG if quiet else logging.INFO
        call_id = validate_call_id(waiter.call_id)
        check_hold = self.settings.timeouts.check_hold
        # The call's part of every Check body is encoded once; each Check gets its own id and time.
        next_body = check_bodies(self.settings.api_key, call_id, long_poll=waiter.long_poll)
        while True:
            waiter.raise_if_expired()
            began = time.monotonic()
            try:
                result = await self._send(
                    CHECK,
                    next_body(),
                    waits=waiter.long_poll,
                    call_id=call_id,
                    deadline=waiter.deadline,
                    cut=waiter.hold_cut(check_hold),
                )
            except BananaError as e:
                raise waiter.failure(e) from e
            if result is None:
                step = waiter.observe_unanswered()
            else:
                step = waiter.observe(result, waited=time.monotonic() - began)
            if step.log_line:
                self.log.log(level, *step.log_line)
            if step.outputs is not None:
                if not quiet:  # a batch's waiters count from the batch's start, not the call's
                    metrics.timing(metrics.CALL_DURATION, waiter.elapsed(), metrics.Tags(self.banana_conn_id))
                return step.outputs
            if step.pause:
                await asyncio.sleep(step.pause)

    async def run(
        self, model_inputs: Any, model_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Any]:
        """
        Run one inference to the end; see :meth:`BananaHook.run`.

        :param model_inputs: the model's inputs.
        :param model_key: the model; defaults to the connection extra's ``model_key``.
        :param timeout: seconds the inference may take, from Start to result.
        :return: the ``modelOutputs`` list.
        """
        timeout = validate_seconds("timeout", timeout)
        started_at = time.time()
        start_only = use_start_only(timeout=timeout, start_hold=self.settings.timeouts.start_hold, hand_off=False)
        result = await self.start(model_inputs, model_key, start_only=start_only)
        if isinstance(result, BananaFinished):
            return result.model_outputs
        return await self.wait(result.call_id, timeout=timeout, started_at=started_at)

    async def _send(
        self,
        endpoint: str,
        body: bytes,
        *,
        waits: bool,
        call_id: str | None = None,
        deadline: float | None = None,
        model_key: str | None = None,
        cut: float | None = None,
    ) -> Any:
        # Any: a BananaResult, or None for a Check abandoned at its cut (only follow() gives one).
        settings = self.settings
        session = self._session
        if session is None:
            raise BananaError("Use BananaAsyncHook as 'async with BananaAsyncHook(...) as hook:'")
        # The retry policy's own loop rather than tenacity.AsyncRetrying: a triggerer holds thousands
        # of long polls at once, and a retry object per request (a dozen objects, alive for the 50 s
        # hold) was a large part of what its garbage collector walked. The decisions are the same.
        attempt = 0
        while True:
            attempt += 1
            began = self._attempt_sent(endpoint, attempt, model_key)
            try:
                exchange = self._exchange(
                    settings,
                    endpoint,
                    body,
                    waits=waits,
                    call_id=call_id,
                    deadline=deadline,
                    cut=cut if attempt == 1 else None,
                )
                try:
                    raw = await _transport.apost(session, exchange)
                except _transport.HoldCut:  # abandoned at the cut, as asked: no failure, no retry
                    return None
                if len(raw.content) > _PARSE_IN_THREAD_BYTES:
                    # Parsing tens of MiB takes a second: not on the triggerer's loop. Nor in one C
                    # call on another thread: json.loads would hold the GIL, and the loop, all along.
                    result = await asyncio.to_thread(self._reply, exchange, raw, in_steps=True)
                else:
                    result = self._reply(exchange, raw)
            except BananaError as error:
                self._attempt_ended(endpoint, model_key, began, error=error)
                pause = self.retry_policy.pause_before_retry(endpoint, attempt, error, deadline=deadline)
                if pause is None:
                    raise
                self.log.warning("Banana request attempt %d failed (%s); retrying in %.1f s", attempt, error, pause)
                await asyncio.sleep(pause)
                continue
            self._attempt_ended(endpoint, model_key, began, result=result)
            return result


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


async def _amask(secret: str) -> None:
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:  # Airflow 3.1 has only the sync form, which is safe outside a task's comms
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
        return
    await amask_secret(secret)
