"""Track each call from creation to expiry: its state, its result and who waits for it.

Every state change goes through :class:`CallRegistry`, so the stats gauges, the
debug log line and the waking of held requests can never disagree.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.devserver.protocol import encode, new_call_id

if TYPE_CHECKING:
    from airflow_provider_banana.devserver.stats import Gauge, Stats

log = logging.getLogger(__name__)

# The sweeper only frees memory: lookups check expiry themselves, so a coarse
# period costs nothing in precision.
SWEEP_INTERVAL = 1.0


class CallState(enum.Enum):
    """Where a call is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "success"
    FAILED = "failed"

    @property
    def settled(self) -> bool:
        """Whether the call has its final result."""
        return self in (CallState.SUCCEEDED, CallState.FAILED)


@dataclass(eq=False)
class Call:
    """One inference call.

    :param call_id: ``call_<uuid4>``.
    :param model_key: the model that runs it.
    :param inputs: the request's ``modelInputs``.
    """

    call_id: str
    model_key: str
    inputs: Any = field(repr=False)
    state: CallState = CallState.QUEUED
    output: Any = field(default=None, repr=False)
    error: str | None = None
    finished_at: float | None = None
    # Set when the call was dropped by a forget; its holders answer as if it never finished.
    forgotten: bool = False
    # What it counts against the cap on held bytes: its request body until it settles, then its
    # encoded outputs for as long as they are kept.
    held_bytes: int = 0
    waiters: set[asyncio.Future[None]] = field(default_factory=set, repr=False)


