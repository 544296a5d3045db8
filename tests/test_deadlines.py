"""One deadline rule: ``timeout``, or the task's ``execution_timeout`` if earlier, deferred or not."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_banana.contract import (
    CallWaiter,
    batch_timeout_error,
    budget,
    call_timeout_error,
    deadline_for,
    task_started,
)
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaBatchTimeoutError, BananaTimeoutError
from tests.dags import deadline_dags as scenarios
from tests.helpers import assert_raised, states

T0 = 1_800_000_000.0


class _TaskInstance:
    def __init__(self, start_date: Any) -> None:
        self.start_date = start_date


class TestDeadlineRule:
    """The pure rule, with plain data."""

    def test_timeout_alone(self) -> None:
        assert deadline_for(T0, 30) == T0 + 30
        # execution_timeout counts from the task's start, which an unknown start cannot give.
        assert deadline_for(T0, 30, execution_timeout=timedelta(seconds=5)) == T0 + 30

    @pytest.mark.parametrize(
        ("task_offset", "execution_timeout", "expected"),
        [
            (0, 5, T0 + 5),  # execution_timeout is the earlier
            (-2, 5, T0 + 3),  # counted from the task's start, before the Start
            (0, 60, T0 + 30),  # timeout is the earlier
            (0, None, T0 + 30),
        ],
    )
    def test_the_earlier_wins(self, task_offset: float, execution_timeout: float | None, expected: float) -> None:
        started = datetime.fromtimestamp(T0 + task_offset, tz=timezone.utc)
        limit = None if execution_timeout is None else timedelta(seconds=execution_timeout)
        assert deadline_for(T0, 30, task_started=started, execution_timeout=limit) == pytest.approx(expected)

    def test_task_started_reads_the_task_instance(self) -> None:
        started = datetime.fromtimestamp(T0, tz=timezone.utc)
        assert task_started({"ti": _TaskInstance(started)}) == started
        assert task_started({"ti": _TaskInstance(None)}) is None
        assert task_started({}) is None

    def test_errors_report_the_budget_from_the_start(self) -> None:
        error = call_timeout_error("call_1", T0 + 4.5, T0, "running")
        assert isinstance(error, BananaTimeoutError)
        assert (error.call_id, error.timeout, error.last_message) == ("call_1", 4.5, "running")
        assert "within 4.5 s" in str(error)
        batch = batch_timeout_error({3: "call_b", 1: "call_a"}, {"finished": 2, "running": 2}, T0 + 4, T0)
        assert isinstance(batch, BananaBatchTimeoutError)
        assert batch.timeout == 4
        assert "within 4 s" in str(batch)
        assert "item 1: call_a, item 3: call_b" in str(batch)
        # A deadline at or before its start still reads as a positive number.
        assert budget(T0, T0 + 1) > 0

    def test_the_waiter_reports_the_same_error(self) -> None:
        now = time.time()
        waiter = CallWaiter.begin("call_1", deadline=now + 7, started_at=now)
        assert str(waiter.expired_error()) == str(call_timeout_error("call_1", now + 7, now))
        assert "within 7 s" in str(waiter.expired_error())


pytestmark_dags = pytest.mark.usefixtures("airflow_db", "banana_conn")


def _limit_held(message: str, pattern: str) -> float:
    found = re.search(pattern + r" did not finish within ([\d.]+) s", message)
    assert found, message
    return float(found[1])


@pytestmark_dags
class TestExecutionTimeoutHolds:
    """``execution_timeout`` (12 s) shorter than ``timeout`` (600 s) ends the task, with our error."""

    @pytest.mark.parametrize("dag", [scenarios.batch_deferred, scenarios.batch_in_worker], ids=["deferred", "worker"])
    def test_batch_ends_naming_the_calls_still_running(
        self, dag: Any, server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        run = dag.test()
        assert states(run)["batch"] == "failed"
        logs = "".join(capfd.readouterr())
        # Items 2 to 5 sleep 60 s: they are the ones still running; 0 and 1 finished.
        message = assert_raised(logs, "BananaBatchTimeoutError", "Banana batch did not finish within", "still running")
        assert re.search(r"item 2: call_\S+, item 3: call_\S+, item 4: call_\S+, item 5: call_", message), message
        assert "item 0:" not in message
        assert "item 1:" not in message
        assert _limit_held(message, "Banana batch") <= scenarios.EXECUTION_TIMEOUT
        assert "AirflowTaskTimeout" not in logs
        assert server.stats()["starts_taken"] == 6  # no input started twice

    def test_single_call_in_the_worker(self, server: DevServer, capfd: pytest.CaptureFixture[str]) -> None:
        run = scenarios.call_in_worker.test()
        assert states(run)["infer"] == "failed"
        logs = "".join(capfd.readouterr())
        message = assert_raised(logs, "BananaTimeoutError", "did not finish within")
        assert _limit_held(message, r"Banana call call_\S+") <= scenarios.EXECUTION_TIMEOUT
        assert "AirflowTaskTimeout" not in logs
        assert server.stats()["starts_taken"] == 1

    def test_deferred_sensor(self, server: DevServer, capfd: pytest.CaptureFixture[str]) -> None:
        run = scenarios.sensor_deferred.test()
        assert states(run)["wait"] == "failed"
        message = assert_raised("".join(capfd.readouterr()), "AirflowSensorTimeout", "Banana call call_")
        assert _limit_held(message, r"Banana call call_\S+") <= scenarios.EXECUTION_TIMEOUT
