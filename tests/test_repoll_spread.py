"""
The re-poll path of the async side: the retry policy's own loop, and the first long poll's cut.

Waits that begin together would long-poll in step: the first long poll of each wait is abandoned
after a random 50-100 % of the hold and sent again at once (``CallWaiter.hold_cut``), so that
their holds end apart. These tests pin the decisions (pure) and the behaviour over real HTTP
against the scripted server: a first Check that is never answered is abandoned at its cut and
followed at once by one that is, without a retry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import tenacity

from airflow_provider_banana.contract import CHECK, START, BananaRetryPolicy, CallWaiter, success_event
from airflow_provider_banana.contract.waiting import SPREAD_FROM
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaConnectError,
    BananaHTTPError,
    BananaResponseLostError,
)
from airflow_provider_banana.hooks.banana import BananaAsyncHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger
from tests.helpers import collect, connection_json
from tests.hostile import HostileServer, Request, hang, json_reply

POLICY = BananaRetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2, jitter=0.0)
NO_RETRY = BananaRetryPolicy(max_attempts=1)
OUTPUTS = [{"answer": 42}]
SUCCESS = {"message": "success", "modelOutputs": OUTPUTS}


# ---------------------------------------------------------------------------------------------------------
# The decisions, pure.


def waiter(*, long_poll: bool = True, poll_interval: float = 5.0, seconds_left: float = 600.0) -> CallWaiter:
    return CallWaiter.begin(
        "call_x", deadline=time.time() + seconds_left, long_poll=long_poll, poll_interval=poll_interval
    )


def test_the_first_long_poll_is_cut_between_half_the_hold_and_the_hold() -> None:
    cuts = [waiter().hold_cut(50.0) for _ in range(500)]
    assert all(cut is not None and SPREAD_FROM * 50.0 <= cut < 50.0 for cut in cuts)
    assert max(c for c in cuts if c is not None) - min(c for c in cuts if c is not None) > 10, "spread, not one value"


def test_only_the_first_long_poll_is_cut() -> None:
    w = waiter()
    assert w.hold_cut(50.0) is not None
    step = w.observe_unanswered()
    assert (step.outputs, step.pause, step.log_line, w.checks) == (None, 0.0, None, 1)
    assert w.hold_cut(50.0) is None


def test_no_cut_without_long_poll_below_the_poll_interval_or_past_the_deadline() -> None:
    assert waiter(long_poll=False).hold_cut(50.0) is None
    # Two Checks must start at least poll_interval apart: a 2 s hold leaves no room above 5 s.
    assert waiter(poll_interval=5.0).hold_cut(2.0) is None
    cut = waiter(poll_interval=0.5).hold_cut(2.0)
    assert cut is not None
    assert 1.0 <= cut < 2.0
    # The request's own limit is cut to the deadline already; a cut past it would never fire.
    assert waiter(seconds_left=10.0).hold_cut(50.0) is None


@pytest.mark.parametrize(
    ("endpoint", "error", "attempt", "expected"),
    [
        (CHECK, BananaConnectError("refused", endpoint=CHECK), 1, 0.05),
        (CHECK, BananaResponseLostError("lost", endpoint=CHECK), 2, 0.1),
        (CHECK, BananaHTTPError("HTTP 500", endpoint=CHECK, status_code=500), 1, 0.05),
        (CHECK, BananaConnectError("refused", endpoint=CHECK), 3, None),  # max_attempts reached
        (START, BananaHTTPError("HTTP 500", endpoint=START, status_code=500), 1, None),  # may be taken
        (START, BananaResponseLostError("lost", endpoint=START), 1, None),
        (START, BananaHTTPError("HTTP 429", endpoint=START, status_code=429), 1, 0.05),  # refused
        (CHECK, BananaCallError("error: model failed", call_id="c"), 1, None),
        (CHECK, ValueError("a bug, not the network"), 1, None),
    ],
)
def test_pause_before_retry_decides_as_the_tenacity_policy(
    endpoint: str, error: BaseException, attempt: int, expected: float | None
) -> None:
    assert POLICY.pause_before_retry(endpoint, attempt, error) == expected
    # The sync hook's tenacity arguments, asked about the same attempt, decide the same.
    kwargs = POLICY.tenacity_kwargs(endpoint)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    state.upcoming_sleep = kwargs["wait"](state)
    retried = kwargs["retry"](state) and not kwargs["stop"](state)
    assert (state.upcoming_sleep if retried else None) == expected


def test_no_retry_whose_pause_ends_past_the_deadline() -> None:
    error = BananaConnectError("refused", endpoint=CHECK)
    assert POLICY.pause_before_retry(CHECK, 1, error, deadline=time.time() + 60) == 0.05
    assert POLICY.pause_before_retry(CHECK, 1, error, deadline=time.time() + 0.01) is None


# ---------------------------------------------------------------------------------------------------------
# Over HTTP: the first Check is never answered; the cut abandons it and the next one is.


@pytest.fixture
def hanging_first_check(monkeypatch: pytest.MonkeyPatch) -> Any:
    replies = iter([[hang()]])

    def respond(request: Request) -> Any:
        return next(replies, json_reply(SUCCESS))

    with HostileServer(respond, lifetime=60) as server:
        # The client is told a 2 s hold: the cut falls between 1 and 2 s (poll_interval 0.5 below);
        # without it, the silent Check would end only at its read limit (2 + 3 s), as a retried error.
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, check_hold=2, read_margin=3))
        yield server


def test_the_hook_abandons_the_first_long_poll_at_its_cut_and_checks_again_at_once(
    hanging_first_check: HostileServer,
) -> None:
    # No retries: without the cut, the silent Check would fail the wait at its read limit.
    async def main() -> list[Any]:
        async with BananaAsyncHook(retry_policy=NO_RETRY) as hook:
            return await hook.wait("call_x", timeout=60, poll_interval=0.5)

    assert asyncio.run(main()) == OUTPUTS
    assert len(hanging_first_check.requests) == 2


def test_the_trigger_counts_the_abandoned_check_and_yields_the_outputs(hanging_first_check: HostileServer) -> None:
    now = time.time()
    trigger = BananaCallTrigger("call_x", deadline=now + 60, started_at=now, poll_interval=0.5, max_attempts=1)
    events = asyncio.run(collect(trigger))
    assert len(events) == 1
    payload = events[0].payload
    expected = success_event("call_x", OUTPUTS, checks=2, elapsed=payload["elapsed"])
    assert payload == expected
    assert len(hanging_first_check.requests) == 2