class CallRegistry:
    """Own every live call, keep results for the TTL, and let requests wait for a result.

    The bytes it holds are capped (``max_held_bytes``): the request bodies of the calls that have
    not settled and the encoded outputs of those kept for the TTL. Room is made by dropping the
    oldest finished results before their TTL ends, each with a warning in the log (a Check for one
    then answers "taskID does not exist", as after the TTL); when that is not enough, a new Start
    is refused (see :meth:`admit`) and outputs that cannot be kept fail their call.

    :param stats: counters to keep in step with state changes.
    :param result_ttl: returns the current TTL in seconds (it may change at run time).
    :param max_held_bytes: the cap; 0 for none.
    """

    def __init__(self, stats: Stats, result_ttl: Callable[[], float], max_held_bytes: int = 0) -> None:
        self._stats = stats
        self._result_ttl = result_ttl
        self.max_held_bytes = max_held_bytes
        self.held_bytes = 0
        self._calls: dict[str, Call] = {}
        # Settled calls in the order they settled. One TTL applies to all, so
        # this is also expiry order and the sweeper only ever looks at the left end.
        self._settled: collections.deque[Call] = collections.deque()
        self._waiters: set[asyncio.Future[None]] = set()
        self._released = False
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def start(self) -> None:
        """Start the TTL sweeper; call from inside the running loop."""
        self._released = False
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="banana-devserver-sweeper")

    async def close(self) -> None:
        """Stop the sweeper and release every held request."""
        self.release_waiters()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    def admit(self, size: int) -> bool:
        """Tell whether a Start whose body is ``size`` bytes may start a call, making room for it.

        :param size: the request body's length.
        :return: False when even without the results kept, the calls not yet settled and this one
            would pass ``max_held_bytes``: the Start must be refused.
        """
        return self._make_room(size)

    def create(self, model_key: str, inputs: Any, size: int = 0) -> Call:
        """Register a new queued call.

        :param model_key: the model that will run it.
        :param inputs: the request's ``modelInputs``.
        :param size: the request body's length, counted against ``max_held_bytes`` until it settles.
        :return: the call, not yet handed to a worker.
        """
        call = Call(call_id=new_call_id(), model_key=model_key, inputs=inputs, held_bytes=size)
        self.held_bytes += size
        self._calls[call.call_id] = call
        self._stats.starts_taken += 1
        self._stats.per_model[model_key].starts_taken += 1
        self._stats.queued.inc()
        self._stats.per_model[model_key].queued.inc()
        log.debug("Call %s (%s) queued", call.call_id, model_key)
        return call

    def get(self, call_id: str) -> Call | None:
        """Find a call, treating an expired result as already forgotten.

        :param call_id: the callID a client sent.
        :return: the call, or None when unknown, forgotten or expired.
        """
        call = self._calls.get(call_id)
        if call is not None and self._expired(call, time.monotonic()):
            self._drop(call)
            log.debug("Call %s expired", call_id)
            return None
        return call

    def mark_running(self, call: Call) -> None:
        """Record that a worker started (or, after a busy answer, restarted) the call.

        :param call: a queued call.
        """
        self._move(call, CallState.RUNNING)

    def mark_queued(self, call: Call) -> None:
        """Put a running call back to queued, as when its model server is busy.

        :param call: a running call.
        """
        self._move(call, CallState.QUEUED)

    def succeed(self, call: Call, output: Any) -> None:
        """Settle a call with its model's reply.

        :param call: a running call.
        :param output: the model's reply, any JSON.
        """
        size = 0
        if self.max_held_bytes:
            size = len(encode(output))
            self._release(call)  # its inputs: they go as it settles
            if not self._make_room(size):
                self.fail(
                    call,
                    f"error: the model's outputs are {size} bytes, and with the inputs of the calls "
                    f"still running they would pass the server's --max-held-bytes ({self.max_held_bytes})",
                )
                return
        call.output = output
        self._move(call, CallState.SUCCEEDED)
        self._stats.finished += 1
        self._settle(call)
        call.held_bytes = size
        self.held_bytes += size

    def fail(self, call: Call, message: str) -> None:
        """Settle a call with an error.

        :param call: a running call.
        :param message: the error text the client will see; contains "error".
        """
        call.error = message
        self._move(call, CallState.FAILED)
        self._stats.failed += 1
        self._settle(call)

    async def wait(self, call: Call, timeout: float, gone: Callable[[], Awaitable[None]] | None = None) -> None:
        """Wait until the call settles or is forgotten, the timeout passes, the client leaves or the server stops.

        One future and one timer per waiter, and the call wakes its own waiters
        directly: cheap enough for thousands of held requests, and the answer
        goes out on the loop iteration right after the call settles.

        :param call: the call to wait for.
        :param timeout: seconds to wait at most.
        :param gone: returns once the client has disconnected; waited for alongside, so that a
            request nobody waits for any more stops being held (and counted) at once.
        """
        if call.state.settled or call.forgotten or timeout <= 0 or self._released:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        call.waiters.add(waiter)
        self._waiters.add(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        watcher: asyncio.Future[None] | None = None
        if gone is not None:
            watcher = asyncio.ensure_future(gone())
            watcher.add_done_callback(functools.partial(_wake_when_gone, waiter, call))
        try:
            await waiter
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
            call.waiters.discard(waiter)
            self._waiters.discard(waiter)

    def release_waiters(self) -> None:
        """Answer every held request now and hold no more: the server is shutting down."""
        self._released = True
        for waiter in list(self._waiters):
            _wake(waiter)

    def forget_all(self) -> int:
        """Drop every call and result, as a server restart would.

        Workers must be stopped first so that no call changes state meanwhile.

        :return: how many calls were dropped.
        """
        dropped = len(self._calls)
        for call in self._calls.values():
            if not call.state.settled:
                for gauge in self._gauges_for(call):
                    gauge.dec()
            call.forgotten = True
            for waiter in list(call.waiters):
                _wake(waiter)
            call.held_bytes = 0
        self._calls.clear()
        self._settled.clear()
        self.held_bytes = 0
        log.debug("Forgot %d calls", dropped)
        return dropped

    def sweep(self) -> int:
        """Drop the results whose TTL has passed.

        :return: how many were dropped.
        """
        now = time.monotonic()
        dropped = 0
        while self._settled and self._expired(self._settled[0], now):
            call = self._settled.popleft()
            # A lookup may have dropped it already.
            if self._calls.get(call.call_id) is call:
                self._drop(call)
                dropped += 1
        return dropped

    def _make_room(self, size: int) -> bool:
        """Drop the oldest results kept until ``size`` more bytes fit under the cap; say if they do."""
        cap = self.max_held_bytes
        if not cap:
            return True
        now = time.monotonic()
        while self.held_bytes + size > cap and self._settled:
            call = self._settled.popleft()
            if self._calls.get(call.call_id) is not call:
                continue  # a lookup or the TTL dropped it already
            size_dropped = call.held_bytes
            self._drop(call)
            log.warning(
                "Dropped the result of call %s (%d bytes) %.0f s before its TTL ended, to keep what the "
                "server holds under --max-held-bytes (%d); a Check for it now answers 'taskID does not exist'",
                call.call_id,
                size_dropped,
                max(self._result_ttl() - (now - (call.finished_at or now)), 0.0),
                cap,
            )
        return self.held_bytes + size <= cap

    def _drop(self, call: Call) -> None:
        del self._calls[call.call_id]
        self._release(call)

    def _release(self, call: Call) -> None:
        self.held_bytes -= call.held_bytes
        call.held_bytes = 0

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            dropped = self.sweep()
            if dropped:
                log.debug("Swept %d expired calls", dropped)

    def _expired(self, call: Call, now: float) -> bool:
        return call.finished_at is not None and now - call.finished_at >= self._result_ttl()

    def _gauges_for(self, call: Call) -> tuple[Gauge, ...]:
        """The gauges counting the call in its current state: the server's and its model's."""
        model = self._stats.per_model[call.model_key]
        if call.state is CallState.QUEUED:
            return self._stats.queued, model.queued
        if call.state is CallState.RUNNING:
            return self._stats.running, model.running
        return ()

    def _move(self, call: Call, new: CallState) -> None:
        old = call.state
        if old is new:
            return
        if old.settled or call.forgotten:
            raise RuntimeError(f"call {call.call_id} is {old.value}; it cannot become {new.value}")
        for gauge in self._gauges_for(call):
            gauge.dec()
        call.state = new
        for gauge in self._gauges_for(call):
            gauge.inc()
        log.debug("Call %s (%s) %s", call.call_id, call.model_key, new.value)

    def _settle(self, call: Call) -> None:
        call.inputs = None  # kept for the TTL otherwise, and nothing reads them any more
        self._release(call)
        call.finished_at = time.monotonic()
        self._settled.append(call)
        for waiter in list(call.waiters):
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_when_gone(waiter: asyncio.Future[None], call: Call, watcher: asyncio.Future[None]) -> None:
    if watcher.cancelled():
        return  # the hold ended first
    error = watcher.exception()
    if error is not None:
        # Cannot tell whether the client is there: keep holding, as without a watcher.
        log.debug("Watching the client of a held request for call %s failed: %r", call.call_id, error)
        return
    if not waiter.done():
        log.debug("The client holding call %s left; the hold ends", call.call_id)
    _wake(waiter)
