"""Test the local server's cap on the bytes it holds (``--max-held-bytes``), over real HTTP."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_banana.devserver.cli import parse_size_arg
from airflow_provider_banana.devserver.config import DEFAULT_MAX_HELD_BYTES, DevServerConfig
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaCallError
from airflow_provider_banana.hooks.banana import BananaHook

pytestmark = pytest.mark.timeout(90)

#: The cap of the server under test: room for two results of :data:`OUTPUT` bytes, not three.
CAP = 100_000
OUTPUT = 40_000
MISSING = "taskID does not exist"


@pytest.fixture
def srv() -> Iterator[DevServer]:
    with DevServer(start_hold=10, check_hold=2, result_ttl=600, extra_args=["--max-held-bytes", str(CAP)]) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        yield s


def _post(session: requests.Session, srv: DevServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = session.post(srv.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def start(session: requests.Session, srv: DevServer, model: str, inputs: Any, *, start_only: bool = False) -> Any:
    body = {
        "id": str(uuid.uuid4()),
        "created": int(time.time()),
        "apiKey": "any",
        "modelKey": model,
        "startOnly": start_only,
        "modelInputs": inputs,
    }
    return _post(session, srv, "start/v4/", body)


def check(session: requests.Session, srv: DevServer, call_id: str) -> Any:
    body = {"id": str(uuid.uuid4()), "created": int(time.time()), "apiKey": "any", "longPoll": False, "callID": call_id}
    return _post(session, srv, "check/v4/", body)


def image(session: requests.Session, srv: DevServer, seed: str) -> dict[str, Any]:
    reply: dict[str, Any] = start(session, srv, "bytes", {"size": OUTPUT, "seed": seed})
    assert reply["finished"] is True, reply
    assert len(reply["modelOutputs"][0]["data"]) == OUTPUT
    return reply


def test_the_oldest_results_are_dropped_early_and_the_log_says_so(srv: DevServer, session: requests.Session) -> None:
    first = image(session, srv, "a")
    second = image(session, srv, "b")
    assert check(session, srv, first["callID"])["modelOutputs"] == first["modelOutputs"]
    third = image(session, srv, "c")  # three results would pass the cap: the oldest goes, long before its TTL

    gone = check(session, srv, first["callID"])
    assert MISSING in gone["message"]
    assert gone["modelOutputs"] is None
    assert check(session, srv, second["callID"])["modelOutputs"] == second["modelOutputs"]
    assert check(session, srv, third["callID"])["modelOutputs"] == third["modelOutputs"]
    log = srv.log_text()
    assert f"Dropped the result of call {first['callID']}" in log
    assert "--max-held-bytes (100000)" in log
    assert second["callID"] not in log.split("Dropped the result of call", 1)[1]


def test_a_start_is_refused_with_a_v4_error_while_running_inputs_fill_the_cap(
    srv: DevServer, session: requests.Session
) -> None:
    padding = "x" * 60_000
    running = start(session, srv, "sleep", {"seconds": 3, "result": padding}, start_only=True)
    assert running["callID"]
    assert running["finished"] is False

    # Large inputs, small outputs: the sleep model echoes only its "result".
    refused = start(session, srv, "sleep", {"seconds": 0, "padding": padding})
    # The v4 form of a failed Start: HTTP 200, "error" in message, no call.
    assert "error" in refused["message"]
    assert "--max-held-bytes" in refused["message"]
    assert refused["callID"] == ""
    assert refused["finished"] is False
    assert refused["modelOutputs"] is None
    assert srv.stats()["starts_taken"] == 1
    assert "Refused a Start of" in srv.log_text()

    # Once the running call is done its inputs are no longer held: the same Start is taken, and
    # the finished result (60 KB) is dropped to make room, being the oldest.
    deadline = time.monotonic() + 20
    while check(session, srv, running["callID"])["message"] != "success":
        assert time.monotonic() < deadline, "the sleeping call never finished"
        time.sleep(0.2)
    taken = start(session, srv, "sleep", {"seconds": 0, "padding": padding})
    assert taken["finished"] is True
    assert taken["modelOutputs"] == [{"slept": 0, "result": None}]
    assert MISSING in check(session, srv, running["callID"])["message"]
    assert srv.stats()["starts_taken"] == 2


def test_outputs_larger_than_the_cap_fail_their_call(srv: DevServer, session: requests.Session) -> None:
    reply = start(session, srv, "bytes", {"size": CAP + 1})

    assert reply["finished"] is False
    assert reply["modelOutputs"] is None
    assert "error" in reply["message"]
    assert "--max-held-bytes (100000)" in reply["message"]
    assert MISSING not in check(session, srv, reply["callID"])["message"]  # failed, and kept as failed


def test_the_provider_reports_a_refused_start_as_a_failed_call(
    srv: DevServer, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_CAP", f'{{"conn_type": "banana", "host": "{srv.url}", "password": "k"}}')
    start(session, srv, "sleep", {"seconds": 3, "result": "x" * 60_000}, start_only=True)

    with pytest.raises(BananaCallError, match="max-held-bytes"):
        BananaHook("banana_cap").start({"padding": "y" * 60_000}, model_key="sleep")
    assert srv.stats()["starts_taken"] == 1


def test_no_cap_keeps_every_result() -> None:
    with (
        DevServer(start_hold=10, result_ttl=600, extra_args=["--max-held-bytes", "0"]) as server,
        requests.Session() as session,
    ):
        session.trust_env = False
        replies = [image(session, server, seed) for seed in "abcd"]
        for reply in replies:
            assert check(session, server, reply["callID"])["modelOutputs"] == reply["modelOutputs"]
        assert "Dropped the result" not in server.log_text()


def test_help_names_the_cap_and_the_retention() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "airflow_provider_banana.devserver", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    flat = " ".join(shown.split())
    assert "--max-held-bytes BYTES" in flat
    assert f"default: {DEFAULT_MAX_HELD_BYTES}, 256 MiB" in flat
    assert "--result-ttl SECONDS" in flat
    assert "when --max-held-bytes needs the room" in flat


@pytest.mark.parametrize(
    ("text", "size"),
    [("268435456", 268435456), ("256MiB", 256 * 1024**2), ("64 KiB", 65536), ("1GB", 10**9), ("0", 0)],
)
def test_sizes_are_read_with_their_units(text: str, size: int) -> None:
    assert parse_size_arg(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5MiB", "12XB", "MiB", "1e6"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="number of bytes"):
        parse_size_arg(text)


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_held_bytes"):
        DevServerConfig(max_held_bytes=-1)
