"""
Follow a batch's calls: waves of results, concurrent Starts, and the worker's own event loop.

The I/O half of the batch (the plan in :mod:`airflow_provider_banana.batch.plan` decides). It uses
only the async hook's single-call methods (``start``, ``check``, ``wait``) and its session lease,
so the batch trigger and the worker share one way of following calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_banana.batch.plan import Wave, hand_back_now
from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BananaRetryPolicy,
    EventStatus,
    check_storable,
    classify_error,
)
from airflow_provider_banana.hooks.banana import BananaAsyncHook

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable

    from airflow_provider_banana.contract import BananaResult

T = TypeVar("T")

#: Seconds a batch wait lingers after its first call ended, to hand back more than one result.
DEFAULT_LINGER = 1.0
#: Seconds closing the worker's loop may take (cancelling Checks, closing connections).
_CLOSE_TIMEOUT = 30.0


class CallWatch:
    """
    Follow calls until they end, handing back a :class:`Wave` of what ended at a time.

    A call's wait keeps running between two waves, so a watch that lives across waves (the batch
    operator's worker, which starts the next calls between them on the same event loop) sends no
    Check twice for one wait. :func:`wait_many` is a watch of one wave.

    :param follow: waits for one call and returns its ``modelOutputs`` (see :func:`watch`).
    """

    def __init__(self, follow: Callable[[str], Awaitable[list[Any]]]) -> None:
        self._follow = follow
        self._waits: dict[asyncio.Future[list[Any]], str] = {}

    def __len__(self) -> int:
        return len(self._waits)

    async def wave(self, call_ids: Iterable[str], *, linger: float, within: float | None = None) -> Wave:
        """
        Follow ``call_ids`` too (those not followed yet), and return once enough calls ended.

        The wave ends when all, or half, of the calls followed ended, or ``linger`` seconds after
        the first one did; when the deadline passes; when transport trouble outlives the retries;
        or, given ``within``, when no call ended within that many seconds (an empty wave). Calls
        that did not end stay followed for the next wave.

        :param call_ids: the calls in flight.
        :param linger: seconds to wait for more calls to end after the first one did.
        :param within: most seconds to wait for the first call to end (default: no limit).
        """
        followed = set(self._waits.values())
        for call_id in call_ids:
            if call_id not in followed:
                self._waits[asyncio.ensure_future(self._follow(call_id))] = call_id
        in_flight = len(self._waits)
        finished: dict[str, list[Any]] = {}
        failed: dict[str, str] = {}
        unstorable: dict[str, str] = {}
        timed_out, error = False, None
        began = time.monotonic()
        first_end: float | None = None
        while self._waits and not (timed_out or error):
            if first_end is not None:
                budget: float | None = max(0.0, linger - (time.monotonic() - first_end))
            elif within is not None:
                budget = within - (time.monotonic() - began)
                if budget <= 0:
                    break  # nothing ended in time
            else:
                budget = None
            done, _ = await asyncio.wait(self._waits, timeout=budget, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                if future not in self._waits:  # stopped meanwhile (aclose)
                    continue
                call_id = self._waits.pop(future)
                try:
                    outputs = future.result()
                    # Outputs Airflow cannot store stay out of the wave (and its event); in a thread,
                    # since walking megabytes of them would stall the loop.
                    await asyncio.to_thread(check_storable, outputs, call_id=call_id)
                    finished[call_id] = outputs
                except Exception as e:  # transport trouble or a local problem too: reported, not hidden
                    status, text = classify_error(e)
                    if status is EventStatus.FAILED:
                        failed[call_id] = text
                    elif status is EventStatus.NOT_STORABLE:
                        unstorable[call_id] = text
                    elif status is EventStatus.TIMEOUT:
                        timed_out = True
                    else:
                        error = text
            ended = len(finished) + len(failed) + len(unstorable)
            if ended and first_end is None:
                first_end = time.monotonic()
            since = None if first_end is None else time.monotonic() - first_end
            if hand_back_now(ended, in_flight, since, linger):
                break
        return Wave(finished=finished, failed=failed, timed_out=timed_out, error=error, unstorable=unstorable)

    async def aclose(self) -> None:
        """Stop following every call (the calls themselves run on)."""
        waits, self._waits = list(self._waits), {}
        for future in waits:
            future.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def watch(
    hook: BananaAsyncHook,
    *,
    timeout: float | None = None,
    started_at: float | None = None,
    long_poll: bool = True,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    deadline: float | None = None,
) -> CallWatch:
    """
    Return a :class:`CallWatch` that follows calls across waves through an entered async hook.

    :param hook: an entered :class:`BananaAsyncHook` (its connection's session is leased).
    :param timeout: seconds the calls may take, counted from ``started_at``.
    :param started_at: ``time.time()`` when the batch (this try) started (default: now).
    :param deadline: the absolute ``time.time()`` the calls' waits end at, instead of ``timeout``.
    :param long_poll: use long-poll Checks.
    :param poll_interval: least seconds between the starts of two Checks of one call.
    """
    return CallWatch(
        functools.partial(
            hook.wait,
            quiet=True,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            deadline=deadline,
            started_at=time.time() if started_at is None else started_at,
            long_poll=long_poll,
            poll_interval=poll_interval,
        )
    )


async def wait_many(
    hook: BananaAsyncHook,
    call_ids: list[str],
    *,
    linger: float = DEFAULT_LINGER,
    **watch_kwargs: Any,
) -> Wave:
    """
    Wait on several calls at once until enough of them ended to be worth handing back.

    Each call is followed as :meth:`BananaAsyncHook.wait` follows one (long polls, retries), all
    on the hook's leased session. The wait ends when all, or half, of the calls ended, or
    ``linger`` seconds after the first one did; when the deadline passes; or when transport
    trouble outlives the retries. The Checks still in flight are then dropped: the calls run on.

    :param hook: an entered :class:`BananaAsyncHook`.
    :param call_ids: the calls in flight.
    :param linger: seconds to wait for more calls to end after the first one did.
    :param watch_kwargs: ``timeout``, ``deadline``, ``started_at``, ``long_poll``, ``poll_interval``
        (see :func:`watch`).
    :return: what ended, and whether the deadline passed or an error stopped the wait.
    """
    calls = watch(hook, **watch_kwargs)
    try:
        return await calls.wave(call_ids, linger=linger)
    finally:
        await calls.aclose()


class BatchWorker:
    """
    What a batch does from its worker: Starts and waits, on one event loop in a thread of its own.

    The loop keeps running while the worker's own thread writes the plan (synchronous), so the
    calls' long polls, and the connections they open, carry on meanwhile and no call is Checked
    afresh after each wave; Starts are sent concurrently from it too. Both threads never talk to
    Airflow at once: the loop's thread does so only while entering the hook, when the worker's
    thread waits for it. The loop is made on first use: a batch that defers at once never makes it.

    :param banana_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff of every request.
    :param linger: seconds a wave lingers after its first call ended.
    :param watch_kwargs: ``deadline``, ``started_at``, ``long_poll`` and ``poll_interval`` of :func:`watch`.
    """

    def __init__(
        self, banana_conn_id: str, retry_policy: BananaRetryPolicy, *, linger: float, **watch_kwargs: Any
    ) -> None:
        self._hook = BananaAsyncHook(banana_conn_id, retry_policy=retry_policy)
        self._entered: BananaAsyncHook | None = None
        self._linger = linger
        self._watch_kwargs = watch_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exits = contextlib.AsyncExitStack()
        self._watch: CallWatch | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def _hook_entered(self) -> BananaAsyncHook:
        if self._entered is None:
            self._entered = self._run(self._exits.enter_async_context(self._hook))
        return self._entered

    def start(self, model_inputs: dict[str, Any], model_key: str | None) -> concurrent.futures.Future[BananaResult]:
        """
        Send one ``startOnly`` Start from the loop; return the future of its result.

        :param model_inputs: the call's inputs.
        :param model_key: the model; defaults to the connection extra's ``model_key``.
        """
        hook = self._hook_entered()
        return self._submit(hook.start(model_inputs, model_key, start_only=True))

    def check(self, call_id: str) -> concurrent.futures.Future[BananaResult]:
        """
        Send one Check (not held) from the loop; return the future of its result.

        :param call_id: the call.
        """
        hook = self._hook_entered()
        return self._submit(hook.check(call_id, long_poll=False))

    def wave(self, call_ids: list[str], within: float | None = None) -> Wave:
        """
        Follow ``call_ids`` too, and return the next wave of calls that ended.

        :param call_ids: the calls in flight.
        :param within: most seconds to wait for the first call to end; an empty wave if none did.
        """
        if self._watch is None:
            self._watch = watch(self._hook_entered(), **self._watch_kwargs)
            self._exits.push_async_callback(self._watch.aclose)
        return self._run(self._watch.wave(call_ids, linger=self._linger, within=within))

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="banana-batch", daemon=True)
            self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        # Pruned here, in the worker's thread: a done-callback would run in the loop's.
        self._pending = {pending for pending in self._pending if not pending.done()}
        self._pending.add(future)
        return future

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._submit(coroutine).result()

    def close(self) -> None:
        """Stop following the calls (they run on), release the session, stop the loop and its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            for future in list(self._pending):  # interrupted in this thread (execution_timeout, SIGTERM)
                future.cancel()
            asyncio.run_coroutine_threadsafe(self._exits.aclose(), loop).result(timeout=_CLOSE_TIMEOUT)
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=_CLOSE_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CLOSE_TIMEOUT)
            if not thread.is_alive():
                loop.close()
