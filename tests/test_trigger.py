"""BananaCallTrigger and BananaAsyncHook over real HTTP, and the sync/async paths agreeing."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_banana.contract import BananaRetryPolicy
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaError
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger
from benchmarks.harness import free_port
from tests.helpers import API_KEY, FAST, HOLD, collect, connection_json


def start_call(inputs: dict[str, Any], model_key: str) -> str:
    call_id = BananaHook(retry_policy=FAST).start(inputs, model_key, start_only=True).call_id
    assert call_id
    return call_id


def make_trigger(call_id: str, timeout: float = 30.0, **kwargs: Any) -> BananaCallTrigger:
    now = time.time()
    return BananaCallTrigger(call_id, "banana_default", deadline=now + timeout, started_at=now, **kwargs)


def run_trigger(trigger: BananaCallTrigger) -> dict[str, Any]:
    events = asyncio.run(collect(trigger))
    assert len(events) == 1, events  # exactly one event, whatever happens
    payload = events[0].payload
    assert json.loads(json.dumps(payload)) == payload  # it is stored as JSON
    assert API_KEY not in json.dumps(payload)
    return payload


class TestSerialize:
    def test_kwargs_are_small_json_and_secret_free(self) -> None:
        trigger = make_trigger("call_abc", timeout=60, poll_interval=2.5, long_poll=False, max_attempts=3)
        classpath, kwargs = trigger.serialize()
        assert classpath == "airflow_provider_banana.triggers.banana.BananaCallTrigger"
        assert set(kwargs) == {
            "call_id",
            "banana_conn_id",
            "deadline",
            "started_at",
            "poll_interval",
            "long_poll",
            "max_attempts",
            "deferred_at",
        }
        text = json.dumps(kwargs)
        assert len(text) < 300
        assert API_KEY not in text
        rebuilt = BananaCallTrigger(**json.loads(text))
        assert rebuilt.serialize() == (classpath, kwargs)
        assert kwargs["deadline"] == trigger.deadline  # absolute: a rebuild keeps the same deadline

    def test_bad_arguments_fail_when_built(self) -> None:
        with pytest.raises(BananaError, match="call id"):
            make_trigger("")
        with pytest.raises(BananaError, match="poll_interval"):
            make_trigger("call_1", poll_interval=0)
        with pytest.raises(BananaError, match="deadline"):
            BananaCallTrigger("call_1", "banana_default")


class TestRun:
    def test_success(self, banana_conn: str, server: DevServer) -> None:
        call_id = start_call({"seconds": 0.5, "result": [1, 2]}, "sleep")
        payload = run_trigger(make_trigger(call_id))
        assert payload["status"] == "success"
        assert payload["call_id"] == call_id
        assert payload["model_outputs"] == [{"slept": pytest.approx(0.5, abs=0.2), "result": [1, 2]}]
        assert server.stats()["starts_taken"] == 1  # the trigger never starts a call

    def test_logs_a_resumed_watch_and_failures_not_each_success(
        self, banana_conn: str, server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        call_id = start_call({"seconds": 0.2, "result": 1}, "sleep")
        capfd.readouterr()
        assert run_trigger(make_trigger(call_id))["status"] == "success"
        # A success is Airflow's "Trigger fired event" line, an ordinary start its "trigger ... starting".
        assert call_id not in "".join(capfd.readouterr())
        assert run_trigger(make_trigger(call_id, deferred_at=time.time() - 60))["status"] == "success"
        assert "resuming a watch begun 60 s ago" in "".join(capfd.readouterr())
        assert run_trigger(make_trigger("call_missing"))["status"] != "success"
        assert "call_missing" in "".join(capfd.readouterr())

    def test_no_sleep_after_a_held_long_poll(self, banana_conn: str, server: DevServer) -> None:
        call_id = start_call({"seconds": 2.5}, "sleep")
        began = time.monotonic()
        payload = run_trigger(make_trigger(call_id, poll_interval=0.5))
        assert payload["status"] == "success"
        # Held for HOLD (2 s), came back running, asked again at once, woke on completion.
        assert server.stats()["check_requests"] == 2
        assert time.monotonic() - began < 2.5 + HOLD

    def test_short_polls_pace_by_poll_interval(self, banana_conn: str, server: DevServer) -> None:
        call_id = start_call({"seconds": 1.2}, "sleep")
        payload = run_trigger(make_trigger(call_id, poll_interval=0.5, long_poll=False))
        assert payload["status"] == "success"
        assert 2 <= server.stats()["check_requests"] <= 5

    def test_failed_call(self, banana_conn: str) -> None:
        call_id = start_call({"reason": "bad weights"}, "fail")
        payload = run_trigger(make_trigger(call_id))
        assert payload["status"] == "failed"
        assert "bad weights" in payload["message"]
        assert payload["model_outputs"] is None

    def test_unknown_call(self, banana_conn: str) -> None:
        payload = run_trigger(make_trigger("call_never-issued"))
        assert payload["status"] == "failed"
        assert "does not exist" in payload["message"]

    def test_deadline(self, banana_conn: str) -> None:
        call_id = start_call({"seconds": 30}, "sleep")
        began = time.monotonic()
        payload = run_trigger(make_trigger(call_id, timeout=1.0))
        assert payload["status"] == "timeout"
        assert payload["call_id"] == call_id
        assert time.monotonic() - began < 2.0  # the long poll is cut at the deadline

    def test_deadline_already_passed_sends_nothing(self, banana_conn: str, server: DevServer) -> None:
        trigger = BananaCallTrigger("call_1", "banana_default", deadline=time.time() - 1, started_at=time.time() - 60)
        assert run_trigger(trigger)["status"] == "timeout"
        assert server.stats()["check_requests"] == 0

    def test_transport_trouble_is_an_error_not_a_failed_inference(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(f"http://127.0.0.1:{free_port()}/"))
        payload = run_trigger(make_trigger("call_1", max_attempts=2))
        assert payload["status"] == "error"
        assert "could not connect" in payload["message"]

    def test_transient_failures_are_survived(self, banana_conn: str, server: DevServer) -> None:
        call_id = start_call({"seconds": 0.3}, "sleep")
        server.faults(fail_next={"count": 2, "status": 502, "endpoints": ["check"]})
        payload = run_trigger(make_trigger(call_id))
        assert payload["status"] == "success"

    def test_unknown_connection_is_an_error_event(self) -> None:
        trigger = BananaCallTrigger("call_1", "no_such_connection", deadline=time.time() + 5)
        payload = run_trigger(trigger)
        assert payload["status"] == "error"
        assert "no_such_connection" in payload["message"]

    def test_rebuilt_mid_call_carries_on(self, banana_conn: str, server: DevServer) -> None:
        call_id = start_call({"seconds": 1.5, "result": "same"}, "sleep")
        first = make_trigger(call_id)

        async def run_then_stop() -> None:
            task = asyncio.ensure_future(collect(first))
            # Mid-call: its first Check (a long poll on the 1.5 s call) has reached the server.
            await asyncio.to_thread(server.wait_until, lambda stats: stats["check_requests"] >= 1, 5.0)
            task.cancel()  # the triggerer stops (restart, or the trigger moves elsewhere)
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run_then_stop())
        _, kwargs = first.serialize()
        payload = run_trigger(BananaCallTrigger(**kwargs))
        assert payload["status"] == "success"
        assert payload["call_id"] == call_id
        assert payload["model_outputs"][0]["result"] == "same"
        assert server.stats()["starts_taken"] == 1

    def test_two_triggers_on_one_call_are_harmless(self, banana_conn: str, server: DevServer) -> None:
        call_id = start_call({"seconds": 0.5}, "sleep")

        async def both() -> list[list[TriggerEvent]]:
            return list(await asyncio.gather(collect(make_trigger(call_id)), collect(make_trigger(call_id))))

        results = asyncio.run(both())
        assert [events[0].payload["status"] for events in results] == ["success", "success"]
        assert server.stats()["starts_taken"] == 1

    def test_many_triggers_never_block_the_loop(self, banana_conn: str, server: DevServer) -> None:
        call_ids = [start_call({"seconds": 1.0 + i / 100}, "sleep") for i in range(50)]

        async def main() -> tuple[list[list[TriggerEvent]], float]:
            gaps: list[float] = []
            stop = asyncio.Event()

            async def ticker() -> None:
                last = time.monotonic()
                while not stop.is_set():
                    await asyncio.sleep(0.01)  # the measurement itself: how late each tick wakes
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.ensure_future(ticker())
            events = await asyncio.gather(*(collect(make_trigger(c)) for c in call_ids))
            stop.set()
            await tick
            return list(events), max(gaps)

        results, worst_gap = asyncio.run(main())
        assert all(events[0].payload["status"] == "success" for events in results)
        # Not a speed check: a blocking call (a sync connection lookup, an SSL context built per
        # client, ~25 ms each, times fifty) would stall the loop for a second or more.
        assert worst_gap < 0.5, f"the event loop stalled for {worst_gap:.3f} s"

    def test_on_kill_says_the_call_runs_on(self, capfd: pytest.CaptureFixture[str]) -> None:
        asyncio.run(make_trigger("call_xyz").on_kill())
        logged = "".join(capfd.readouterr())
        assert "call_xyz" in logged
        assert "cannot cancel" in logged


RECORDED_CHECK_REPLIES = [
    {"id": "1", "message": "running", "created": 1, "apiVersion": "January 11, 2023", "modelOutputs": None},
    {"id": "2", "message": "success", "created": 1, "apiVersion": "x", "modelOutputs": [{"class": "111"}]},
    {"id": "3", "message": "Success", "created": 1, "apiVersion": "x", "modelOutputs": [[1, 2, 3]]},
    {"id": "4", "message": "inference server error: taskID does not exist: task_abc", "created": 1},
    {"id": "5", "message": "error: model crashed", "created": 1, "modelOutputs": None},
    {"id": "6", "message": "cold boot", "created": 1},
    {"id": "7", "message": "success", "created": 1, "modelOutputs": [{"$error": {"message": "oops"}}]},
]


def seen(result: Any) -> tuple[bool, Any, str, str]:
    """Return what a test compares of a result: a running one has no outputs."""
    return (result.finished, getattr(result, "model_outputs", None), result.message, result.call_id)


def outcome(call: Any) -> tuple[str, Any]:
    try:
        result = call()
    except BananaError as e:
        return type(e).__name__, str(e)
    return "result", seen(result)


class TestSyncAndAsyncAgree:
    @pytest.mark.parametrize("reply", RECORDED_CHECK_REPLIES, ids=lambda r: r["message"][:20])
    def test_same_recorded_reply_same_outcome(self, banana_conn: str, server: DevServer, reply: dict) -> None:
        policy = BananaRetryPolicy(max_attempts=1)
        server.faults(raw_next={"count": 1, "endpoints": ["check"], "body": reply})
        sync = outcome(lambda: BananaHook(retry_policy=policy).check("call_rec"))

        async def async_check() -> tuple[str, Any]:
            async with BananaAsyncHook(retry_policy=policy) as hook:
                try:
                    result = await hook.check("call_rec")
                except BananaError as e:
                    return type(e).__name__, str(e)
                return "result", seen(result)

        server.faults(raw_next={"count": 1, "endpoints": ["check"], "body": reply})
        assert asyncio.run(async_check()) == sync
        assert server.stats()["check_requests"] == 2

    @pytest.mark.parametrize(
        "fault",
        [
            {"fail_next": {"count": 1, "status": 500, "endpoints": ["start"]}},
            {"drop_next": {"count": 1, "endpoints": ["start"]}},
            {"non_json_next": {"count": 1, "endpoints": ["start"]}},
        ],
        ids=["500", "drop", "non-json"],
    )
    def test_same_start_fault_same_outcome(self, banana_conn: str, server: DevServer, fault: dict) -> None:
        server.faults(**fault)
        sync = outcome(lambda: BananaHook(retry_policy=FAST).start({"prompt": "x"}))

        async def async_start() -> tuple[str, Any]:
            async with BananaAsyncHook(retry_policy=FAST) as hook:
                try:
                    await hook.start({"prompt": "x"})
                except BananaError as e:
                    return type(e).__name__, str(e).split(" (")[0]
                return "result", None

        server.faults(**fault)
        kind, text = asyncio.run(async_start())
        assert (kind, text) == (sync[0], str(sync[1]).split(" (")[0])
        assert server.stats()["start_requests"] == 2  # one each: neither path sent it again
