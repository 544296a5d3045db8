"""Test the local Banana-compatible server over real HTTP against a subprocess."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from starlette.testclient import TestClient

from airflow_provider_banana.devserver import cli
from airflow_provider_banana.devserver.app import create_app
from airflow_provider_banana.devserver.config import ADMIN_TOKEN_ENV_VAR, DevServerConfig, admin_mode
from airflow_provider_banana.devserver.service import BananaService
from airflow_provider_banana.devserver.testing import DevServer, DevServerError
from benchmarks.harness import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)

API_KEY = "devserver-test-key-" + uuid.uuid4().hex
REPLY_KEYS = {"id", "message", "created", "apiVersion", "callID", "finished", "modelOutputs"}
CHECK_KEYS = {"id", "message", "created", "apiVersion", "modelOutputs"}
MISSING = "inference server error: taskID does not exist: task_"
ADMIN_TOKEN = "devserver-admin-token-" + uuid.uuid4().hex
ADMIN_PATHS = [
    ("GET", "stats"),
    ("POST", "reset"),
    ("POST", "forget"),
    ("GET", "faults"),
    ("POST", "faults"),
    ("GET", "settings"),
    ("POST", "settings"),
]


# --------------------------------------------------------------------------- model server

# An HTML error page, as a sanic or Flask debug page sends it: tags, a script, an entity.
CRASH_PAGE = """<!doctype html><html><head><title>500 Internal Server Error</title>
<style>body { color: red }</style><script>var frames = ["<b>not this</b>"];</script></head>
<body><h1>Internal Server Error</h1><pre>Traceback (most recent call last):
  File "app.py", line 9, in handler</pre><p><code>KeyError</code>: &#39;weights&#39;</p></body></html>
"""


class ModelServer(ThreadingHTTPServer):
    """A stand-in for a user's model container on 127.0.0.1, its behaviour chosen by the inputs' ``mode``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ModelServerHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.received: list[tuple[str, Any]] = []
        self.busy_counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def requests_for(self, key: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(path, body) for path, body in self.received if body.get("key") == key]


class ModelServerHandler(BaseHTTPRequestHandler):
    """Answer ``POST /`` like Potassium: 200 JSON, 423 while busy, 500 on a crash, 400 on bad input."""

    def do_POST(self) -> None:
        state = cast("ModelServer", self.server)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body.get("mode")
        with state.lock:
            state.received.append((self.path, body))
            if mode == "busy":
                seen = state.busy_counts.get(body["key"], 0)
                state.busy_counts[body["key"]] = seen + 1
                if seen < body["busy_times"]:
                    self._answer(423, b'{"message": "busy"}')
                    return
        if mode == "crash":
            frames = b'  File "app.py", line 9, in handler\n    load()\n' * 100
            self._answer(
                500, b"Traceback (most recent call last):\n" + frames + b"ValueError: bad weights\n", "text/plain"
            )
        elif mode == "crash_html":
            self._answer(500, CRASH_PAGE.encode(), "text/html; charset=utf-8")
        elif mode == "slow":
            began = time.time()
            time.sleep(body["seconds"])
            self._answer(200, json.dumps({"began": began, "ended": time.time()}).encode())
        elif mode == "html":
            self._answer(200, b"<html>not json</html>", "text/html")
        elif mode == "bad_request":
            self._answer(400, b"bad json")
        else:
            self._answer(200, json.dumps({"received": body}).encode())

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def main_server(model_server: ModelServer) -> Iterator[DevServer]:
    # Nothing listens on the "down" port: the model server is unreachable.
    models = {
        "ext": model_server.url,
        # The URL is used as given: its path, and a trailing slash, reach the model server as they are.
        "ext-path": model_server.url + "/v1/run",
        "ext-slash": model_server.url + "/",
        "ext-path-slash": model_server.url + "/v1/run/",
        "down": f"http://127.0.0.1:{free_port()}",
    }
    with DevServer(start_hold=2, check_hold=2, replicas=32, models=models, log_level="debug") as srv:
        yield srv


@pytest.fixture
def srv(main_server: DevServer) -> DevServer:
    if not main_server.running:  # a failed restart test must not take the others down
        main_server.start()
    main_server.reset(forget_calls=True)
    return main_server


@pytest.fixture(scope="module")
def serial_server() -> Iterator[DevServer]:
    with DevServer(start_hold=2, check_hold=2, replicas=1) as srv:
        yield srv


@pytest.fixture
def serial(serial_server: DevServer) -> DevServer:
    serial_server.reset(forget_calls=True)
    return serial_server


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[DevServer]:
    with DevServer(api_key=API_KEY, quirk_empty_message=True, log_level="debug") as srv:
        yield srv


# --------------------------------------------------------------------------- helpers


