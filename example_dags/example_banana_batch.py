"""
Run a list of inputs through Banana from one task, at most ``max_in_flight`` calls at a time.

Use it instead of ``.expand()`` for more than a few dozen inputs: mapping is capped by
``[core] max_map_length`` (1,024 by default), and every mapped instance costs the scheduler a task
instance, two worker starts (the Start, then the resume after its trigger) and a trigger. The task
returns one entry per input, in input order: that call's ``modelOutputs`` list, or ``None`` for an
input that failed under ``on_item_failure="skip"``.

With ``deferrable=True`` the worker follows the calls itself while they keep ending within
``defer_after`` seconds (5 by default), and hands them to the triggerer once they take longer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator

with DAG(
    dag_id="example_banana_batch",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md=__doc__,
):

    @task
    def todays_documents() -> list[dict[str, Any]]:
        """Stand in for a query: the inputs of one call each."""
        return [{"prompt": f"document number {n} about bananas"} for n in range(40)]

    embed = BananaBatchInferenceOperator(
        task_id="embed",
        model_key="wordcount",
        model_inputs=todays_documents(),
        max_in_flight=8,
        item_retries=2,
        on_item_failure="skip",
        deferrable=True,
        timeout=3600,
    )

    @task
    def store(all_outputs: list[list[Any] | None]) -> int:
        """Use every output; a skipped (failed) input is None."""
        words = sum(outputs[0]["words"] for outputs in all_outputs if outputs is not None)
        print(f"{len(all_outputs)} documents, {words} words in all")
        return words

    store(embed.output)
