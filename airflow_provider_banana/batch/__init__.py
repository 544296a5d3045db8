"""
Batch inference: many calls from one task, their plan, their watch, and where they are kept.

- :mod:`~airflow_provider_banana.batch.plan`: which input to start, what a wave of results means,
  which output lines are ready (pure, no I/O);
- :mod:`~airflow_provider_banana.batch.run`: the driving loop in the worker (start, take waves, write,
  and say: done, defer with these calls, or pause);
- :mod:`~airflow_provider_banana.batch.watch`: concurrent Starts and waves of results, in the worker
  or in the batch trigger;
- :mod:`~airflow_provider_banana.batch.store`: the plan between deferrals and tries;
- :mod:`~airflow_provider_banana.batch.files`: JSONL inputs and outputs through object storage.

The operator, a thin shell around :class:`~airflow_provider_banana.batch.run.BatchRun`, is
:class:`airflow_provider_banana.operators.batch.BananaBatchInferenceOperator`, and the trigger
:class:`airflow_provider_banana.triggers.banana.BananaBatchTrigger`.
"""

from __future__ import annotations

from airflow_provider_banana.batch.plan import (
    DEFAULT_MAX_STARTING,
    ON_ITEM_FAILURE,
    ORDER_WINDOW,
    START_LOST,
    START_LOST_EARLIER,
    STATE_VERSION,
    WAVE,
    BatchPlan,
    Wave,
    hand_back_now,
    inputs_digest,
)
from airflow_provider_banana.exceptions import BananaBatchError, BananaBatchTimeoutError

__all__ = [
    "DEFAULT_MAX_STARTING",
    "ON_ITEM_FAILURE",
    "ORDER_WINDOW",
    "START_LOST",
    "START_LOST_EARLIER",
    "STATE_VERSION",
    "WAVE",
    "BananaBatchError",
    "BananaBatchTimeoutError",
    "BatchPlan",
    "Wave",
    "hand_back_now",
    "inputs_digest",
]