def post(session: requests.Session, srv: DevServer, path: str, body: Any, timeout: float = 10) -> Any:
    response = session.post(srv.url + path, json=body, timeout=timeout, allow_redirects=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def start(
    session: requests.Session,
    srv: DevServer,
    model: str,
    inputs: Any,
    start_only: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "id": str(uuid.uuid4()),
        "created": int(time.time()),
        "apiKey": "any",
        "modelKey": model,
        "startOnly": start_only,
        "modelInputs": inputs,
        **extra,
    }
    reply: dict[str, Any] = post(session, srv, "start/v4/", body)
    assert reply["id"] == body["id"]
    return reply


def check(
    session: requests.Session, srv: DevServer, call_id: str, long_poll: bool = False, **extra: Any
) -> dict[str, Any]:
    body = {
        "id": str(uuid.uuid4()),
        "created": int(time.time()),
        "apiKey": "any",
        "longPoll": long_poll,
        "callID": call_id,
        **extra,
    }
    reply: dict[str, Any] = post(session, srv, "check/v4/", body, timeout=30)
    assert reply["id"] == body["id"]
    assert set(reply) >= CHECK_KEYS
    return reply


def wait_result(session: requests.Session, srv: DevServer, call_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        reply = check(session, srv, call_id, long_poll=True)
        if reply["message"] not in ("queued", "running"):
            return reply
    raise AssertionError(f"call {call_id} never finished")


def assert_error_reply(reply: dict[str, Any]) -> None:
    assert set(reply) == REPLY_KEYS
    assert "error" in reply["message"]
    assert reply["finished"] is False
    assert reply["callID"] == ""
    assert reply["modelOutputs"] is None


# --------------------------------------------------------------------------- endpoints and reply shapes


def test_healthcheck(session: requests.Session, srv: DevServer) -> None:
    response = session.get(srv.url + "healthcheck", timeout=5)
    assert response.status_code == 200


@pytest.mark.parametrize("slash", ["/", ""])
def test_both_paths_answer_with_and_without_trailing_slash(
    session: requests.Session, srv: DevServer, slash: str
) -> None:
    started = post(
        session, srv, f"start/v4{slash}", {"id": "a", "modelKey": "wordcount", "modelInputs": {"prompt": "x"}}
    )
    assert started["message"] == "success"
    checked = post(session, srv, f"check/v4{slash}", {"id": "b", "callID": started["callID"]})
    assert checked["message"] == "success"
    assert checked["modelOutputs"] == started["modelOutputs"]


def test_start_finished_within_hold(session: requests.Session, srv: DevServer) -> None:
    before = int(time.time())
    reply = start(session, srv, "wordcount", {"prompt": "some text"})
    assert set(reply) == REPLY_KEYS
    assert reply["message"] == "success"
    assert reply["finished"] is True
    assert reply["callID"].startswith("call_")
    uuid.UUID(reply["callID"].removeprefix("call_"))
    assert reply["modelOutputs"] == [{"words": 2, "characters": 9, "upper": "SOME TEXT", "reversed": "txet emos"}]
    assert isinstance(reply["created"], int)
    assert before <= reply["created"] <= int(time.time())
    assert isinstance(reply["apiVersion"], str)
    assert reply["apiVersion"]


def test_start_only_answers_at_once(session: requests.Session, srv: DevServer) -> None:
    began = time.monotonic()
    reply = start(session, srv, "sleep", {"seconds": 1, "result": {"n": 1}}, start_only=True)
    assert time.monotonic() - began < 0.5
    assert reply["message"] == ""
    assert reply["finished"] is False
    assert reply["modelOutputs"] is None
    assert reply["callID"].startswith("call_")
    assert wait_result(session, srv, reply["callID"])["modelOutputs"] == [{"slept": 1.0, "result": {"n": 1}}]


def test_start_hold_runs_out(session: requests.Session, srv: DevServer) -> None:
    srv.settings(start_hold=0.3)
    began = time.monotonic()
    reply = start(session, srv, "sleep", {"seconds": 1})
    assert 0.25 < time.monotonic() - began < 0.9
    assert reply["finished"] is False
    assert reply["message"] == ""
    assert reply["callID"].startswith("call_")
    assert srv.stats()["start_holds_open_max"] == 1


def test_start_failed_within_hold(session: requests.Session, srv: DevServer) -> None:
    reply = start(session, srv, "fail", {"reason": "boom"})
    assert reply["message"] == "error: model crashed: boom"
    assert reply["finished"] is False
    assert reply["callID"].startswith("call_")
    assert reply["modelOutputs"] is None
    assert check(session, srv, reply["callID"])["message"] == "error: model crashed: boom"


def test_quirk_switched_on_at_run_time(session: requests.Session, srv: DevServer) -> None:
    srv.faults(quirk_empty_message=True)
    reply = start(session, srv, "wordcount", {"prompt": "a b"})
    assert reply["message"] == ""
    assert reply["callID"] == ""
    assert reply["finished"] is True
    assert reply["modelOutputs"][0]["words"] == 2
    # startOnly replies need the callID whatever the quirk says
    assert start(session, srv, "wordcount", {"prompt": "a"}, start_only=True)["callID"].startswith("call_")
    srv.reset()
    assert start(session, srv, "wordcount", {"prompt": "a"})["message"] == "success"


# --------------------------------------------------------------------------- Check and long polls


def test_long_poll_wakes_when_the_call_finishes(session: requests.Session, srv: DevServer) -> None:
    srv.settings(check_hold=10)
    finish_at = time.time() + 1.0
    reply = start(session, srv, "sleep", {"until": finish_at, "result": "done"}, start_only=True)
    answer = check(session, srv, reply["callID"], long_poll=True)
    delay = time.time() - finish_at
    assert answer["message"] == "success"
    assert answer["modelOutputs"][0]["result"] == "done"
    assert -0.05 < delay < 0.5, f"answered {delay:.3f}s after the call finished"
    assert srv.stats()["long_polls_open_max"] == 1


def test_long_poll_that_times_out_answers_running(session: requests.Session, srv: DevServer) -> None:
    srv.settings(check_hold=0.5)
    reply = start(session, srv, "sleep", {"seconds": 3}, start_only=True)
    began = time.monotonic()
    answer = check(session, srv, reply["callID"], long_poll=True)
    assert 0.45 < time.monotonic() - began < 1.5
    assert answer["message"] == "running"
    assert answer["modelOutputs"] is None
    stats = srv.stats()
    assert stats["long_polls_open"] == 0
    assert stats["long_polls_open_max"] == 1


def test_check_without_long_poll_answers_at_once(session: requests.Session, srv: DevServer) -> None:
    reply = start(session, srv, "sleep", {"seconds": 3}, start_only=True)
    began = time.monotonic()
    assert check(session, srv, reply["callID"])["message"] == "running"
    assert time.monotonic() - began < 0.5


def test_queued_call_answers_queued(session: requests.Session, serial: DevServer) -> None:
    first = start(session, serial, "sleep", {"seconds": 1.5}, start_only=True)
    second = start(session, serial, "sleep", {"seconds": 0.1}, start_only=True)
    serial.wait_until(lambda s: s["running"] == 1)
    assert check(session, serial, first["callID"])["message"] == "running"
    assert check(session, serial, second["callID"])["message"] == "queued"
    assert serial.stats()["queued"] == 1


def test_calls_of_one_model_run_in_start_order(session: requests.Session, serial: DevServer) -> None:
    key = uuid.uuid4().hex
    began = time.monotonic()
    call_ids = [
        start(session, serial, "flaky", {"key": key, "fail_times": 0, "seconds": 0.1}, start_only=True)["callID"]
        for _ in range(5)
    ]
    attempts = [wait_result(session, serial, call_id)["modelOutputs"][0]["attempt"] for call_id in call_ids]
    assert attempts == [1, 2, 3, 4, 5]
    assert time.monotonic() - began >= 0.5  # one at a time
    assert serial.stats()["per_model"]["flaky"]["running_max"] == 1


def test_replicas_bound_concurrency(session: requests.Session, srv: DevServer) -> None:
    for _ in range(40):
        start(session, srv, "sleep", {"seconds": 0.5}, start_only=True)
    stats = srv.wait_until(lambda s: s["finished"] == 40)
    assert stats["per_model"]["sleep"]["running_max"] == 32
    assert stats["running_max"] == 32
    assert stats["queued_max"] >= 8
    assert stats["starts_taken"] == 40


def test_results_expire_after_the_ttl(session: requests.Session, srv: DevServer) -> None:
    srv.settings(result_ttl=0.5)
    done = start(session, srv, "wordcount", {"prompt": "x"})["callID"]
    failed = start(session, srv, "fail", {})["callID"]
    pending = start(session, srv, "sleep", {"seconds": 2}, start_only=True)["callID"]
    assert check(session, srv, done)["message"] == "success"

    def forgotten(call_id: str) -> bool:
        return check(session, srv, call_id)["message"] == MISSING + call_id.removeprefix("call_")

    # Polled, not slept: each is forgotten once the TTL has run from its finish.
    for call_id in (done, failed):
        wait_until(f"{call_id} forgotten after the TTL", functools.partial(forgotten, call_id))
    # the TTL counts from the finish: a call still running is kept
    assert check(session, srv, pending)["message"] == "running"


def test_unknown_call_id(session: requests.Session, srv: DevServer) -> None:
    assert check(session, srv, "call_nope")["message"] == MISSING + "nope"
    assert check(session, srv, "call_nope", long_poll=True)["message"] == MISSING + "nope"


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("model", "inputs", "message", "outputs"),
    [
        ("wordcount", {"prompt": ""}, "success", [{"words": 0, "characters": 0, "upper": "", "reversed": ""}]),
        ("wordcount", {"text": "x"}, "error: bad modelInputs: 'prompt' must be a string", None),
        ("wordcount", "not an object", "error: bad modelInputs: expected a JSON object", None),
        (
            "sleep",
            {"seconds": 0.1, "result": [1, {"a": None}]},
            "success",
            [{"slept": 0.1, "result": [1, {"a": None}]}],
        ),
        ("sleep", {"seconds": 0}, "success", [{"slept": 0.0, "result": None}]),
        ("sleep", {"seconds": -1}, "error: bad modelInputs: 'seconds' must be between 0 and 86400", None),
        ("fail", {}, "error: model crashed: demo failure", None),
        ("fail", {"reason": "out of memory"}, "error: model crashed: out of memory", None),
        ("list", {}, "success", [[1, 2, 3]]),
        ("list", {"items": ["a"]}, "success", [["a"]]),
        ("model-error", {"message": "cuda"}, "success", [{"$error": {"code": "ModelError", "message": "cuda"}}]),
    ],
)
def test_builtin_models(
    session: requests.Session,
    srv: DevServer,
    model: str,
    inputs: Any,
    message: str,
    outputs: Any,
) -> None:
    reply = start(session, srv, model, inputs)
    assert reply["message"] == message
    assert reply["modelOutputs"] == outputs
    assert reply["finished"] is (message == "success")
    assert srv.stats()["per_model"][model]["starts_taken"] == 1


def test_flaky_model_fails_then_succeeds_per_key(session: requests.Session, srv: DevServer) -> None:
    key, other = uuid.uuid4().hex, uuid.uuid4().hex
    first = start(session, srv, "flaky", {"key": key, "fail_times": 2})
    assert first["message"] == f"error: model crashed: flaky failure 1 of 2 for key '{key}'"
    assert start(session, srv, "flaky", {"key": other, "fail_times": 1})["finished"] is False
    assert "error" in start(session, srv, "flaky", {"key": key, "fail_times": 2})["message"]
    third = start(session, srv, "flaky", {"key": key, "fail_times": 2})
    assert third["message"] == "success"
    assert third["modelOutputs"] == [{"key": key, "attempt": 3}]
    srv.reset()  # an admin reset restarts every key's count
    assert start(session, srv, "flaky", {"key": key, "fail_times": 1})["finished"] is False


# --------------------------------------------------------------------------- external model servers


def test_external_model_gets_inputs_verbatim(
    session: requests.Session, srv: DevServer, model_server: ModelServer
) -> None:
    key = uuid.uuid4().hex
    inputs = {"key": key, "prompt": "héllo", "nested": [1, {"x": None}]}
    reply = start(session, srv, "ext", inputs)
    assert reply["message"] == "success"
    assert reply["modelOutputs"] == [{"received": inputs}]
    assert model_server.requests_for(key) == [("/", inputs)]


def test_external_model_busy_is_retried(session: requests.Session, srv: DevServer, model_server: ModelServer) -> None:
    key = uuid.uuid4().hex
    inputs = {"mode": "busy", "key": key, "busy_times": 2}
    reply = start(session, srv, "ext", inputs, start_only=True)
    assert wait_result(session, srv, reply["callID"])["modelOutputs"] == [{"received": inputs}]
    assert len(model_server.requests_for(key)) == 3
    stats = srv.stats()
    assert stats["finished"] == 1
    assert stats["failed"] == 0


def test_external_model_busy_call_reports_queued(
    session: requests.Session, srv: DevServer, model_server: ModelServer
) -> None:
    key = uuid.uuid4().hex
    # 0.2 + 0.4 + 0.8 + 1.6 s of back-off: the call spends nearly all of it queued
    reply = start(session, srv, "ext", {"mode": "busy", "key": key, "busy_times": 4}, start_only=True)

    def queued_after_busy() -> bool:
        # Once the model was asked, "queued" can only be a back-off after a busy answer.
        asked = len(model_server.requests_for(key))
        return asked >= 1 and check(session, srv, reply["callID"])["message"] == "queued"

    wait_until("the busy call reported queued", queued_after_busy, timeout=3)
    assert wait_result(session, srv, reply["callID"])["message"] == "success"


@pytest.mark.parametrize(
    ("model", "mode", "expected"),
    [
        # the end of a traceback, where the exception line is; of an HTML page, its text
        (
            "ext",
            "crash",
            'error: model server answered HTTP 500: File "app.py", line 9, in handler | load() | '
            'File "app.py", line 9, in handler | load() | ValueError: bad weights',
        ),
        (
            "ext",
            "crash_html",
            "error: model server answered HTTP 500: 500 Internal Server Error | Internal Server Error | "
            "Traceback (most recent call last): | File \"app.py\", line 9, in handler | KeyError: 'weights'",
        ),
        ("ext", "bad_request", "error: model server answered HTTP 400: bad json"),
        ("ext", "html", "error: model server answered HTTP 200 with a non-JSON body: <html>not json</html>"),
        ("down", "echo", "error: model server unreachable: ConnectError"),
    ],
)
def test_external_model_failures(
    session: requests.Session, srv: DevServer, model: str, mode: str, expected: str
) -> None:
    reply = start(session, srv, model, {"mode": mode})
    assert reply["message"].startswith(expected)
    assert len(reply["message"]) < len(expected) + 220  # a long body is cut, its end kept
    assert reply["finished"] is False
    assert srv.stats()["failed"] == 1


# --------------------------------------------------------------------------- bad requests and the apiKey


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("start/v4/", b"{not json", "error: invalid JSON body"),
        ("start/v4/", b"", "error: invalid JSON body"),
        ("start/v4/", b"[1, 2]", "error: invalid JSON body: expected an object"),
        ("start/v4/", b'{"modelInputs": {}}', "error: missing field 'modelKey'"),
        ("start/v4/", b'{"modelKey": "", "modelInputs": {}}', "error: field 'modelKey' must be a non-empty string"),
        ("start/v4/", b'{"modelKey": "wordcount"}', "error: missing field 'modelInputs'"),
        (
            "start/v4/",
            b'{"modelKey": "wordcount", "modelInputs": {}, "startOnly": "yes"}',
            "error: field 'startOnly' must be a boolean",
        ),
        ("start/v4/", b'{"modelKey": "nope", "modelInputs": {}}', "error: unknown modelKey 'nope'"),
        ("check/v4/", b'{"longPoll": true}', "error: missing field 'callID'"),
        ("check/v4/", b'{"callID": 5}', "error: field 'callID' must be a non-empty string"),
        ("check/v4/", b'{"callID": "call_x", "longPoll": 1}', "error: field 'longPoll' must be a boolean"),
    ],
)
def test_malformed_requests(session: requests.Session, srv: DevServer, path: str, body: bytes, message: str) -> None:
    response = session.post(srv.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 200
    reply = response.json()
    assert_error_reply(reply)
    assert reply["message"] == message
    assert reply["id"]  # generated when the request had none
    assert srv.stats()["starts_taken"] == 0


def test_request_id_is_echoed_on_errors(session: requests.Session, srv: DevServer) -> None:
    reply = post(session, srv, "start/v4/", {"id": "mine", "modelKey": "nope", "modelInputs": {}})
    assert reply["id"] == "mine"


def test_api_key_required(session: requests.Session, keyed_server: DevServer) -> None:
    keyed_server.reset(forget_calls=True)
    replies = []
    for key in (None, "wrong", API_KEY[:-1], 12):
        body: dict[str, Any] = {"id": "r", "modelKey": "wordcount", "modelInputs": {"prompt": "x"}}
        if key is not None:
            body["apiKey"] = key
        reply = post(session, keyed_server, "start/v4/", body)
        assert_error_reply(reply)
        assert reply["message"] == "error: invalid apiKey"
        replies.append(reply)
    wrong_check = post(session, keyed_server, "check/v4/", {"apiKey": "wrong", "callID": "call_x"})
    assert wrong_check["message"] == "error: invalid apiKey"
    assert keyed_server.stats()["starts_taken"] == 0

    good = post(
        session,
        keyed_server,
        "start/v4/",
        {"apiKey": API_KEY, "modelKey": "wordcount", "modelInputs": {"prompt": "x"}, "startOnly": True},
    )
    assert good["callID"].startswith("call_")
    checked = post(session, keyed_server, "check/v4/", {"apiKey": API_KEY, "callID": good["callID"], "longPoll": True})
    assert checked["message"] == "success"
    replies += [good, checked, wrong_check]

    assert all(API_KEY not in json.dumps(reply) for reply in replies)
    assert API_KEY not in keyed_server.log_text()
    assert "call_" in keyed_server.log_text()  # the debug log was on, so the check above means something


def test_quirk_from_the_command_line(session: requests.Session, keyed_server: DevServer) -> None:
    keyed_server.reset(forget_calls=True)  # a reset keeps the launch-time quirk
    reply = post(
        session, keyed_server, "start/v4/", {"apiKey": API_KEY, "modelKey": "list", "modelInputs": {"items": [7]}}
    )
    assert reply["message"] == ""
    assert reply["callID"] == ""
    assert reply["finished"] is True
    assert reply["modelOutputs"] == [[7]]


def test_require_api_key_needs_the_environment_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BANANA_DEVSERVER_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_banana.devserver", "--port", "0", "--require-api-key"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "BANANA_DEVSERVER_API_KEY" in result.stderr


# --------------------------------------------------------------------------- fault switches


def test_fail_next_with_retry_after(session: requests.Session, srv: DevServer) -> None:
    srv.faults(fail_next={"count": 2, "status": 503, "endpoints": ["start"], "retry_after": 2})
    body = {"modelKey": "wordcount", "modelInputs": {"prompt": "x"}}
    for _ in range(2):
        response = session.post(srv.url + "start/v4/", json=body, timeout=5)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert "503" in response.json()["message"]
        # Check is not among the endpoints: it is served normally in between
        assert check(session, srv, "call_x")["message"].startswith(MISSING)
    assert post(session, srv, "start/v4/", body)["message"] == "success"
    stats = srv.stats()
    assert stats["start_requests"] == 3
    assert stats["starts_taken"] == 1
    assert stats["faults_served"] == 2


def test_drop_next_breaks_the_read_but_takes_the_start(session: requests.Session, srv: DevServer) -> None:
    srv.faults(drop_next={"count": 1, "endpoints": ["start"]})
    body = {"modelKey": "sleep", "modelInputs": {"seconds": 0.1}, "startOnly": True}
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        session.post(srv.url + "start/v4/", json=body, timeout=5)
    stats = srv.wait_until(lambda s: s["finished"] == 1)
    assert stats["starts_taken"] == 1
    assert stats["start_requests"] == 1
    # the next request is served normally, on a fresh connection
    assert post(session, srv, "start/v4/", body)["callID"].startswith("call_")
    assert "Exception in ASGI application" not in srv.log_text()


def test_drop_next_on_check(session: requests.Session, srv: DevServer) -> None:
    call_id = start(session, srv, "wordcount", {"prompt": "x"})["callID"]
    srv.faults(drop_next={"endpoints": ["check"]})
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        session.post(srv.url + "check/v4/", json={"callID": call_id}, timeout=5)
    assert check(session, srv, call_id)["message"] == "success"
    assert srv.stats()["check_requests"] == 2


def test_non_json_next(session: requests.Session, srv: DevServer) -> None:
    srv.faults(non_json_next={"count": 1, "endpoints": ["start"]})
    response = session.post(
        srv.url + "start/v4/", json={"modelKey": "wordcount", "modelInputs": {"prompt": "x"}}, timeout=5
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html>oops</html>"
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()
    stats = srv.stats()
    assert stats["start_requests"] == 1
    assert stats["starts_taken"] == 0


@pytest.mark.parametrize("raw", [[1, 2], {"finished": True}, "just a string", None])
def test_raw_next(session: requests.Session, srv: DevServer, raw: Any) -> None:
    srv.faults(raw_next={"count": 1, "endpoints": ["check"], "body": raw})
    response = session.post(srv.url + "check/v4/", json={"callID": "call_x"}, timeout=5)
    assert response.status_code == 200
    assert response.json() == raw
    assert check(session, srv, "call_x")["message"].startswith(MISSING)


def test_delay_next_outlasts_the_client_timeout(session: requests.Session, srv: DevServer) -> None:
    srv.faults(delay_next={"count": 1, "seconds": 1.0, "endpoints": ["start"]})
    body = {"modelKey": "wordcount", "modelInputs": {"prompt": "x"}}
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.post(srv.url + "start/v4/", json=body, timeout=0.3)
    assert srv.stats()["starts_taken"] == 0  # still waiting
    # the request is processed once the delay is over, although the client gave up
    srv.wait_until(lambda s: s["starts_taken"] == 1, timeout=5)


def test_fault_switches_merge_and_clear(srv: DevServer) -> None:
    srv.faults(fail_next={"count": 2})
    state = srv.faults(delay_next={"seconds": 1})
    assert set(state["faults"]) == {"fail_next", "delay_next"}
    assert srv.faults(fail_next=None)["faults"].keys() == {"delay_next"}
    srv.reset()
    assert srv.faults()["faults"] == {}


@pytest.mark.parametrize(
    "spec",
    [
        {"explode_next": {}},
        {"fail_next": {"count": -1}},
        {"fail_next": {"status": 200}},
        {"fail_next": {"endpoints": ["admin"]}},
        {"delay_next": {}},
        {"raw_next": {"count": 1}},
        {"drop_next": {"cuont": 1}},
        {"quirk_empty_message": "yes"},
    ],
)
def test_bad_fault_specs_are_refused(srv: DevServer, spec: dict[str, Any]) -> None:
    with pytest.raises(DevServerError, match="HTTP 400"):
        srv.faults(**spec)
    assert srv.faults()["faults"] == {}


# --------------------------------------------------------------------------- forget and restart


def test_forget_drops_calls_and_answers_held_long_polls(session: requests.Session, srv: DevServer) -> None:
    srv.settings(check_hold=10)
    done = start(session, srv, "wordcount", {"prompt": "x"})["callID"]
    pending = start(session, srv, "sleep", {"seconds": 5}, start_only=True)["callID"]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(check, session, srv, pending, True)
        srv.wait_until(lambda s: s["long_polls_open"] == 1)
        began = time.monotonic()
        assert srv.forget() == 2
        assert held.result(timeout=5)["message"] == MISSING + pending.removeprefix("call_")
        assert time.monotonic() - began < 1
    assert check(session, srv, done)["message"] == MISSING + done.removeprefix("call_")
    stats = srv.stats()
    assert stats["running"] == 0
    assert stats["calls_kept"] == 0
    # the pools restarted: new calls still run
    assert start(session, srv, "wordcount", {"prompt": "x"})["message"] == "success"


def test_restart_loses_calls_and_answers_held_requests(session: requests.Session, srv: DevServer) -> None:
    port, pid = srv.port, srv.pid
    call_id = start(session, srv, "sleep", {"seconds": 5}, start_only=True)["callID"]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(check, session, srv, call_id, True)
        srv.wait_until(lambda s: s["long_polls_open"] == 1)
        srv.restart()
        # shutdown answers held long polls with the call's state instead of cutting them off
        assert held.result(timeout=5)["message"] == "running"
    assert (srv.port, srv.url) == (port, f"http://127.0.0.1:{port}/")
    assert srv.pid != pid
    assert check(session, srv, call_id)["message"] == MISSING + call_id.removeprefix("call_")
    assert srv.stats()["starts_taken"] == 0


def test_devserver_reports_a_failed_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where DevServer keeps its log
    with (
        pytest.raises(DevServerError, match=r"exited during startup(.|\n)*replicas must be >= 1"),
        DevServer(extra_args=["--replicas", "0"]),
    ):
        pass
    assert list(tmp_path.iterdir()) == []  # the log directory was removed


# --------------------------------------------------------------------------- admin API exposure
# Nothing here binds a non-loopback address: the network case is driven in-process.


@pytest.mark.parametrize(
    ("host", "token", "expected"),
    [
        ("127.0.0.1", None, "open"),
        ("127.8.9.10", None, "open"),
        ("::1", None, "open"),
        ("[::1]", None, "open"),
        ("::ffff:127.0.0.1", None, "open"),
        ("localhost", None, "open"),
        ("LocalHost.", None, "open"),
        ("0.0.0.0", None, "off"),
        ("::", None, "off"),
        ("192.168.1.20", None, "off"),
        ("10.0.0.1", None, "off"),
        ("fe80::1%eth0", None, "off"),
        ("::ffff:10.0.0.1", None, "off"),
        ("", None, "off"),
        ("devbox.example.com", None, "off"),
        ("localhost.example.com", None, "off"),
        ("0.0.0.0", "", "off"),
        ("0.0.0.0", "t0ken", "token"),
        ("192.168.1.20", "t0ken", "token"),
        ("127.0.0.1", "t0ken", "token"),
    ],
)
def test_admin_mode(host: str, token: str | None, expected: str) -> None:
    assert admin_mode(host, token) == expected


def admin_client(admin: Any, admin_token: str | None = None) -> TestClient:
    """An in-process client of the app: no socket is opened."""
    return TestClient(create_app(BananaService(DevServerConfig()), admin=admin, admin_token=admin_token))


@pytest.mark.parametrize(("method", "name"), ADMIN_PATHS)
def test_admin_off_answers_404_and_banana_endpoints_still_work(method: str, name: str) -> None:
    with admin_client("off") as client:
        response = client.request(method, f"/_admin/{name}", json={})
        assert response.status_code == 404
        assert client.get("/healthcheck").json() == {"state": "healthy"}
        reply = client.post("/start/v4/", json={"modelKey": "wordcount", "modelInputs": {"prompt": "a b"}}).json()
        assert reply["message"] == "success"
        assert client.post("/check/v4", json={"callID": reply["callID"]}).json()["message"] == "success"


@pytest.mark.parametrize(("method", "name"), ADMIN_PATHS)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-token",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Basic {ADMIN_TOKEN}",
        ADMIN_TOKEN,
    ],
)
def test_admin_token_refuses_a_missing_or_wrong_token(method: str, name: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # each body would change something if it got through
    body = {"reset": {}, "faults": {"fail_next": None}, "settings": {"start_hold": 7.0}}.get(name, {})
    with admin_client("token", ADMIN_TOKEN) as client:
        assert client.post("/_admin/faults", json={"fail_next": {"count": 1}}, headers=auth).status_code == 200
        response = client.request(method, f"/_admin/{name}", json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in response.json()["error"]
        assert ADMIN_TOKEN not in response.text
        # the refused request never reached the endpoint: nothing changed
        assert "fail_next" in client.get("/_admin/faults", headers=auth).json()["faults"]
        assert client.get("/_admin/settings", headers=auth).json()["start_hold"] == DevServerConfig().start_hold


@pytest.mark.parametrize(("method", "name"), ADMIN_PATHS)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_admin_token_accepts_the_right_token(method: str, name: str, scheme: str) -> None:
    with admin_client("token", ADMIN_TOKEN) as client:
        response = client.request(
            method, f"/_admin/{name}", json={}, headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"


def test_admin_token_guards_every_admin_path_but_not_the_banana_endpoints() -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with admin_client("token", ADMIN_TOKEN) as client:
        # unknown admin paths and methods are refused before routing, so they reveal nothing
        assert client.get("/_admin/nope").status_code == 401
        assert client.delete("/_admin/stats").status_code == 401
        assert client.get("/_admin/nope", headers=auth).status_code == 404
        assert client.get("/_admin/stats/", headers=auth).status_code == 404
        # the same header twice is refused: which one counts would be ambiguous
        doubled = client.get("/_admin/stats", headers=[("Authorization", auth["Authorization"])] * 2)
        assert doubled.status_code == 401
        assert client.get("/healthcheck").status_code == 200
        reply = client.post("/start/v4/", json={"modelKey": "wordcount", "modelInputs": {"prompt": "x"}}).json()
        assert reply["message"] == "success"
        assert client.get("/_admin/stats", headers=auth).json()["starts_taken"] == 1


def test_admin_open_needs_no_token() -> None:
    with admin_client("open") as client:
        assert client.post("/_admin/faults", json={"fail_next": {"count": 1}}).status_code == 200
        assert client.post("/start/v4/", json={}).status_code == 503
        assert client.get("/_admin/stats").json()["faults_served"] == 1


@pytest.mark.parametrize(
    ("admin", "admin_token"),
    [("token", None), ("token", ""), ("open", "t0ken"), ("off", "t0ken"), ("closed", None)],
)
def test_create_app_refuses_an_inconsistent_admin_mode(admin: Any, admin_token: str | None) -> None:
    with pytest.raises(ValueError, match="admin"):
        create_app(BananaService(DevServerConfig()), admin=admin, admin_token=admin_token)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, None), ({ADMIN_TOKEN_ENV_VAR: ADMIN_TOKEN}, ADMIN_TOKEN), ({"OTHER": "x"}, None)],
)
def test_config_reads_the_admin_token_from_the_environment(environ: dict[str, str], expected: str | None) -> None:
    args = cli.build_parser().parse_args(["--host", "0.0.0.0"])
    config = cli.config_from_args(args, environ)
    assert config.admin_token == expected
    assert ADMIN_TOKEN not in repr(config)


