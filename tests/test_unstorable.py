"""
Outputs that Airflow cannot store: a clear error naming where, the outputs untouched, and no Start paid twice.

A lone surrogate (``"\\ud800"``, legal as a JSON escape), an integer outside 64 bits (here of 4,301
digits) and nesting past Airflow's 254 levels come back from the hook exactly; before they leave the
operator, the trigger or the batch, :func:`~airflow_provider_banana.contract.check_storable` stops
them. The task keeps its call, so each retry reattaches with a Check instead of a new Start.
"""

from __future__ import annotations

import asyncio
import copy
import decimal
import itertools
import json
import math
import pickle
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import JsonValue, TypeAdapter

from airflow_provider_banana.batch.plan import BatchPlan, Wave
from airflow_provider_banana.contract import (
    MAX_OUTPUT_DEPTH,
    EventStatus,
    canonical_outputs,
    check_storable,
    error_event,
    outputs_from_event,
    unstorable_values,
)
from airflow_provider_banana.exceptions import BananaBatchError, BananaOutputsNotStorableError
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from airflow_provider_banana.triggers.banana import BananaBatchTrigger, BananaCallTrigger
from tests.helpers import (
    FAST,
    assert_raised,
    collect,
    connection_json,
    raised,
    requires_task_state_store,
    states,
    try_numbers,
    xcom,
)
from tests.hostile import HostileServer, Request, json_reply, response

#: Nesting of the deep case: past what Airflow stores (254), within what a reply may nest (512).
DEEP = 300
#: The long integer: one digit past CPython's 4,300-digit guard on int-to-text conversion.
LONG_INT = int(decimal.Decimal("7" * 4301))


def _nested(levels: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


#: case name -> (the modelOutputs as JSON text, as the server sends them; the path the error names;
#: a word of the reason). The text is written by hand: json.dumps cannot write the long integer.
CASES: dict[str, tuple[str, str, str]] = {
    "surrogate": ('[{"image": {"x": "\\ud800"}}]', '[0]["image"]["x"]', "lone surrogate (U+D800)"),
    "long-int": (f'[{{"n": {"7" * 4301}}}]', '[0]["n"]', "4,301 digits"),
    "deep": ("[" * DEEP + "0" + "]" * DEEP, "[0][0][0]", f"deeper than the {MAX_OUTPUT_DEPTH} levels"),
}
#: The same outputs, as Python reads them.
EXPECTED: dict[str, Any] = {
    "surrogate": [{"image": {"x": "\ud800"}}],
    "long-int": [{"n": LONG_INT}],
    "deep": _nested(DEEP),
}
OK_OUTPUTS = [{"ok": True, "text": "caf\u00e9 \U0001f600"}]


# --------------------------------------------------------------------------- the pure check


@pytest.mark.parametrize("case", CASES)
def test_each_case_is_named_by_path_and_reason(case: str) -> None:
    outputs = EXPECTED[case]
    before = copy.deepcopy(outputs) if case != "deep" else None
    problems = unstorable_values(outputs)
    assert len(problems) == 1, problems
    path, reason = problems[0]
    assert path.startswith(CASES[case][1]), path
    assert CASES[case][2] in reason, reason
    with pytest.raises(BananaOutputsNotStorableError) as raised:
        check_storable(outputs, call_id="call_X")
    assert raised.value.call_id == "call_X"
    assert raised.value.problems == problems
    assert pickle.loads(pickle.dumps(raised.value)).problems == problems  # Airflow pickles errors across processes
    assert CASES[case][1] in str(raised.value)
    assert "call_X" in str(raised.value)
    if before is not None:
        assert outputs == before  # never altered to fit


def test_storable_outputs_pass_untouched() -> None:
    outputs = [
        {"nan": math.nan, "inf": math.inf, "-inf": -math.inf},  # XCom stores them as null: the hook warns
        {"max": 2**64 - 1, "min": -(2**63), "float": 1e308, "big_text": "x" * 100_000},
        {"unicode": "caf\u00e9 \u4e2d\u6587 \U0001f600", "\u00e9t\u00e9": ["\u200b", "\ufffd"]},
        _nested(MAX_OUTPUT_DEPTH - 1),  # with the list around it: exactly the limit
        [True, False, None, 0, -1, 0.5, "", [], {}],
    ]
    before = json.dumps(outputs)
    assert unstorable_values(outputs) == []
    check_storable(outputs)
    assert json.dumps(outputs) == before


# Values near each limit: lone surrogates among text, integers around the 64-bit edges (and floats
# and strings whose digits look like them), nesting around MAX_OUTPUT_DEPTH.
_EDGE_INTS = st.sampled_from([2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, -(10**19), 10**30]) | st.integers()
_EDGE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=8) | st.sampled_from(
    ["\ud800", "a\udfffb", "18446744073709551616", "-9223372036854775809", "[[[{"]
)
_LEAVES = st.none() | st.booleans() | _EDGE_INTS | st.floats(allow_nan=True) | _EDGE_TEXT
_VALUES = st.recursive(
    _LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_EDGE_TEXT, inner, max_size=4), max_leaves=12
)


