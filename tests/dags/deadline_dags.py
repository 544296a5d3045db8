"""
DAGs of tests/test_deadlines.py: a task's ``execution_timeout`` shorter than its ``timeout`` holds.

Copied into the test session's DAGs folder with the other scenarios (``dag.test()`` runs only DAGs
found in a DAG bundle); the tests import the same objects from here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator
from airflow_provider_banana.sensors.banana import BananaCallSensor

#: The limit that must hold, far below every operator's ``timeout``. It counts from the task's start
#: (``ti.start_date``), which comes seconds before ``execute`` on a busy machine: hence not less.
EXECUTION_TIMEOUT = 12.0
_LIMITS = {"timeout": 600, "execution_timeout": timedelta(seconds=EXECUTION_TIMEOUT)}
# Two short inputs, then four that outlast the limit: those are running when it comes.
_INPUTS = [{"seconds": 0.2 if i < 2 else 60, "result": i} for i in range(6)]


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, default_args={"retries": 0})


def _batch(dag_id: str, **kwargs: Any) -> DAG:
    with _dag(dag_id) as dag:
        BananaBatchInferenceOperator(
            task_id="batch", model_key="sleep", model_inputs=_INPUTS, max_in_flight=4, **_LIMITS, **kwargs
        )
    return dag


batch_deferred = _batch("t_deadline_batch_deferred", deferrable=True, defer_after=0)
batch_in_worker = _batch("t_deadline_batch_in_worker", deferrable=False)

with _dag("t_deadline_call_in_worker") as call_in_worker:
    BananaInferenceOperator(task_id="infer", model_key="sleep", model_inputs={"seconds": 60}, **_LIMITS)

with _dag("t_deadline_sensor_deferred") as sensor_deferred:
    _start = BananaInferenceOperator(
        task_id="start", model_key="sleep", model_inputs={"seconds": 60}, wait_for_completion=False
    )
    BananaCallSensor(task_id="wait", call_id=_start.output, deferrable=True, **_LIMITS)