def test_config_refuses_an_empty_admin_token() -> None:
    args = cli.build_parser().parse_args([])
    with pytest.raises(ValueError, match=ADMIN_TOKEN_ENV_VAR):
        cli.config_from_args(args, {ADMIN_TOKEN_ENV_VAR: ""})


def test_there_is_no_admin_token_argument() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--admin-token", ADMIN_TOKEN])


class FakeSocket:
    """Stands in for a listening socket: only its bound address is read, nothing is bound."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    def getsockname(self) -> tuple[str, int]:
        return self.address


def serve_in_process(monkeypatch: pytest.MonkeyPatch, config: DevServerConfig, address: str) -> TestClient:
    """Run :func:`cli.serve` as if bound to ``address``, and return a client of the app it built."""
    apps: list[Any] = []
    monkeypatch.setattr(cli.DevUvicornServer, "run", lambda self, sockets=None: apps.append(self.config.app))
    cli.serve(config, cast("socket.socket", FakeSocket((address, 8000))))
    assert len(apps) == 1
    return TestClient(apps[0])


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.20"])
def test_serve_on_a_network_address_turns_admin_off_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, address: str
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_banana.devserver")
    with serve_in_process(monkeypatch, DevServerConfig(host=address), address) as client:
        assert client.get("/_admin/stats").status_code == 404
        assert client.post("/_admin/reset", json={}).status_code == 404
        assert client.get("/healthcheck").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "Admin API (/_admin/) disabled" in warnings[0]
    assert address in warnings[0]
    assert ADMIN_TOKEN_ENV_VAR in warnings[0]


def test_serve_on_a_network_address_with_a_token_requires_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_banana.devserver")
    config = DevServerConfig(host="0.0.0.0", admin_token=ADMIN_TOKEN)
    with serve_in_process(monkeypatch, config, "0.0.0.0") as client:
        assert client.get("/_admin/stats").status_code == 401
        assert client.get("/_admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ADMIN_TOKEN not in caplog.text


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_serve_on_loopback_leaves_admin_open(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, address: str
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_banana.devserver")
    with serve_in_process(monkeypatch, DevServerConfig(host=address), address) as client:
        assert client.get("/_admin/stats").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_loopback_devserver_logs_an_open_admin_api(srv: DevServer) -> None:
    log = srv.log_text()
    assert "Admin API (/_admin/) open without a token" in log
    assert "disabled" not in log


def test_devserver_with_an_admin_token(session: requests.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    # an inherited token must not win over the one asked for
    monkeypatch.setenv(ADMIN_TOKEN_ENV_VAR, "inherited-" + uuid.uuid4().hex)
    with DevServer(admin_token=ADMIN_TOKEN) as token_srv:
        assert token_srv.faults(fail_next={"count": 1, "status": 502})["faults"]["fail_next"]["status"] == 502
        assert session.post(token_srv.url + "start/v4/", json={}, timeout=5).status_code == 502
        assert token_srv.stats()["faults_served"] == 1
        for headers in ({}, {"Authorization": "Bearer inherited"}, {"Authorization": f"Bearer {ADMIN_TOKEN}0"}):
            response = session.get(token_srv.url + "_admin/stats", headers=headers, timeout=5)
            assert response.status_code == 401
            assert "error" in response.json()
        assert session.post(token_srv.url + "_admin/forget", timeout=5).status_code == 401
        ok = session.get(token_srv.url + "_admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        assert ok.status_code == 200
        # the token travels in the environment, never in argv (visible to everyone through ps)
        cmdline = Path(f"/proc/{token_srv.pid}/cmdline")
        if cmdline.exists():
            assert ADMIN_TOKEN.encode() not in cmdline.read_bytes()
        log = token_srv.log_text()
        assert "requires the bearer token" in log
        assert ADMIN_TOKEN not in log


def test_devserver_ignores_an_inherited_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV_VAR, "inherited-" + uuid.uuid4().hex)
    with DevServer() as open_srv:
        assert open_srv.stats()["start_requests"] == 0
        assert "open without a token" in open_srv.log_text()


def test_devserver_refuses_an_empty_admin_token() -> None:
    with pytest.raises(ValueError, match="admin_token"):
        DevServer(admin_token="")


# --------------------------------------------------------------------------- external model URLs and their limit


@pytest.mark.parametrize(
    ("model", "path"), [("ext", "/"), ("ext-slash", "/"), ("ext-path", "/v1/run"), ("ext-path-slash", "/v1/run/")]
)
def test_external_model_url_is_posted_to_as_given(
    session: requests.Session, srv: DevServer, model_server: ModelServer, model: str, path: str
) -> None:
    key = uuid.uuid4().hex
    assert start(session, srv, model, {"key": key})["message"] == "success"
    assert model_server.requests_for(key) == [(path, {"key": key})]


def spans(replies: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """When each slow-mode request ran at the model server, in order of its start."""
    return sorted((reply["modelOutputs"][0]["began"], reply["modelOutputs"][0]["ended"]) for reply in replies)


def test_external_model_server_gets_one_request_at_a_time_by_default(session: requests.Session, srv: DevServer) -> None:
    call_ids = [
        start(session, srv, "ext", {"mode": "slow", "seconds": 0.3}, start_only=True)["callID"] for _ in range(3)
    ]
    replies = [wait_result(session, srv, call_id) for call_id in call_ids]
    assert [reply["message"] for reply in replies] == ["success"] * 3
    ran = spans(replies)
    for (_, ended), (began, _) in itertools.pairwise(ran):
        assert began >= ended - 0.01, f"requests overlapped at the model server: {ran}"
    stats = srv.stats()
    # the calls waiting for their turn were queued in the devserver, not running at the model server
    assert stats["per_model"]["ext"]["running_max"] == 1
    assert stats["per_model"]["ext"]["queued_max"] >= 2
    assert (stats["running"], stats["queued"]) == (0, 0)
    assert "Model server http://127.0.0.1:" in srv.log_text()


def test_models_on_one_model_server_share_its_limit(session: requests.Session, srv: DevServer) -> None:
    slow = start(session, srv, "ext", {"mode": "slow", "seconds": 0.6}, start_only=True)["callID"]
    srv.wait_until(lambda s: s["per_model"]["ext"]["running"] == 1, timeout=5)
    # another key, another path, the same scheme://host:port: it waits for the slow call
    other = start(session, srv, "ext-path", {"mode": "slow", "seconds": 0}, start_only=True)["callID"]
    assert check(session, srv, other)["message"] == "queued"
    # a model on another server has its own limit
    assert "error" in start(session, srv, "down", {})["message"]
    first, second = wait_result(session, srv, slow), wait_result(session, srv, other)
    assert second["modelOutputs"][0]["began"] >= first["modelOutputs"][0]["ended"] - 0.01


@pytest.mark.parametrize(("concurrency", "running_max"), [({"ext": 2}, 2), (0, 4)])
def test_model_concurrency_raises_or_lifts_the_limit(
    session: requests.Session, model_server: ModelServer, concurrency: int | dict[str, int], running_max: int
) -> None:
    with DevServer(models={"ext": model_server.url}, model_concurrency=concurrency) as wide:
        call_ids = [
            start(session, wide, "ext", {"mode": "slow", "seconds": 0.4}, start_only=True)["callID"] for _ in range(4)
        ]
        assert [wait_result(session, wide, call_id)["message"] for call_id in call_ids] == ["success"] * 4
        assert wide.stats()["per_model"]["ext"]["running_max"] == running_max


def test_model_timeout_counts_from_the_request_not_the_queue(
    session: requests.Session, model_server: ModelServer
) -> None:
    # Three 0.4 s calls one after another take 1.2 s, yet none outlasts its own 0.8 s.
    with DevServer(models={"ext": model_server.url}, extra_args=["--model-timeout", "0.8"]) as strict:
        call_ids = [
            start(session, strict, "ext", {"mode": "slow", "seconds": 0.4}, start_only=True)["callID"] for _ in range(3)
        ]
        assert [wait_result(session, strict, call_id)["message"] for call_id in call_ids] == ["success"] * 3
        # while a request that does outlast it still fails
        slow = start(session, strict, "ext", {"mode": "slow", "seconds": 1.5})
        assert slow["message"] == "error: model server timed out: ReadTimeout"


def test_model_concurrency_arguments() -> None:
    argv = ["--model", "a=http://h:1/x", "--model", "b=http://H:1/y/", "--model", "c=https://h"]
    default = cli.config_from_args(cli.build_parser().parse_args(argv), {})
    assert (default.model_concurrency, default.model_concurrency_by_key) == (1, {})
    argv += ["--model-concurrency", "3", "--model-concurrency", "c=0"]
    config = cli.config_from_args(cli.build_parser().parse_args(argv), {})
    assert (config.model_concurrency, config.model_concurrency_by_key) == (3, {"c": 0})
    # keys on one scheme://host:port share one limit
    assert {origin: (server.limit, server.keys) for origin, server in config.model_servers().items()} == {
        "http://h:1": (3, ["a", "b"]),
        "https://h:443": (0, ["c"]),
    }
    assert "--model-concurrency" in cli.build_parser().format_help()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-concurrency", "-1"], "expected N or KEY=N"),
        (["--model-concurrency", "two"], "expected N or KEY=N"),
        (["--model-concurrency", "=2"], "expected N or KEY=N"),
        (["--model", "a=http://h:1", "--model-concurrency", "b=2"], "no --model b=URL was given"),
        (
            [
                *("--model", "a=http://h:1/x", "--model", "b=http://h:1/y"),
                *("--model-concurrency", "a=1", "--model-concurrency", "b=2"),
            ],
            "models a and b are on one server (http://h:1) but were given different concurrency limits",
        ),
    ],
)
def test_bad_model_concurrency_is_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- held requests are counted exactly


@pytest.mark.parametrize(("endpoint", "gauge"), [("check", "long_polls_open"), ("start", "start_holds_open")])
def test_an_abandoned_hold_is_no_longer_counted(
    srv: DevServer, session: requests.Session, endpoint: str, gauge: str
) -> None:
    srv.settings(check_hold=30, start_hold=30)
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "created": int(time.time()), "apiKey": "any"}
    if endpoint == "check":
        body |= {"longPoll": True, "callID": start(session, srv, "sleep", {"seconds": 20}, start_only=True)["callID"]}
    else:
        body |= {"modelKey": "sleep", "startOnly": False, "modelInputs": {"seconds": 20}}
    data = json.dumps(body).encode()
    head = (
        f"POST /{endpoint}/v4/ HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(head.encode() + data)
        srv.wait_until(lambda s: s[gauge] == 1, timeout=5)
    # The client is gone: far sooner than the 30 s hold, nobody is counted as waiting.
    stats = srv.wait_until(lambda s: s[gauge] == 0, timeout=3)
    assert (stats["running"], stats["queued"]) == (1, 0)  # the call itself runs on
    assert srv.forget() == 1
    stats = srv.stats()
    assert (stats["running"], stats["queued"], stats["long_polls_open"], stats["start_holds_open"]) == (0, 0, 0, 0)


def test_a_cancelled_long_poll_is_no_longer_counted() -> None:
    async def scenario() -> None:
        service = BananaService(DevServerConfig(check_hold=30))
        await service.open()
        try:
            reply = await service.start(
                json.dumps({"modelKey": "sleep", "startOnly": True, "modelInputs": {"seconds": 20}}).encode()
            )
            body = json.dumps({"callID": reply["callID"], "longPoll": True}).encode()
            held = asyncio.ensure_future(service.check(body))
            await asyncio.sleep(0.05)  # the Check is parsed and held on its first step
            assert service.stats.long_polls_open.value == 1
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
            assert service.stats.long_polls_open.value == 0
            assert (service.stats.running.value, service.stats.queued.value) == (1, 0)
        finally:
            await service.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
