"""End to end: DAGs run with ``dag.test()`` on SQLite against the local server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from tests.dags import banana_test_dags as scenarios
from tests.helpers import API_KEY, ROOT, assert_raised, states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db", "banana_conn")


class TestInference:
    def test_deferrable_success_reaches_downstream(self, server: DevServer) -> None:
        run = scenarios.deferrable_success.test()
        assert str(run.state) == "success", states(run)
        outputs = xcom(run, "downstream")
        assert outputs == [
            {
                "words": 2,
                "characters": 23,
                "upper": "T_DEFERRABLE_SUCCESS OK",
                "reversed": "ko sseccus_elbarrefed_t",
            }
        ]
        assert xcom(run, "infer") == outputs
        assert xcom(run, "infer", key="call_id").startswith("call_")  # pushed before deferring
        stats = server.stats()
        assert stats["starts_taken"] == 1
        assert stats["check_requests"] >= 1  # the trigger, not the worker, saw the result

    def test_blocking_success_reaches_downstream(self, server: DevServer) -> None:
        run = scenarios.blocking_success.test()
        assert str(run.state) == "success", states(run)
        assert xcom(run, "downstream") == [{"slept": pytest.approx(2.5, abs=0.3), "result": "done"}]
        assert server.stats()["starts_taken"] == 1

    @pytest.mark.parametrize(
        "dag", [scenarios.deferrable_failed, scenarios.blocking_failed], ids=["deferrable", "blocking"]
    )
    def test_failed_inference_fails_the_task(
        self, dag: Any, server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        run = dag.test()
        assert str(run.state) == "failed"
        assert states(run) == {"infer": "failed", "downstream": "upstream_failed"}
        # The model's own error, not transport trouble or a timeout.
        assert_raised("".join(capfd.readouterr()), "BananaCallError", "failed: error: model crashed: bad weights")
        assert server.stats()["starts_taken"] == 1

    @pytest.mark.parametrize(
        "dag", [scenarios.deferred_timeout, scenarios.blocking_timeout], ids=["deferred", "blocking"]
    )
    def test_operator_timeout(self, dag: Any, server: DevServer, capfd: pytest.CaptureFixture[str]) -> None:
        run = dag.test()
        assert states(run)["infer"] == "failed"
        # The operator's own timeout=2, naming the call it gave up on.
        assert_raised(
            "".join(capfd.readouterr()), "BananaTimeoutError", "Banana call call_", "did not finish within 2 s"
        )
        assert server.stats()["starts_taken"] == 1

    def test_mapped_inference(self, server: DevServer) -> None:
        run = scenarios.mapped.test()
        assert str(run.state) == "success", states(run)
        assert [outputs[0]["words"] for outputs in xcom(run, "gather")] == [1, 2, 3]
        assert server.stats()["starts_taken"] == 3


class TestSensor:
    @pytest.mark.parametrize(
        ("dag", "result"),
        [
            (scenarios.sensor_poke, "poke"),
            (scenarios.sensor_reschedule, "resched"),
            (scenarios.sensor_deferrable, "defer"),
        ],
        ids=["poke", "reschedule", "deferrable"],
    )
    def test_sensor_returns_the_outputs(self, dag: Any, result: str, server: DevServer) -> None:
        run = dag.test()
        assert str(run.state) == "success", states(run)
        assert xcom(run, "start").startswith("call_")  # wait_for_completion=False returns the call id
        assert xcom(run, "downstream")[0]["result"] == result
        assert server.stats()["starts_taken"] == 1

    def test_failed_call_fails_the_sensor(self, capfd: pytest.CaptureFixture[str]) -> None:
        run = scenarios.sensor_failed.test()
        assert states(run)["wait"] == "failed"
        assert_raised("".join(capfd.readouterr()), "BananaCallError", "failed: error: model crashed: oops")

    @pytest.mark.parametrize(
        "dag", [scenarios.sensor_soft_fail, scenarios.sensor_deferrable_failed], ids=["poke", "deferrable"]
    )
    def test_soft_fail_skips_on_a_failed_call(self, dag: Any, capfd: pytest.CaptureFixture[str]) -> None:
        run = dag.test()
        assert states(run)["wait"] == "skipped"
        logs = "".join(capfd.readouterr())
        # Skipped for soft_fail, on the model's error (the sensor's reason in poke mode, the
        # trigger's warning when deferred): an error event (transport trouble) would skip too.
        assert "Skipping due to soft_fail" in logs
        assert "error: model crashed: oops" in logs

    def test_sensor_timeout_while_deferred(self, capfd: pytest.CaptureFixture[str]) -> None:
        run = scenarios.sensor_timeout.test()
        assert states(run)["wait"] == "failed"
        # Airflow's sensor timeout, carrying the trigger's timeout for the call.
        assert_raised(
            "".join(capfd.readouterr()), "AirflowSensorTimeout", "Banana call call_", "did not finish within 1.5 s"
        )

    def test_sensor_timeout_with_soft_fail_skips(self, capfd: pytest.CaptureFixture[str]) -> None:
        run = scenarios.sensor_soft_timeout.test()
        assert states(run)["wait"] == "skipped"
        # Airflow's poke loop skipped it for its timeout=1, not for a failed call.
        assert "Sensor has timed out" in "".join(capfd.readouterr())


def example_bag() -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "example_dags"))


class TestExamples:
    def test_example_dags_import_without_network_or_connections(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_BANANA_DEFAULT")
        bag = example_bag()
        assert bag.import_errors == {}
        assert set(bag.dag_ids) == {
            "example_banana_batch",
            "example_banana_batch_files",
            "example_banana_batch_files_report",
            "example_banana_decorators",
            "example_banana_inference",
            "example_banana_mapped",
            "example_banana_sensor",
        }

    @pytest.mark.parametrize(
        ("dag_id", "task_id", "check"),
        [
            ("example_banana_inference", "summarize", lambda value: value["words"] == 9),
            ("example_banana_mapped", "total_words", lambda value: value == 5 + 4 + 5),
            ("example_banana_sensor", "report", lambda value: value == "ripe"),
            ("example_banana_batch", "store", lambda value: value == 40 * 5),
            ("example_banana_batch_files", "count_words", lambda value: value == 50 * 5),
            ("example_banana_decorators", "report", lambda value: value == 6 + 6 * 2 + 3 + 3 + 1),
        ],
    )
    def test_example_runs_end_to_end(
        self, dag_id: str, task_id: str, check: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BANANA_EXAMPLE_STORAGE", f"file://{tmp_path}")  # where the file example writes
        run = example_bag().dags[dag_id].test()
        assert str(run.state) == "success", states(run)
        assert check(xcom(run, task_id))

    def test_api_key_never_reaches_the_metadata_database(self, airflow_db: Path) -> None:
        scenarios.deferrable_success.test()
        for path in airflow_db.rglob("*"):
            if path.is_file():
                assert API_KEY.encode() not in path.read_bytes(), path
