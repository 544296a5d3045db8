"""
Run one inference per input with dynamic task mapping, and gather the outputs.

Each mapped task instance starts its own call and defers; the downstream task receives the
``modelOutputs`` list of every instance, in input order. For thousands of inputs, mind
``[core] max_map_length`` (1,024 by default): each instance costs a task and a trigger.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator

PROMPTS = [
    "A banana is a berry",
    "A strawberry is not",
    "Plantains are cooked before eating",
]

with DAG(
    dag_id="example_banana_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md=__doc__,
):
    infer = BananaInferenceOperator.partial(
        task_id="infer",
        model_key="wordcount",
        deferrable=True,
        timeout=600,
    ).expand(model_inputs=[{"prompt": prompt} for prompt in PROMPTS])

    @task
    def total_words(all_outputs: list[list[Any]]) -> int:
        """Add up the word counts of every mapped call."""
        counts = [outputs[0]["words"] for outputs in all_outputs]
        print(f"Word counts per input: {counts}")
        return sum(counts)

    total_words(infer.output)
