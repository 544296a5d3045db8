"""
Start a call without waiting, then wait for it with the sensor.

Useful when the call is started by one DAG (or by a system outside Airflow) and awaited by
another task, or when several calls are started first and awaited later. The operator returns
the callID (also pushed to XCom under ``call_id``); the sensor, deferrable here, long-polls it
in the triggerer and returns its ``modelOutputs`` list.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator
from airflow_provider_banana.sensors.banana import BananaCallSensor

with DAG(
    dag_id="example_banana_sensor",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md=__doc__,
):
    start = BananaInferenceOperator(
        task_id="start",
        model_key="sleep",
        model_inputs={"seconds": 2, "result": {"label": "ripe"}},
        wait_for_completion=False,
    )

    wait = BananaCallSensor(
        task_id="wait",
        call_id=start.output,
        deferrable=True,
        poke_interval=5,
        timeout=600,
    )

    @task
    def report(model_outputs: list[Any]) -> str:
        """Read the finished call's result."""
        label = model_outputs[0]["result"]["label"]
        print(f"The banana is {label}")
        return label

    report(wait.output)
