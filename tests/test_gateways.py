"""
Gateways in front of the API: a Start is sent again only when the server refused it; 1xx are read through.

A gateway (Envoy, Istio, an ingress) that forwarded a Start and then lost the app answers a 5xx
("upstream connect error or disconnect/reset before headers"): the Start may have run and be billed.
Only the server's own "come back later" proves a refusal: 429 (with or without ``Retry-After``) and
503 *with* a valid ``Retry-After``. Every case counts the Starts the scripted gateway received,
through the sync hook, the async hook, the operator (``dag.test()``) and the batch.

Interim replies (``100``, ``102 Processing``, ``103 Early Hints``) before the final one are read
through by both halves, for a Start and for a Check.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from airflow_provider_banana.contract import START, START_MAY_BE_TAKEN, BananaRetryPolicy
from airflow_provider_banana.exceptions import BananaHTTPError
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from tests.dags import gateway_dags
from tests.helpers import assert_raised, connection_json, states, xcom
from tests.hostile import Action, HostileServer, Request, Send, head, json_reply, response

POLICY = BananaRetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2, jitter=0.0)
INPUTS = {"prompt": "hello"}
OUTPUTS = [{"ok": 1}]
#: A Start that finished at once, and a Start that runs on (followed by Checks).
FINISHED_START = json_reply({"message": "", "callID": "", "finished": True, "modelOutputs": OUTPUTS})
FINISHED_CHECK = json_reply({"message": "success", "callID": "call_A", "modelOutputs": OUTPUTS})
ENVOY = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
REFUSED = "refused the Start without taking it"
HALVES = ["sync", "async"]


def status(code: int, retry_after: str | None = None) -> list[Action]:
    """Return a gateway's error reply, with ``Retry-After`` if given."""
    return response(code, ENVOY, {"Retry-After": retry_after} if retry_after is not None else None)


