"""
DAGs for the metrics and lineage tests (tests/test_metrics.py): each sends a known set of metrics.

The files come from the run's conf (``dag.test(run_conf={"input": ..., "output": ...})``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator

INPUT = "{{ dag_run.conf['input'] }}"
OUTPUT = "{{ dag_run.conf['output'] }}"


def _dag(dag_id: str, operator: type, retries: int = 0, **kwargs: Any) -> DAG:
    default_args = {"retries": retries, "retry_delay": timedelta(0)}
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, default_args=default_args) as dag:
        operator(task_id="call", **kwargs)
    return dag


# One call, answered within its Start (wordcount takes no time).
one_call = _dag("m_one_call", BananaInferenceOperator, model_key="wordcount", model_inputs={"prompt": "one call"})
# A call the triggerer waits for: a Start that answers at once, then the trigger's Checks.
deferred = _dag(
    "m_deferred",
    BananaInferenceOperator,
    model_key="sleep",
    model_inputs={"seconds": 3, "result": "deferred"},
    deferrable=True,
    defer_after=0,
)
# A call whose outputs go to a file (lineage: its output dataset).
to_file = _dag(
    "m_to_file",
    BananaInferenceOperator,
    model_key="wordcount",
    model_inputs={"prompt": "to a file"},
    output_path=OUTPUT,
)
# A call that fails, and one that times out.
failed = _dag("m_failed", BananaInferenceOperator, model_key="fail", model_inputs={"reason": "bad weights"})
timed_out = _dag("m_timeout", BananaInferenceOperator, model_key="sleep", model_inputs={"seconds": 60}, timeout=2)
# A batch from a file to a file, an input of which fails (lineage: its input and output datasets).
batch = _dag(
    "m_batch",
    BananaBatchInferenceOperator,
    model_key="sleep",
    input_path=INPUT,
    output_path=OUTPUT,
    max_in_flight=4,
    on_item_failure="skip",
    item_retries=0,
)
# A Start whose answer is lost (the server drops the connection): it may have been taken.
lost = _dag("m_lost", BananaInferenceOperator, model_key="wordcount", model_inputs={"prompt": "lost"})
# A call whose first try fails after its Start (a Check's answer lost, not retried): the retry
# reattaches to it on Airflow 3.3 (task_state_store), and starts a new call before.
reattach = _dag(
    "m_reattach",
    BananaInferenceOperator,
    retries=1,
    model_key="flaky",
    model_inputs={"key": "m_reattach", "fail_times": 0, "seconds": 2},
    max_attempts=1,
)
