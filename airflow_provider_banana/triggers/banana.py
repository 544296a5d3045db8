"""Wait in the triggerer for a Banana call to finish, with long-poll Checks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    BananaRetryPolicy,
    error_event,
    success_event,
    validate_call_id,
    validate_positive,
)
from airflow_provider_banana.exceptions import BananaConfigError, BananaTimeoutError
from airflow_provider_banana.hooks.banana import BananaAsyncHook


class BananaCallTrigger(BaseTrigger):
    """
    Long-poll Banana's Check for one call and yield exactly one event when it ends.

    It never sends a Start: the operator starts the call in the worker and hands over its id.
    Its kwargs (stored as plain JSON in the metadata database) are the call id, the connection
    id, absolute deadlines and intervals: never the API key or the model inputs. A trigger
    rebuilt from :meth:`serialize` (a triggerer restart, or a trigger moved to another
    triggerer) carries on with the same call and deadline; two triggers watching one call are
    harmless, since Checks are read-only.

    The event payload is a dict: ``status`` (``success``, ``failed``, ``timeout`` or ``error``),
    ``call_id``, ``model_outputs`` (the list, on success, else ``None``) and ``message``.

    :param call_id: the callID from Start.
    :param banana_conn_id: the Airflow connection to use.
    :param deadline: ``time.time()`` after which the trigger yields a ``timeout`` event.
    :param started_at: ``time.time()`` of the Start, for elapsed-time logs (default: now).
    :param poll_interval: least seconds between the starts of two Checks (matters when long
        polling is off or the server answers at once).
    :param long_poll: let the server hold each Check up to 50 s until the call finishes.
    :param max_attempts: tries of one Check through transient transport trouble, with backoff,
        before the trigger gives up with an ``error`` event.
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
    ) -> None:
        super().__init__()
        if deadline is None:
            raise BananaConfigError("BananaCallTrigger needs a deadline (an absolute time.time())")
        self.call_id = validate_call_id(call_id)
        self.banana_conn_id = banana_conn_id
        self.deadline = float(deadline)
        self.started_at = float(started_at) if started_at is not None else time.time()
        self.poll_interval = validate_positive("poll_interval", poll_interval)
        self.long_poll = bool(long_poll)
        self.retry_policy = BananaRetryPolicy(max_attempts=max_attempts)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the small, secret-free kwargs that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_id": self.call_id,
                "banana_conn_id": self.banana_conn_id,
                "deadline": self.deadline,
                "started_at": self.started_at,
                "poll_interval": self.poll_interval,
                "long_poll": self.long_poll,
                "max_attempts": self.retry_policy.max_attempts,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check the call until it ends or the deadline passes; yield one event."""
        try:
            outputs = await self._wait()
        except Exception as e:  # every failure becomes the one event the operator reads
            self.log.warning("Banana call %s: %s", self.call_id, e)
            yield TriggerEvent(error_event(self.call_id, e))
            return
        yield TriggerEvent(success_event(self.call_id, outputs))

    async def _wait(self) -> list[Any]:
        if time.time() >= self.deadline:  # e.g. a trigger rebuilt after its deadline: no lookup, no request
            raise BananaTimeoutError(self.call_id, self.deadline - self.started_at)
        async with BananaAsyncHook(self.banana_conn_id, retry_policy=self.retry_policy) as hook:
            return await hook.wait(
                self.call_id,
                # The timeout in the error text is the whole budget from Start, whatever is left now.
                timeout=max(self.deadline - self.started_at, 1e-3),
                started_at=self.started_at,
                long_poll=self.long_poll,
                poll_interval=self.poll_interval,
            )

    async def on_kill(self) -> None:
        """Say that the call runs on: Banana v4 has no cancel endpoint."""
        self.log.warning(
            "Stopped waiting for Banana call %s; Banana v4 cannot cancel a call, so it runs on and is billed",
            self.call_id,
        )
