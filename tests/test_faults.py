"""
Fault injection: every fault the local server can produce, through the sync and the async path.

Each case names its fault, the outcome both paths must reach, and how many Starts the server may
have taken. Transport trouble must never read as a failed inference, a failed inference must never
be retried as transport trouble, nothing may hang past its deadline, and no Start is ever paid
twice: across the whole table the server never takes more Starts than the case allows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_banana.contract import BananaRetryPolicy
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaConnectError,
    BananaHTTPError,
    BananaProtocolError,
    BananaResponseLostError,
)
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger
from tests.helpers import API_KEY, collect, connection_json

POLICY = BananaRetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=1.5, jitter=0.02)
#: The bound of every wait in this module: a case that is not over by then has hung.
DEADLINE = 12.0
#: Longer than the server's Start hold (1 s), so every call is Checked after its Start.
SLEEP = {"seconds": 1.5, "result": "ok"}


@dataclass(frozen=True)
class Case:
    """One fault and what it must lead to."""

    name: str
    faults: dict[str, Any]
    #: "success", or the exception class both paths must raise.
    outcome: str | type[Exception]
    #: Starts the server may take: 1 when the Start got through once, 0 when it was refused.
    starts: int = 1
    #: Inputs and model; the default call outlasts the Start hold, so Checks happen.
    model_key: str = "sleep"
    inputs: dict[str, Any] = field(default_factory=lambda: dict(SLEEP))
    #: Extra assertion on the server's counters.
    check: Callable[[dict[str, Any]], bool] | None = None


def burst(status: int, endpoint: str, count: int = 3, **more: Any) -> dict[str, Any]:
    return {"fail_next": {"count": count, "status": status, "endpoints": [endpoint], **more}}


CASES = [
    Case("500 burst on Check", burst(500, "check"), "success"),
    Case("502 burst on Check", burst(502, "check"), "success"),
    Case("503 burst on Check", burst(503, "check"), "success"),
    Case("503 with Retry-After burst on Start (refused)", burst(503, "start", retry_after=0), "success"),
    Case("bare 503 on Start (may have been taken)", burst(503, "start", count=1), BananaHTTPError, starts=0),
    Case("500 on Start (may have been taken)", burst(500, "start", count=1), BananaHTTPError, starts=0),
    Case("502 on Start", burst(502, "start", count=1), BananaHTTPError, starts=0),
    Case(
        "429 with Retry-After on Start",
        burst(429, "start", count=1, retry_after=1),
        "success",
        check=lambda s: s["start_requests"] == 2,
    ),
    Case("429 with Retry-After on Check", burst(429, "check", count=2, retry_after=0), "success"),
    Case(
        "connection reset mid-answer on Start",
        {"drop_next": {"count": 1, "endpoints": ["start"]}},
        BananaResponseLostError,
        check=lambda s: s["start_requests"] == 1,
    ),
    Case("connection reset mid-answer on Check", {"drop_next": {"count": 2, "endpoints": ["check"]}}, "success"),
    Case(
        "answer slower than the client timeout on Check",
        {"delay_next": {"count": 1, "seconds": 4.5, "endpoints": ["check"]}},
        "success",
    ),
    Case(
        "non-JSON body on Start", {"non_json_next": {"count": 1, "endpoints": ["start"]}}, BananaProtocolError, starts=0
    ),
    Case("non-JSON body on Check", {"non_json_next": {"count": 2, "endpoints": ["check"]}}, "success"),
    Case("JSON list body on Check", {"raw_next": {"count": 1, "endpoints": ["check"], "body": [1]}}, "success"),
    Case(
        "JSON without message on Check", {"raw_next": {"count": 1, "endpoints": ["check"], "body": {"x": 1}}}, "success"
    ),
    Case(
        "JSON without message on Start",
        {"raw_next": {"count": 1, "endpoints": ["start"], "body": {"x": 1}}},
        BananaProtocolError,
        starts=0,
    ),
    Case(
        "HTTP 200 carrying an error message on Check",
        {"raw_next": {"count": 1, "endpoints": ["check"], "body": {"message": "inference Error: OOM"}}},
        BananaCallError,
        check=lambda s: s["check_requests"] == 1,
    ),
    Case(
        "failed inference",
        {},
        BananaCallError,
        model_key="fail",
        inputs={"reason": "bad"},
        check=lambda s: s["check_requests"] <= 1,
    ),
]


@pytest.fixture(scope="module")
def fault_server() -> Iterator[DevServer]:
    # Its own server: these cases stop and restart it. Short holds and read timeouts keep slow
    # answers quick to provoke.
    with DevServer(start_hold=1, check_hold=1, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def fserver(fault_server: DevServer, monkeypatch: pytest.MonkeyPatch) -> DevServer:
    if not fault_server.running:
        fault_server.start()
    fault_server.reset(forget_calls=True)
    # Each limit holds a whole request (not one read), so they leave a loaded 2-core machine room:
    # a quick request gets 2.5 s, a held one its hold + 2 s; the "slower than the client" fault waits 4.5 s.
    conn = connection_json(fault_server.url, start_hold=1, check_hold=1, read_margin=2, quick_read=2.5)
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", conn)
    return fault_server


def sync_run(case: Case) -> Any:
    return BananaHook(retry_policy=POLICY).run(case.inputs, case.model_key, timeout=DEADLINE)


def async_run(case: Case) -> Any:
    async def run() -> Any:
        async with BananaAsyncHook(retry_policy=POLICY) as hook:
            return await hook.run(case.inputs, case.model_key, timeout=DEADLINE)

    return asyncio.run(run())


def outcome_of(call: Callable[[], Any]) -> tuple[str | type[Exception], float, Exception | None]:
    began = time.monotonic()
    try:
        call()
    except Exception as e:
        return type(e), time.monotonic() - began, e
    return "success", time.monotonic() - began, None


@pytest.mark.parametrize("path", [sync_run, async_run], ids=["sync", "async"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fault(case: Case, path: Callable[[Case], Any], fserver: DevServer) -> None:
    if case.faults:
        fserver.faults(**case.faults)
    got, elapsed, error = outcome_of(lambda: path(case))
    if isinstance(case.outcome, type):
        assert isinstance(error, case.outcome), f"{case.name}: expected {case.outcome.__name__}, got {got} {error}"
    else:
        assert got == case.outcome, f"{case.name}: {error!r}"
    assert elapsed < DEADLINE + 3, f"{case.name} took {elapsed:.1f} s"
    if error is not None:
        assert API_KEY not in str(error)
        assert API_KEY not in repr(error)
    stats = fserver.stats()
    if case.faults:
        assert stats["faults_served"] >= 1, f"{case.name}: the fault never fired"
    assert stats["starts_taken"] == case.starts, f"{case.name}: {stats['starts_taken']} Starts taken"
    if case.check is not None:
        assert case.check(stats), stats
    # Transport trouble is never a failed inference, and a failed inference never transport trouble.
    if case.outcome in (BananaHTTPError, BananaProtocolError, BananaResponseLostError):
        assert not isinstance(error, BananaCallError)


def test_unknown_call_id(fserver: DevServer) -> None:
    with pytest.raises(BananaCallNotFoundError) as info:
        BananaHook(retry_policy=POLICY).wait("call_unknown", timeout=DEADLINE)
    assert "call_unknown" in str(info.value)
    assert fserver.stats()["check_requests"] == 1


@pytest.mark.parametrize("how", ["forget", "restart"])
def test_server_restarted_mid_call_is_a_clear_error_not_a_hang(fserver: DevServer, how: str) -> None:
    call_id = BananaHook(retry_policy=POLICY).start({"seconds": 30}, "sleep", start_only=True).call_id or ""
    if how == "forget":
        fserver.forget()
    else:
        fserver.restart()
    began = time.monotonic()
    with pytest.raises(BananaCallNotFoundError) as info:
        BananaHook(retry_policy=POLICY).wait(call_id, timeout=DEADLINE)
    assert call_id in str(info.value)
    assert time.monotonic() - began < 5

    now = time.time()
    trigger = BananaCallTrigger(call_id, "banana_default", deadline=now + DEADLINE, started_at=now)
    events = asyncio.run(collect(trigger))
    assert [e.payload["status"] for e in events] == ["failed"]
    assert call_id in events[0].payload["call_id"]
    assert "does not exist" in events[0].payload["message"]  # Banana's answer for a call it lost


def test_server_down_longer_than_the_retry_budget(fserver: DevServer) -> None:
    call_id = BananaHook(retry_policy=POLICY).start({"seconds": 30}, "sleep", start_only=True).call_id or ""
    fserver.stop()
    began = time.monotonic()
    with pytest.raises(BananaConnectError) as info:
        BananaHook(retry_policy=POLICY).wait(call_id, timeout=DEADLINE)
    assert call_id in str(info.value)
    assert time.monotonic() - began < DEADLINE

    now = time.time()
    trigger = BananaCallTrigger(call_id, "banana_default", deadline=now + DEADLINE, started_at=now, max_attempts=3)
    events = asyncio.run(collect(trigger))
    assert [e.payload["status"] for e in events] == ["error"]
    assert "could not connect" in events[0].payload["message"]
    assert time.monotonic() - began < 2 * DEADLINE
    with pytest.raises(BananaConnectError):
        BananaHook(retry_policy=POLICY).start({"prompt": "x"}, "wordcount")
    fserver.start()
    assert fserver.stats()["starts_taken"] == 0  # a fresh process: nothing was taken while down
