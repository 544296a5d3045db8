"""The single-call operator's ``defer_after``: a short call pays no round trip through the triggerer."""

from __future__ import annotations

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.operators.banana import BananaInferenceOperator
from tests.dags import defer_after_dags as scenarios

pytestmark = pytest.mark.usefixtures("airflow_db", "banana_conn")

#: What dag.test() logs each time it runs a deferred task's trigger.
DAG_TEST_DEFERRAL = "[DAG TEST] running trigger in line"


def test_a_short_call_finishes_in_the_worker_without_deferring(
    server: DevServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    run = scenarios.short_call_stays.test()
    assert str(run.state) == "success"
    assert caplog.text.count(DAG_TEST_DEFERRAL) == 0
    assert "within defer_after: no deferral" in "".join(capfd.readouterr())
    stats = server.stats()
    assert stats["starts_taken"] == 1
    assert stats["check_requests"] >= 1  # the worker's own long poll


def test_a_call_that_outlasts_defer_after_defers(
    server: DevServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    run = scenarios.long_call_defers.test()
    assert str(run.state) == "success"
    assert caplog.text.count(DAG_TEST_DEFERRAL) == 1
    logs = "".join(capfd.readouterr())
    assert "Waiting for Banana call" in logs
    assert "The triggerer's watch of the call ended (success)" in logs
    assert server.stats()["starts_taken"] == 1


def test_zero_defers_right_after_the_start(
    server: DevServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    run = scenarios.zero_defers_at_once.test()
    assert str(run.state) == "success"
    assert caplog.text.count(DAG_TEST_DEFERRAL) == 1
    logs = "".join(capfd.readouterr())
    assert "within defer_after" not in logs
    assert "Waiting for Banana call" in logs
    stats = server.stats()
    assert stats["starts_taken"] == 1


@pytest.mark.parametrize("bad", [-1, float("nan"), True, "5"])
def test_a_bad_defer_after_is_refused_when_the_dag_is_parsed(bad: object) -> None:
    with pytest.raises(BananaConfigError, match="defer_after"):
        BananaInferenceOperator(task_id="t", model_inputs={}, deferrable=True, defer_after=bad)
