"""The pure Banana contract, with plain data: every row of the decision table, every validation."""

from __future__ import annotations

import functools
import json
import operator
import pickle
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_banana import contract
from airflow_provider_banana.contract import (
    CHECK,
    START,
    BananaRetryPolicy,
    CallState,
    CallWaiter,
    EventStatus,
    TransportFailure,
    check_bodies,
)
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaConfigError,
    BananaConnectError,
    BananaError,
    BananaHTTPError,
    BananaProtocolError,
    BananaResponseLostError,
    BananaTimeoutError,
)

# Replies recorded in BANANA_API.md (DOC and OBS forms).
START_FINISHED_DOC = {
    "id": "xyz",
    "message": "success",
    "created": 123123123123,
    "apiVersion": "Nov 14 2021",
    "callID": "call_abc",
    "finished": True,
    "modelOutputs": [{"caption": "a banana"}],
}
START_FINISHED_OBS = {
    "id": "a46d",
    "message": "",
    "created": 1679143667,
    "apiVersion": "January 11, 2023",
    "callID": "",
    "finished": True,
    "modelOutputs": [{"class": "111"}],
}
START_NOT_FINISHED = {
    "id": "de87",
    "message": "",
    "created": 1684444779,
    "apiVersion": "January 11, 2023",
    "callID": "call_0d82c386-1",
    "finished": False,
    "modelOutputs": None,
}
CHECK_RUNNING = {"id": "1", "message": "running", "created": 1, "apiVersion": "January 11, 2023", "modelOutputs": None}
CHECK_SUCCESS = {"id": "2", "message": "success", "created": 1, "apiVersion": "x", "modelOutputs": [{"n": 1}]}
CHECK_UNKNOWN = {
    "id": "3",
    "message": "inference server error: taskID does not exist: task_abc",
    "created": 1,
    "apiVersion": "x",
}


def parse(endpoint: str, body: object, status: int = 200, **kwargs: object) -> contract.BananaResult:
    return contract.parse_reply(endpoint, status, json.dumps(body).encode(), **kwargs)  # type: ignore[arg-type]


