"""Wait in the triggerer for a Banana call to finish, with long-poll Checks."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_banana.batch.files import as_storage_path, write_outputs
from airflow_provider_banana.batch.plan import Wave
from airflow_provider_banana.batch.watch import DEFAULT_LINGER, wait_many
from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    BananaRetryPolicy,
    CallWaiter,
    absolute_deadline,
    budget,
    call_timeout_error,
    error_event,
    event_fits_loop,
    storable_success_event,
    success_event,
    validate_call_id,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.contract.waiting import time_left
from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.hooks.banana import BananaAsyncHook
from airflow_provider_banana.redact import NO_SECRET, Redactor

#: Seconds between a deferral and its trigger's start past which the trigger resumes a watch begun
#: elsewhere: picking up a fresh trigger takes a triggerer a few seconds, a takeover tens.
RESUME_AFTER = 15.0


def _retry_policy(max_attempts: Any) -> BananaRetryPolicy:
    if type(max_attempts) is int:
        return _shared_retry_policy(max_attempts)
    return BananaRetryPolicy(max_attempts=max_attempts)  # anything else checked (and refused) as given


@functools.lru_cache(maxsize=16)
def _shared_retry_policy(max_attempts: int) -> BananaRetryPolicy:
    # Frozen, so triggers share one: a triggerer that takes over thousands builds and checks it once.
    return BananaRetryPolicy(max_attempts=max_attempts)


class _BananaWaitTrigger(BaseTrigger):
    """
    What both Banana triggers hold: where to ask, until when, and how often.

    :param banana_conn_id: the Airflow connection to use.
    :param deadline: ``time.time()`` after which the wait ends as timed out.
    :param started_at: ``time.time()`` of the Start (or of the batch's try), for the timeout's text
        and elapsed-time logs (default: now).
    :param poll_interval: least seconds between the starts of two Checks of one call (matters when
        long polling is off or the server answers at once).
    :param long_poll: let the server hold each Check up to 50 s until the call finishes.
    :param max_attempts: tries of one Check through transient transport trouble, with backoff,
        before the trigger gives up with an error.
    """

    def __init__(
        self,
        banana_conn_id: str,
        deadline: float | None,
        *,
        started_at: float | None,
        poll_interval: float,
        long_poll: bool,
        max_attempts: int,
    ) -> None:
        super().__init__()
        if deadline is None:
            raise BananaConfigError(f"{type(self).__name__} needs a deadline (an absolute time.time())")
        self.banana_conn_id = banana_conn_id
        self.deadline = absolute_deadline(deadline)
        self.started_at = float(started_at) if started_at is not None else time.time()
        self.poll_interval = validate_poll_interval(poll_interval)
        self.long_poll = bool(long_poll)
        self.retry_policy = _retry_policy(max_attempts)
        # Masks the key in the texts of errors that are not ours; known once the hook has the connection.
        self._redactor: Redactor = NO_SECRET

    def _serialize(self, **own: Any) -> tuple[str, dict[str, Any]]:
        # The classpath comes from the class, so a subclass or a move cannot leave it stale.
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **own,
                "banana_conn_id": self.banana_conn_id,
                "deadline": self.deadline,
                "started_at": self.started_at,
                "poll_interval": self.poll_interval,
                "long_poll": self.long_poll,
                "max_attempts": self.retry_policy.max_attempts,
            },
        )

    @property
    def expired(self) -> bool:
        """Return whether the deadline has passed (e.g. a trigger rebuilt after it): no lookup, no request."""
        return time.time() >= self.deadline

    @property
    def timeout(self) -> float:
        """Return the whole budget from the start, whatever is left now (for the timeout's text)."""
        return budget(self.deadline, self.started_at)

    def _hook(self) -> BananaAsyncHook:
        return BananaAsyncHook(self.banana_conn_id, retry_policy=self.retry_policy)


class BananaCallTrigger(_BananaWaitTrigger):
    """
    Long-poll Banana's Check for one call and yield exactly one event when it ends.

    It never sends a Start: the operator starts the call in the worker and hands over its id.
    Its kwargs (stored as plain JSON in the metadata database) are the call id, the connection
    id, absolute deadlines and intervals: never the API key or the model inputs. A trigger
    rebuilt from :meth:`serialize` (a triggerer restart, or a trigger moved to another
    triggerer) carries on with the same call and deadline; two triggers watching one call are
    harmless, since Checks are read-only.

    The event payload is a dict: ``status`` (``success``, ``failed``, ``timeout``, ``error``, or
    ``not_storable`` for outputs Airflow cannot store, with ``problems``: ``[path, reason]`` pairs),
    ``call_id``, ``model_outputs`` (the list, on success, else ``None``) and ``message``; and the
    watch's summary for the task's log, ``checks`` (Checks this trigger sent) and ``elapsed``
    (seconds since the Start). Outputs past 64 KiB stay out of the event (Airflow stores it and
    prints it in the trigger's log): ``model_outputs`` is then ``None`` and ``outputs_bytes`` and
    ``outputs_sha256`` tell the worker what to fetch with one Check; with ``output_path`` the trigger
    writes the outputs there and the event names the file (``output_path``) with the same two fields.

    Its first long poll is abandoned after a random 50-100 % of the connection's ``check_hold`` and
    sent again at once (one Check more for a call that runs that long): triggers that start
    together, as after a take-over, then do not re-poll in step, and a call that finishes while
    thousands of Checks are re-sent is not kept waiting behind them.

    The trigger logs when it resumes a watch that began elsewhere (a takeover by another triggerer
    or a restart; an ordinary start is Airflow's own "trigger ... starting" line), a status other
    than "running", a progress line at most every 5 minutes, and a failure; a success is Airflow's
    own "Trigger fired event" line, which shows the event. At thousands of triggers, each line more
    per call would cost the triggerer a tenth more CPU.

    :param call_id: the callID from Start.
    :param banana_conn_id: the Airflow connection to use.
    :param deadline: ``time.time()`` after which the trigger yields a ``timeout`` event.
    :param started_at: ``time.time()`` of the Start, for elapsed-time logs (default: now).
    :param poll_interval: least seconds between the starts of two Checks (matters when long
        polling is off or the server answers at once).
    :param long_poll: let the server hold each Check up to 50 s until the call finishes.
    :param max_attempts: tries of one Check through transient transport trouble, with backoff,
        before the trigger gives up with an ``error`` event.
    :param deferred_at: ``time.time()`` when the task deferred to this trigger (default: now); a
        trigger that starts well after it resumes a watch begun elsewhere, and says so.
    :param output_path: a URI (``ObjectStoragePath``'s, its connection id in it) to write the
        outputs to as JSON once the call finished, so that nothing depends on the server keeping them.
    """

    def __init__(
        self,
        call_id: str,
        banana_conn_id: str = BananaAsyncHook.default_conn_name,
        deadline: float | None = None,
        *,
        started_at: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        long_poll: bool = True,
        max_attempts: int = BananaRetryPolicy.max_attempts,
        deferred_at: float | None = None,
        output_path: str | None = None,
    ) -> None:
        super().__init__(
            banana_conn_id,
            deadline,
            started_at=started_at,
            poll_interval=poll_interval,
            long_poll=long_poll,
            max_attempts=max_attempts,
        )
        self.call_id = validate_call_id(call_id)
        self.deferred_at = time.time() if deferred_at is None else absolute_deadline(deferred_at, "deferred_at")
        if output_path is not None and not (isinstance(output_path, str) and output_path.strip()):
            raise BananaConfigError(f"BananaCallTrigger's output_path must be a URI string, got {output_path!r}")
        self.output_path = output_path
        self._waiter: CallWaiter | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the small, secret-free kwargs that rebuild this trigger."""
        # output_path only when given: the kwargs of a trigger without one stay as they were.
        file = {"output_path": self.output_path} if self.output_path is not None else {}
        return self._serialize(call_id=self.call_id, deferred_at=self.deferred_at, **file)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check the call until it ends or the deadline passes; yield one event."""
        self._log_start()
        try:
            outputs = await self._wait()
            if not self.output_path and self._waiter is not None and event_fits_loop(self._waiter.reply_bytes):
                event = self._finished_event(outputs, small=True)
            else:
                # In a thread: serializing (and writing) megabytes of outputs would stall every
                # trigger on this triggerer's loop.
                event = await asyncio.to_thread(self._finished_event, outputs)
        except Exception as e:  # every failure becomes the one event the operator reads
            event = error_event(self.call_id, e, redactor=self._redactor, **self._summary())
            self.log.warning(
                "Banana call %s: %s after %.1f s (Checks: %d)",
                self.call_id,
                event["message"] or event["status"],
                event["elapsed"],
                event["checks"],
            )
        # A success is not logged here: Airflow's own "Trigger fired event" line, next in this log,
        # shows the event (Checks, elapsed, the outputs' size or file), and a line more per call was
        # a tenth of what a trigger costs the triggerer.
        yield TriggerEvent(event)

    def _finished_event(self, outputs: list[Any], *, small: bool = False) -> dict[str, Any]:
        if self.output_path:
            # The file holds the outputs whatever they are; the event and XCom only name it.
            written = write_outputs(as_storage_path(self.output_path, "output_path"), outputs)
            return success_event(self.call_id, outputs, written=written, **self._summary())
        # Outputs Airflow cannot store would break the event itself (and the task's resume): the
        # event names where and why instead, and the task keeps the call for a retry to reattach to.
        return storable_success_event(self.call_id, outputs, small=small, **self._summary())

    def _log_start(self) -> None:
        # Only a resumed watch (a takeover or a restart) is news: an ordinary start is Airflow's own
        # "trigger ... starting" line already, and a line more per trigger (its logger built, the
        # record rendered and sent) costs a triggerer that starts thousands at once (issue 23).
        now = time.time()
        since_deferral = now - self.deferred_at
        if since_deferral <= RESUME_AFTER:
            return
        self.log.info(
            "Watching Banana call %s: %.1f s since its Start, %s before the deadline; resuming a watch begun "
            "%.0f s ago (another triggerer took it over, or the triggerer restarted)",
            self.call_id,
            now - self.started_at,
            time_left(self.deadline - now),
            since_deferral,
        )

    def _summary(self) -> dict[str, Any]:
        return {"checks": self._waiter.checks if self._waiter else 0, "elapsed": time.time() - self.started_at}

    async def _wait(self) -> list[Any]:
        if self.expired:
            raise call_timeout_error(self.call_id, self.deadline, self.started_at)
        async with self._hook() as hook:
            self._redactor = hook.settings.redactor
            self._waiter = CallWaiter.begin(
                self.call_id,
                deadline=self.deadline,
                started_at=self.started_at,
                long_poll=self.long_poll,
                poll_interval=self.poll_interval,
            )
            return await hook.follow(self._waiter)

    async def on_kill(self) -> None:
        """Say that the call runs on: Banana v4 has no cancel endpoint."""
        self.log.warning(
            "Stopped waiting for Banana call %s; Banana v4 cannot cancel a call, so it runs on and is billed",
            self.call_id,
        )


class BananaBatchTrigger(_BananaWaitTrigger):
    """
    Watch the calls a batch has in flight and hand back a wave of results to the worker.

    One trigger per batch task: the worker starts at most ``max_in_flight`` calls, defers to this
    trigger with their ids, and gets back one event when enough of them ended (all, half, or those
    that ended within ``linger`` seconds of the first); it then starts the next calls and defers
    again. It never sends a Start. Its kwargs hold only the ids in flight, never the inputs or
    outputs of the batch, and the event only what ended in this wave.

    The event payload: ``status`` ``"wave"``, ``finished`` (call id to ``modelOutputs``),
    ``failed`` (call id to Banana's message), ``timed_out`` (the deadline passed) and ``error``
    (transport trouble that outlived the retries, or another problem; ``None`` when all went well).

    :param call_ids: the calls in flight.
    :param banana_conn_id: the Airflow connection to use.
    :param deadline: ``time.time()`` after which the wave ends with ``timed_out``.
    :param started_at: ``time.time()`` when this try of the batch started.
    :param poll_interval: least seconds between the starts of two Checks of one call.
    :param long_poll: let the server hold each Check up to 50 s.
    :param max_attempts: tries of one Check through transient transport trouble.
    :param linger: seconds to wait for more calls to end after the first one did.
    """

    def __init__(
        self,
        call_ids: list[str],
        banana_conn_id: str = BananaAsyncHook.default_conn_name,
        deadline: float | None = None,
        *,
        started_at: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        long_poll: bool = True,
        max_attempts: int = BananaRetryPolicy.max_attempts,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        super().__init__(
            banana_conn_id,
            deadline,
            started_at=started_at,
            poll_interval=poll_interval,
            long_poll=long_poll,
            max_attempts=max_attempts,
        )
        if not call_ids:
            raise BananaConfigError("BananaBatchTrigger needs at least one call id")
        self.call_ids = [validate_call_id(call_id) for call_id in call_ids]
        self.linger = validate_seconds("linger", linger)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the small, secret-free kwargs that rebuild this trigger."""
        return self._serialize(call_ids=self.call_ids, linger=self.linger)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for a wave of the calls to end; yield one event."""
        try:
            wave = await self._wave()
        except Exception as e:  # every failure becomes the one event the operator reads
            error = self._redactor(f"{type(e).__name__}: {e}")
            self.log.warning("Banana batch wait failed: %s", error)
            wave = Wave(error=error)
        # In a thread: serializing megabytes of outputs would stall every trigger on this loop.
        event = await asyncio.to_thread(wave.to_event)
        self.log.info(
            "Banana batch wave: %d finished (outputs of %d left on the server, too large for the event), "
            "%d failed, of %d calls in flight",
            len(wave.finished),
            len(event["on_server"]),
            len(wave.failed),
            len(self.call_ids),
        )
        yield TriggerEvent(event)

    async def _wave(self) -> Wave:
        if self.expired:
            return Wave(timed_out=True)
        async with self._hook() as hook:
            self._redactor = hook.settings.redactor
            return await wait_many(
                hook,
                self.call_ids,
                deadline=self.deadline,
                started_at=self.started_at,
                long_poll=self.long_poll,
                poll_interval=self.poll_interval,
                linger=self.linger,
            )

    async def on_kill(self) -> None:
        """Say that the calls run on: Banana v4 has no cancel endpoint."""
        self.log.warning(
            "Stopped waiting for Banana calls %s; Banana v4 cannot cancel a call, so they run on and are billed",
            ", ".join(self.call_ids),
        )