@given(value=_VALUES, extra_depth=st.sampled_from([0, 0, MAX_OUTPUT_DEPTH - 6, MAX_OUTPUT_DEPTH - 2]))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_glance_at_small_outputs_decides_as_the_walk(value: Any, extra_depth: int) -> None:
    """The trigger's event path clears small outputs by their bytes; it must refuse exactly what the walk refuses."""
    outputs = [_nested(extra_depth, value)]
    at_once = canonical_outputs(outputs, at_once=True)
    assert at_once == canonical_outputs(outputs)  # one json.dumps, the same bytes as the steps
    walked = unstorable_values(outputs)
    if walked:
        with pytest.raises(BananaOutputsNotStorableError) as error:
            check_storable(outputs, call_id="call_x", canonical=at_once)
        assert error.value.problems == walked
    else:
        check_storable(outputs, call_id="call_x", canonical=at_once)


def test_just_past_the_depth_limit_fails() -> None:
    assert unstorable_values(_nested(MAX_OUTPUT_DEPTH)) == []
    problems = unstorable_values(_nested(MAX_OUTPUT_DEPTH + 1))
    assert len(problems) == 1
    assert "deeper than" in problems[0][1]


def test_keys_ints_at_the_edges_and_many_problems() -> None:
    outputs = [{"ok": 1, "bad\udc80key": 2}, 2**64, -(2**63) - 1, True, *["\ud800"] * 20]
    problems = unstorable_values(outputs)
    assert problems[0] == ('[0]["bad\\udc80key"]', problems[0][1])
    assert "key holding a lone surrogate" in problems[0][1]
    assert problems[1][0] == "[1]"
    assert "20 digits" in problems[1][1]
    assert problems[2][0] == "[2]"
    assert "19 digits" in problems[2][1]
    assert len(problems) == 10  # the walk stops at the limit
    assert unstorable_values("\ud800") == [("(the whole value)", problems[3][1])]


def _airflow_stores(value: Any) -> bool:
    """Whether Airflow's own pieces pass ``value`` the way a task's XCom push does."""
    from airflow.sdk.execution_time.comms import SetXCom

    try:
        from airflow.sdk.serde import serialize
    except ImportError:  # Airflow 3.1 has it in core only
        from airflow.serialization.serde import serialize  # type: ignore[no-redef]

    try:
        serialized = serialize(value)
        message = SetXCom(key="return_value", value=serialized, dag_id="d", run_id="r", task_id="t")
        msgspec.msgpack.encode(message.model_dump())  # the task's channel to its supervisor
        json.dumps(serialized, ensure_ascii=False).encode()  # the API's JSON, in dag.test() too
        TypeAdapter(JsonValue).validate_python({"event": {"model_outputs": value}})  # a resumed task's next_kwargs
    except (ValueError, TypeError, OverflowError, RecursionError):
        return False
    return True


@pytest.mark.parametrize(
    "value",
    [
        *EXPECTED.values(),
        [2**64],
        [-(2**63) - 1],
        [{"\ud83d": 1}],
        _nested(MAX_OUTPUT_DEPTH + 10),
        _nested(MAX_OUTPUT_DEPTH - 1),
        [2**64 - 1, -(2**63), math.nan, "caf\u00e9 \U0001f600"],
        [{"deep": _nested(MAX_OUTPUT_DEPTH - 2, {"x": 1})}],
    ],
    ids=[*EXPECTED, "2**64", "-2**63-1", "key", "limit+11", "limit", "edges", "mixed-deep"],
)
def test_the_check_agrees_with_airflow(value: Any) -> None:
    """What the check passes Airflow stores; what Airflow refuses the check refuses."""
    ours = unstorable_values(value) == []
    if ours:
        assert _airflow_stores(value)
    if not _airflow_stores(value):
        assert not ours


