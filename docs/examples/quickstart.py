from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator

with DAG("docs_quickstart", schedule=None, start_date=datetime(2026, 1, 1)):
    infer = BananaInferenceOperator(
        task_id="infer",
        model_key="wordcount",  # your model's key
        model_inputs={"prompt": "A banana on the moon, {{ ds }}"},
        deferrable=True,  # wait in the triggerer, not in a worker slot
    )

    @task
    def use(model_outputs: list) -> int:
        return model_outputs[0]["words"]  # modelOutputs: [the model's reply]

    use(infer.output)