class TestDecisionTable:
    def test_rule1_non_200_is_an_http_error_with_message_and_retry_after(self) -> None:
        with pytest.raises(BananaHTTPError) as info:
            parse(CHECK, {"message": "overloaded"}, status=503, retry_after="7", call_id="call_1")
        assert info.value.status_code == 503
        assert info.value.retry_after == 7.0
        assert info.value.call_id == "call_1"
        assert "overloaded" in str(info.value)

    def test_rule1_a_500_carrying_a_success_message_is_still_an_error(self) -> None:
        with pytest.raises(BananaHTTPError):
            parse(START, START_FINISHED_DOC, status=500)

    @pytest.mark.parametrize("content", [b"<html>oops</html>", b"", b"{trunc"])
    def test_rule2_body_not_json(self, content: bytes) -> None:
        with pytest.raises(BananaProtocolError, match="not JSON"):
            contract.parse_reply(CHECK, 200, content)

    @pytest.mark.parametrize("body", [[1, 2], "running", 3, None])
    def test_rule2_json_not_an_object(self, body: object) -> None:
        with pytest.raises(BananaProtocolError, match="not an object"):
            parse(CHECK, body)

    @pytest.mark.parametrize("body", [{"finished": True}, {"message": None}, {"message": 5}])
    def test_rule2_message_missing_or_not_a_string(self, body: object) -> None:
        with pytest.raises(BananaProtocolError, match="message"):
            parse(START, body)

    @pytest.mark.parametrize(
        "message", ["error: invalid apiKey", "Model ERROR", "inference server Error: boom", "someerrorhere"]
    )
    def test_rule3_error_anywhere_in_any_case_is_a_failed_call(self, message: str) -> None:
        with pytest.raises(BananaCallError) as info:
            parse(CHECK, {"message": message}, call_id="call_9")
        assert info.value.message == message
        assert info.value.call_id == "call_9"
        assert not isinstance(info.value, BananaCallNotFoundError)

    def test_rule3_error_wins_over_finished(self) -> None:
        with pytest.raises(BananaCallError):
            parse(START, {**START_FINISHED_DOC, "message": "error: model crashed"})

    def test_rule3_unknown_call_is_terminal_not_found(self) -> None:
        with pytest.raises(BananaCallNotFoundError) as info:
            parse(CHECK, CHECK_UNKNOWN, call_id="call_abc")
        assert info.value.call_id == "call_abc"
        assert "does not exist" in info.value.message

    def test_rule4_start_finished_doc_form(self) -> None:
        result = parse(START, START_FINISHED_DOC)
        assert result.finished
        assert result.state is CallState.FINISHED
        assert result.call_id == "call_abc"
        assert result.model_outputs == [{"caption": "a banana"}]
        assert result.api_version == "Nov 14 2021"

    def test_rule4_start_finished_with_empty_message_and_call_id(self) -> None:
        result = parse(START, START_FINISHED_OBS)
        assert result.finished
        assert result.call_id is None
        assert result.message == ""
        assert result.model_outputs == [{"class": "111"}]
        assert result.status_text == "finished"

    def test_rule4_start_not_finished_gives_call_id(self) -> None:
        result = parse(START, START_NOT_FINISHED)
        assert not result.finished
        assert result.state is CallState.RUNNING
        assert result.call_id == "call_0d82c386-1"
        assert not isinstance(result, contract.BananaFinished)  # no outputs to read

    def test_rule4_start_success_message_without_finished_is_not_done(self) -> None:
        result = parse(START, {**START_NOT_FINISHED, "message": "success"})
        assert not result.finished

    def test_start_neither_finished_nor_call_id_cannot_be_followed(self) -> None:
        with pytest.raises(BananaProtocolError, match="callID") as info:
            parse(START, {**START_NOT_FINISHED, "callID": ""})
        assert info.value.request_sent is True
        assert not contract.is_retryable(info.value, START)

    @pytest.mark.parametrize("message", ["success", "SUCCESS", "Success "])
    def test_rule5_check_success_any_case(self, message: str) -> None:
        result = parse(CHECK, {**CHECK_SUCCESS, "message": message}, call_id="call_1")
        assert result.finished
        assert result.call_id == "call_1"
        assert result.model_outputs == [{"n": 1}]

    @pytest.mark.parametrize("message", ["running", "queued", "cold boot", "", "successful-ish"])
    def test_rule6_anything_else_is_running(self, message: str) -> None:
        result = parse(CHECK, {**CHECK_RUNNING, "message": message}, call_id="call_1")
        assert not result.finished
        assert result.state is CallState.RUNNING
        assert result.status_text == (message or "running")

    def test_check_reply_without_call_id_keeps_the_one_asked_about(self) -> None:
        assert parse(CHECK, CHECK_RUNNING, call_id="call_x").call_id == "call_x"

    def test_outputs_that_are_a_list_stay_a_list(self) -> None:
        result = parse(CHECK, {**CHECK_SUCCESS, "modelOutputs": [[1, 2, 3]]}, call_id="c")
        assert result.model_outputs == [[1, 2, 3]]

    def test_model_error_inside_a_200_is_a_success(self) -> None:
        outputs = [{"$error": {"message": "CUDA OOM"}}]
        result = parse(CHECK, {**CHECK_SUCCESS, "modelOutputs": outputs}, call_id="c")
        assert result.finished
        assert result.model_outputs == outputs

    def test_finished_with_bare_or_null_outputs_is_normalised_to_a_list(self) -> None:
        assert parse(CHECK, {**CHECK_SUCCESS, "modelOutputs": {"a": 1}}, call_id="c").model_outputs == [{"a": 1}]
        assert parse(CHECK, {**CHECK_SUCCESS, "modelOutputs": None}, call_id="c").model_outputs == []

    def test_api_version_is_not_parsed(self) -> None:
        assert parse(CHECK, {**CHECK_RUNNING, "apiVersion": 42}, call_id="c").api_version is None

    def test_secret_echoed_by_the_server_is_scrubbed(self) -> None:
        key = "sk-" + uuid.uuid4().hex
        with pytest.raises(BananaCallError) as info:
            parse(START, {"message": f"error: invalid apiKey {key}"}, secret=key)
        assert key not in str(info.value)
        assert key not in repr(info.value)
        assert "***" in info.value.message
        with pytest.raises(BananaHTTPError) as http:
            contract.parse_reply(START, 401, f"bad key {key}".encode(), secret=key)
        assert key not in str(http.value)