class Gateway(HostileServer):
    """A scripted server: the i-th Start gets ``starts[i]``, the i-th Check ``checks[i]`` (the last repeats)."""

    def __init__(self, starts: Sequence[list[Action]], checks: Sequence[list[Action]] = (FINISHED_CHECK,)) -> None:
        counters = {"/start": itertools.count(), "/check": itertools.count()}
        lock = threading.Lock()

        def respond(request: Request) -> list[Action]:
            kind = "/start" if request.path.startswith("/start") else "/check"
            replies = starts if kind == "/start" else checks
            with lock:
                index = next(counters[kind])
            return replies[min(index, len(replies) - 1)]

        super().__init__(respond)


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point ``banana_default`` at a URL."""

    def point(url: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(url, model_key="m"))

    return point


def start(half: str, policy: BananaRetryPolicy = POLICY) -> Any:
    if half == "sync":
        return BananaHook(retry_policy=policy).start(INPUTS, start_only=True)

    async def run() -> Any:
        async with BananaAsyncHook(retry_policy=policy) as hook:
            return await hook.start(INPUTS, start_only=True)

    return asyncio.run(run())


def check(half: str) -> Any:
    if half == "sync":
        return BananaHook(retry_policy=POLICY).check("call_A", long_poll=False)

    async def run() -> Any:
        async with BananaAsyncHook(retry_policy=POLICY) as hook:
            return await hook.check("call_A", long_poll=False)

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------------------
# 1. The hooks: exact Start counts for each status.

#: (status, Retry-After): the gateway may have forwarded the Start; it is sent once, never again.
TAKEN = [
    (500, None),
    (502, None),
    (502, "0"),
    (502, "1"),
    (503, None),
    (503, "-1"),  # not valid: delta-seconds are digits only
    (503, "1.5"),
    (503, "soon"),
    (504, None),
    (504, "0"),
]
#: The server's own refusal: sent again, up to max_attempts in all.
REFUSALS = [
    (429, None),
    (429, "0"),
    (503, "0"),
    (503, "1"),
    (503, "Wed, 21 Oct 2015 07:28:00 GMT"),  # a date in the past: come back now
]


class TestHooks:
    @pytest.mark.parametrize(("code", "retry_after"), TAKEN)
    @pytest.mark.parametrize("half", HALVES)
    def test_a_start_that_may_have_been_taken_is_sent_once(
        self, half: str, code: int, retry_after: str | None, connect: Callable[[str], None]
    ) -> None:
        with Gateway([status(code, retry_after)]) as gateway:
            connect(gateway.url)
            with pytest.raises(BananaHTTPError) as caught:
                start(half)
            assert gateway.count("/start") == 1
        error = caught.value
        assert error.status_code == code
        assert error.request_sent is True
        assert START_MAY_BE_TAKEN in str(error)  # the same words as a lost answer
        assert REFUSED not in str(error)

    @pytest.mark.parametrize(("code", "retry_after"), REFUSALS)
    @pytest.mark.parametrize("half", HALVES)
    def test_a_refused_start_is_sent_again_up_to_max_attempts(
        self, half: str, code: int, retry_after: str | None, connect: Callable[[str], None]
    ) -> None:
        with Gateway([status(code, retry_after)]) as gateway:
            connect(gateway.url)
            with pytest.raises(BananaHTTPError) as caught:
                start(half)
            assert gateway.count("/start") == POLICY.max_attempts
        error = caught.value
        assert error.status_code == code
        assert error.request_sent is False  # refused: nothing was taken, so nothing is billed
        assert REFUSED in str(error)
        assert "may have been taken" not in str(error)

    @pytest.mark.parametrize(
        ("replies", "starts"),
        [
            ([status(429), FINISHED_START], 2),
            ([status(429, "0"), FINISHED_START], 2),
            ([status(503, "0"), FINISHED_START], 2),
            ([status(429), status(503, "0"), FINISHED_START], 3),
        ],
        ids=["429", "429-retry-after", "503-retry-after", "429-then-503-retry-after"],
    )
    @pytest.mark.parametrize("half", HALVES)
    def test_a_refused_start_then_taken_is_paid_once(
        self, half: str, replies: list[list[Action]], starts: int, connect: Callable[[str], None]
    ) -> None:
        with Gateway(replies) as gateway:
            connect(gateway.url)
            result = start(half)
            assert gateway.count("/start") == starts
        assert result.model_outputs == OUTPUTS

    @pytest.mark.parametrize("half", HALVES)
    def test_a_refusal_then_a_gateway_error_stops_there(self, half: str, connect: Callable[[str], None]) -> None:
        with Gateway([status(429), status(502, "0"), FINISHED_START]) as gateway:
            connect(gateway.url)
            with pytest.raises(BananaHTTPError, match="HTTP 502") as caught:
                start(half)
            assert gateway.count("/start") == 2
        assert caught.value.request_sent is True

    @pytest.mark.parametrize(
        "failures",
        [[status(502), status(503)], [status(504), status(500)], [status(503, "0"), status(502, "0")]],
        ids=["502-503", "504-500", "with-retry-after"],
    )
    @pytest.mark.parametrize("half", HALVES)
    def test_checks_are_still_retried_on_5xx(
        self, half: str, failures: list[list[Action]], connect: Callable[[str], None]
    ) -> None:
        with Gateway([FINISHED_START], [*failures, FINISHED_CHECK]) as gateway:
            connect(gateway.url)
            result = check(half)
            assert gateway.count("/check") == 3
            assert gateway.count("/start") == 0
        assert result.model_outputs == OUTPUTS

    @pytest.mark.parametrize("half", HALVES)
    def test_retry_after_zero_still_waits_the_backoff(self, half: str, connect: Callable[[str], None]) -> None:
        policy = BananaRetryPolicy(max_attempts=2, initial_delay=0.5, max_delay=5.0, jitter=0.0)
        with Gateway([status(429, "0")]) as gateway:
            connect(gateway.url)
            with pytest.raises(BananaHTTPError):
                start(half, policy)
            first, second = gateway.requests
        # A lower bound only (a loaded machine only makes the gap longer): no burst.
        assert second.received_at - first.received_at >= 0.4

    def test_the_pause_is_the_longer_of_retry_after_and_the_backoff(self) -> None:
        policy = BananaRetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=30.0, jitter=0.0)

        def refused(retry_after: float) -> BananaHTTPError:
            return BananaHTTPError("x", endpoint=START, status_code=429, retry_after=retry_after)

        assert [policy.delay(n, refused(0.0)) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
        assert policy.delay(1, refused(7.0)) == 7.0
        assert policy.delay(1, refused(3600.0)) == 30.0


# ---------------------------------------------------------------------------------------------------------
# 2. Interim replies (1xx) before the final one.


def with_interim(interim: bytes, final: list[Action]) -> list[Action]:
    """Return ``final`` preceded by interim replies, in the same write."""
    [whole] = final
    assert isinstance(whole, Send)
    return [Send(interim + whole.data)]


EARLY_HINTS = head(103, {"Link": "</style.css>; rel=preload; as=style"})
INTERIM = {
    "103": EARLY_HINTS,
    "102": head(102),
    "100": head(100),
    "103-102-100-103": EARLY_HINTS + head(102) + head(100) + EARLY_HINTS,
    "forty": head(102) * 40,
}


class TestInterimReplies:
    @pytest.mark.parametrize("interim", INTERIM.values(), ids=INTERIM.keys())
    @pytest.mark.parametrize("half", HALVES)
    def test_a_start_reads_through_to_the_final_reply(
        self, half: str, interim: bytes, connect: Callable[[str], None]
    ) -> None:
        with Gateway([with_interim(interim, FINISHED_START)]) as gateway:
            connect(gateway.url)
            result = start(half)
            assert gateway.count("/start") == 1
        assert result.model_outputs == OUTPUTS

    @pytest.mark.parametrize("interim", INTERIM.values(), ids=INTERIM.keys())
    @pytest.mark.parametrize("half", HALVES)
    def test_a_check_reads_through_to_the_final_reply(
        self, half: str, interim: bytes, connect: Callable[[str], None]
    ) -> None:
        with Gateway([FINISHED_START], [with_interim(interim, FINISHED_CHECK)]) as gateway:
            connect(gateway.url)
            result = check(half)
            assert gateway.count("/check") == 1
        assert result.model_outputs == OUTPUTS

    @pytest.mark.parametrize("half", HALVES)
    def test_the_final_reply_after_interim_ones_decides(self, half: str, connect: Callable[[str], None]) -> None:
        with Gateway([with_interim(EARLY_HINTS, status(503))]) as gateway:
            connect(gateway.url)
            with pytest.raises(BananaHTTPError, match="HTTP 503") as caught:
                start(half)
            assert gateway.count("/start") == 1
        assert START_MAY_BE_TAKEN in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# 3. The operator and the batch, through dag.test().

#: (replies to the Starts, Starts the gateway must see, whether the task succeeds)
OPERATOR_CASES = {
    "502": ([status(502)], 1, False),
    "502-retry-after": ([status(502, "0")], 1, False),
    "503": ([status(503)], 1, False),
    "504": ([status(504)], 1, False),
    "504-retry-after": ([status(504, "0")], 1, False),
    "503-retry-after-then-ok": ([status(503, "0"), FINISHED_START], 2, True),
    "503-retry-after-always": ([status(503, "0")], gateway_dags.MAX_ATTEMPTS, False),
    "429-then-ok": ([status(429), FINISHED_START], 2, True),
    "429-retry-after-always": ([status(429, "0")], gateway_dags.MAX_ATTEMPTS, False),
}


def assert_task_outcome(logs: str, replies: list[list[Action]], ok: bool, starts: int) -> None:
    if ok:
        return
    if starts == 1:  # one Start, which the gateway may have passed on: said so
        assert_raised(logs, "BananaHTTPError", "HTTP", START_MAY_BE_TAKEN)
    else:  # refused every time: said so, and never called possibly billed
        assert_raised(logs, "BananaHTTPError", REFUSED)
        assert "may have been taken" not in logs
        assert "retrying in" in logs  # the task's log was read, so the line above means something


@pytest.mark.usefixtures("airflow_db")
class TestOperator:
    @pytest.mark.parametrize(("replies", "starts", "ok"), OPERATOR_CASES.values(), ids=OPERATOR_CASES.keys())
    def test_blocking_operator_start_counts(
        self,
        replies: list[list[Action]],
        starts: int,
        ok: bool,
        connect: Callable[[str], None],
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        with Gateway(replies) as gateway:
            connect(gateway.url)
            run = gateway_dags.gateway_blocking.test()
            assert gateway.count("/start") == starts
        assert states(run) == {"infer": "success" if ok else "failed"}
        if ok:
            assert xcom(run, "infer") == OUTPUTS
        assert_task_outcome("".join(capfd.readouterr()), replies, ok, starts)

    @pytest.mark.parametrize(
        ("replies", "starts", "ok"),
        [OPERATOR_CASES["503"], OPERATOR_CASES["502-retry-after"], OPERATOR_CASES["429-then-ok"]],
        ids=["503", "502-retry-after", "429-then-ok"],
    )
    def test_deferrable_operator_start_counts(
        self,
        replies: list[list[Action]],
        starts: int,
        ok: bool,
        connect: Callable[[str], None],
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        with Gateway(replies) as gateway:
            connect(gateway.url)
            run = gateway_dags.gateway_deferrable.test()
            assert gateway.count("/start") == starts
        assert states(run) == {"infer": "success" if ok else "failed"}
        assert_task_outcome("".join(capfd.readouterr()), replies, ok, starts)


BATCH = 3
#: (replies to the Starts, in arrival order; Starts the gateway must see; whether the batch succeeds)
BATCH_CASES = {
    "502": ([status(502)], BATCH, False),
    "503": ([status(503)], BATCH, False),
    "504-retry-after": ([status(504, "0")], BATCH, False),
    "503-retry-after-always": ([status(503, "0")], BATCH * gateway_dags.MAX_ATTEMPTS, False),
    "429-always": ([status(429)], BATCH * gateway_dags.MAX_ATTEMPTS, False),
    # Three refusals, then every Start taken: each input is paid once, whatever order they came in.
    "429-three-then-ok": ([status(429)] * 3 + [FINISHED_START], 2 * BATCH, True),
}


@pytest.mark.usefixtures("airflow_db")
class TestBatch:
    @pytest.mark.parametrize(("replies", "starts", "ok"), BATCH_CASES.values(), ids=BATCH_CASES.keys())
    def test_batch_start_counts(
        self,
        replies: list[list[Action]],
        starts: int,
        ok: bool,
        connect: Callable[[str], None],
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        with Gateway(replies) as gateway:
            connect(gateway.url)
            run = gateway_dags.gateway_batch.test()
            assert gateway.count("/start") == starts
        assert states(run) == {"batch": "success" if ok else "failed"}
        logs = "".join(capfd.readouterr())
        if ok:
            assert xcom(run, "batch") == [OUTPUTS] * BATCH
        elif starts == BATCH:  # each input's Start sent once, and may have been taken: said so
            assert_raised(logs, "BananaHTTPError", START_MAY_BE_TAKEN)
        else:  # every Start refused: the batch never calls one it repeated possibly billed
            assert_raised(logs, "BananaHTTPError", REFUSED)
            assert "may have been taken" not in logs
            assert "retrying in" in logs  # the task's log was read, so the line above means something
