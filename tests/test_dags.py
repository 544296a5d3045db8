"""End to end: DAGs run with ``dag.test()`` on SQLite against the local server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.models.dagrun import DagRun
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from sqlalchemy import select

from airflow_provider_banana.devserver.testing import DevServer
from tests.conftest import API_KEY, ROOT
from tests.dags import banana_test_dags as scenarios

pytestmark = pytest.mark.usefixtures("airflow_db", "banana_conn")


def states(run: DagRun) -> dict[str, str]:
    with create_session() as session:
        return {
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
            for ti in run.get_task_instances(session=session)
        }


def xcom(run: DagRun, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
                XComModel.map_index == map_index,
            )
        ).first()
        assert row is not None, f"no XCom {key!r} for {task_id}"
        return XComModel.deserialize_value(row)


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
    def test_failed_inference_fails_the_task(self, dag: Any, server: DevServer) -> None:
        run = dag.test()
        assert str(run.state) == "failed"
        assert states(run) == {"infer": "failed", "downstream": "upstream_failed"}
        assert server.stats()["starts_taken"] == 1

    @pytest.mark.parametrize(
        "dag", [scenarios.deferred_timeout, scenarios.blocking_timeout], ids=["deferred", "blocking"]
    )
    def test_operator_timeout(self, dag: Any, server: DevServer) -> None:
        run = dag.test()
        assert states(run)["infer"] == "failed"
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

    def test_failed_call_fails_the_sensor(self) -> None:
        run = scenarios.sensor_failed.test()
        assert states(run)["wait"] == "failed"

    @pytest.mark.parametrize(
        "dag", [scenarios.sensor_soft_fail, scenarios.sensor_deferrable_failed], ids=["poke", "deferrable"]
    )
    def test_soft_fail_skips_on_a_failed_call(self, dag: Any) -> None:
        run = dag.test()
        assert states(run)["wait"] == "skipped"

    def test_sensor_timeout_while_deferred(self) -> None:
        run = scenarios.sensor_timeout.test()
        assert states(run)["wait"] == "failed"

    def test_sensor_timeout_with_soft_fail_skips(self) -> None:
        run = scenarios.sensor_soft_timeout.test()
        assert states(run)["wait"] == "skipped"


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
        ],
    )
    def test_example_runs_end_to_end(self, dag_id: str, task_id: str, check: Any) -> None:
        run = example_bag().dags[dag_id].test()
        assert str(run.state) == "success", states(run)
        assert check(xcom(run, task_id))

    def test_api_key_never_reaches_the_metadata_database(self, airflow_db: Path) -> None:
        scenarios.deferrable_success.test()
        for path in airflow_db.rglob("*"):
            if path.is_file():
                assert API_KEY.encode() not in path.read_bytes(), path
