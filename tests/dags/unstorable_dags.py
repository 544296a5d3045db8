"""
DAGs for ``tests/test_unstorable.py``: calls whose outputs Airflow cannot store, with task retries.

The connection ``banana_unstorable`` points at a scripted server that the test starts; an input
``{"case": "bad"}`` finishes with the outputs the test chose, ``{"case": "ok"}`` with plain ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator

CONN_ID = "banana_unstorable"
#: Two task retries: three tries in all, each of which must fail without a new Start.
RETRIES = {"retries": 2, "retry_delay": 0}


def _dag(dag_id: str, operator: type, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, default_args=RETRIES) as dag:
        operator(banana_conn_id=CONN_ID, model_key="m", max_attempts=2, **kwargs)
    return dag


blocking = _dag("t_unstorable_blocking", BananaInferenceOperator, task_id="infer", model_inputs={"case": "bad"})
# defer_after=0: the trigger, not the worker, sees the outputs first.
deferrable = _dag(
    "t_unstorable_deferrable",
    BananaInferenceOperator,
    task_id="infer",
    model_inputs={"case": "bad"},
    deferrable=True,
    defer_after=0,
)
batch_fail = _dag(
    "t_unstorable_batch_fail",
    BananaBatchInferenceOperator,
    task_id="batch",
    model_inputs=[{"case": "ok"}, {"case": "bad"}, {"case": "ok"}],
)
batch_deferrable = _dag(
    "t_unstorable_batch_deferrable",
    BananaBatchInferenceOperator,
    task_id="batch",
    model_inputs=[{"case": "ok"}, {"case": "bad"}, {"case": "ok"}],
    deferrable=True,
    defer_after=0,
)
batch_skip = _dag(
    "t_unstorable_batch_skip",
    BananaBatchInferenceOperator,
    task_id="batch",
    model_inputs=[{"case": "ok"}, {"case": "bad"}, {"case": "ok"}],
    on_item_failure="skip",
)
# A server that answers the Start with the outputs (ignoring startOnly): the call id is kept all the same.
blocking_at_start = _dag(
    "t_unstorable_blocking_at_start",
    BananaInferenceOperator,
    task_id="infer",
    model_inputs={"case": "bad", "at_start": "with-id"},
)
# The same without a call id (the recorded form: callID ""): the batch's plan remembers the input instead.
batch_at_start = _dag(
    "t_unstorable_batch_at_start",
    BananaBatchInferenceOperator,
    task_id="batch",
    model_inputs=[{"case": "ok"}, {"case": "bad", "at_start": "no-id"}, {"case": "ok"}],
)
