"""
Keep what a single-call task must find again after a retry, in Airflow's ``task_state_store``.

The key below is read back by later tries, possibly of a newer version of this provider: renaming
it, or changing what its value holds, breaks the reattachment of the tries in flight when a
deployment upgrades. (A batch keeps its plan in :mod:`airflow_provider_banana.batch.store`.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_banana import metrics
from airflow_provider_banana.contract import BananaResult, Reattach, reattach_decision
from airflow_provider_banana.exceptions import BananaCallError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.sdk import Context

    from airflow_provider_banana.hooks.banana import BananaHook

#: The ``task_state_store`` key holding the call a task instance waits for, across its tries.
#: Renaming it on a deployed version breaks the reattachment of tries in flight.
CALL_ID_KEY = "banana_call_id"
#: The XCom key the task pushes its call id under (a sensor downstream, or the deferral's backstop, reads it).
CALL_ID_XCOM_KEY = "call_id"


class StoredCall:
    """
    The call id a task instance keeps in Airflow's ``task_state_store``, so a retry reattaches.

    Airflow 3.3 gives each task instance a store that outlives its tries (the one
    ``airflow.sdk.ResumableJobMixin`` uses). Where there is none (Airflow before 3.3, or
    ``durable=False``) every method does nothing and a retried task starts a new call.

    :param context: the task's context.
    :param enabled: whether to use the store at all.
    """

    def __init__(self, context: Context, enabled: bool = True) -> None:
        self._store: Any = context.get("task_state_store") if enabled else None
        # Whether a call id is stored, once this try knows (None: unknown), so that forgetting
        # nothing costs no write.
        self._held: bool | None = None

    @property
    def available(self) -> bool:
        """Return whether call ids survive this try."""
        return self._store is not None

    def get(self) -> str | None:
        """Return the call id an earlier try stored, if any."""
        value = self._store.get(CALL_ID_KEY) if self._store is not None else None
        self._held = value is not None
        return value if isinstance(value, str) and value else None

    def save(self, call_id: str) -> None:
        """Persist the call id before any wait, so a retry waits for it instead of paying again."""
        if self._store is not None:
            self._store.set(CALL_ID_KEY, call_id)
            self._held = True

    def forget(self) -> None:
        """Drop the call id: clearing the task later starts a fresh call (see :meth:`until_ended`)."""
        if self._store is not None and self._held is not False:
            self._store.delete(CALL_ID_KEY)
            self._held = False

    def reattach(
        self, hook: BananaHook, log: logging.Logger | Any, tags: Callable[[], metrics.Tags]
    ) -> BananaResult | None:
        """
        Return the call an earlier try stored, as a Check finds it: running (wait for it), or finished.

        A finished call's outputs are the task's result. ``None``: none stored, or it failed or
        expired (then forgotten: start a new one).

        :param hook: the hook that Checks it (once, not held).
        :param log: the task's logger.
        :param tags: the metric tags of the task, asked for only when it reattaches (they may look
            up the connection).
        """
        previous = self.get()
        if previous is None:
            return None
        outcome: BananaResult | BananaCallError
        try:
            outcome = hook.check(previous, long_poll=False)
        except BananaCallError as e:
            outcome = e
        decision = reattach_decision(outcome)
        if isinstance(outcome, BananaCallError) or decision is Reattach.RESTART:
            log.warning("Banana call %s from an earlier try ended (%s); starting a new call", previous, outcome)
            self.forget()
            return None
        metrics.count(metrics.CALL_REATTACHED, tags())
        if decision is Reattach.FINISHED:
            log.info("Banana call %s from an earlier try has finished; returning its outputs", previous)
        else:
            log.info(
                "Reattaching to Banana call %s from an earlier try (%s) instead of starting a new one",
                previous,
                outcome.status_text,
            )
        return outcome

    @contextlib.contextmanager
    def until_ended(self, unsaved: str | None = None) -> Iterator[None]:
        """
        Keep the call while the block may still need it; forget it once the block ended it.

        The one rule of the single call's bookkeeping. Forgotten when the block returns (the
        outputs are on their way out of the task) or raises :class:`BananaCallError` (the call
        failed: a retry starts a new one). Kept on any other error: the call may still run (a
        timeout, transport trouble), or it finished but its outputs did not leave the task (Airflow
        cannot store them; too large for the event and not fetched yet; a file not written), so a
        retry reattaches with a Check (free) rather than paying for a new Start. Kept too through a
        deferral, which is no error.

        :param unsaved: a call not stored yet (one that finished within its Start), stored if the
            block fails with the call kept.
        """
        try:
            yield
        except BananaCallError:
            self.forget()
            raise
        except Exception:
            if unsaved:
                self.save(unsaved)
            raise
        self.forget()
