"""Batch inference from a JSONL file to a JSONL file, through Airflow's object storage (``file://`` here)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_banana.batch.files import JsonlInputs, JsonlOutput, as_storage_path
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator
from tests.dags import batch_file_dags as scenarios
from tests.helpers import assert_raised, requires_task_state_store, states, try_numbers, xcom


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sleeps(n: int, seconds: float = 0.05) -> list[dict[str, Any]]:
    # Durations vary so that the calls end out of input order.
    return [{"seconds": seconds * ((n - i) % 4), "result": i} for i in range(n)]


class TestFilesWithPlainData:
    def test_every_line_is_checked_and_read_back_by_index(self, tmp_path: Path) -> None:
        path = tmp_path / "in.jsonl"
        path.write_text('{"a": 1}\n{"b": "two"}\n\n\n')  # empty lines at the end are not inputs
        inputs = JsonlInputs(as_storage_path(f"file://{path}", "input_path")).scan()
        assert inputs.size == 2
        assert inputs.get(1) == {"b": "two"}
        assert inputs.get(0) == {"a": 1}
        inputs.close()
        other = tmp_path / "other.jsonl"
        other.write_text('{"a": 1}\n{"b": "three"}\n')
        assert JsonlInputs(as_storage_path(str(other), "input_path")).scan().digest != inputs.digest

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('{"a": 1}\n{"a": 2\n', "line 2: not valid JSON"),
            ('{"a": 1}\n[1, 2]\n', "line 2: a JSON list, not an object"),
            ('{"a": 1}\n\n{"a": 3}\n', "line 2: an empty line"),
            ('"text"\n', "line 1: a JSON str, not an object"),
            (b'{"a": "\xff"}\n', "line 1: not valid JSON"),
        ],
    )
    def test_a_bad_line_is_named_with_its_file_and_number(
        self, tmp_path: Path, text: str | bytes, message: str
    ) -> None:
        path = tmp_path / "bad.jsonl"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(BananaConfigError, match=f"input_path .*bad.jsonl, {message}") as info:
            JsonlInputs(as_storage_path(str(path), "input_path")).scan()
        assert "no call was started" in str(info.value)

    def test_a_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(BananaConfigError, match=r"input_path .*missing.jsonl: cannot be read"):
            JsonlInputs(as_storage_path(str(tmp_path / "missing.jsonl"), "input_path")).scan()

    def test_parts_are_put_together_in_order_and_a_rewritten_part_replaces_the_old(self, tmp_path: Path) -> None:
        output = JsonlOutput(ObjectStoragePath(f"file://{tmp_path}/out/results.jsonl"))
        output.write_part(0, [{"index": 0}, {"index": 1}])
        output.write_part(1, [{"index": 2, "stale": True}])
        output.write_part(1, [{"index": 2}, {"index": 3, "text": "é"}])  # a retry writes part 1 again
        output.assemble(2)
        assert read_jsonl(tmp_path / "out" / "results.jsonl") == [
            {"index": 0},
            {"index": 1},
            {"index": 2},
            {"index": 3, "text": "é"},
        ]
        output.remove_parts()
        assert not (tmp_path / "out" / "results.jsonl.parts").exists()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({}, "exactly one of model_inputs .* and input_path"),
            ({"model_inputs": [], "input_path": "file:///x.jsonl"}, "exactly one of model_inputs"),
            ({"input_path": 42}, "input_path must be a URI string or an ObjectStoragePath, got 42"),
            (
                {"model_inputs": [], "output_path": Path("/x")},
                "output_path must be a URI string or an ObjectStoragePath",
            ),
            ({"model_inputs": [], "max_starting": 0}, "max_starting must be an integer >= 1, got 0"),
        ],
    )
    def test_bad_arguments_fail_when_the_dag_is_parsed(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(BananaConfigError, match=message):
            BananaBatchInferenceOperator(task_id="batch", **kwargs)


pytestmark_dags = pytest.mark.usefixtures("airflow_db", "banana_conn")


def run_files(dag: Any, tmp_path: Path, rows: list[Any] | None = None) -> tuple[Any, Path]:
    conf = {"output": f"file://{tmp_path}/results/out.jsonl"}
    if rows is not None:
        conf["input"] = f"file://{write_jsonl(tmp_path / 'in.jsonl', rows)}"
    return dag.test(run_conf=conf), tmp_path / "results" / "out.jsonl"


@pytestmark_dags
class TestFileDags:
    @pytest.mark.parametrize(
        "dag", [scenarios.file_blocking, scenarios.file_deferrable], ids=["blocking", "deferrable"]
    )
    def test_one_line_per_input_in_input_order(self, dag: Any, server: DevServer, tmp_path: Path) -> None:
        run, out = run_files(dag, tmp_path, sleeps(40))
        assert str(run.state) == "success", states(run)
        lines = read_jsonl(out)
        assert [line["index"] for line in lines] == list(range(40))
        assert {line["status"] for line in lines} == {"success"}
        assert [line["model_outputs"][0]["result"] for line in lines] == list(range(40))
        assert all(line["call_id"].startswith("call_") for line in lines)
        assert len({line["call_id"] for line in lines}) == 40
        assert xcom(run, "summary") == {"output_path": f"file://{out}", "succeeded": 40, "failed": 0}
        assert not out.with_name("out.jsonl.parts").exists()
        assert server.stats()["starts_taken"] == 40

    def test_inputs_from_a_file_outputs_to_xcom(self, server: DevServer, tmp_path: Path) -> None:
        run, _ = run_files(scenarios.file_to_xcom, tmp_path, sleeps(20))
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "summary")] == list(range(20))

    def test_inputs_from_a_list_outputs_to_a_file(self, server: DevServer, tmp_path: Path) -> None:
        run, out = run_files(scenarios.list_to_file, tmp_path)
        assert str(run.state) == "success", states(run)
        assert [line["model_outputs"][0]["result"] for line in read_jsonl(out)] == list(range(12))

    def test_failed_inputs_are_lines_too_under_skip(self, server: DevServer, tmp_path: Path) -> None:
        rows = [{"key": f"{tmp_path.name}-{i}", "fail_times": 9 if i in (2, 5) else 0} for i in range(8)]
        run, out = run_files(scenarios.file_skip, tmp_path, rows)
        assert str(run.state) == "success", states(run)
        lines = read_jsonl(out)
        assert [line["index"] for line in lines] == list(range(8))
        failed = [line for line in lines if line["status"] == "failed"]
        assert [line["index"] for line in failed] == [2, 5]
        assert all(line["model_outputs"] is None for line in failed)
        assert all("error: model crashed: flaky failure 2 of 9" in line["message"] for line in failed)
        assert all(line["call_id"].startswith("call_") for line in failed)
        assert xcom(run, "summary")["failed"] == 2
        assert server.stats()["starts_taken"] == 8 + 2  # each failed input: its Start and one retry

    def test_a_failure_under_fail_writes_no_file(
        self, server: DevServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
    ) -> None:
        rows = [{"key": f"{tmp_path.name}-{i}", "fail_times": 9 if i == 1 else 0} for i in range(4)]
        run, out = run_files(scenarios.file_fail, tmp_path, rows)
        assert states(run)["batch"] == "failed"
        assert_raised("".join(capfd.readouterr()), "BananaBatchError", "1 of 4 Banana batch items failed", "item 1:")
        assert not out.exists()

    def test_a_bad_line_fails_the_task_before_any_start(
        self, server: DevServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "in.jsonl"
        path.write_text('{"seconds": 0}\n{"seconds": 0}\n{"seconds": 0,}\n')
        run = scenarios.file_blocking.test(run_conf={"input": f"file://{path}", "output": f"file://{tmp_path}/o.jsonl"})
        assert states(run)["batch"] == "failed"
        assert_raised("".join(capfd.readouterr()), "BananaConfigError", "in.jsonl, line 3: not valid JSON")
        stats = server.stats()
        assert (stats["start_requests"], stats["check_requests"]) == (0, 0)

    @pytest.mark.parametrize(
        "dag", [scenarios.file_retry, scenarios.file_retry_deferrable], ids=["blocking", "deferrable"]
    )
    @requires_task_state_store
    def test_a_retried_task_writes_each_line_once_and_starts_nothing_twice(
        self, dag: Any, server: DevServer, tmp_path: Path
    ) -> None:
        server.faults(fail_next={"count": 1, "status": 503, "endpoints": ["check"]})
        run, out = run_files(dag, tmp_path, sleeps(30, seconds=0.2))
        assert str(run.state) == "success", states(run)
        assert try_numbers(run)["batch"] == 2
        lines = read_jsonl(out)
        assert [line["index"] for line in lines] == list(range(30))
        assert [line["model_outputs"][0]["result"] for line in lines] == list(range(30))
        assert server.stats()["starts_taken"] == 30

    @pytest.mark.timeout(900)
    def test_10000_lines(self, server: DevServer, tmp_path: Path) -> None:
        began = time.monotonic()
        run, out = run_files(scenarios.file_big, tmp_path, [{"seconds": 0, "result": i} for i in range(10_000)])
        assert str(run.state) == "success", states(run)
        with out.open() as file:
            for number, line in enumerate(file):
                row = json.loads(line)
                assert (row["index"], row["status"], row["model_outputs"][0]["result"]) == (number, "success", number)
        assert number == 9_999
        stats = server.stats()
        assert stats["starts_taken"] == 10_000
        assert stats["per_model"]["sleep"]["running_max"] <= 64
        print(f"10,000 lines in {time.monotonic() - began:.0f} s, {stats['check_requests']} Checks")


@pytestmark_dags
@requires_task_state_store
def test_server_killed_mid_burst_loses_no_input(
    server: DevServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The first burst's ten Starts are held by the server; it is killed while they wait, so none
    # gets an answer. Each is then an input whose Start may have been taken: the first try fails
    # naming them, and the retry (on a restarted server, which forgot every call) starts them again.
    server.faults(delay_next={"count": 10, "endpoints": ["start"], "seconds": 5})

    def kill_mid_burst() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if server.stats()["start_requests"] >= 10:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        server.stop(timeout=0)  # SIGKILL: no graceful shutdown that would still answer the held Starts
        server.start()

    killer = threading.Thread(target=kill_mid_burst, daemon=True)
    killer.start()
    run, out = run_files(scenarios.server_dies, tmp_path, sleeps(30))
    killer.join(timeout=60)
    assert str(run.state) == "success", states(run)
    assert try_numbers(run)["batch"] == 2
    logs = "".join(capfd.readouterr())
    # The first try reports each of the ten as possibly billed; the next try names them again.
    assert logs.count("its Start may have been taken (and billed) but no answer was recorded") >= 10
    lines = read_jsonl(out)
    assert [line["index"] for line in lines] == list(range(30))
    assert {line["status"] for line in lines} == {"success"}
    assert server.stats()["starts_taken"] == 30  # on the restarted server: the retry started all 30


@pytestmark_dags
def test_from_s3_to_s3_on_a_real_s3_compatible_server(server: DevServer, tmp_path: Path) -> None:
    from tests.s3 import s3_server
    from tests.test_s3_storage import require_packages

    require_packages()
    with s3_server() as s3:
        # The connection rides in the URI (scheme://conn_id@bucket/key), as Airflow's object storage reads it.
        base = f"s3://{s3.conn_id}@{s3.bucket}"
        rows = sleeps(25)
        ObjectStoragePath(f"{base}/in/inputs.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
        run = scenarios.file_deferrable.test(
            run_conf={"input": f"{base}/in/inputs.jsonl", "output": f"{base}/out/results.jsonl"}
        )
        assert str(run.state) == "success", states(run)
        out = ObjectStoragePath(f"{base}/out/results.jsonl")
        lines = [json.loads(line) for line in out.read_bytes().splitlines()]
        assert [line["model_outputs"][0]["result"] for line in lines] == list(range(25))
        assert xcom(run, "summary")["succeeded"] == 25
        # Only the output is left: its parts are gone.
        assert [path.name for path in ObjectStoragePath(f"{base}/out/").iterdir()] == ["results.jsonl"]
        assert server.stats()["starts_taken"] == 25
