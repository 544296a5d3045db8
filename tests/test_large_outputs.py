"""
Large outputs: never in a trigger event past 64 KiB, fetched and verified by the worker, or written to ``output_path``.

The local server's ``bytes`` model returns a string of the size asked for (an image model's reply);
the scripted hostile server plays a server that forgot the call (its retention ended) or answers
the worker's Check with other outputs than the trigger's. The real-components case (a 20 MB output
through the triggerer, its log and ``next_kwargs`` measured) is at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_banana import contract
from airflow_provider_banana.batch.plan import Wave
from airflow_provider_banana.contract import (
    MAX_EVENT_OUTPUTS_BYTES,
    BananaFinished,
    BananaRunning,
    OutputsDigest,
    OutputsOnServer,
    OutputsWritten,
    canonical_outputs,
)
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import (
    BananaCallNotFoundError,
    BananaError,
    BananaOutputsExpiredError,
    BananaOutputsMismatchError,
)
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.triggers.banana import BananaBatchTrigger, BananaCallTrigger
from benchmarks.harness import free_port
from tests.components import AirflowComponents, airflow_env, started
from tests.dags import large_output_dags as scenarios
from tests.helpers import (
    FAST,
    assert_raised,
    collect,
    connection_json,
    private_database,
    states,
    try_numbers,
    xcom,
)
from tests.hostile import HostileServer, Request, json_reply
from tests.s3 import missing_packages, s3_server


def require_s3_packages() -> None:
    """Fail (not skip) if the dev extra's S3 packages are missing."""
    missing = missing_packages()
    if missing:
        pytest.fail("the S3 test needs " + ", ".join(missing) + " (the dev extra has them)", pytrace=False)


pytestmark = pytest.mark.timeout(300)

MB = 1024 * 1024


