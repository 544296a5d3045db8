"""
The scenario DAGs of the production test (``tests/production.py``, run by ``scripts/test-production.sh``).

Every size and duration comes from the run's ``conf``, so the driver picks them when it triggers
a run and the DAG file stays the same: ``n`` inputs, each a call of the devserver's ``sleep``
model that echoes its input's index as ``result``. The last task of each DAG checks that every
output arrived, once, in input order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, get_current_context, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator

START = datetime(2026, 1, 1)


def _conf() -> dict[str, Any]:
    conf: dict[str, Any] = get_current_context()["dag_run"].conf or {}
    return conf


@task
def sleep_inputs() -> list[dict[str, Any]]:
    """One input per call: sleep ``seconds`` (or until the Unix time ``until``), echo the index."""
    conf = _conf()
    timing = {"until": conf["until"]} if "until" in conf else {"seconds": conf["seconds"]}
    return [{**timing, "result": index} for index in range(int(conf["n"]))]


@task
def check_in_order(all_outputs: Any) -> int:
    """Fail unless output ``i`` is the reply to input ``i``, for every input."""
    n = int(_conf()["n"])
    results = [None if outputs is None else outputs[0]["result"] for outputs in list(all_outputs)]
    assert results == list(range(n)), f"outputs out of order or missing: {results}"
    print(f"All {n} outputs arrived, in input order")
    return n


# Mapped deferrable calls; the driver kills a triggerer while they are deferred.
with DAG("production_mapped_deferrable", schedule=None, start_date=START, catchup=False, max_active_tasks=256):
    mapped = BananaInferenceOperator.partial(
        task_id="infer",
        model_key="sleep",
        deferrable=True,
        # Defer right after the Start, so every call waits in a triggerer.
        defer_after=0,
        timeout=1800,
    ).expand(model_inputs=sleep_inputs())
    check_in_order(mapped.output)

# One batch in one worker; the driver kills that worker mid-batch and the retry must reattach.
with DAG("production_batch_worker_kill", schedule=None, start_date=START, catchup=False):
    batch = BananaBatchInferenceOperator(
        task_id="batch",
        model_key="sleep",
        model_inputs=sleep_inputs(),
        max_in_flight=32,
        # The worker follows the calls itself, so killing it stops the batch mid-way.
        deferrable=False,
        timeout=1800,
        retries=1,
        # Test setting: the retry may start as soon as the scheduler noticed the dead try.
        retry_delay=timedelta(seconds=5),
    )
    check_in_order(batch.output)

# Deferrable calls and a call waited for in its worker; the driver kills the scheduler twice.
with DAG("production_scheduler_kill", schedule=None, start_date=START, catchup=False):
    calls = sleep_inputs()
    deferred = BananaInferenceOperator.partial(
        task_id="infer_deferred", model_key="sleep", deferrable=True, defer_after=0, timeout=1800
    ).expand(model_inputs=calls)
    blocking = BananaBatchInferenceOperator(
        task_id="batch_in_worker",
        model_key="sleep",
        model_inputs=calls,
        max_in_flight=4,
        deferrable=False,
        timeout=1800,
    )
    check_in_order.override(task_id="check_deferred")(deferred.output)
    check_in_order.override(task_id="check_batch")(blocking.output)
