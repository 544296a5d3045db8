"""Many inputs from one task, at most max_in_flight calls at once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator

with DAG("docs_batch_operator", schedule=None, start_date=datetime(2026, 1, 1)):

    @task
    def todays_documents() -> list[dict[str, Any]]:
        return [{"prompt": f"document {n} " + "word " * n} for n in range(1, 21)]

    embed = BananaBatchInferenceOperator(
        task_id="embed",
        model_key="wordcount",
        # A list (here an upstream task's output); each item is one call's modelInputs.
        model_inputs=todays_documents(),
        max_in_flight=8,
        item_retries=2,
        on_item_failure="skip",  # a failed input's entry is None; "fail" fails the task
        deferrable=True,
    )

    @task
    def store(outputs: list[Any]) -> int:
        # One entry per input, in input order: that call's modelOutputs list, or None.
        return sum(entry[0]["words"] for entry in outputs if entry is not None)

    store(embed.output)
