"""Batch inference: bounded concurrency, order, per-item retries, failure policies, durable retries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_banana.batch import BananaBatchError, BatchPlan, Wave, hand_back_now
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator
from benchmarks.latency_proxy import LatencyProxy
from tests.dags import banana_test_dags as scenarios
from tests.helpers import assert_raised, connection_json, requires_task_state_store, states, try_numbers, xcom

#: What dag.test() logs each time it runs a deferred task's trigger.
DAG_TEST_DEFERRAL = "[DAG TEST] running trigger in line"


class TestPlan:
    """The pure plan, with plain data."""

    def test_starts_respect_max_in_flight_and_order(self) -> None:
        plan = BatchPlan(size=5, max_in_flight=2, item_retries=0, stop_on_failure=True)
        assert plan.next_starts() == [0, 1]
        plan.started(0, "c0")
        plan.started(1, "c1")
        assert plan.next_starts() == []
        plan.record(Wave(finished={"c1": [1]}))
        assert plan.next_starts() == [2]
        # A Start in flight holds its slot: it counts as running until its answer is recorded.
        assert plan.progress() == {"finished": 1, "running": 2, "waiting": 2, "failed": 0}
        assert plan.next_starts() == []
        plan.started(2, "c2")
        assert plan.progress() == {"finished": 1, "running": 2, "waiting": 2, "failed": 0}

    def test_retries_come_first_then_give_up(self) -> None:
        plan = BatchPlan(size=3, max_in_flight=1, item_retries=1, stop_on_failure=False)
        assert plan.next_starts() == [0]
        plan.started(0, "a")
        plan.record(Wave(failed={"a": "error: x"}))
        assert plan.next_starts() == [0]  # its one retry, before any fresh input
        plan.started(0, "b")
        plan.record(Wave(failed={"b": "error: y"}))
        assert plan.failed == {0: "error: y"}
        assert plan.next_starts() == [1]

    def test_fail_policy_stops_new_starts_and_raises_naming_items(self) -> None:
        plan = BatchPlan(size=4, max_in_flight=2, item_retries=0, stop_on_failure=True)
        plan.next_starts()
        plan.started(0, "a")
        plan.started(1, "b")
        plan.record(Wave(failed={"a": "error: boom"}))
        assert plan.next_starts() == []
        assert not plan.ended  # b still runs: it is waited for
        plan.record(Wave(finished={"b": [2]}))
        assert plan.ended
        with pytest.raises(BananaBatchError, match="item 0: error: boom") as info:
            plan.result(plan.outputs)
        assert info.value.failures == {0: "error: boom"}

    def test_skip_policy_returns_none_for_failed_items(self) -> None:
        plan = BatchPlan(size=2, max_in_flight=2, item_retries=0, stop_on_failure=False)
        plan.next_starts()
        plan.started(0, "a")
        plan.started(1, None, outputs=[{"x": 1}])  # finished within its Start
        plan.record(Wave(failed={"a": "error"}))
        assert plan.ended
        assert plan.result(plan.outputs) == [None, [{"x": 1}]]

    def test_state_round_trip_stays_small(self) -> None:
        plan = BatchPlan(size=1000, max_in_flight=4, item_retries=1, stop_on_failure=True, digest="d")
        for _ in range(100):
            for index in plan.next_starts():
                plan.started(index, f"c{index}")
            plan.record(Wave(finished={f"c{i}": [i] for i in list(plan.running)}))
        state = plan.to_state()
        assert len(str(state)) < 500  # no outputs, no counters of the 400 finished items
        copy = BatchPlan(size=1000, max_in_flight=4, item_retries=1, stop_on_failure=True, digest="d")
        assert copy.restore(state)
        assert copy.progress() == {"finished": 400, "running": 0, "waiting": 600, "failed": 0}
        assert copy.next_starts() == [400, 401, 402, 403]
        other = BatchPlan(size=1000, max_in_flight=4, item_retries=1, stop_on_failure=True, digest="changed")
        assert not other.restore(state)

    def test_restore_keeps_running_calls_running(self) -> None:
        plan = BatchPlan(size=2, max_in_flight=2, item_retries=0, stop_on_failure=True)
        plan.next_starts()
        plan.started(0, "a")
        plan.started(1, "b")
        copy = BatchPlan(size=2, max_in_flight=2, item_retries=0, stop_on_failure=True)
        assert copy.restore(plan.to_state())
        assert copy.running == {0: "a", 1: "b"}
        assert copy.next_starts() == []

    def test_new_try_retries_failed_items(self) -> None:
        plan = BatchPlan(size=1, max_in_flight=1, item_retries=0, stop_on_failure=True)
        plan.next_starts()
        plan.started(0, "a")
        plan.record(Wave(failed={"a": "error"}))
        plan.new_try()
        assert plan.next_starts() == [0]

    @pytest.mark.parametrize(
        ("ended", "in_flight", "since", "expected"),
        [(0, 10, None, False), (1, 10, 0.1, False), (1, 10, 1.5, True), (5, 10, 0.0, True), (1, 1, 0.0, True)],
    )
    def test_hand_back(self, ended: int, in_flight: int, since: float | None, expected: bool) -> None:
        assert hand_back_now(ended, in_flight, since, linger=1.0) is expected

    def test_wave_event_round_trip(self) -> None:
        wave = Wave(finished={"a": [1]}, failed={"b": "error"}, timed_out=False, error=None)
        assert Wave.from_event(wave.to_event()) == wave
        for bad in (None, {"status": "success"}, {"status": "wave", "finished": []}):
            with pytest.raises(Exception, match="Banana batch"):
                Wave.from_event(bad)


pytestmark_dags = pytest.mark.usefixtures("airflow_db", "banana_conn")


@pytestmark_dags
class TestBatchDags:
    @pytest.mark.parametrize(
        "dag", [scenarios.batch_deferrable, scenarios.batch_blocking], ids=["deferrable", "blocking"]
    )
    def test_200_inputs_in_order_never_more_than_10_running(self, dag: Any, server: DevServer) -> None:
        run = dag.test()
        assert str(run.state) == "success", states(run)
        outputs = xcom(run, "downstream")
        assert [item[0]["result"] for item in outputs] == list(range(200))
        stats = server.stats()
        assert stats["per_model"]["sleep"]["running_max"] <= 10
        assert stats["starts_taken"] == 200

    def test_behind_100_ms_of_latency_concurrent_starts_keep_max_in_flight_running(
        self, server: DevServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Starts sent one after another would keep about 1 s / (0.1 s + a state write) = 9 running.
        with LatencyProxy(server.port, rtt=0.1) as proxy:
            monkeypatch.setenv("AIRFLOW_CONN_BANANA_FAR", connection_json(f"http://127.0.0.1:{proxy.port}/"))
            run = scenarios.batch_far.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(60))
        stats = server.stats()
        assert stats["per_model"]["sleep"]["running_max"] == 20
        assert stats["starts_taken"] == 60

    def test_in_the_worker_each_call_is_checked_once_across_waves(self, server: DevServer) -> None:
        # The worker starts the next calls between waves while the other calls' long polls stay
        # open: a call that outlives a wave is not Checked again from scratch in the next one.
        run = scenarios.batch_blocking_long_polls.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(40))
        stats = server.stats()
        assert stats["starts_taken"] == 40
        assert stats["check_requests"] == 40

    def test_deferrable_batch_stays_in_the_worker_while_calls_end_within_defer_after(
        self, server: DevServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        run = scenarios.batch_short_calls_stay.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(30))
        assert caplog.text.count(DAG_TEST_DEFERRAL) == 0
        assert server.stats()["starts_taken"] == 30

    def test_deferrable_batch_defers_calls_that_outlast_defer_after(
        self, server: DevServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        run = scenarios.batch_long_calls_defer.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(6))
        # Two bursts of three 2.5 s calls: each defers at least once (a wave may hand back two).
        assert 2 <= caplog.text.count(DAG_TEST_DEFERRAL) <= 4
        assert server.stats()["starts_taken"] == 6

    def test_starts_all_refused_wait_for_their_retries_instead_of_deferring_on_nothing(self, server: DevServer) -> None:
        refused = {"id": "x", "message": "error: model refused the inputs", "created": 0, "apiVersion": "v4"}
        server.faults(raw_next={"count": 3, "endpoints": ["start"], "body": refused})
        run = scenarios.batch_refused_starts.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == [0, 1, 2]
        stats = server.stats()
        assert (stats["start_requests"], stats["starts_taken"]) == (6, 3)

    def test_flaky_item_is_retried(self, server: DevServer) -> None:
        run = scenarios.batch_flaky.test()
        assert str(run.state) == "success", states(run)
        outputs = xcom(run, "downstream")
        assert [item[0]["attempt"] for item in outputs] == [1, 1, 1, 2, 1, 1, 1, 1]
        assert server.stats()["starts_taken"] == 9

    def test_fail_policy_fails_naming_the_items(self, server: DevServer, capfd: pytest.CaptureFixture[str]) -> None:
        run = scenarios.batch_fail_policy.test()
        assert states(run)["batch"] == "failed"
        logs = "".join(capfd.readouterr())
        # Item 2 failed on both of its tries (the model's error): the batch fails naming it.
        assert_raised(
            logs, "BananaBatchError", "Banana batch items failed", "item 2: error: model crashed: flaky failure"
        )

    def test_skip_policy_returns_none_for_failed_items(self, server: DevServer) -> None:
        run = scenarios.batch_skip_policy.test()
        assert str(run.state) == "success", states(run)
        outputs = xcom(run, "downstream")
        assert [index for index, item in enumerate(outputs) if item is None] == [2, 5]
        assert server.stats()["starts_taken"] == 6 + 2 * 2  # failed items: first try and one retry

    @pytest.mark.parametrize(
        "dag", [scenarios.batch_retry, scenarios.batch_retry_blocking], ids=["deferrable", "blocking"]
    )
    @requires_task_state_store
    def test_task_retry_mid_batch_starts_nothing_twice(self, dag: Any, server: DevServer) -> None:
        # The first wait fails (a 503 with max_attempts=1) after 10 calls were started.
        server.faults(fail_next={"count": 1, "status": 503, "endpoints": ["check"]})
        run = dag.test()
        assert str(run.state) == "success", states(run)
        assert try_numbers(run)["batch"] == 2
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(30))
        assert server.stats()["starts_taken"] == 30  # no finished or running item started again

    def test_without_durable_the_plan_lives_in_xcom_across_deferrals(self, server: DevServer) -> None:
        run = scenarios.batch_not_durable.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(30))
        assert xcom(run, "batch", key="banana_batch_state")["chunks"] >= 1
        assert server.stats()["starts_taken"] == 30

    def test_batch_timeout_names_the_calls_still_running(
        self, server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        began = time.monotonic()
        run = scenarios.batch_timeout.test()
        assert states(run)["batch"] == "failed"
        assert time.monotonic() - began < 30
        logs = "".join(capfd.readouterr())
        assert_raised(logs, "BananaBatchTimeoutError", "Banana batch did not finish within 3 s", "item 4: call_")
        # No input started twice; how many of the 30 s ones started before the deadline depends on
        # how fast dag.test() resumes the task (slower on Airflow 3.1).
        assert 5 <= server.stats()["starts_taken"] <= 8


class TestBadBatchArguments:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"max_in_flight": 0}, "max_in_flight must be an integer >= 1, got 0"),
            ({"max_in_flight": "8"}, "max_in_flight must be an integer >= 1, got '8'"),
            ({"item_retries": -1}, "item_retries must be an integer >= 0, got -1"),
            ({"on_item_failure": "ignore"}, "on_item_failure must be one of .*'ignore'"),
            ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
            ({"poll_interval": -5}, "poll_interval must be a positive number of seconds, got -5"),
            ({"linger": 0}, "linger must be a positive number of seconds, got 0"),
            ({"defer_after": -1}, "defer_after must be zero or a positive number of seconds, got -1"),
            ({"defer_after": float("nan")}, "defer_after must be zero or a positive number of seconds, got nan"),
        ],
    )
    def test_fail_when_the_dag_is_parsed_naming_the_argument(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(BananaConfigError, match=message):
            BananaBatchInferenceOperator(task_id="batch", model_inputs=[], **kwargs)

    @pytest.mark.usefixtures("airflow_db", "banana_conn")
    @pytest.mark.parametrize(
        ("dag", "message"),
        [
            (scenarios.batch_bad_item, "model_inputs[2]: model_inputs must be a dict (or a JSON object string)"),
            (scenarios.batch_not_a_list, "model_inputs must be a list of inputs, got dict"),
        ],
        ids=["item", "not-a-list"],
    )
    def test_bad_model_inputs_fail_before_any_request(
        self, dag: Any, message: str, server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        run = dag.test()
        assert states(run)["batch"] == "failed"
        assert_raised("".join(capfd.readouterr()), "TypeError", message)
        stats = server.stats()
        assert (stats["start_requests"], stats["check_requests"]) == (0, 0)


@pytestmark_dags
@pytest.mark.timeout(900)  # a few minutes on a quiet machine; CI machines are shared
def test_5000_short_calls_in_one_task_through_airflow_dags_test(server: DevServer, airflow_db: Path) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "t_batch_5000"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
        check=False,
    )
    elapsed = time.monotonic() - began
    output = result.stdout + result.stderr
    assert "DagRun Finished: dag_id=t_batch_5000" in output, output[-3000:]
    assert "state=success" in output.split("DagRun Finished: dag_id=t_batch_5000")[1][:2000], output[-3000:]
    stats = server.stats()
    assert stats["starts_taken"] == 5000
    assert stats["per_model"]["sleep"]["running_max"] <= 50
    print(f"5,000 calls through `airflow dags test` in {elapsed:.0f} s, {stats['check_requests']} Checks")
