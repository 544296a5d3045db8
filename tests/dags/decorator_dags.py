"""
DAGs of ``@task.banana`` and ``@task.banana_batch`` that ``tests/test_decorators.py`` runs with ``dag.test()``.

Copied into the test session's DAGs folder like the other scenario files; the decorators are
reached through ``airflow.sdk.task``, so these DAGs also prove that the provider registers them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

DEFAULTS = {"retries": 0}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, default_args=DEFAULTS)


@task
def downstream(value: Any) -> Any:
    """Hand back what arrived, so the test reads it from XCom."""
    return value


def _single(dag_id: str, **decorator_kwargs: Any) -> DAG:
    with _dag(dag_id) as dag:

        @task.banana(task_id="infer", model_key="wordcount", **decorator_kwargs)
        def infer(word: str) -> dict[str, Any]:
            # A template in the returned inputs renders as in the operator's model_inputs.
            return {"prompt": f"{word} from {{{{ dag.dag_id }}}}"}

        downstream(infer("hello"))
    return dag


d_blocking = _single("d_blocking")
d_deferrable = _single("d_deferrable", deferrable=True, defer_after=0)

with _dag("d_json_string") as d_json_string:

    @task.banana(model_key="sleep")
    def json_inputs() -> str:
        return '{"seconds": 0.1, "result": "from a JSON string"}'

    downstream(json_inputs())

with _dag("d_mapped") as d_mapped:

    @task.banana(model_key="wordcount", deferrable=True, defer_after=0)
    def mapped_infer(prefix: str, words: str) -> dict[str, Any]:
        return {"prompt": f"{prefix} {words}"}

    @task
    def gather(all_outputs: Any) -> list[Any]:
        return list(all_outputs)

    gather(mapped_infer.partial(prefix="say").expand(words=["a", "b c", "d e f"]))

with _dag("d_bad_return") as d_bad_return:

    @task.banana(model_key="wordcount")
    def returns_a_list() -> Any:
        return [{"prompt": "one"}, {"prompt": "two"}]

    returns_a_list()

with _dag("d_bad_json") as d_bad_json:

    @task.banana(model_key="wordcount")
    def returns_a_json_array() -> str:
        return '["not", "an", "object"]'

    returns_a_json_array()

with _dag("d_failed") as d_failed:

    @task.banana(model_key="fail", deferrable=True, defer_after=0)
    def doomed() -> dict[str, Any]:
        return {"reason": "bad weights"}

    doomed()

with _dag("d_batch_list") as d_batch_list:

    @task.banana_batch(model_key="wordcount", max_in_flight=3, deferrable=True, defer_after=0)
    def prompts(count: int) -> list[dict[str, Any]]:
        return [{"prompt": " ".join(["w"] * (i + 1))} for i in range(count)]

    downstream(prompts(7))

with _dag("d_batch_file") as d_batch_file:
    # The files come from the run's conf: the test gives each run paths of its own.
    @task.banana_batch(model_key="wordcount", output_path="{{ dag_run.conf['output'] }}")
    def from_file(dag_run: Any = None) -> str:
        return dag_run.conf["input"]

    downstream(from_file())

with _dag("d_batch_bad_return") as d_batch_bad_return:

    @task.banana_batch(model_key="wordcount")
    def returns_a_dict() -> Any:
        return {"prompt": "one input, not a list"}

    returns_a_dict()
