"""One inference, deferrable, its outputs handed to a downstream task."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator

with DAG("docs_inference_operator", schedule=None, start_date=datetime(2026, 1, 1)):
    infer = BananaInferenceOperator(
        task_id="infer",
        model_key="wordcount",
        model_inputs={"prompt": "A banana on the moon, {{ ds }}"},  # templated
        deferrable=True,
        timeout=900,  # seconds from the Start; then BananaTimeoutError
        retries=2,  # a retry reattaches to its call: no second Start
    )

    @task
    def use(model_outputs: list[Any]) -> dict[str, Any]:
        reply = model_outputs[0]  # modelOutputs: [the model's JSON reply]
        return {"words": reply["words"], "upper": reply["upper"]}

    use(infer.output)
