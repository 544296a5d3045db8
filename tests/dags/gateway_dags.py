"""
DAGs of ``tests/test_gateways.py``: one inference, or a batch of three, behind a scripted gateway.

The connection (``banana_default``) points at the test's hostile server; each DAG's task sends its
Starts there, so the test counts exactly how many the gateway received.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator

#: Tries of one request: a refused Start is sent at most this many times.
MAX_ATTEMPTS = 3


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, default_args={"retries": 0})


def _inference(dag_id: str, **kwargs: Any) -> DAG:
    with _dag(dag_id) as dag:
        BananaInferenceOperator(
            task_id="infer", model_key="m", model_inputs={"prompt": "hi"}, max_attempts=MAX_ATTEMPTS, **kwargs
        )
    return dag


gateway_blocking = _inference("t_gw_blocking", durable=False)
gateway_deferrable = _inference("t_gw_deferrable", deferrable=True, defer_after=0, durable=False)

with _dag("t_gw_batch") as gateway_batch:
    BananaBatchInferenceOperator(
        task_id="batch",
        model_key="m",
        model_inputs=[{"prompt": str(i)} for i in range(3)],
        max_in_flight=3,
        max_attempts=MAX_ATTEMPTS,
        durable=False,
    )
