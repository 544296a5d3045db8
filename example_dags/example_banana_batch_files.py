"""
Run a JSONL file of inputs through Banana from one task, and write the results to a JSONL file.

Each line of ``input_path`` is the ``modelInputs`` of one call; ``output_path`` gets one line per
input, in input order (``{"index", "status", "call_id", "model_outputs", "message"}``), and the
task returns ``{"output_path", "succeeded", "failed"}``, so nothing large goes through XCom. Any
URI Airflow's object storage knows works: ``file://`` here (set ``BANANA_EXAMPLE_STORAGE`` to
another folder, or to ``s3://aws_default@my-bucket/banana`` with the Amazon provider installed).

The output file is declared as an Asset: ``example_banana_batch_files_report`` runs whenever a
batch has written it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator

STORAGE = os.environ.get("BANANA_EXAMPLE_STORAGE", "file:///tmp/banana-example")
RESULTS = Asset(f"{STORAGE.rstrip('/')}/results.jsonl")

with DAG(
    dag_id="example_banana_batch_files",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md=__doc__,
):

    @task
    def write_inputs() -> str:
        """Stand in for an export: one call's inputs per line."""
        path = ObjectStoragePath(f"{STORAGE.rstrip('/')}/inputs.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps({"prompt": f"document number {n} about bananas"}) for n in range(50))
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)

    inputs = write_inputs()
    embed = BananaBatchInferenceOperator(
        task_id="embed",
        model_key="wordcount",
        input_path="{{ ti.xcom_pull(task_ids='write_inputs') }}",
        output_path=RESULTS.uri,
        max_in_flight=8,
        on_item_failure="skip",
        deferrable=True,
        outlets=[RESULTS],
    )
    inputs >> embed

    @task
    def count_words(result: dict[str, object]) -> int:
        """Read the output file line by line."""
        words = 0
        with ObjectStoragePath(str(result["output_path"])).open("rb") as lines:
            for line in lines:
                row = json.loads(line)
                if row["status"] == "success":
                    words += row["model_outputs"][0]["words"]
        print(f"{result['succeeded']} inputs succeeded, {result['failed']} failed, {words} words in all")
        return words

    count_words(embed.output)


with DAG(
    dag_id="example_banana_batch_files_report",
    schedule=[RESULTS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "banana"],
    doc_md="Runs whenever example_banana_batch_files has written its results file.",
):

    @task
    def report() -> int:
        """Count the lines of the latest results."""
        with ObjectStoragePath(RESULTS.uri).open("rb") as lines:
            count = sum(1 for _ in lines)
        print(f"{count} results in {RESULTS.uri}")
        return count

    report()
