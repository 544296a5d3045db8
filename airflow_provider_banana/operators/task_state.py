"""
Keep what a single-call task must find again after a retry, in Airflow's ``task_state_store``.

The key below is read back by later tries, possibly of a newer version of this provider: renaming
it, or changing what its value holds, breaks the reattachment of the tries in flight when a
deployment upgrades. (A batch keeps its plan in :mod:`airflow_provider_banana.batch.store`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The ``task_state_store`` key holding the call a task instance waits for, across its tries.
#: Renaming it on a deployed version breaks the reattachment of tries in flight.
CALL_ID_KEY = "banana_call_id"


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

    @property
    def available(self) -> bool:
        """Return whether call ids survive this try."""
        return self._store is not None

    def get(self) -> str | None:
        """Return the call id an earlier try stored, if any."""
        value = self._store.get(CALL_ID_KEY) if self._store is not None else None
        return value if isinstance(value, str) and value else None

    def save(self, call_id: str) -> None:
        """Persist the call id before any wait, so a retry waits for it instead of paying again."""
        if self._store is not None:
            self._store.set(CALL_ID_KEY, call_id)

    def forget(self) -> None:
        """
        Drop the call id once the call failed, or its outputs are on their way out of the task.

        Not before: a try that fails with outputs Airflow cannot store keeps the id, so its retry
        reattaches with a Check (free) rather than paying for a new Start. Dropped, clearing the
        task later starts a fresh call.
        """
        if self._store is not None:
            self._store.delete(CALL_ID_KEY)