class TestBodies:
    def test_start_body(self) -> None:
        before = int(time.time())
        body = contract.build_start_body("KEY", "model", {"prompt": "hi"}, start_only=True)
        assert set(body) == {"id", "created", "apiKey", "modelKey", "startOnly", "modelInputs"}
        assert uuid.UUID(body["id"]).version == 4
        assert isinstance(body["created"], int)
        assert before <= body["created"] <= int(time.time())
        assert body["apiKey"] == "KEY"
        assert body["modelKey"] == "model"
        assert body["startOnly"] is True
        assert body["modelInputs"] == {"prompt": "hi"}

    def test_check_body(self) -> None:
        body = contract.build_check_body("KEY", "call_1", long_poll=True)
        assert set(body) == {"id", "created", "apiKey", "longPoll", "callID"}
        assert body["longPoll"] is True
        assert body["callID"] == "call_1"

    def test_every_request_has_a_fresh_id(self) -> None:
        ids = {contract.build_check_body("K", "c", long_poll=False)["id"] for _ in range(50)}
        assert len(ids) == 50
        made = check_bodies("K", "c", long_poll=False)
        assert len({json.loads(made())["id"] for _ in range(50)}) == 50

    def test_a_request_id_is_what_uuid4_gives(self) -> None:
        for _ in range(2000):  # the version and variant bits set, every other bit random
            text = contract.request_id()
            parsed = uuid.UUID(text)
            assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
            assert str(parsed) == text
        bits = [uuid.UUID(contract.request_id()).int for _ in range(400)]
        random_bits = ((1 << 128) - 1) & ~((0xC000 << 48) | (0xF000 << 64))
        assert functools.reduce(operator.or_, bits) & random_bits == random_bits
        assert functools.reduce(operator.and_, bits) & random_bits == 0

    @settings(max_examples=300, deadline=None)
    @given(
        key=st.text(min_size=1, max_size=40),
        call_id=st.text(max_size=40),
        long_poll=st.booleans(),
    )
    def test_a_calls_check_bodies_are_the_encoded_check_body(self, key: str, call_id: str, long_poll: bool) -> None:
        # Any text, quotes, percent signs and lone surrogates included: the bytes of build_check_body.
        before = int(time.time())
        body = check_bodies(key, call_id, long_poll=long_poll)()
        sent = json.loads(body)
        assert list(sent) == list(contract.build_check_body(key, call_id, long_poll=long_poll))
        assert (sent["apiKey"], sent["callID"], sent["longPoll"]) == (key, call_id, long_poll)
        assert uuid.UUID(sent["id"]).version == 4
        assert before <= sent["created"] <= int(time.time())
        assert contract.encode_body(sent) == body

    def test_endpoint_urls(self) -> None:
        assert contract.endpoint_url("https://api.banana.dev/", START) == "https://api.banana.dev/start/v4/"
        assert contract.endpoint_url("http://h:1/prefix/", CHECK) == "http://h:1/prefix/check/v4/"


