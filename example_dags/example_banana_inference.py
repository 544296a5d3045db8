"""
Run one inference on Banana and hand its outputs to a downstream task.

The operator sends Start from the worker, defers the wait to the triggerer (no worker slot is
held while the model runs) and returns the ``modelOutputs`` list, which ``op.output`` passes on.

Needs a connection ``banana_default`` (docs/connection.md). Run it on this machine against the
local server, from the clone's top folder with the venv active (``source .venv/bin/activate``)::

    export AIRFLOW_HOME="$(mktemp -d)" AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__DAGS_FOLDER="$PWD/example_dags"
    airflow db migrate
    python -m airflow_provider_banana.devserver --host 127.0.0.1 --port 8000 &
    export AIRFLOW_CONN_BANANA_DEFAULT='{"conn_type": "banana", "host": "http://127.0.0.1:8000/",
        "password": "any-key", "extra": {"model_key": "wordcount"}}'
    airflow dags test example_banana_inference
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator

with DAG(
    dag_id="example_banana_inference",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md=__doc__,
):
    infer = BananaInferenceOperator(
        task_id="infer",
        model_key="wordcount",
        model_inputs={"prompt": "Bananas ripen faster in a paper bag, run {{ run_id }}"},
        deferrable=True,
        # Defer right after the Start, so that this example shows the triggerer's side. The default
        # (5 s) would wait in the worker first, and a call this short would finish there.
        defer_after=0,
        timeout=600,
    )

    @task
    def summarize(model_outputs: list[Any]) -> dict[str, Any]:
        """Use the model's reply: modelOutputs is a list whose one element is the model's JSON."""
        reply = model_outputs[0]
        print(f"Model outputs reached the downstream task: {model_outputs}")
        return {"words": reply["words"], "characters": reply["characters"]}

    summarize(infer.output)
