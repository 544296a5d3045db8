"""
The local server as something people run: odd input gets a v4 error reply, idle connections close.

* A lone UTF-16 surrogate (a JSON ``"\\ud800"``) in ``id``, ``apiKey``, ``modelKey``, ``callID`` or
  the inputs is a v4 "error" reply (HTTP 200), not an HTTP 500; a surrogate pair (an emoji) is text.
* An ``id`` longer than ``MAX_ID_LENGTH`` characters is refused with a v4 error under a fresh id,
  never echoed back.
* A connection that sends nothing, before its first request or after one, is closed after
  ``--keep-alive-timeout`` seconds; a held request is not idle.

Everything runs against a real devserver subprocess over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from airflow_provider_banana.devserver.protocol import MAX_ID_LENGTH
from airflow_provider_banana.devserver.testing import DevServer

KEY = "sk-hardening-" + uuid.uuid4().hex
REPLY_KEYS = {"id", "message", "created", "apiVersion", "callID", "finished", "modelOutputs"}
#: Seconds the test server keeps idle connections; short, so that the tests see it close them.
KEEP_ALIVE = 1.0
#: Longest a test waits for the server to close an idle connection (not a timing assertion: a bound).
CLOSE_BOUND = 30.0
#: A connection per request: with a 1 s keep-alive, a pooled one could be closed by the server just
#: as the next test sends on it (the idle-connection tests use raw sockets instead).
HEADERS = {"Content-Type": "application/json", "Connection": "close"}


class _SurrogateModel(BaseHTTPRequestHandler):
    # An external model whose JSON reply holds a lone surrogate.
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"text": "\\ud800 alone"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SurrogateModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def srv(model_url: str) -> Iterator[DevServer]:
    with DevServer(
        start_hold=10,
        check_hold=2,
        api_key=KEY,
        models={"surrogate": model_url},
        extra_args=["--keep-alive-timeout", str(KEEP_ALIVE)],
    ) as server:
        yield server


def post(session: requests.Session, srv: DevServer, endpoint: str, body: str | bytes) -> dict[str, Any]:
    """POST a raw JSON text; assert the v4 way of answering (HTTP 200, JSON); return the reply."""
    response = session.post(f"{srv.url}{endpoint}/v4/", data=body, headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text[:300]
    reply: dict[str, Any] = response.json()
    return reply


def start_body(
    id_: str = '"req-1"', api_key: str | None = None, model_key: str = '"wordcount"', inputs: str = ""
) -> str:
    inputs = inputs or '{"prompt": "hello"}'
    key = json.dumps(KEY) if api_key is None else api_key
    return f'{{"id": {id_}, "apiKey": {key}, "modelKey": {model_key}, "startOnly": false, "modelInputs": {inputs}}}'


def assert_error_reply(reply: dict[str, Any], *fragments: str) -> None:
    assert set(reply) == REPLY_KEYS, reply
    assert "error" in reply["message"]
    for fragment in fragments:
        assert fragment in reply["message"], reply["message"]
    assert reply["finished"] is False
    assert reply["callID"] == ""
    assert reply["modelOutputs"] is None


# ---------------------------------------------------------------------------------------------------------
# Lone surrogates.


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("'id'", start_body(id_='"\\ud800"')),
        ("'apiKey'", start_body(api_key='"\\udfff"')),
        ("'modelKey'", start_body(model_key='"word\\ud800count"')),
        ("a string in the body", start_body(inputs='{"prompt": "a \\ud800 b"}')),
        ("a string in the body", start_body(inputs='{"\\udc00": "a"}')),
        ("a string in the body", start_body(inputs='{"prompt": "x", "deep": [[{"k": ["\\uDBFF"]}]]}')),
        # A high surrogate followed by another high one is no pair.
        ("a string in the body", start_body(inputs='{"prompt": "\\ud83d\\ud83d"}')),
    ],
)
def test_a_lone_surrogate_in_a_start_is_a_v4_error(
    session: requests.Session, srv: DevServer, field: str, body: str
) -> None:
    srv.reset()
    reply = post(session, srv, "start", body)
    assert_error_reply(reply, "lone UTF-16 surrogate", field)
    assert srv.stats()["starts_taken"] == 0
    if field == "'id'":
        uuid.UUID(reply["id"])  # a fresh id: the one sent cannot be written back
    else:
        assert reply["id"] == "req-1"


def test_a_lone_surrogate_in_a_check_call_id_is_a_v4_error(session: requests.Session, srv: DevServer) -> None:
    body = f'{{"id": "req-2", "apiKey": {json.dumps(KEY)}, "longPoll": false, "callID": "call_\\ud800"}}'
    reply = post(session, srv, "check", body)
    assert "error" in reply["message"]
    assert "'callID'" in reply["message"]
    assert reply["id"] == "req-2"
    assert reply["modelOutputs"] is None


def test_a_lone_surrogate_in_the_check_api_key_is_a_v4_error(session: requests.Session, srv: DevServer) -> None:
    reply = post(session, srv, "check", '{"id": "req-3", "apiKey": "\\ud800", "callID": "call_x"}')
    assert "error" in reply["message"]
    assert "'apiKey'" in reply["message"]


def test_a_surrogate_pair_is_text(session: requests.Session, srv: DevServer) -> None:
    # ensure_ascii=True clients (Python's json.dumps) write an emoji so: it must still work.
    reply = post(session, srv, "start", start_body(inputs='{"prompt": "hi \\ud83d\\ude00"}'))
    assert reply["message"] == "success", reply
    assert reply["modelOutputs"][0]["characters"] == 4


def test_a_model_output_with_a_lone_surrogate_is_passed_on_escaped(session: requests.Session, srv: DevServer) -> None:
    response = session.post(
        f"{srv.url}start/v4/",
        data=start_body(model_key='"surrogate"'),
        headers=HEADERS,
        timeout=30,
    )
    assert response.status_code == 200, response.text[:300]
    assert b'"\\ud800 alone"' in response.content  # valid JSON, the model's text exactly
    assert response.json()["modelOutputs"] == [{"text": "\ud800 alone"}]


def test_the_server_stays_healthy_after_surrogates(session: requests.Session, srv: DevServer) -> None:
    for _ in range(3):
        post(session, srv, "start", start_body(id_='"\\ud800"'))
    assert session.get(srv.url + "healthcheck", headers=HEADERS, timeout=10).status_code == 200
    reply = post(session, srv, "start", start_body())
    assert reply["message"] == "success"


# ---------------------------------------------------------------------------------------------------------
# Over-long ids.


def test_an_id_of_5_mb_is_refused_not_echoed(session: requests.Session, srv: DevServer) -> None:
    srv.reset()
    huge = "a" * (5 * 1024 * 1024)
    response = session.post(
        f"{srv.url}start/v4/", data=start_body(id_=json.dumps(huge)).encode(), headers=HEADERS, timeout=60
    )
    assert response.status_code == 200
    assert len(response.content) < 1024
    reply = response.json()
    assert_error_reply(reply, "'id'", str(len(huge)), str(MAX_ID_LENGTH))
    uuid.UUID(reply["id"])
    assert srv.stats()["starts_taken"] == 0


@pytest.mark.parametrize("endpoint", ["start", "check"])
def test_an_id_one_past_the_limit_is_refused(session: requests.Session, srv: DevServer, endpoint: str) -> None:
    too_long = "i" * (MAX_ID_LENGTH + 1)
    if endpoint == "start":
        body = start_body(id_=json.dumps(too_long))
    else:
        body = json.dumps({"id": too_long, "apiKey": KEY, "callID": "call_x"})
    reply = post(session, srv, endpoint, body)
    assert "error" in reply["message"]
    assert "'id'" in reply["message"]
    assert reply["id"] != too_long


def test_an_id_at_the_limit_is_echoed(session: requests.Session, srv: DevServer) -> None:
    longest = "i" * MAX_ID_LENGTH
    reply = post(session, srv, "start", start_body(id_=json.dumps(longest)))
    assert reply["message"] == "success"
    assert reply["id"] == longest


# ---------------------------------------------------------------------------------------------------------
# Idle connections.


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Return whether the server closed ``sock`` (EOF or reset) before ``deadline``; drain data."""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.5)
        if not readable:
            continue
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


