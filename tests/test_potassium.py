"""
A real Potassium app (``tests/potassium_app.py``, Potassium 0.5.0 from the dev extra) behind the devserver.

Potassium serves each ``@app.handler`` route at exactly its path, runs one handler at a time
(0.5.0 queues the rest inside itself) and answers a crash 500 with the traceback. The devserver
must post to the URL as given, queue calls itself so that ``--model-timeout`` only runs while
the model works, keep the traceback's last lines, and count what it holds exactly.

Every process here is started on 127.0.0.1 by a fixture that stops it, and every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.harness import free_port
from tests.helpers import wait_until

pytest.importorskip("potassium", reason="potassium==0.5.0 comes with the dev extra: pip install -e '.[dev]'")

pytestmark = pytest.mark.timeout(120)

APP = Path(__file__).with_name("potassium_app.py")
# Each sleep call takes this long at the model; four of them one after another outlast MODEL_TIMEOUT.
SLEEP = 1.0
MODEL_TIMEOUT = 2.5
IDLE = {"running": 0, "queued": 0, "long_polls_open": 0, "start_holds_open": 0}


class PotassiumApp:
    """``tests/potassium_app.py`` in a subprocess of its own session, on a free 127.0.0.1 port.

    :param log_path: where its stdout and stderr go.
    """

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Launch the app and wait until ``GET /__status__`` answers (``/healthcheck`` is not served by 0.5.0)."""
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(APP), str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so that stop() reaches anything it spawned.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the Potassium app exited during startup:\n{self.log_text()}")
            try:
                if self.status()["gpu_available"]:
                    return
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the Potassium app did not answer within {timeout}s:\n{self.log_text()}")
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        """Potassium's own status: ``gpu_available`` is false while a request is in progress."""
        response = requests.get(f"{self.url}/__status__", timeout=2, proxies={"http": "", "https": ""})
        response.raise_for_status()
        status: dict[str, Any] = response.json()
        return status

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until Potassium has no request in progress (calls abandoned by an earlier test finish there)."""
        wait_until("the Potassium app idle", lambda: self.status()["gpu_available"], timeout=timeout, interval=0.1)

    def stop(self) -> None:
        """Stop the app's process group: SIGTERM, then SIGKILL after 5 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def log_text(self) -> str:
        """What the app printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def potassium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PotassiumApp]:
    app = PotassiumApp(tmp_path_factory.mktemp("potassium") / "app.log")
    try:
        app.start()
        yield app
    finally:
        app.stop()


def models(app: PotassiumApp) -> dict[str, str]:
    return {
        "sleep": f"{app.url}/sleep",
        "crash": f"{app.url}/crash",
        # Potassium routes do not match with a trailing slash: this one must answer 404.
        "sleep-slash": f"{app.url}/sleep/",
    }


@pytest.fixture(scope="module")
def banana_server(potassium: PotassiumApp) -> Iterator[DevServer]:
    with DevServer(
        start_hold=2,
        check_hold=5,
        models=models(potassium),
        extra_args=["--model-timeout", str(MODEL_TIMEOUT)],
        log_level="debug",
    ) as srv:
        yield srv


@pytest.fixture
def srv(banana_server: DevServer, potassium: PotassiumApp) -> DevServer:
    potassium.wait_idle()
    banana_server.reset(forget_calls=True)
    return banana_server


# --------------------------------------------------------------------------- helpers


def start(session: requests.Session, srv: DevServer, model: str, inputs: Any, start_only: bool = True) -> Any:
    body = {"id": str(uuid.uuid4()), "created": int(time.time()), "apiKey": "any", "modelKey": model}
    body |= {"startOnly": start_only, "modelInputs": inputs}
    response = session.post(srv.url + "start/v4/", json=body, timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


def check(session: requests.Session, srv: DevServer, call_id: str, long_poll: bool = False) -> Any:
    body = {"id": str(uuid.uuid4()), "created": int(time.time()), "apiKey": "any"}
    body |= {"callID": call_id, "longPoll": long_poll}
    response = session.post(srv.url + "check/v4/", json=body, timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


def result(session: requests.Session, srv: DevServer, call_id: str, timeout: float = 30.0) -> Any:
    """Long-poll until the call is settled, as a Banana client does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = check(session, srv, call_id, long_poll=True)
        if reply["message"] not in ("queued", "running"):
            return reply
    raise AssertionError(f"call {call_id} not settled within {timeout}s")


def assert_idle(srv: DevServer) -> None:
    """Nothing is left running, queued or held: the gauges are back to zero."""
    srv.wait_until(lambda s: all(s[name] == value for name, value in IDLE.items()), timeout=10)


# --------------------------------------------------------------------------- tests


def test_handler_is_reached_at_its_exact_path(session: requests.Session, srv: DevServer) -> None:
    reply = start(session, srv, "sleep", {"seconds": 0, "tag": "exact"}, start_only=False)
    assert reply["message"] == "success"
    assert reply["finished"] is True
    assert reply["modelOutputs"][0]["tag"] == "exact"
    # the URL as given, trailing slash included: Potassium answers 404 to /sleep/
    missed = start(session, srv, "sleep-slash", {"seconds": 0}, start_only=False)
    assert missed["message"].startswith("error: model server answered HTTP 404")
    assert missed["finished"] is False
    assert_idle(srv)