def expected(size: int, seed: str = "") -> list[Any]:
    """The ``modelOutputs`` the ``bytes`` model returns for ``size`` and ``seed``."""
    unit = hashlib.sha256(seed.encode()).hexdigest()
    return [{"data": (unit * (size // len(unit) + 1))[:size]}]


def event_size(payload: Any) -> int:
    """Bytes of an event payload as Airflow stores it (JSON)."""
    return len(json.dumps(payload).encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the contract, plain data


class TestEventContract:
    def test_small_outputs_stay_inline(self) -> None:
        outputs = [{"text": "é" * 100}]
        event = contract.success_event("call_1", outputs)
        assert event["model_outputs"] == outputs
        assert "outputs_sha256" not in event
        assert contract.outputs_from_event(event) == ("call_1", outputs)

    def test_outputs_at_the_limit_stay_inline_and_one_byte_more_does_not(self) -> None:
        overhead = len(canonical_outputs([""]))
        at_limit = ["x" * (MAX_EVENT_OUTPUTS_BYTES - overhead)]
        assert len(canonical_outputs(at_limit)) == MAX_EVENT_OUTPUTS_BYTES
        assert contract.success_event("call_1", at_limit)["model_outputs"] == at_limit
        over = ["x" * (MAX_EVENT_OUTPUTS_BYTES - overhead + 1)]
        event = contract.success_event("call_1", over)
        assert event["model_outputs"] is None
        assert event["outputs_bytes"] == MAX_EVENT_OUTPUTS_BYTES + 1
        assert event["outputs_sha256"] == sha256(canonical_outputs(over))
        assert event_size(event) < 1024

    def test_a_large_event_reads_back_as_outputs_left_on_the_server(self) -> None:
        outputs = [{"image": "ä" * MB, "n": [1.5, 2, None]}]
        event = contract.success_event("call_1", outputs, checks=2, elapsed=1.0)
        call_id, read = contract.outputs_from_event(json.loads(json.dumps(event)))
        assert call_id == "call_1"
        data = canonical_outputs(outputs)
        assert read == OutputsOnServer("call_1", OutputsDigest(len(data), sha256(data)))
        # "ä" is two bytes in UTF-8: the size counts bytes, not characters.
        assert read.digest.size > 2 * MB

    def test_the_canonical_bytes_are_compact_utf8_in_the_order_sent(self) -> None:
        assert canonical_outputs([{"b": 1, "a": "é"}, [1.0, float("nan")]]) == '[{"b":1,"a":"é"},[1.0,NaN]]'.encode()
        # A lone surrogate (a JSON "\ud800" escape) still has bytes.
        assert canonical_outputs(["\ud800"]) == b'["\xed\xa0\x80"]'

    @pytest.mark.parametrize(
        "outputs",
        [
            [{"data": 'a"\\\n\u00e9\ud800\U0001f34c' * 300_000, "n": [1.5, float("nan"), None, True, 10**30]}],
            [[{"x": "y" * 3_000_000}], {"1": 2, "a": "b" * 2_000_000}],
            [list(range(100)), "z" * 2_000_000],
            ["q" * (1 << 20), "r" * ((1 << 20) + 1)],
            [[[[[[[[[[["deep" * 600_000]]]]]]]]]]],
            [{1: "non-string key", "a": "x" * 2_000_000}],
        ],
        ids=["escapes", "nested", "long-list", "slice-edges", "deep", "int-key"],
    )
    def test_the_canonical_bytes_made_in_pieces_are_json_dumps_bytes(self, outputs: list[Any]) -> None:
        whole = json.dumps(outputs, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        assert canonical_outputs(outputs) == whole

    def test_a_written_event_names_the_file_and_what_it_holds(self) -> None:
        written = OutputsWritten("s3://conn@bucket/out.json", OutputsDigest(10, "a" * 64))
        event = contract.success_event("call_1", [{"big": "x"}], written=written)
        assert event["model_outputs"] is None
        assert contract.outputs_from_event(event) == ("call_1", written)
        assert written.task_result() == {"output_path": "s3://conn@bucket/out.json", "bytes": 10, "sha256": "a" * 64}

    @pytest.mark.parametrize(
        "fields",
        [{"outputs_bytes": -1, "outputs_sha256": "a" * 64}, {"outputs_bytes": 3, "outputs_sha256": "short"}],
    )
    def test_a_malformed_digest_is_an_error(self, fields: dict[str, Any]) -> None:
        event = {"status": "success", "call_id": "call_1", "model_outputs": None, "message": "", **fields}
        with pytest.raises(BananaError, match="call call_1: outputs_"):
            contract.outputs_from_event(event)

    def test_a_check_that_brings_the_same_outputs_returns_them(self) -> None:
        outputs = [{"data": "x" * 100_000}]
        left = OutputsOnServer("call_1", OutputsDigest.of(canonical_outputs(outputs)))
        fetched = BananaFinished(call_id="call_1", model_outputs=json.loads(json.dumps(outputs)), message="success")
        assert left.outputs_from_check(fetched) == outputs

    @pytest.mark.parametrize(
        ("outcome", "error", "text"),
        [
            (
                BananaCallNotFoundError("inference server error: taskID does not exist: task_1", call_id="call_1"),
                BananaOutputsExpiredError,
                "raise the server's result retention. No new call was started",
            ),
            (
                BananaFinished(call_id="call_1", model_outputs=[{"data": "y"}], message="success"),
                BananaOutputsMismatchError,
                "differ from those the trigger saw",
            ),
            (BananaRunning(call_id="call_1", message="running"), BananaOutputsMismatchError, "now reads 'running'"),
        ],
    )
    def test_a_check_that_cannot_bring_them_is_a_clear_error(self, outcome: Any, error: type, text: str) -> None:
        left = OutputsOnServer("call_1", OutputsDigest.of(canonical_outputs([{"data": "x"}])))
        with pytest.raises(error, match="Banana call call_1 finished with 14 bytes of outputs") as info:
            left.outputs_from_check(outcome)
        assert text in str(info.value)

    def test_a_wave_keeps_64_kib_inline_in_all_and_leaves_the_rest_on_the_server(self) -> None:
        small = {f"call_s{i}": [{"data": "s" * 20_000}] for i in range(5)}
        large = {"call_L": [{"data": "L" * 200_000}]}
        wave = Wave(finished={**small, **large}, failed={"call_f": "error: boom"})
        event = json.loads(json.dumps(wave.to_event()))
        assert event_size(event) < MAX_EVENT_OUTPUTS_BYTES + 1024
        read = Wave.from_event(event)
        # Three small ones fit in 64 KiB; the other two, and the large one, are fetched by the worker.
        assert sorted(read.finished) == ["call_s0", "call_s1", "call_s2"]
        assert sorted(read.on_server) == ["call_L", "call_s3", "call_s4"]
        assert read.on_server["call_L"].digest == OutputsDigest.of(canonical_outputs(large["call_L"]))
        assert read.failed == {"call_f": "error: boom"}
        assert not read.empty


# --------------------------------------------------------------------------- the triggers, on the local server


@pytest.mark.usefixtures("banana_conn")
class TestTriggerEvents:
    def test_a_1_mb_output_leaves_a_small_event_and_the_worker_gets_exactly_it(self, server: DevServer) -> None:
        hook = BananaHook(retry_policy=FAST)
        started = hook.start({"size": MB, "seed": "t"}, "bytes", start_only=True)
        assert isinstance(started, BananaRunning)
        trigger = BananaCallTrigger(started.call_id, deadline=time.time() + 60)
        events = asyncio.run(collect(trigger))
        assert len(events) == 1
        payload = events[0].payload
        assert event_size(payload) < MAX_EVENT_OUTPUTS_BYTES
        assert payload["status"] == "success"
        assert payload["model_outputs"] is None
        call_id, left = contract.outputs_from_event(payload)
        assert call_id == started.call_id
        assert isinstance(left, OutputsOnServer)
        assert left.digest.size == len(canonical_outputs(expected(MB, "t")))
        assert hook.fetch_outputs(left) == expected(MB, "t")
        assert server.stats()["starts_taken"] == 1

    def test_a_batch_wave_of_large_outputs_stays_small(self, server: DevServer) -> None:
        hook = BananaHook(retry_policy=FAST)
        call_ids = []
        for i in range(3):
            started = hook.start({"size": 300_000, "seed": str(i)}, "bytes", start_only=True)
            assert isinstance(started, BananaRunning)
            call_ids.append(started.call_id)
        left: dict[str, OutputsOnServer] = {}
        while len(left) < len(call_ids):  # a wave hands back once half the calls ended
            running = [call_id for call_id in call_ids if call_id not in left]
            events = asyncio.run(collect(BananaBatchTrigger(running, deadline=time.time() + 60)))
            assert len(events) == 1
            assert event_size(events[0].payload) < MAX_EVENT_OUTPUTS_BYTES
            wave = Wave.from_event(events[0].payload)
            assert wave.finished == {}
            assert wave.on_server
            left.update(wave.on_server)
        for i, call_id in enumerate(call_ids):
            assert hook.fetch_outputs(left[call_id]) == expected(300_000, str(i))


# --------------------------------------------------------------------------- DAGs, through dag.test()


def run(dag: Any, **conf: Any) -> Any:
    return dag.test(run_conf=conf)


@pytest.mark.usefixtures("airflow_db", "banana_conn")
class TestDags:
    def test_a_deferred_1_mb_output_is_returned_exactly(
        self, server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        result = run(scenarios.large_deferrable, inputs={"size": MB, "seed": "d", "seconds": 0.5})
        assert str(result.state) == "success", states(result)
        assert xcom(result, "infer") == expected(MB, "d")
        captured = capfd.readouterr()
        size = len(canonical_outputs(expected(MB, "d")))
        assert f"({size} bytes, too large for the trigger's event) with one Check" in captured.out + captured.err
        stats = server.stats()
        assert stats["starts_taken"] == 1

    def test_a_deferred_sensor_fetches_a_1_mb_output(self, server: DevServer) -> None:
        started = BananaHook(retry_policy=FAST).start({"size": MB, "seed": "n", "seconds": 1}, "bytes", start_only=True)
        assert isinstance(started, BananaRunning)
        result = run(scenarios.large_sensor, call_id=started.call_id)
        assert str(result.state) == "success", states(result)
        assert xcom(result, "infer") == expected(MB, "n")
        assert server.stats()["starts_taken"] == 1

    def test_output_path_to_a_local_file_from_the_triggerer(self, server: DevServer, tmp_path: Path) -> None:
        out = tmp_path / "results" / "one.json"
        result = run(
            scenarios.large_to_file_deferrable, inputs={"size": MB, "seed": "f", "seconds": 0.5}, output=f"file://{out}"
        )
        assert str(result.state) == "success", states(result)
        data = out.read_bytes()
        assert json.loads(data) == expected(MB, "f")
        assert xcom(result, "infer") == {"output_path": f"file://{out}", "bytes": len(data), "sha256": sha256(data)}

    def test_output_path_to_a_local_file_from_the_worker(self, server: DevServer, tmp_path: Path) -> None:
        out = tmp_path / "one.json"
        result = run(scenarios.large_to_file_blocking, inputs={"size": 100_000, "seed": "w"}, output=str(out))
        assert str(result.state) == "success", states(result)
        data = out.read_bytes()
        assert json.loads(data) == expected(100_000, "w")
        assert xcom(result, "infer") == {"output_path": str(out), "bytes": len(data), "sha256": sha256(data)}

    def test_output_path_to_s3(self, server: DevServer) -> None:
        require_s3_packages()
        with s3_server() as s3:
            uri = f"s3://{s3.conn_id}@{s3.bucket}/outputs/one.json"
            result = run(
                scenarios.large_to_file_deferrable, inputs={"size": MB, "seed": "s", "seconds": 0.5}, output=uri
            )
            assert str(result.state) == "success", states(result)
            from airflow.sdk import ObjectStoragePath

            data = ObjectStoragePath(uri).read_bytes()
        assert json.loads(data) == expected(MB, "s")
        assert xcom(result, "infer") == {"output_path": uri, "bytes": len(data), "sha256": sha256(data)}

    def test_a_batch_of_large_outputs_to_a_file(self, server: DevServer, tmp_path: Path) -> None:
        out = tmp_path / "batch.jsonl"
        inputs = [{"size": 200_000, "seed": str(i), "seconds": 0.2 * (i % 3)} for i in range(6)]
        result = run(scenarios.large_batch_to_file, inputs=inputs, output=f"file://{out}")
        assert str(result.state) == "success", states(result)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["index"] for line in lines] == list(range(6))
        assert [line["model_outputs"] for line in lines] == [expected(200_000, str(i)) for i in range(6)]
        assert server.stats()["starts_taken"] == 6

    def test_a_batch_of_large_outputs_to_xcom(self, server: DevServer) -> None:
        inputs = [{"size": 100_000, "seed": str(i), "seconds": 0.1 * (i % 2)} for i in range(4)]
        result = run(scenarios.large_batch_to_xcom, inputs=inputs)
        assert str(result.state) == "success", states(result)
        assert xcom(result, "infer") == [expected(100_000, str(i)) for i in range(4)]


@pytest.mark.usefixtures("airflow_db", "banana_conn")
def test_the_xcom_object_storage_backend_keeps_large_outputs_out_of_the_database(
    server: DevServer, tmp_path: Path
) -> None:
    # The other way to keep megabytes out of the metadata database: Airflow's common.io XCom
    # backend, configured for the whole deployment (here one `airflow dags test` process).
    storage = tmp_path / "xcom"
    conf = {"inputs": {"size": MB, "seed": "x", "seconds": 0.5}}
    env = {
        **os.environ,
        "AIRFLOW__CORE__XCOM_BACKEND": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{storage}",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": str(MAX_EVENT_OUTPUTS_BYTES),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": private_database(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "t_large_deferrable", "--conf", json.dumps(conf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "state=success" in output.split("DagRun Finished: dag_id=t_large_deferrable")[-1][:2000], output[-3000:]
    files = [path for path in storage.rglob("*") if path.is_file()]
    assert len(files) == 1, files
    assert json.loads(files[0].read_bytes()) == expected(MB, "x")
    # What the metadata database keeps is the file's path, not the megabyte.
    from airflow.models.xcom import XComModel
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with Session(engine) as session:
        row = session.scalars(
            select(XComModel)
            .where(XComModel.dag_id == "t_large_deferrable", XComModel.key == "return_value")
            .order_by(XComModel.timestamp.desc())
        ).first()
        assert row is not None
        stored = XComModel.deserialize_value(row)
    engine.dispose()
    assert isinstance(stored, str)
    assert stored.startswith(f"file://{storage}")


# --------------------------------------------------------------------------- a server that forgets, or changes its mind


LARGE = [{"data": "z" * 200_000}]


def scripted(second_check: dict[str, Any]) -> Callable[[Request], Any]:
    """A server whose Start runs, whose first Check finishes with LARGE, and whose next Checks say ``second_check``."""
    checks = 0

    def respond(request: Request) -> Any:
        nonlocal checks
        if request.path.startswith("/start"):
            return json_reply({"message": "", "callID": "call_A", "finished": False, "modelOutputs": None})
        checks += 1
        if checks == 1:
            return json_reply({"message": "success", "callID": "call_A", "finished": True, "modelOutputs": LARGE})
        return json_reply(second_check)

    return respond


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any]], HostileServer]]:
    """Start a scripted server (see :func:`scripted`) and point ``banana_default`` at it."""
    servers: list[HostileServer] = []

    def start(second_check: dict[str, Any]) -> HostileServer:
        server = HostileServer(scripted(second_check)).__enter__()
        servers.append(server)
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, model_key="m"))
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def starts(server: HostileServer) -> int:
    return sum(1 for request in server.requests if request.path.startswith("/start"))


@pytest.mark.usefixtures("airflow_db")
class TestFetchFailures:
    def test_an_expired_result_fails_clearly_with_one_start_and_no_retry(
        self, hostile: Callable[..., HostileServer], capfd: pytest.CaptureFixture[str]
    ) -> None:
        server = hostile(
            {"message": "inference server error: taskID does not exist: task_A", "callID": "", "modelOutputs": None}
        )
        result = run(scenarios.large_deferrable_retried, inputs={"size": 1})
        assert str(result.state) == "failed", states(result)
        captured = capfd.readouterr()
        assert_raised(
            captured.out + captured.err,
            "BananaOutputsExpiredError",
            "Banana call call_A finished with 200013 bytes of outputs",
            "raise the server's result retention",
        )
        assert starts(server) == 1  # the DAG allows a retry: an expired result is not one
        assert try_numbers(result)["infer"] == 1

    def test_outputs_that_differ_from_the_triggers_fail_clearly(
        self, hostile: Callable[..., HostileServer], capfd: pytest.CaptureFixture[str]
    ) -> None:
        other = [{"data": "y" * 200_000}]
        server = hostile({"message": "success", "callID": "call_A", "finished": True, "modelOutputs": other})
        result = run(scenarios.large_deferrable, inputs={"size": 1})
        assert str(result.state) == "failed", states(result)
        captured = capfd.readouterr()
        assert_raised(
            captured.out + captured.err,
            "BananaOutputsMismatchError",
            "call_A",
            "differ from those the trigger saw",
        )
        assert starts(server) == 1


# --------------------------------------------------------------------------- real components


REAL_DAG_ID = "banana_large_output"
#: An image-sized reply: the issue's 20 MB row.
REAL_SIZE = 20 * MB
REAL_SEED = "real"
#: The model runs this long, so that the trigger waits (and Airflow's resume race, see
#: tests/test_real_components.py's RESUME_RACE_DELAY, does not decide the test).
REAL_SECONDS = 5.0
REAL_DAGS = f"""
import hashlib
import json
from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator


@task
def digest(outputs):
    # The outputs' sha256, over the same bytes as the provider's canonical_outputs.
    data = json.dumps(outputs, ensure_ascii=False, separators=(",", ":")).encode()
    return {{"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}


with DAG(dag_id="{REAL_DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    infer = BananaInferenceOperator(
        task_id="infer",
        model_key="bytes",
        model_inputs={{"size": {REAL_SIZE}, "seed": "{REAL_SEED}", "seconds": {REAL_SECONDS}}},
        deferrable=True,
        defer_after=0,
    )
    digest(infer.output)
"""


@pytest.fixture(scope="module")
def components(tmp_path_factory: pytest.TempPathFactory, devserver: DevServer) -> Iterator[AirflowComponents]:
    """Start api-server, scheduler, dag-processor and triggerer on a fresh home holding :data:`REAL_DAGS`."""
    home = tmp_path_factory.mktemp("large-outputs") / "airflow-home"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "banana_large_output.py").write_text(REAL_DAGS)
    api_port = free_port()
    conn = connection_json(devserver.url, model_key="bytes", read_margin=10)
    with started(home, airflow_env(home, api_port, conn), f"http://127.0.0.1:{api_port}/", [REAL_DAG_ID]) as stack:
        yield stack


