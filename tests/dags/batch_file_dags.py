"""
Batch DAGs that read their inputs from a JSONL file and write their results to one.

The paths come from the run's conf (``dag.test(run_conf={"input": ..., "output": ...})``), so each
test points them at files of its own; they render through the operator's templated fields.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator

INPUT = "{{ dag_run.conf['input'] }}"
OUTPUT = "{{ dag_run.conf['output'] }}"


@task
def summary(result: Any) -> Any:
    """Hand back what the batch returned, so the test reads it from XCom."""
    return result


def _file_batch(dag_id: str, retries: int = 0, **kwargs: Any) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args={"retries": retries, "retry_delay": timedelta(0)},
    ) as dag:
        batch = BananaBatchInferenceOperator(task_id="batch", **{"model_key": "sleep", **kwargs})
        summary(batch.output)
    return dag


file_blocking = _file_batch("t_file_blocking", input_path=INPUT, output_path=OUTPUT, max_in_flight=8)
file_deferrable = _file_batch(
    "t_file_deferrable", input_path=INPUT, output_path=OUTPUT, max_in_flight=8, deferrable=True, defer_after=0
)
# Inputs from a file, outputs to XCom as a list.
file_to_xcom = _file_batch("t_file_to_xcom", input_path=INPUT, max_in_flight=8)
# A list of inputs, outputs to a file.
list_to_file = _file_batch(
    "t_list_to_file", model_inputs=[{"seconds": 0.05 * (i % 3), "result": i} for i in range(12)], output_path=OUTPUT
)
file_skip = _file_batch(
    "t_file_skip",
    input_path=INPUT,
    output_path=OUTPUT,
    max_in_flight=4,
    item_retries=1,
    on_item_failure="skip",
    model_key="flaky",
)
file_fail = _file_batch(
    "t_file_fail", input_path=INPUT, output_path=OUTPUT, max_in_flight=4, item_retries=0, model_key="flaky"
)
# The first wave's Check fails (the test arms a 503, max_attempts=1): the retry resumes the batch.
file_retry = _file_batch(
    "t_file_retry", retries=1, input_path=INPUT, output_path=OUTPUT, max_in_flight=10, max_attempts=1
)
file_retry_deferrable = _file_batch(
    "t_file_retry_deferrable",
    retries=1,
    input_path=INPUT,
    output_path=OUTPUT,
    max_in_flight=10,
    max_attempts=1,
    deferrable=True,
    defer_after=0,
)
file_big = _file_batch("t_file_big", input_path=INPUT, output_path=OUTPUT, max_in_flight=64, max_starting=32)
# The server dies mid-burst (the test kills it): Starts in flight lose their answers. The default
# max_attempts lets the next try's Starts (provably not taken) ride out the restart.
server_dies = _file_batch(
    "t_server_dies",
    retries=1,
    input_path=INPUT,
    output_path=OUTPUT,
    max_in_flight=10,
    max_starting=10,
)
