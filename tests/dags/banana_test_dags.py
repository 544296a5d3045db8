"""
DAGs the end-to-end tests run with ``dag.test()`` (one scenario each).

Airflow 3's ``dag.test()`` runs only DAGs it finds in a DAG bundle, so the test session copies
this file into its DAGs folder; the tests import the same objects from here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator
from airflow_provider_banana.sensors.banana import BananaCallSensor

DEFAULTS = {"retries": 0}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, default_args=DEFAULTS)


@task
def downstream(model_outputs: Any) -> Any:
    """Hand back what arrived, so the test reads it from XCom."""
    return model_outputs


@task
def gather(all_outputs: Any) -> list[Any]:
    """Hand back the outputs of every mapped instance, in map order."""
    return list(all_outputs)


def _inference(dag_id: str, **kwargs: Any) -> DAG:
    with _dag(dag_id) as dag:
        infer = BananaInferenceOperator(task_id="infer", **kwargs)
        downstream(infer.output)
    return dag


deferrable_success = _inference(
    "t_deferrable_success", model_key="wordcount", model_inputs={"prompt": "{{ dag.dag_id }} ok"}, deferrable=True
)
# Longer than the server's Start hold: a waiting Start that comes back unfinished, then Checks.
blocking_success = _inference(
    "t_blocking_success", model_key="sleep", model_inputs='{"seconds": 2.5, "result": "done"}', timeout=120
)
deferrable_failed = _inference(
    "t_deferrable_failed", model_key="fail", model_inputs={"reason": "bad weights"}, deferrable=True
)
blocking_failed = _inference("t_blocking_failed", model_key="fail", model_inputs={"reason": "bad weights"})
deferred_timeout = _inference(
    "t_deferred_timeout", model_key="sleep", model_inputs={"seconds": 60}, deferrable=True, timeout=2
)
blocking_timeout = _inference("t_blocking_timeout", model_key="sleep", model_inputs={"seconds": 60}, timeout=2)


def _sensor(dag_id: str, model_key: str, model_inputs: dict[str, Any], **sensor_kwargs: Any) -> DAG:
    with _dag(dag_id) as dag:
        start = BananaInferenceOperator(
            task_id="start", model_key=model_key, model_inputs=model_inputs, wait_for_completion=False
        )
        sensor_kwargs.setdefault("timeout", 60)
        wait = BananaCallSensor(task_id="wait", call_id=start.output, poke_interval=0.5, **sensor_kwargs)
        downstream(wait.output)
    return dag


sensor_poke = _sensor("t_sensor_poke", "sleep", {"seconds": 1.5, "result": "poke"}, mode="poke")
sensor_reschedule = _sensor("t_sensor_reschedule", "sleep", {"seconds": 1.5, "result": "resched"}, mode="reschedule")
sensor_deferrable = _sensor("t_sensor_deferrable", "sleep", {"seconds": 1.5, "result": "defer"}, deferrable=True)
sensor_failed = _sensor("t_sensor_failed", "fail", {"reason": "oops"}, mode="poke")
sensor_soft_fail = _sensor("t_sensor_soft_fail", "fail", {"reason": "oops"}, mode="poke", soft_fail=True)
sensor_deferrable_failed = _sensor(
    "t_sensor_deferrable_failed", "fail", {"reason": "oops"}, deferrable=True, soft_fail=True
)
sensor_timeout = _sensor("t_sensor_timeout", "sleep", {"seconds": 60}, deferrable=True, timeout=1.5)
sensor_soft_timeout = _sensor("t_sensor_soft_timeout", "sleep", {"seconds": 60}, mode="poke", timeout=1, soft_fail=True)

with _dag("t_mapped") as mapped:
    infer = BananaInferenceOperator.partial(task_id="infer", model_key="wordcount", deferrable=True).expand(
        model_inputs=[{"prompt": "one"}, {"prompt": "two words"}, {"prompt": "now three words"}]
    )
    gather(infer.output)

# Durable calls: the first try fails after its Start; the retry must reattach to the same call.
RETRY = {"retries": 1, "retry_delay": 0}
durable_deferred_timeout = _inference(
    "t_durable_deferred_timeout",
    model_key="sleep",
    model_inputs={"seconds": 4.5, "result": "same call"},
    deferrable=True,
    timeout=3,
    **RETRY,
)
durable_blocking_timeout = _inference(
    "t_durable_blocking_timeout",
    model_key="sleep",
    model_inputs={"seconds": 4.5, "result": "same call"},
    timeout=3,
    **RETRY,
)
durable_deferred_fault = _inference(
    "t_durable_deferred_fault",
    model_key="sleep",
    model_inputs={"seconds": 2, "result": "same call"},
    deferrable=True,
    max_attempts=1,
    **RETRY,
)
durable_blocking_fault = _inference(
    "t_durable_blocking_fault",
    model_key="sleep",
    model_inputs={"seconds": 2, "result": "same call"},
    max_attempts=1,
    **RETRY,
)
durable_execution_timeout = _inference(
    "t_durable_execution_timeout",
    model_key="sleep",
    model_inputs={"seconds": 4, "result": "same call"},
    execution_timeout=timedelta(seconds=2.5),
    **RETRY,
)
not_durable = _inference(
    "t_not_durable",
    model_key="sleep",
    model_inputs={"seconds": 2, "result": "new call"},
    deferrable=True,
    max_attempts=1,
    durable=False,
    **RETRY,
)

# execution_timeout must hold while the task is deferred, even with a longer operator timeout.
execution_timeout_deferred = _inference(
    "t_execution_timeout_deferred",
    model_key="sleep",
    model_inputs={"seconds": 60},
    deferrable=True,
    timeout=600,
    execution_timeout=timedelta(seconds=3),
)

# Batch inference.
from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator  # noqa: E402

BATCH_200 = [{"seconds": 0.02 * (i % 7), "result": i} for i in range(200)]


def _batch(dag_id: str, **kwargs: Any) -> DAG:
    with _dag(dag_id) as dag:
        batch = BananaBatchInferenceOperator(task_id="batch", **kwargs)
        downstream(batch.output)
    return dag


batch_deferrable = _batch(
    "t_batch_deferrable", model_key="sleep", model_inputs=BATCH_200, max_in_flight=10, deferrable=True, defer_after=0
)
batch_blocking = _batch("t_batch_blocking", model_key="sleep", model_inputs=BATCH_200, max_in_flight=10)
FLAKY = [{"key": f"{{{{ run_id }}}}-{i}", "fail_times": 1 if i == 3 else 0} for i in range(8)]
# Calls shorter than the test server's 2 s Check hold: one long poll each sees them end.
batch_blocking_long_polls = _batch(
    "t_batch_blocking_long_polls",
    model_key="sleep",
    model_inputs=[{"seconds": 0.2 + 0.1 * (i % 6), "result": i} for i in range(40)],
    max_in_flight=8,
)
batch_flaky = _batch(
    "t_batch_flaky",
    model_key="flaky",
    model_inputs=FLAKY,
    max_in_flight=3,
    item_retries=1,
    deferrable=True,
    defer_after=0,
)
BROKEN = [{"key": f"{{{{ run_id }}}}-{i}", "fail_times": 9 if i in (2, 5) else 0} for i in range(8)]
batch_fail_policy = _batch(
    "t_batch_fail_policy",
    model_key="flaky",
    model_inputs=BROKEN,
    max_in_flight=3,
    item_retries=1,
    deferrable=True,
    defer_after=0,
)
batch_skip_policy = _batch(
    "t_batch_skip_policy",
    model_key="flaky",
    model_inputs=BROKEN,
    max_in_flight=3,
    item_retries=1,
    on_item_failure="skip",
)
BATCH_30 = [{"seconds": 0.5, "result": i} for i in range(30)]
batch_retry = _batch(
    "t_batch_retry",
    model_key="sleep",
    model_inputs=BATCH_30,
    max_in_flight=10,
    max_attempts=1,
    deferrable=True,
    defer_after=0,
    **RETRY,
)
batch_retry_blocking = _batch(
    "t_batch_retry_blocking", model_key="sleep", model_inputs=BATCH_30, max_in_flight=10, max_attempts=1, **RETRY
)
batch_not_durable = _batch(
    "t_batch_not_durable",
    model_key="sleep",
    model_inputs=BATCH_30,
    max_in_flight=10,
    deferrable=True,
    defer_after=0,
    durable=False,
)
batch_timeout = _batch(
    "t_batch_timeout",
    model_key="sleep",
    model_inputs=[{"seconds": 0.2 if i < 4 else 30} for i in range(8)],
    max_in_flight=4,
    deferrable=True,
    defer_after=0,
    timeout=3,
)
# Deferrable with the default defer_after: calls that end within it never leave the worker...
batch_short_calls_stay = _batch(
    "t_batch_short_calls_stay", model_key="sleep", model_inputs=BATCH_30, max_in_flight=10, deferrable=True
)
# ...and calls that outlast it are handed to the triggerer.
batch_long_calls_defer = _batch(
    "t_batch_long_calls_defer",
    model_key="sleep",
    model_inputs=[{"seconds": 2.5, "result": i} for i in range(6)],
    max_in_flight=3,
    deferrable=True,
    defer_after=0.5,
)
# Every Start refused once (the test arms the server): nothing runs while the retries wait.
batch_refused_starts = _batch(
    "t_batch_refused_starts",
    model_key="sleep",
    model_inputs=[{"seconds": 0, "result": i} for i in range(3)],
    max_in_flight=3,
    item_retries=1,
    deferrable=True,
)
# Bad inputs, found before any request: an item that is not an object, and a dict for the list.
batch_bad_item = _batch(
    "t_batch_bad_item", model_key="sleep", model_inputs=[{"seconds": 0}, {"seconds": 0}, 42], deferrable=True
)
batch_not_a_list = _batch("t_batch_not_a_list", model_key="sleep", model_inputs={"seconds": 0})
# 5,000 short calls in one task, run through `airflow dags test` by tests/test_batch.py.
batch_5000 = _batch(
    "t_batch_5000",
    model_key="sleep",
    model_inputs=[{"seconds": 0, "result": i} for i in range(5000)],
    max_in_flight=50,
    deferrable=True,
)
# Against a server 100 ms away (the test points banana_far at a latency proxy): the Starts go out
# concurrently, so the calls running reach max_in_flight.
batch_far = _batch(
    "t_batch_far",
    banana_conn_id="banana_far",
    model_key="sleep",
    model_inputs=[{"seconds": 1.0, "result": i} for i in range(60)],
    max_in_flight=20,
)
