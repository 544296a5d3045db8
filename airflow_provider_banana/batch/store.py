"""
Keep a batch's plan where the task finds it again after a deferral or a retry.

With Airflow 3.3's ``task_state_store`` (and ``durable=True``) that is the task instance's store,
which outlives its tries; otherwise XCom, which lives as long as one try. The keys below are read
back by later tries, possibly of a newer version of this provider: add keys, never rename them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.contract.deadline import deadline_for

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from airflow.sdk import Context

    from airflow_provider_banana.batch.plan import BatchPlan

#: ``task_state_store`` (or XCom) keys of a batch: the plan, and its outputs in chunks.
BATCH_STATE_KEY = "banana_batch_state"
BATCH_CHUNK_KEY = "banana_batch_outputs_{}"


@dataclass(frozen=True)
class Resumed:
    """
    A persisted plan, found again and loaded: the batch carries on with it.

    :param new_try: the plan was saved by an earlier try of the task (this is a retry), not by this
        try before a deferral.
    """

    new_try: bool


class BatchStore:
    """
    Where a batch keeps its plan between deferrals and, when durable, between tries.

    With Airflow 3.3's ``task_state_store`` (and ``durable=True``) the plan survives a retry, so a
    retried task reattaches to its running calls and starts no finished input again. Without it
    the plan lives in XCom, which Airflow keeps across the deferrals of one try and clears for the
    next try. Outputs are written in one chunk per wave as they arrive, so each write is small;
    the plan itself holds only the calls in flight and the failures.

    :param context: the task's context.
    :param durable: use the ``task_state_store`` when there is one.
    """

    def __init__(self, context: Context, durable: bool) -> None:
        self._ti: Any = context["ti"]
        self._store: Any = context.get("task_state_store") if durable else None
        self.chunks = 0
        #: Parts of the output file written so far (see :class:`~airflow_provider_banana.batch.files.JsonlOutput`).
        self.parts = 0
        #: Inputs that had ended (finished or failed) when this try loaded the plan: the rate of the
        #: progress lines counts only what this try did.
        self.ended_at_start = 0
        #: ``time.time()`` when this try of the batch started: its deadline counts from here. Kept
        #: in the plan, not in the deferral's kwargs, which dag.test() does not hand back.
        self.started_at = time.time()
        #: ``time.time()`` this try must end by (see :func:`~airflow_provider_banana.contract.deadline_for`),
        #: fixed when the try begins and kept in the plan: ``ti.start_date``, which ``execution_timeout``
        #: counts from, is not the try's start again after a deferral everywhere (``dag.test()``).
        self.deadline: float | None = None

    @property
    def durable(self) -> bool:
        """Return whether the plan survives a retry of the task."""
        return self._store is not None

    def _get(self, key: str) -> Any:
        if self._store is not None:
            return self._store.get(key)
        return self._ti.xcom_pull(task_ids=self._ti.task_id, key=key, map_indexes=self._ti.map_index)

    def _set(self, key: str, value: Any) -> None:
        if self._store is not None:
            self._store.set(key, value)
        else:
            self._ti.xcom_push(key=key, value=value)

    def load(self, plan: BatchPlan) -> Resumed | None:
        """
        Load the persisted plan into ``plan``; return how it resumes, or ``None`` if there is none.

        :param plan: a fresh plan for the same inputs.
        """
        state = self._get(BATCH_STATE_KEY)
        if not isinstance(state, dict) or not plan.restore(state):
            return None
        same_try = state.get("try_number") == self._ti.try_number
        self.chunks = int(state.get("chunks", 0))
        self.parts = int(state.get("parts", 0))
        counts = plan.progress()
        self.ended_at_start = counts["finished"] + counts["failed"]
        if same_try and isinstance(state.get("started_at"), (int, float)):
            self.started_at = float(state["started_at"])
            self.ended_at_start = int(state.get("ended_at_start", self.ended_at_start))
            deadline = state.get("deadline")
            self.deadline = float(deadline) if isinstance(deadline, (int, float)) else None
        return Resumed(new_try=not same_try)

    def begin_try(
        self,
        plan: BatchPlan,
        *,
        timeout: float,
        task_started: datetime | None = None,
        execution_timeout: timedelta | None = None,
    ) -> None:
        """
        Start this try's clock, its deadline and its count of ended inputs (the rate counts from here).

        :param plan: the plan as this try found it.
        :param timeout: seconds the try may take.
        :param task_started: when the task's try started (``ti.start_date``), if known.
        :param execution_timeout: the task's ``execution_timeout``, if any: the deadline is the earlier.
        """
        self.started_at = time.time()
        self.deadline = deadline_for(
            self.started_at, timeout, task_started=task_started, execution_timeout=execution_timeout
        )
        counts = plan.progress()
        self.ended_at_start = counts["finished"] + counts["failed"]

    def try_deadline(
        self, *, timeout: float, task_started: datetime | None = None, execution_timeout: timedelta | None = None
    ) -> float:
        """
        Return this try's deadline: the one fixed when the try began, or (a plan saved without one) the rule's again.

        The same rule as a single call's: ``timeout`` from this try's start, or ``execution_timeout``
        if earlier, which Airflow does not enforce while the batch is deferred.

        :param timeout: seconds the try may take.
        :param task_started: when the task's try started (``ti.start_date``), if known.
        :param execution_timeout: the task's ``execution_timeout``, if any.
        """
        if self.deadline is not None:
            return self.deadline
        return deadline_for(self.started_at, timeout, task_started=task_started, execution_timeout=execution_timeout)

    def outputs(self) -> dict[int, list[Any]]:
        """Return every output persisted so far, by input index (read once, when the batch ends)."""
        outputs: dict[int, list[Any]] = {}
        for number in range(self.chunks):
            chunk = self._get(BATCH_CHUNK_KEY.format(number)) or {}
            outputs.update({int(index): value for index, value in chunk.items()})
        return outputs

    def save(self, plan: BatchPlan, new_outputs: dict[int, list[Any]]) -> None:
        """
        Persist the outputs that arrived since the last save, then the plan that counts them.

        Outputs go first: a worker that dies between the two leaves the plan calling those calls
        running, and the next wave finds them finished again (a Check is free; a Start is not).
        A batch with an output file keeps no outputs here: ``new_outputs`` is dropped, since the
        plan holds them until their lines are written.

        :param plan: the plan.
        :param new_outputs: input index to outputs, for the inputs that finished since the last save;
            emptied once persisted.
        """
        if plan.ordered:
            new_outputs.clear()  # they go to the output file, from the plan's memory
        if new_outputs:
            self._set(BATCH_CHUNK_KEY.format(self.chunks), {str(i): v for i, v in new_outputs.items()})
            self.chunks += 1
            new_outputs.clear()
        self._set(
            BATCH_STATE_KEY,
            {
                **plan.to_state(),
                "chunks": self.chunks,
                "parts": self.parts,
                "try_number": self._ti.try_number,
                "started_at": self.started_at,
                "ended_at_start": self.ended_at_start,
                "deadline": self.deadline,
            },
        )

    def clear(self) -> None:
        """Drop the plan and its outputs once the batch ended, so clearing the task starts afresh."""
        if self._store is None:
            return  # XCom of this try goes with the try
        for number in range(self.chunks):
            self._store.delete(BATCH_CHUNK_KEY.format(number))
        self._store.delete(BATCH_STATE_KEY)