def test_overlapping_calls_wait_their_turn_in_the_devserver(
    session: requests.Session, srv: DevServer, potassium: PotassiumApp
) -> None:
    sent_before = potassium.status()["sequence_number"]
    began = time.monotonic()
    call_ids = [start(session, srv, "sleep", {"seconds": SLEEP, "tag": n})["callID"] for n in range(4)]
    # while the first runs, the others are queued in the devserver, not sent to Potassium
    during = srv.wait_until(lambda s: s["queued"] >= 1 and s["running"] == 1, timeout=5)
    assert during["per_model"]["sleep"]["running"] == 1
    replies = [result(session, srv, call_id) for call_id in call_ids]
    # 4 s of work one at a time, yet no call timed out after 2.5 s: each one's timeout began when it was sent
    assert [reply["message"] for reply in replies] == ["success"] * 4, replies
    assert [reply["modelOutputs"][0]["tag"] for reply in replies] == [0, 1, 2, 3]
    assert time.monotonic() - began >= 4 * SLEEP
    runs = sorted((out["began"], out["ended"]) for out in (reply["modelOutputs"][0] for reply in replies))
    for (_, ended), (next_began, _) in itertools.pairwise(runs):
        assert next_began >= ended - 0.01, f"Potassium ran two calls at once: {runs}"
    stats = srv.stats()
    assert stats["per_model"]["sleep"]["running_max"] == 1
    assert stats["queued_max"] >= 2
    assert (stats["finished"], stats["failed"]) == (4, 0)
    # each call was sent exactly once
    assert potassium.status()["sequence_number"] - sent_before == 4
    assert_idle(srv)


def test_without_the_limit_potassium_s_own_queue_eats_the_timeout(
    session: requests.Session, potassium: PotassiumApp
) -> None:
    # What the devserver did before the limit, now --model-concurrency 0: all four requests reach
    # Potassium at once, and the ones waiting in its queue time out although they would have run.
    potassium.wait_idle()
    with DevServer(
        models=models(potassium), model_concurrency=0, extra_args=["--model-timeout", str(MODEL_TIMEOUT)]
    ) as unlimited:
        call_ids = [start(session, unlimited, "sleep", {"seconds": SLEEP, "tag": n})["callID"] for n in range(4)]
        messages = [result(session, unlimited, call_id)["message"] for call_id in call_ids]
        assert "success" in messages
        assert messages.count("error: model server timed out: ReadTimeout") >= 2, messages
        assert unlimited.stats()["per_model"]["sleep"]["running_max"] == 4
        assert_idle(unlimited)
    potassium.wait_idle()  # Potassium still runs the abandoned ones: their work is thrown away


def test_crash_reports_the_exception_line(session: requests.Session, srv: DevServer) -> None:
    reply = start(session, srv, "crash", {}, start_only=False)
    message = reply["message"]
    assert reply["finished"] is False
    assert "error" in message  # a Banana client treats the call as failed
    assert message.startswith("error: model server answered HTTP 500: ")
    assert message.endswith("ValueError: bad weights"), message
    assert 'raise ValueError("bad weights")' in message
    assert "^^^" not in message
    assert len(message) <= 600
    assert check(session, srv, reply["callID"])["message"] == message
    stats = srv.stats()
    assert (stats["finished"], stats["failed"]) == (0, 1)
    assert_idle(srv)


def test_models_of_one_app_take_turns(session: requests.Session, srv: DevServer) -> None:
    # /sleep and /crash are one Potassium app running one handler at a time: they share its slot.
    slow = start(session, srv, "sleep", {"seconds": SLEEP})["callID"]
    srv.wait_until(lambda s: s["per_model"]["sleep"]["running"] == 1, timeout=5)
    crash = start(session, srv, "crash", {})["callID"]
    assert check(session, srv, crash)["message"] == "queued"
    stats = srv.stats()
    assert (stats["running"], stats["queued"], stats["per_model"]["crash"]["queued"]) == (1, 1, 1)
    assert result(session, srv, slow)["message"] == "success"
    assert "ValueError: bad weights" in result(session, srv, crash)["message"]
    assert_idle(srv)


def test_held_requests_are_counted_exactly(session: requests.Session, srv: DevServer) -> None:
    srv.settings(check_hold=30)
    slow = start(session, srv, "sleep", {"seconds": SLEEP})["callID"]
    waiting = start(session, srv, "sleep", {"seconds": 0})["callID"]
    # a long poll on the queued call whose client goes away
    data = json.dumps({"callID": waiting, "longPoll": True}).encode()
    head = "POST /check/v4/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(head.encode() + data)
        srv.wait_until(lambda s: s["long_polls_open"] == 1, timeout=5)
    srv.wait_until(lambda s: s["long_polls_open"] == 0, timeout=3)
    # and one whose client stays: answered when the call finishes
    assert result(session, srv, waiting)["message"] == "success"
    assert result(session, srv, slow)["message"] == "success"
    assert srv.stats()["long_polls_open_max"] >= 1
    assert_idle(srv)