def test_the_event_names_the_problems_never_the_outputs() -> None:
    error = BananaOutputsNotStorableError([('[0]["x"]', "a lone surrogate")], call_id="call_A")
    event = error_event("call_A", error, checks=2, elapsed=1.0)
    assert event["status"] == EventStatus.NOT_STORABLE.value == "not_storable"
    assert event["model_outputs"] is None
    assert event["problems"] == [['[0]["x"]', "a lone surrogate"]]
    json.dumps(event, ensure_ascii=False).encode()  # Airflow can store the event itself
    with pytest.raises(BananaOutputsNotStorableError) as raised:
        outputs_from_event(event)
    assert raised.value.problems == error.problems
    assert raised.value.call_id == "call_A"


def test_the_plan_never_starts_an_unstorable_input_again() -> None:
    plan = BatchPlan(size=2, max_in_flight=2, item_retries=2, stop_on_failure=True)
    assert plan.next_starts() == [0, 1]
    plan.started(0, "call_0")
    plan.started(1, "call_1")
    plan.record(Wave(finished={"call_0": [1]}, unstorable={"call_1": "at [0]: a lone surrogate"}))
    assert plan.ended
    assert plan.failed == {1: "at [0]: a lone surrogate"}
    restored = BatchPlan(size=2, max_in_flight=2, item_retries=2, stop_on_failure=True)
    assert restored.restore(json.loads(json.dumps(plan.to_state())))
    restored.new_try()  # a task retry gives failed inputs new Starts: not this one
    assert restored.next_starts() == []
    assert restored.retry_queue == []
    with pytest.raises(BananaBatchError, match=r"item 1: at \[0\]: a lone surrogate"):
        restored.raise_if_failed()
    wave = Wave.from_event(Wave(unstorable={"call_1": "why"}).to_event())
    assert wave.unstorable == {"call_1": "why"}
    assert not wave.empty


# --------------------------------------------------------------------------- over HTTP


class ScriptedBanana:
    """A Banana-compatible server: ``{"case": "bad"}`` finishes with the chosen outputs text."""

    def __init__(self, bad_outputs: str) -> None:
        self.bad_outputs = bad_outputs
        self._numbers = itertools.count()
        self.server = HostileServer(self.respond, lifetime=120.0)

    def respond(self, request: Request) -> Any:
        body = request.json()
        if request.path.startswith("/start"):
            inputs = body.get("modelInputs", {})
            call_id = f"call_{next(self._numbers)}_{inputs.get('case', 'ok')}"
            at_start = inputs.get("at_start")  # "with-id" or "no-id": finished within the Start, startOnly or not
            if at_start:
                return self._finished(body["id"], self._outputs(call_id), "" if at_start == "no-id" else call_id)
            return json_reply({"id": body["id"], "message": "", "callID": call_id, "finished": False})
        return self._finished(body["id"], self._outputs(body.get("callID", "")), None)

    def _outputs(self, call_id: str) -> str:
        return self.bad_outputs if call_id.endswith("_bad") else json.dumps(OK_OUTPUTS)

    @staticmethod
    def _finished(request_id: str, outputs: str, call_id: str | None) -> Any:
        start = "" if call_id is None else f'"callID": "{call_id}", "finished": true, '
        reply = f'{{"id": "{request_id}", "message": "success", "created": 1, {start}"modelOutputs": {outputs}}}'
        return response(200, reply.encode(), {"Content-Type": "application/json"})

    @property
    def starts(self) -> int:
        return self.server.count("/start")


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def banana(case: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedBanana]:
    scripted = ScriptedBanana(CASES[case][0])
    with scripted.server:
        for conn_id in ("BANANA_UNSTORABLE", "BANANA_DEFAULT"):
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", connection_json(scripted.server.url, model_key="m"))
        yield scripted


