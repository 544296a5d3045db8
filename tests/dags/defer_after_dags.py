"""
DAGs for the single-call operator's ``defer_after``: a short call that stays in the worker, a
longer one that defers after the wait, and ``defer_after=0`` that defers right after the Start.

Copied into the test session's DAGs folder like ``banana_test_dags.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator


@task
def downstream(model_outputs: Any) -> Any:
    """Hand back what arrived, so the test reads it from XCom."""
    return model_outputs


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        infer = BananaInferenceOperator(task_id="infer", model_key="sleep", deferrable=True, timeout=120, **kwargs)
        downstream(infer.output)
    return dag


#: A one-second call with the default defer_after (5 s): it finishes in the worker.
short_call_stays = _dag("t_defer_after_short", model_inputs={"seconds": 1, "result": "short"})
#: A four-second call with defer_after=1: the worker waits a second, then defers.
long_call_defers = _dag("t_defer_after_long", model_inputs={"seconds": 4, "result": "long"}, defer_after=1)
#: The same short call with defer_after=0: it defers right after the Start.
zero_defers_at_once = _dag("t_defer_after_zero", model_inputs={"seconds": 1, "result": "zero"}, defer_after=0)
