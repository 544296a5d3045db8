"""
DAGs whose calls return large outputs (the devserver's ``bytes`` model): by reference through the
trigger event, to an ``output_path``, and in a batch.

The inputs and paths come from the run's conf (``dag.test(run_conf={"inputs": ..., "output": ...})``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator
from airflow_provider_banana.sensors.banana import BananaCallSensor

INPUTS = "{{ dag_run.conf['inputs'] | tojson }}"
OUTPUT = "{{ dag_run.conf['output'] }}"


def _dag(dag_id: str, operator: type, retries: int = 0, **kwargs: Any) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args={"retries": retries, "retry_delay": timedelta(0)},
    ) as dag:
        operator(task_id="infer", **{"model_key": "bytes", **kwargs})
    return dag


large_deferrable = _dag(
    "t_large_deferrable", BananaInferenceOperator, model_inputs=INPUTS, deferrable=True, defer_after=0
)
# A retry is allowed, so that a test sees that an expired result is not retried (a new Start).
large_deferrable_retried = _dag(
    "t_large_deferrable_retried",
    BananaInferenceOperator,
    retries=1,
    model_inputs=INPUTS,
    deferrable=True,
    defer_after=0,
)
large_blocking = _dag("t_large_blocking", BananaInferenceOperator, model_inputs=INPUTS, deferrable=False)
large_to_file_deferrable = _dag(
    "t_large_to_file_deferrable",
    BananaInferenceOperator,
    model_inputs=INPUTS,
    output_path=OUTPUT,
    deferrable=True,
    defer_after=0,
)
large_to_file_blocking = _dag(
    "t_large_to_file_blocking", BananaInferenceOperator, model_inputs=INPUTS, output_path=OUTPUT, deferrable=False
)
large_batch_to_file = _dag(
    "t_large_batch_to_file",
    BananaBatchInferenceOperator,
    model_inputs=INPUTS,
    output_path=OUTPUT,
    max_in_flight=4,
    deferrable=True,
    defer_after=0,
    linger=2.0,
)
large_batch_to_xcom = _dag(
    "t_large_batch_to_xcom",
    BananaBatchInferenceOperator,
    model_inputs=INPUTS,
    max_in_flight=4,
    deferrable=True,
    defer_after=0,
    linger=2.0,
)

# The sensor defers to the same trigger: a call started elsewhere, its id in the conf.
large_sensor = DAG("t_large_sensor", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
with large_sensor:
    BananaCallSensor(task_id="infer", call_id="{{ dag_run.conf['call_id'] }}", deferrable=True, timeout=120)