class NextKwargsWatch:
    """Poll the metadata database for the largest ``task_instance.next_kwargs`` holding an event.

    Airflow clears ``next_kwargs`` when the task ends, so it is read while the run goes on.

    :param database: the SQLite file.
    :param dag_id: the DAG whose task instances are watched.
    """

    def __init__(self, database: Path, dag_id: str) -> None:
        self.database = database
        self.dag_id = dag_id
        self.largest: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> NextKwargsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        query = (
            "SELECT length(CAST(next_kwargs AS BLOB)) FROM task_instance "
            "WHERE dag_id = ? AND next_kwargs IS NOT NULL AND CAST(next_kwargs AS TEXT) LIKE '%call_id%'"
        )
        while not self._stop.wait(0.05):
            try:
                with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=1)) as db:
                    for (size,) in db.execute(query, (self.dag_id,)):
                        self.largest = max(self.largest or 0, int(size))
            except sqlite3.Error:
                continue  # locked by a writer for a moment: the next poll reads it


def test_a_20_mb_output_through_the_triggerer_stays_out_of_the_event(
    components: AirflowComponents, server: DevServer
) -> None:
    stack = components
    triggerer_log = stack.log_path("triggerer")
    log_start = triggerer_log.stat().st_size
    with NextKwargsWatch(stack.home / "airflow.db", REAL_DAG_ID) as watch:
        run_id, run_path = stack.trigger(REAL_DAG_ID)
        state = stack.wait_for_run_end(run_path)
    assert state == "success", stack.logs_tail()
    want = canonical_outputs(expected(REAL_SIZE, REAL_SEED))
    entry = f"{run_path}/taskInstances/digest/xcomEntries/return_value?deserialize=true&stringify=false"
    seen = stack.api("GET", entry)["value"]
    seen = seen if isinstance(seen, dict) else json.loads(seen)
    assert seen == {"bytes": len(want), "sha256": sha256(want)}
    trigger_log = stack.trigger_log(REAL_DAG_ID, run_id, "infer")
    assert trigger_log.stat().st_size < MAX_EVENT_OUTPUTS_BYTES, trigger_log.read_text()[:2000]
    # Airflow's "Trigger fired event" line shows the event: the outputs' digest, not the outputs.
    assert sha256(want) in trigger_log.read_text()
    assert watch.largest is not None, "never saw the event in task_instance.next_kwargs"
    assert watch.largest < MAX_EVENT_OUTPUTS_BYTES
    triggerer_text = triggerer_log.read_bytes()[log_start:].decode(errors="replace")
    assert "appears deadlocked" not in triggerer_text
    assert server.stats()["starts_taken"] == 1
