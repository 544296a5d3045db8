"""Outputs of megabytes go to a file, and XCom holds only where they are."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaInferenceOperator

# s3://aws_default@my-bucket/renders in a deployment; the tests point it at a folder.
RENDERS = os.environ.get("BANANA_RENDERS", "file:///tmp/banana-renders")

with DAG("docs_large_outputs", schedule=None, start_date=datetime(2026, 1, 1)):
    render = BananaInferenceOperator(
        task_id="render",
        model_key="bytes",  # an image model; here the local server's, 2 MB a reply
        model_inputs={"size": 2_000_000, "seed": "a banana in space"},
        deferrable=True,
        output_path=RENDERS + "/{{ run_id }}.json",
    )
    # render.output is {"output_path": ".../<run_id>.json", "bytes": 2000013, "sha256": "..."}
