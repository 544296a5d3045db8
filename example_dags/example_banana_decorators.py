"""
Run inferences from TaskFlow functions with ``@task.banana`` and ``@task.banana_batch``.

The decorated function returns the model inputs (a dict, or a JSON object string); the task sends
them to the model and returns its ``modelOutputs`` list, as ``BananaInferenceOperator`` does, with
the same arguments (``deferrable``, ``timeout``, ``durable`` ...). ``@task.banana_batch`` takes a
list of inputs (or the path of a JSONL file) and runs them as ``BananaBatchInferenceOperator``
does. ``.partial()`` and ``.expand()`` map the function's own arguments, one call per value.

Run it on this machine against the local server, from the clone's top folder with the venv active
(``source .venv/bin/activate``)::

    export AIRFLOW_HOME="$(mktemp -d)" AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__DAGS_FOLDER="$PWD/example_dags"
    airflow db migrate
    python -m airflow_provider_banana.devserver --host 127.0.0.1 --port 8000 &
    export AIRFLOW_CONN_BANANA_DEFAULT='{"conn_type": "banana", "host": "http://127.0.0.1:8000/",
        "password": "any-key", "extra": {"model_key": "wordcount"}}'
    airflow dags test example_banana_decorators
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

with DAG(
    dag_id="example_banana_decorators",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md=__doc__,
):

    @task.banana(model_key="wordcount", deferrable=True, timeout=600)
    def describe(fruit: str) -> dict[str, Any]:
        """Return the model inputs; the task returns the model's outputs."""
        return {"prompt": f"A ripe {fruit} on run {{{{ run_id }}}}"}

    @task.banana_batch(model_key="wordcount", max_in_flight=4)
    def count_words(sentences: list[str]) -> list[dict[str, Any]]:
        """Return one input per call; the task returns one modelOutputs list per input, in order."""
        return [{"prompt": sentence} for sentence in sentences]

    @task
    def report(one: list[Any], mapped: list[list[Any]], batch: list[list[Any]]) -> int:
        """Add up the words the model counted."""
        print(f"One call: {one[0]['upper']}")
        return sum(outputs[0]["words"] for outputs in [one, *mapped, *batch])

    report(
        describe("banana"),
        describe.partial().expand(fruit=["mango", "papaya"]),
        count_words(["bananas are berries", "strawberries are not", "peel"]),
    )
