"""
Decide when a call, or one try of a batch, must end: the one deadline rule, and the error that reports it.

A wait ends at one absolute ``time.time()``: ``timeout`` seconds from its start, or the task's
``execution_timeout`` counted from the task's start, whichever comes first. Airflow does not
enforce ``execution_timeout`` while a task is deferred (and ``dag.test()`` runs triggers inline,
where not even the deferral's timeout is enforced), so every wait, in the worker or in the
triggerer, carries the earlier of the two; it then fails with our error naming the calls that run
on, never with a bare ``AirflowTaskTimeout``. Every deadline (the single call's, the batch's, the
sensor's, the trigger's) is computed here, and every timeout error built here.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.exceptions import BananaBatchTimeoutError, BananaTimeoutError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import timedelta

#: The least budget an error reports: a deadline at (or before) its start still reads as a number.
_MIN_BUDGET = 1e-3


def deadline_for(
    started_at: float,
    timeout: float,
    *,
    task_started: datetime | None = None,
    execution_timeout: timedelta | None = None,
) -> float:
    """
    Return the absolute ``time.time()`` a wait ends at: its ``timeout``, or the task's ``execution_timeout`` if earlier.

    :param started_at: ``time.time()`` the timeout counts from (the Start, or the batch's try).
    :param timeout: seconds the wait may take from ``started_at``.
    :param task_started: when the task's try started (``ti.start_date``; Airflow keeps it across
        deferrals), which ``execution_timeout`` counts from; ``None`` where unknown.
    :param execution_timeout: the task's ``execution_timeout``, if any.
    """
    deadline = started_at + timeout
    if execution_timeout is not None and task_started is not None:
        deadline = min(deadline, task_started.timestamp() + execution_timeout.total_seconds())
    return deadline


def task_started(context: Mapping[str, Any]) -> datetime | None:
    """
    Return when the task's try started (``ti.start_date``), or ``None`` where the context has none.

    :param context: the task's context.
    """
    started = getattr(context.get("ti"), "start_date", None)
    return started if isinstance(started, datetime) else None


def budget(deadline: float, started_at: float) -> float:
    """
    Return the seconds a deadline stands for, from the start (what a timeout error reports).

    :param deadline: the absolute ``time.time()`` the wait ends at.
    :param started_at: ``time.time()`` the wait counts from.
    """
    return max(deadline - started_at, _MIN_BUDGET)


def call_timeout_error(
    call_id: str | None, deadline: float, started_at: float, last_message: str | None = None
) -> BananaTimeoutError:
    """
    Return the error that reports a call's deadline passed with the call still running.

    :param call_id: the call (it may run on, billed: Banana v4 cannot cancel it).
    :param deadline: the absolute ``time.time()`` that passed.
    :param started_at: ``time.time()`` the deadline counts from.
    :param last_message: the last status Banana gave, if any.
    """
    return BananaTimeoutError(call_id, budget(deadline, started_at), last_message)


def batch_timeout_error(
    running: Mapping[int, str], progress: Mapping[str, int], deadline: float, started_at: float
) -> BananaBatchTimeoutError:
    """
    Return the error that reports a batch's deadline passed, naming the calls still running.

    :param running: input index to call id, for the calls still running.
    :param progress: the batch's counts when it stopped.
    :param deadline: the absolute ``time.time()`` that passed.
    :param started_at: ``time.time()`` this try of the batch started.
    """
    return BananaBatchTimeoutError(running, budget(deadline, started_at), progress)