class TestValidation:
    def test_api_key(self) -> None:
        assert contract.validate_api_key(" k ") == "k"
        for bad in (None, "", "   "):
            with pytest.raises(BananaConfigError, match="API key"):
                contract.validate_api_key(bad)

    def test_base_url(self) -> None:
        assert contract.validate_base_url(None) == "https://api.banana.dev/"
        assert contract.validate_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/"
        for bad in ("127.0.0.1:8000", "api.banana.dev", "ftp://x/", "http://"):
            with pytest.raises(BananaConfigError, match="http"):
                contract.validate_base_url(bad)

    def test_model_key(self) -> None:
        assert contract.validate_model_key("m") == "m"
        for bad in (None, "", " ", 3):
            with pytest.raises(BananaConfigError, match="model key"):
                contract.validate_model_key(bad)  # type: ignore[arg-type]

    def test_model_inputs(self) -> None:
        assert contract.validate_model_inputs({"a": 1}) == {"a": 1}
        assert contract.validate_model_inputs('{"a": [1, 2]}') == {"a": [1, 2]}
        with pytest.raises(BananaConfigError, match="not valid JSON"):
            contract.validate_model_inputs("{'a': 1}")
        with pytest.raises(BananaConfigError, match="JSON object"):
            contract.validate_model_inputs("[1, 2]")
        with pytest.raises(TypeError, match="must be a dict"):
            contract.validate_model_inputs([1, 2])
        with pytest.raises(TypeError, match="cannot be sent as JSON"):
            contract.validate_model_inputs({"when": time})
        with pytest.raises(TypeError, match="cannot be sent as JSON"):
            contract.validate_model_inputs({"x": float("nan")})

    def test_call_id_and_numbers(self) -> None:
        assert contract.validate_call_id(" call_1 ") == "call_1"
        for bad in ("", "  ", None, 5):
            with pytest.raises(BananaConfigError, match="call id"):
                contract.validate_call_id(bad)
        assert contract.validate_seconds("timeout", 5) == 5.0
        for bad in (0, -1, float("inf"), float("nan"), "10", True):
            with pytest.raises(BananaConfigError, match="timeout"):
                contract.validate_seconds("timeout", bad)


class TestTimeouts:
    def test_read_timeout_exceeds_the_server_hold(self) -> None:
        timeouts = contract.BananaTimeouts()
        assert timeouts.for_request(START, waits=True)[1] > timeouts.start_hold >= 60
        assert timeouts.for_request(CHECK, waits=True)[1] > timeouts.check_hold >= 50
        assert timeouts.for_request(CHECK, waits=False)[1] == timeouts.quick_read

    def test_a_check_is_cut_to_the_deadline_but_a_start_never_is(self) -> None:
        timeouts = contract.BananaTimeouts()
        assert timeouts.for_request(CHECK, waits=True, remaining=3.0)[1] == 3.0
        assert timeouts.for_request(START, waits=True, remaining=3.0)[1] > timeouts.start_hold

    def test_holds_from_a_connection_extra(self) -> None:
        timeouts = contract.BananaTimeouts.from_extra({"check_hold": 5, "start_hold": 4, "model_key": "m"})
        assert timeouts.for_request(CHECK, waits=True) == (10.0, 5 + timeouts.read_margin)
        assert timeouts.start_hold == 4
        with pytest.raises(BananaConfigError, match="check_hold"):
            contract.BananaTimeouts.from_extra({"check_hold": -1})

    def test_retry_after(self) -> None:
        assert contract.parse_retry_after("3") == 3.0
        assert contract.parse_retry_after(None) is None
        assert contract.parse_retry_after("soon") is None
        # Only RFC 9110 forms are valid (a 503 with a valid one is a refusal): digits, or a date.
        for invalid in ("-5", "1.5", "inf", "nan", "", " "):
            assert contract.parse_retry_after(invalid) is None, invalid
        http_date = "Wed, 21 Oct 2015 07:28:00 GMT"
        assert contract.parse_retry_after(http_date, now=1445412470.0) == pytest.approx(10.0)