def test_connections_that_never_send_a_request_are_closed(srv: DevServer) -> None:
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(50)]
    try:
        # Far past the keep-alive timeout: all of them within one bound.
        deadline = time.monotonic() + CLOSE_BOUND
        assert sum(closed_by_server(sock, deadline) for sock in socks) == len(socks)
    finally:
        for sock in socks:
            sock.close()


def test_idle_keep_alive_connections_are_closed(srv: DevServer) -> None:
    request = f"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nConnection: keep-alive\r\n\r\n".encode()
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(10)]
    try:
        for sock in socks:
            sock.sendall(request)
            answer = b""
            while b'"healthy"' not in answer:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection before answering"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in answer.lower()  # kept alive, at first
        deadline = time.monotonic() + CLOSE_BOUND
        assert sum(closed_by_server(sock, deadline) for sock in socks) == len(socks)
    finally:
        for sock in socks:
            sock.close()


def test_a_held_request_is_not_idle(session: requests.Session, srv: DevServer) -> None:
    # The Start holds (the model sleeps) for longer than the keep-alive timeout: it still answers.
    seconds = KEEP_ALIVE * 3
    body = start_body(model_key='"sleep"', inputs=json.dumps({"seconds": seconds, "result": "held"}))
    reply = post(session, srv, "start", body)
    assert reply["message"] == "success", reply
    assert reply["modelOutputs"][0]["result"] == "held"


def test_the_flag_is_in_the_help_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_banana.devserver", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "--keep-alive-timeout SECONDS" in help_text
    assert "(default: 20.0)" in help_text.split("--keep-alive-timeout SECONDS", 2)[2]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_bad_keep_alive_timeout_is_refused(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_banana.devserver", "--port", "0", "--keep-alive-timeout", value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "keep_alive_timeout must be a finite number > 0" in result.stderr
