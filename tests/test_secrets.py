"""The API key never leaves the connection: not in logs, XCom, trigger rows, events, errors or the server's log."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from tests.dags import banana_test_dags as scenarios
from tests.helpers import API_KEY, assert_raised, states

pytestmark = pytest.mark.usefixtures("airflow_db", "banana_conn")


def test_random_key_appears_nowhere(server: DevServer, airflow_db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    runs = [
        scenarios.deferrable_success.test(),
        scenarios.blocking_success.test(),
        scenarios.deferrable_failed.test(),
        scenarios.deferred_timeout.test(),
        scenarios.sensor_deferrable.test(),
    ]
    assert [str(run.state) for run in runs] == ["success", "success", "failed", "failed", "success"]
    out, err = capfd.readouterr()
    logs = out + err
    # The two failures are the model's error and the timeout, with their texts in the logs scanned.
    assert_raised(logs, "BananaCallError", "failed: error: model crashed: bad weights")
    assert_raised(logs, "BananaTimeoutError", "did not finish within 2 s")
    assert "Banana call" in logs  # the task logs were captured, so the scan below means something
    assert API_KEY not in logs
    scanned = 0
    for path in airflow_db.rglob("*"):  # the metadata database (XCom, trigger kwargs, events) and logs
        if path.is_file():
            scanned += 1
            assert API_KEY.encode() not in path.read_bytes(), path
    assert scanned >= 1
    assert API_KEY not in server.log_text()


def test_hooks_register_the_key_with_the_secret_masker(banana_conn: str) -> None:
    # Task and triggerer logs pass through this masker in a deployment; dag.test() logs in-process
    # through airflow-core's, which is why the scan above cannot show the masking itself.
    from airflow.sdk.log import mask_logs

    assert BananaHook().settings.api_key == API_KEY
    assert mask_logs(None, "info", {"event": f"key {API_KEY} here"})["event"] == "key *** here"

    async def enter() -> str:
        async with BananaAsyncHook() as hook:
            return hook.settings.api_key

    assert asyncio.run(enter()) == API_KEY
    assert API_KEY not in str(mask_logs(None, "info", {"event": "x", "detail": {"k": API_KEY}}))


def test_execution_timeout_holds_while_deferred(server: DevServer, capfd: pytest.CaptureFixture[str]) -> None:
    run = scenarios.execution_timeout_deferred.test()
    assert states(run)["infer"] == "failed"
    logs = "".join(capfd.readouterr())
    message = assert_raised(logs, "BananaTimeoutError", "did not finish within")
    # It names the call, and the limit that held is execution_timeout (3 s), not timeout=600.
    found = re.search(r"Banana call (call_\S+) did not finish within ([\d.]+) s", message)
    assert found, message
    assert found[1] in logs.replace(message, ""), "the error names a call the task did not log"
    assert float(found[2]) <= 3
