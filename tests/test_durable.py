"""Durable calls: a retried task reattaches to its call instead of paying for a second inference."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from tests.dags import banana_test_dags as scenarios
from tests.helpers import requires_task_state_store, states, try_numbers, xcom

pytestmark = pytest.mark.usefixtures("airflow_db", "banana_conn")


@pytest.mark.parametrize(
    ("dag", "fault"),
    [
        (scenarios.durable_deferred_timeout, None),
        (scenarios.durable_blocking_timeout, None),
        (scenarios.durable_deferred_fault, {"fail_next": {"count": 1, "status": 503, "endpoints": ["check"]}}),
        (scenarios.durable_blocking_fault, {"drop_next": {"count": 1, "endpoints": ["check"]}}),
        (scenarios.durable_execution_timeout, None),
    ],
    ids=["deferred-timeout", "blocking-timeout", "deferred-503", "blocking-dropped", "execution-timeout"],
)
@requires_task_state_store
def test_retry_reattaches_to_the_same_call(dag: Any, fault: dict | None, server: DevServer) -> None:
    if fault:
        server.faults(**fault)
    run = dag.test()
    assert str(run.state) == "success", states(run)
    assert try_numbers(run)["infer"] == 2  # the first try failed after its Start
    assert xcom(run, "downstream")[0]["result"] == "same call"
    assert server.stats()["starts_taken"] == 1  # no inference paid twice


def test_without_durable_a_retry_pays_again(server: DevServer) -> None:
    server.faults(fail_next={"count": 1, "status": 503, "endpoints": ["check"]})
    run = scenarios.not_durable.test()
    assert str(run.state) == "success", states(run)
    assert try_numbers(run)["infer"] == 2
    assert server.stats()["starts_taken"] == 2  # what durable calls prevent