def test_the_hooks_return_the_outputs_exactly(case: str, banana: ScriptedBanana) -> None:
    hook = BananaHook("banana_unstorable", retry_policy=FAST)
    started = hook.start({"case": "bad"}, start_only=True)
    assert hook.wait(started.call_id, timeout=30) == EXPECTED[case]

    async def follow() -> Any:
        async with BananaAsyncHook("banana_unstorable", retry_policy=FAST) as async_hook:
            return await async_hook.wait(started.call_id, timeout=30)

    assert asyncio.run(follow()) == EXPECTED[case]
    assert banana.starts == 1


def test_the_trigger_fires_the_problem_not_the_outputs(case: str, banana: ScriptedBanana) -> None:
    now = time.time()
    trigger = BananaCallTrigger("call_0_bad", "banana_unstorable", deadline=now + 30, started_at=now)
    events = asyncio.run(collect(trigger))
    assert len(events) == 1
    event = events[0].payload
    assert event["status"] == "not_storable"
    assert event["model_outputs"] is None
    assert event["problems"][0][0].startswith(CASES[case][1])
    assert CASES[case][2] in event["problems"][0][1]
    json.dumps(event, ensure_ascii=False).encode()  # storable, unlike the outputs
    with pytest.raises(BananaOutputsNotStorableError):
        outputs_from_event(event)


def test_the_batch_trigger_keeps_unstorable_outputs_out_of_its_wave(case: str, banana: ScriptedBanana) -> None:
    now = time.time()
    # One call: a wave hands back once half of its calls ended, so two would race.
    trigger = BananaBatchTrigger(["call_1_bad"], "banana_unstorable", deadline=now + 30, started_at=now)
    events = asyncio.run(collect(trigger))
    wave = Wave.from_event(events[0].payload)
    assert wave.finished == {}
    assert list(wave.unstorable) == ["call_1_bad"]
    assert CASES[case][1] in wave.unstorable["call_1_bad"]
    json.dumps(events[0].payload, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- DAG runs with retries


@pytest.mark.usefixtures("airflow_db")
@requires_task_state_store
@pytest.mark.parametrize("mode", ["blocking", "deferrable", "blocking_at_start"])
def test_a_task_pays_once_and_fails_each_try_naming_the_path(
    mode: str, case: str, banana: ScriptedBanana, capfd: pytest.CaptureFixture[str]
) -> None:
    from tests.dags import unstorable_dags

    run = getattr(unstorable_dags, mode).test()
    logs = "".join(capfd.readouterr())
    assert states(run)["infer"] == "failed", states(run)
    assert try_numbers(run)["infer"] == 3  # every try ran, and failed
    assert banana.starts == 1  # each retry reattached to the finished call: a Check, not a Start
    message = assert_raised(logs, "BananaOutputsNotStorableError", CASES[case][1], CASES[case][2], "call_0_bad")
    assert "new Start" in message
    assert len([m for name, m in raised(logs) if name == "BananaOutputsNotStorableError"]) >= 3
    assert logs.count("from an earlier try has finished") == 2  # tries 2 and 3 reattached
    if mode == "deferrable":  # the first try's outputs met the check in the trigger
        assert "The triggerer's watch of the call ended (not_storable)" in logs


@pytest.mark.usefixtures("airflow_db")
@requires_task_state_store
@pytest.mark.parametrize("mode", ["batch_fail", "batch_deferrable", "batch_at_start"])
def test_a_batch_fails_the_input_naming_it_without_starting_it_again(
    mode: str, case: str, banana: ScriptedBanana, capfd: pytest.CaptureFixture[str]
) -> None:
    from tests.dags import unstorable_dags

    run = getattr(unstorable_dags, mode).test()
    logs = "".join(capfd.readouterr())
    assert states(run)["batch"] == "failed", states(run)
    assert try_numbers(run)["batch"] == 3
    assert banana.starts == 3  # one per input, in three tries
    assert_raised(logs, "BananaBatchError", "1 of 3", "item 1:", CASES[case][1], CASES[case][2])


@pytest.mark.usefixtures("airflow_db")
def test_a_skipping_batch_returns_none_for_the_unstorable_input(case: str, banana: ScriptedBanana) -> None:
    from tests.dags import unstorable_dags

    run = unstorable_dags.batch_skip.test()
    assert states(run)["batch"] == "success", states(run)
    assert xcom(run, "batch") == [OK_OUTPUTS, None, OK_OUTPUTS]
    assert banana.starts == 3