class TestRetryDecisions:
    def http(self, status: int) -> BananaHTTPError:
        return BananaHTTPError("x", endpoint=START, status_code=status)

    def test_connect_failures_are_retried_everywhere(self) -> None:
        for failure in (TransportFailure.CONNECT, TransportFailure.CONNECT_TIMEOUT, TransportFailure.POOL_TIMEOUT):
            error = contract.transport_error(failure, endpoint=START)
            assert isinstance(error, BananaConnectError)
            assert error.request_sent is False
            assert contract.is_retryable(error, START)
            assert contract.is_retryable(error, CHECK)

    @pytest.mark.parametrize(
        "failure", [TransportFailure.READ_TIMEOUT, TransportFailure.CONNECTION_LOST, TransportFailure.OTHER]
    )
    def test_a_lost_answer_is_retried_for_check_never_for_start(self, failure: TransportFailure) -> None:
        start_error = contract.transport_error(failure, endpoint=START)
        assert isinstance(start_error, BananaResponseLostError)
        assert start_error.request_sent is True
        assert "not sent again" in str(start_error)
        assert not contract.is_retryable(start_error, START)
        assert contract.is_retryable(contract.transport_error(failure, endpoint=CHECK), CHECK)

    @pytest.mark.parametrize(
        ("status", "start", "check"),
        [
            (429, True, True),
            (503, False, True),  # a bare 503: maybe a gateway after forwarding the Start
            (500, False, True),
            (502, False, True),
            (504, False, True),
            (400, False, False),
            (401, False, False),
            (404, False, False),
        ],
    )
    def test_http_statuses(self, status: int, start: bool, check: bool) -> None:
        assert contract.is_retryable(self.http(status), START) is start
        assert contract.is_retryable(self.http(status), CHECK) is check

    def test_protocol_errors_are_retried_for_check_only(self) -> None:
        error = BananaProtocolError("garbled", endpoint=CHECK)
        assert contract.is_retryable(error, CHECK)
        assert not contract.is_retryable(error, START)

    def test_failed_inference_and_local_errors_are_never_retried(self) -> None:
        for error in (
            BananaCallError("error: boom", call_id="c"),
            BananaCallNotFoundError("taskID does not exist", call_id="c"),
            BananaConfigError("bad"),
            BananaTimeoutError("c", 5),
            ValueError("local bug"),
        ):
            assert not contract.is_retryable(error, CHECK)
            assert not contract.is_retryable(error, START)

    def test_backoff_grows_is_capped_and_honours_retry_after(self) -> None:
        policy = BananaRetryPolicy(max_attempts=6, initial_delay=1.0, max_delay=5.0, jitter=0.0)
        assert [policy.delay(n, None) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
        limited = BananaHTTPError("x", endpoint=CHECK, status_code=429, retry_after=3.0)
        assert policy.delay(1, limited) == 3.0
        greedy = BananaHTTPError("x", endpoint=CHECK, status_code=429, retry_after=3600.0)
        assert policy.delay(1, greedy) == 5.0

    def test_jitter_spreads_clients(self) -> None:
        policy = BananaRetryPolicy(initial_delay=1.0, jitter=1.0)
        delays = {policy.delay(1, None) for _ in range(20)}
        assert len(delays) > 1
        assert all(1.0 <= d <= 2.0 for d in delays)

    def test_policy_validation(self) -> None:
        for bad in ({"max_attempts": 0}, {"max_attempts": 1.5}, {"initial_delay": -1}, {"jitter": "x"}):
            with pytest.raises(BananaConfigError):
                BananaRetryPolicy(**bad)  # type: ignore[arg-type]


class TestWaiting:
    def test_long_poll_that_held_does_not_sleep_a_quick_answer_does(self) -> None:
        assert contract.pause_before_next_check(50.0, 5.0, 100.0) == 0.0
        assert contract.pause_before_next_check(0.1, 5.0, 100.0) == pytest.approx(4.9)
        assert contract.pause_before_next_check(0.1, 5.0, 2.0) == 2.0

    def test_waiter_reports_status_changes_and_outputs(self) -> None:
        waiter = CallWaiter.begin("call_1", timeout=100, poll_interval=5)
        running = contract.BananaRunning(call_id="call_1", message="running")
        step = waiter.observe(running, waited=50.0)
        assert step.status_changed
        assert step.outputs is None
        assert step.pause == 0.0
        step = waiter.observe(running, waited=0.5)
        assert not step.status_changed
        assert step.pause == pytest.approx(4.5)
        done = contract.BananaFinished(call_id="call_1", model_outputs=[{"x": 1}], message="success")
        step = waiter.observe(done, waited=0.1)
        assert step.outputs == [{"x": 1}]
        assert step.status_changed
        assert waiter.checks == 3

    def test_waiter_logs_news_and_progress_not_every_check(self) -> None:
        running = contract.BananaRunning(call_id="call_1", message="running")
        queued = contract.BananaRunning(call_id="call_1", message="queued")
        waiter = CallWaiter.begin("call_1", timeout=3600, poll_interval=5)
        assert waiter.observe(running, waited=50.0).log_line is None  # the Start already said "running"
        assert waiter.observe(queued, waited=50.0).log_line[:3] == (
            "Banana call %s is %s after %.1f s",
            "call_1",
            "queued",
        )
        assert waiter.observe(queued, waited=50.0).log_line is None  # no news, and under PROGRESS_EVERY
        waiter.last_logged -= contract.PROGRESS_EVERY
        line = waiter.observe(queued, waited=50.0).log_line
        assert line is not None
        assert "is still %s" in line[0]
        assert CallWaiter.begin("call_2", timeout=3600).observe(queued, waited=1.0).log_line is not None

    def test_waiter_deadline(self) -> None:
        waiter = CallWaiter.begin("call_1", timeout=10, started_at=time.time() - 11)
        with pytest.raises(BananaTimeoutError) as info:
            waiter.raise_if_expired()
        assert info.value.call_id == "call_1"
        assert "call_1" in str(info.value)
        assert "cannot cancel" in str(info.value)
        lost = BananaResponseLostError("lost", endpoint=CHECK, call_id="call_1")
        assert isinstance(waiter.failure(lost), BananaTimeoutError)
        fresh = CallWaiter.begin("call_1", timeout=10)
        assert fresh.failure(lost) is lost

    def test_waiter_validates(self) -> None:
        with pytest.raises(BananaConfigError, match="timeout"):
            CallWaiter.begin("c", timeout=0)
        with pytest.raises(BananaConfigError, match="poll_interval"):
            CallWaiter.begin("c", timeout=1, poll_interval=-1)


class TestEvents:
    def test_success_round_trip(self) -> None:
        event = contract.success_event("call_1", [[1, 2]])
        assert set(event) == {"status", "call_id", "model_outputs", "message"}
        assert json.loads(json.dumps(event)) == event
        assert contract.outputs_from_event(event) == ("call_1", [[1, 2]])

    @pytest.mark.parametrize(
        ("error", "status", "raised"),
        [
            (BananaCallError("error: boom", call_id="call_1"), EventStatus.FAILED, BananaCallError),
            (
                BananaCallNotFoundError("taskID does not exist", call_id="c"),
                EventStatus.FAILED,
                BananaCallNotFoundError,
            ),
            (BananaTimeoutError("call_1", 30, "running"), EventStatus.TIMEOUT, BananaTimeoutError),
            (BananaResponseLostError("lost", endpoint=CHECK), EventStatus.ERROR, BananaError),
            (RuntimeError("local"), EventStatus.ERROR, BananaError),
        ],
    )
    def test_failures_round_trip(self, error: Exception, status: EventStatus, raised: type[Exception]) -> None:
        event = contract.error_event("call_1", error)
        assert event["status"] == status.value
        assert event["model_outputs"] is None
        assert json.loads(json.dumps(event)) == event
        with pytest.raises(raised) as info:
            contract.outputs_from_event(event)
        assert "call_1" in str(info.value)
        if status is EventStatus.FAILED:
            assert not isinstance(info.value, BananaTimeoutError)

    def test_timeout_event_keeps_the_budget(self) -> None:
        with pytest.raises(BananaTimeoutError) as info:
            contract.outputs_from_event(contract.error_event("call_1", BananaTimeoutError("call_1", 30, "running")))
        assert info.value.timeout == 30
        assert info.value.last_message == "running"

    @pytest.mark.parametrize(
        "event",
        [
            None,
            "success",
            {},
            {"status": "done", "call_id": "c"},
            {"status": "success", "call_id": "c"},
            {"status": "success", "model_outputs": []},
        ],
    )
    def test_bad_events_raise(self, event: object) -> None:
        with pytest.raises(BananaError):
            contract.outputs_from_event(event)


class TestExceptions:
    @pytest.mark.parametrize(
        "error",
        [
            BananaCallError("error: x", call_id="c"),
            BananaCallNotFoundError("gone", call_id="c"),
            BananaTimeoutError("c", 5.0, "running"),
            BananaHTTPError("HTTP 503", endpoint=START, status_code=503, retry_after=2.0),
            BananaConnectError("refused", endpoint=CHECK, call_id="c"),
            BananaResponseLostError("lost", endpoint=START),
        ],
    )
    def test_pickle_round_trip_keeps_type_and_attributes(self, error: BananaError) -> None:
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert vars(clone) == vars(error)

    def test_config_error_is_a_value_error(self) -> None:
        assert isinstance(BananaConfigError("x"), ValueError)
