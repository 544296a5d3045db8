"""
Hostile and broken servers: every promise holds whatever a server, or a gateway in front of it, sends.

The promises: the key never leaks (not to another host, not into a text that leaves the provider),
a successful call's outputs are never altered, deadlines hold however slowly bytes arrive, a reply
has a size limit, only the provider's own errors come out, a Check's answer is about the call asked,
and nothing is paid twice (every Start case counts the Starts the server saw).

Each case is a small scripted server on 127.0.0.1 (``tests/hostile.py``) that stops by itself, and
runs through the sync hook, the async hook and, for the waiting cases, the trigger.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_banana.contract import BananaRetryPolicy
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaConfigError,
    BananaError,
    BananaHTTPError,
    BananaProtocolError,
    BananaReplyTooLargeError,
    BananaResponseLostError,
    BananaTimeoutError,
)
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from airflow_provider_banana.operators.banana import BananaInferenceOperator
from airflow_provider_banana.triggers.banana import BananaCallTrigger
from tests.helpers import collect, connection_json
from tests.hostile import (
    Blackhole,
    HostileServer,
    Request,
    endless_chunked,
    gzip_bomb,
    hang,
    head,
    huge,
    json_reply,
    raw,
    redirect,
    response,
    send,
    trickle,
)
from tests.leaks import KEY, assert_no_key, error_texts, key_forms

POLICY = BananaRetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2, jitter=0.0)
INPUTS = {"prompt": "hello"}
RUNNING = {"message": "running", "modelOutputs": None}
#: A Start that did not finish: the call is followed with Checks.
STARTED = {"message": "", "callID": "call_A", "finished": False, "modelOutputs": None}
#: Slack on every deadline: a case that ends later than its deadline plus this has hung.
SLACK = 6.0


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point ``banana_default`` at a URL, with the test key and optional extra."""

    def point(url: str, api_key: str = KEY, **extra: Any) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(url, api_key, model_key="m", **extra))

    return point


def sync_hook() -> BananaHook:
    return BananaHook(retry_policy=POLICY)


def run_async(coro_fn: Callable[[BananaAsyncHook], Any]) -> Any:
    async def main() -> Any:
        async with BananaAsyncHook(retry_policy=POLICY) as hook:
            return await coro_fn(hook)

    return asyncio.run(main())


def run_trigger(call_id: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Run a trigger to its one event; check the event is JSON and secret-free."""
    now = time.time()
    trigger = BananaCallTrigger(call_id, deadline=now + timeout, started_at=now, **kwargs)
    events = asyncio.run(collect(trigger))
    assert len(events) == 1, events
    payload = events[0].payload
    assert json.loads(json.dumps(payload)) == payload
    assert_no_key(json.dumps(payload), json.dumps(trigger.serialize()))
    return payload


# Each way of doing one thing, through either half: a Start, a Check, and a wait for a call.
def start(half: str, **kwargs: Any) -> Any:
    if half == "sync":
        return sync_hook().start(INPUTS, **kwargs)
    return run_async(lambda hook: hook.start(INPUTS, **kwargs))


def check(half: str, call_id: str = "call_A") -> Any:
    if half == "sync":
        return sync_hook().check(call_id, long_poll=False)
    return run_async(lambda hook: hook.check(call_id, long_poll=False))


def wait(half: str, call_id: str = "call_A", **kwargs: Any) -> Any:
    if half == "sync":
        return sync_hook().wait(call_id, **kwargs)
    return run_async(lambda hook: hook.wait(call_id, **kwargs))


HALVES = ["sync", "async"]


@pytest.fixture
def other_host() -> Iterator[HostileServer]:
    """Where redirects point: a server that must never see a request."""
    with HostileServer(json_reply({"message": "success", "modelOutputs": [{"from": "elsewhere"}]})) as server:
        yield server


# ---------------------------------------------------------------------------------------------------------
# 1. Redirects are never followed.


class TestRedirects:
    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    @pytest.mark.parametrize("half", HALVES)
    def test_a_redirected_start_is_an_error_naming_the_target_and_is_not_resent(
        self, half: str, status: int, other_host: HostileServer, connect: Callable[..., None]
    ) -> None:
        target = f"http://user:pw@{other_host.host_port}/start/v4/?token=s3cret"
        with HostileServer(redirect(status, target)) as server:
            connect(server.url)
            with pytest.raises(BananaHTTPError) as caught:
                start(half, start_only=True)
            assert server.count("/start") == 1
        assert other_host.count() == 0  # the body, key included, went nowhere else
        error = caught.value
        assert error.status_code == status
        text = str(error)
        assert f"HTTP {status}" in text
        assert other_host.host_port in text
        assert "not followed" in text
        assert "s3cret" not in text
        assert "pw" not in text
        assert "user" not in text
        assert_no_key(*error_texts(error))

    @pytest.mark.parametrize("half", HALVES)
    def test_a_redirect_loop_sends_one_start(self, half: str, connect: Callable[..., None]) -> None:
        with HostileServer(lambda request: redirect(307, request.path)) as server:
            connect(server.url)
            with pytest.raises(BananaHTTPError, match=r"HTTP 307: a redirect to http://127\.0\.0\.1"):
                start(half)
            assert server.count("/start") == 1

    @pytest.mark.parametrize("half", HALVES)
    def test_a_redirected_check_is_not_retried(
        self, half: str, other_host: HostileServer, connect: Callable[..., None]
    ) -> None:
        with HostileServer(redirect(302, other_host.url + "check/v4/")) as server:
            connect(server.url)
            with pytest.raises(BananaHTTPError, match="HTTP 302"):
                wait(half, timeout=10)
            assert server.count("/check") == 1
        assert other_host.count() == 0

    def test_the_trigger_reports_a_redirect(self, other_host: HostileServer, connect: Callable[..., None]) -> None:
        with HostileServer(redirect(308, other_host.url)) as server:
            connect(server.url)
            payload = run_trigger("call_A", timeout=10)
        assert payload["status"] == "error"
        assert "BananaHTTPError" in payload["message"]
        assert "HTTP 308" in payload["message"]
        assert other_host.host_port in payload["message"]
        assert other_host.count() == 0


# ---------------------------------------------------------------------------------------------------------
# 2. Scrubbing the key never alters a result, and catches every encoding.


class TestScrubbing:
    @pytest.mark.parametrize("placeholder", ["test", "x", '"', "1", "results"])
    @pytest.mark.parametrize("half", HALVES)
    def test_a_placeholder_key_leaves_the_outputs_as_sent(
        self, half: str, placeholder: str, connect: Callable[..., None]
    ) -> None:
        outputs = [{"text": "the latest test results", "x": 1, "quote": '"', "n": [1, 10, 100]}]
        finished = {"message": "", "callID": "", "finished": True, "modelOutputs": outputs}
        with HostileServer(json_reply(finished)) as server:
            connect(server.url, api_key=placeholder)
            result = start(half)
            assert server.count("/start") == 1
            assert server.requests[0].json()["apiKey"] == placeholder
        assert result.finished
        assert result.model_outputs == outputs

    @pytest.mark.parametrize("half", HALVES)
    def test_outputs_that_hold_the_key_are_returned_as_sent(self, half: str, connect: Callable[..., None]) -> None:
        # The result is the server's: masking it would corrupt it. (It is the caller's data.)
        outputs = [{"echo": KEY}]
        with HostileServer(json_reply({"message": "success", "modelOutputs": outputs})) as server:
            connect(server.url)
            assert check(half).model_outputs == outputs

    @pytest.mark.parametrize("form", list(key_forms()))
    @pytest.mark.parametrize("half", HALVES)
    def test_an_echoed_key_is_masked_in_every_error_text(
        self, half: str, form: str, connect: Callable[..., None]
    ) -> None:
        echoed = key_forms()[form]
        body = '{"message": "error: invalid apiKey ' + echoed + '"}'
        with HostileServer(response(200, body.encode(), {"Content-Type": "application/json"})) as server:
            connect(server.url)
            with pytest.raises(BananaCallError) as caught:
                check(half)
        assert "invalid apiKey" in caught.value.message
        assert_no_key(*error_texts(caught.value))

    @pytest.mark.parametrize("form", list(key_forms()))
    def test_an_echoed_key_is_masked_in_non_json_error_pages(self, form: str, connect: Callable[..., None]) -> None:
        page = f"<html><body>Bad gateway: upstream refused {key_forms()[form]} for /start</body></html>"
        with HostileServer(response(502, page)) as server:
            connect(server.url)
            with pytest.raises(BananaHTTPError) as caught:
                start("sync")
            assert server.count("/start") == 1
        assert "Bad gateway" in str(caught.value)
        assert_no_key(*error_texts(caught.value))

    @pytest.mark.parametrize("form", ["raw", "json \\/", "json \\u", "url"])
    def test_an_echoed_key_is_masked_in_the_trigger_event_and_test_connection(
        self, form: str, connect: Callable[..., None]
    ) -> None:
        body = '{"message": "inference server error: key ' + key_forms()[form] + ' is not allowed"}'
        with HostileServer(response(200, body.encode())) as server:
            connect(server.url)
            payload = run_trigger("call_A", timeout=10)
            ok, message = sync_hook().test_connection()
        assert payload["status"] == "failed"
        assert "is not allowed" in payload["message"]
        assert not ok
        assert "is not allowed" in message
        assert_no_key(message)

    def test_an_echoed_key_is_masked_in_status_log_lines(
        self, connect: Callable[..., None], capfd: pytest.CaptureFixture[str]
    ) -> None:
        replies = [
            json_reply({"message": f"queued for {KEY}"}),
            json_reply({"message": "success", "modelOutputs": [1]}),
        ]
        with HostileServer(replies) as server:
            connect(server.url)
            assert sync_hook().wait("call_A", timeout=10, poll_interval=0.25) == [1]
        logs = "".join(capfd.readouterr())
        assert "queued for ***" in logs
        assert_no_key(logs)

    def test_a_call_id_that_echoes_the_key_is_refused(self, connect: Callable[..., None]) -> None:
        leaky = {**STARTED, "callID": "call_" + KEY.replace("/", "\\/")}
        with HostileServer(json_reply(leaky)) as server:
            connect(server.url)
            with pytest.raises(BananaProtocolError, match="callID contains the API key") as caught:
                start("sync", start_only=True)
            assert server.count("/start") == 1
        assert "may have been taken" in str(caught.value)
        assert_no_key(*error_texts(caught.value))


# ---------------------------------------------------------------------------------------------------------
# 3. Deadlines hold against a server that trickles, or a host that never answers.


def trickling_check(request: Request) -> Any:
    # One byte a second: every read is quick, the answer never ends in time.
    return trickle(200, json.dumps({"message": "success", "modelOutputs": [1]}).encode() * 10, every=0.5)


class TestDeadlines:
    @pytest.mark.parametrize("headers_too", [False, True])
    @pytest.mark.parametrize("half", HALVES)
    def test_a_wait_ends_at_its_deadline_against_a_trickle(
        self, half: str, headers_too: bool, connect: Callable[..., None]
    ) -> None:
        body = json.dumps({"message": "success", "modelOutputs": [1]}).encode() * 10
        with HostileServer(trickle(200, body, every=0.5, headers_too=headers_too)) as server:
            connect(server.url)
            began = time.monotonic()
            with pytest.raises(BananaTimeoutError, match="did not finish within 3 s"):
                wait(half, timeout=3)
            assert time.monotonic() - began < 3 + SLACK
            assert server.count("/check") >= 1

    def test_the_trigger_ends_at_its_deadline_against_a_trickle(self, connect: Callable[..., None]) -> None:
        with HostileServer(trickling_check) as server:
            connect(server.url)
            began = time.monotonic()
            payload = run_trigger("call_A", timeout=4)
            assert time.monotonic() - began < 4 + SLACK
        assert payload["status"] == "timeout"

    @pytest.mark.parametrize("half", HALVES)
    def test_a_trickled_start_is_lost_after_its_time_and_never_resent(
        self, half: str, connect: Callable[..., None]
    ) -> None:
        with HostileServer(trickle(200, json.dumps(STARTED).encode(), every=0.5)) as server:
            connect(server.url, quick_read=2)
            began = time.monotonic()
            with pytest.raises(BananaResponseLostError, match="within the request's time limit") as caught:
                start(half, start_only=True)
            assert time.monotonic() - began < 2 + SLACK
            assert server.count("/start") == 1
        assert "may have been taken" in str(caught.value)

    @pytest.mark.parametrize("half", HALVES)
    def test_a_body_that_never_comes_ends_with_the_time_limit(self, half: str, connect: Callable[..., None]) -> None:
        with HostileServer([send(head(200, {"Content-Length": 100})), hang()]) as server:
            connect(server.url, quick_read=1.5)
            with pytest.raises(BananaResponseLostError):
                start(half, start_only=True)
            assert server.count("/start") == 1

    @pytest.mark.parametrize("half", HALVES)
    def test_a_black_holed_host_keeps_the_wait_deadline(self, half: str, connect: Callable[..., None]) -> None:
        with Blackhole() as hole:
            connect(hole.url, connect_timeout=10)
            began = time.monotonic()
            with pytest.raises(BananaTimeoutError, match="within 2 s"):
                wait(half, timeout=2)
            assert time.monotonic() - began < 2 + SLACK


# ---------------------------------------------------------------------------------------------------------
# 4. A reply has a size limit, applied while reading and to the decompressed size.

MIB = 1024 * 1024


class TestSizeLimit:
    @pytest.mark.parametrize(
        "reply",
        [
            pytest.param(lambda: endless_chunked(), id="endless chunked"),
            pytest.param(lambda: gzip_bomb(40 * MIB), id="gzip bomb"),
            pytest.param(lambda: gzip_bomb(40 * MIB, chunked=True), id="chunked gzip bomb"),
            pytest.param(lambda: huge(40 * MIB, content_length=False), id="no length"),
            pytest.param(lambda: huge(10**12), id="declared terabyte"),
        ],
    )
    @pytest.mark.parametrize("half", HALVES)
    def test_a_check_reply_over_the_limit_is_refused_and_not_retried(
        self, half: str, reply: Callable[[], Any], connect: Callable[..., None]
    ) -> None:
        with HostileServer(reply()) as server:
            connect(server.url, max_reply_bytes=MIB)
            with pytest.raises(BananaReplyTooLargeError) as caught:
                check(half)
            assert server.count("/check") == 1
        text = str(caught.value)
        assert "max_reply_bytes (1 MiB)" in text
        assert "connection's extra" in text
        assert caught.value.limit == MIB

    @pytest.mark.parametrize("half", HALVES)
    def test_a_start_over_the_limit_says_it_may_have_been_taken(self, half: str, connect: Callable[..., None]) -> None:
        with HostileServer(gzip_bomb(8 * MIB)) as server:
            connect(server.url, max_reply_bytes="1048576")  # a URI connection's extra is strings
            with pytest.raises(BananaReplyTooLargeError, match="may have been taken and billed"):
                start(half)
            assert server.count("/start") == 1

    def test_the_default_limit_is_64_mib(self, connect: Callable[..., None]) -> None:
        with HostileServer(gzip_bomb(80 * MIB)) as server:
            connect(server.url)
            with pytest.raises(BananaReplyTooLargeError, match=r"max_reply_bytes \(64 MiB\)"):
                check("async")

    def test_a_reply_under_the_limit_comes_back_whole(self, connect: Callable[..., None]) -> None:
        image = "A" * (3 * MIB)  # a base64 image, say
        with HostileServer(json_reply({"message": "success", "modelOutputs": [{"image": image}]})) as server:
            connect(server.url, max_reply_bytes=4 * MIB)
            assert check("sync").model_outputs == [{"image": image}]
            assert check("async").model_outputs == [{"image": image}]

    def test_the_trigger_reports_the_limit(self, connect: Callable[..., None]) -> None:
        with HostileServer(endless_chunked()) as server:
            connect(server.url, max_reply_bytes=MIB)
            payload = run_trigger("call_A", timeout=10)
        assert payload["status"] == "error"
        assert "BananaReplyTooLargeError" in payload["message"]
        assert "max_reply_bytes" in payload["message"]

    def test_a_bad_limit_is_a_config_error(self, connect: Callable[..., None]) -> None:
        for value in ("lots", 10, True, -5):
            connect("http://127.0.0.1:9/", max_reply_bytes=value)
            with pytest.raises(BananaConfigError, match="max_reply_bytes"):
                sync_hook().settings  # noqa: B018


# ---------------------------------------------------------------------------------------------------------
# 5. Whatever the bytes, only the provider's own errors come out.


class TestOnlyOurErrors:
    @pytest.mark.parametrize("half", HALVES)
    def test_deeply_nested_json_is_a_protocol_error(self, half: str, connect: Callable[..., None]) -> None:
        deep = b"[" * 500_000 + b"]" * 500_000
        with HostileServer(response(200, deep)) as server:
            connect(server.url)
            with pytest.raises(BananaProtocolError, match="too deeply nested") as caught:
                start(half)
            assert server.count("/start") == 1
        assert "may have been taken" in str(caught.value)

    @pytest.mark.parametrize("half", HALVES)
    def test_a_deep_check_reply_is_retried_as_a_protocol_error(self, half: str, connect: Callable[..., None]) -> None:
        with HostileServer(response(200, b'{"message": ' + b"[" * 200_000)) as server:
            connect(server.url)
            with pytest.raises(BananaProtocolError):
                check(half)
            assert server.count("/check") == POLICY.max_attempts

    @pytest.mark.parametrize("half", HALVES)
    def test_a_huge_number_and_a_byte_order_mark_are_read_exactly(
        self, half: str, connect: Callable[..., None]
    ) -> None:
        digits = "7" * 5000
        body = b"\xef\xbb\xbf" + b'{"message": "success", "modelOutputs": [{"n": ' + digits.encode() + b"}]}"
        with HostileServer(response(200, body)) as server:
            connect(server.url)
            result = check(half)
        (output,) = result.model_outputs
        assert output["n"] == 7 * (10**5000 - 1) // 9  # 5,000 sevens, exactly

    @pytest.mark.parametrize("half", HALVES)
    def test_invalid_utf8_is_a_protocol_error_not_a_silent_replacement(
        self, half: str, connect: Callable[..., None]
    ) -> None:
        body = b'{"message": "success", "modelOutputs": ["caf\xe9"]}'
        with HostileServer(response(200, body)) as server:
            connect(server.url)
            with pytest.raises(BananaProtocolError, match="not JSON"):
                check(half)

    @pytest.mark.parametrize(
        ("host", "problem"),
        [
            ("http://127.0.0.1:99999/", "port"),
            ("http://127.0.0.1:abc/", "port"),
            ("http://127.0.0.1:0/", "port"),
            ("http://admin:hunter2@127.0.0.1:8000/", "credentials"),
            ("ftp://127.0.0.1/", "http:// or https://"),
            ("http://127.0.0.1 :8000/", "spaces"),
        ],
    )
    @pytest.mark.parametrize("half", HALVES)
    def test_a_bad_base_url_is_a_config_error_before_any_request(
        self, half: str, host: str, problem: str, connect: Callable[..., None]
    ) -> None:
        connect(host)
        with pytest.raises(BananaConfigError, match=problem) as caught:
            start(half)
        assert "hunter2" not in str(caught.value)
        assert "may have been" not in str(caught.value)

    def test_the_trigger_reports_a_bad_base_url(self, connect: Callable[..., None]) -> None:
        connect("http://127.0.0.1:99999/")
        payload = run_trigger("call_A", timeout=10)
        assert payload["status"] == "error"
        assert payload["message"].startswith("BananaConfigError:")

    @pytest.mark.parametrize(
        "reply",
        [
            pytest.param(raw(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}"), id="bad content-length"),
            pytest.param(raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\n{}"), id="two lengths"),
            pytest.param(raw(b"garbage\r\n\r\n"), id="no status line"),
            pytest.param(
                raw(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd"), id="bad gzip"
            ),
            pytest.param(raw(b"HTTP/1.1 200 OK\r\nX-Bad\xff: " + KEY.encode() + b"\r\n\r\n"), id="bad header"),
            pytest.param(raw(b"HTTP/1.1 999 What\r\nContent-Length: 2\r\n\r\n{}"), id="status 999"),
            pytest.param(raw(b""), id="closed at once"),
        ],
    )
    @pytest.mark.parametrize("half", HALVES)
    def test_garbled_http_is_one_of_our_errors(self, half: str, reply: Any, connect: Callable[..., None]) -> None:
        with HostileServer(reply) as server:
            connect(server.url)
            with pytest.raises(BananaError) as caught:
                start(half)
            assert server.count("/start") == 1
        assert_no_key(*error_texts(caught.value))


# ---------------------------------------------------------------------------------------------------------
# 6. A Check's answer is about the call that was asked.


class TestWrongCall:
    @pytest.mark.parametrize("half", HALVES)
    def test_an_answer_for_another_call_is_refused(self, half: str, connect: Callable[..., None]) -> None:
        other = {"message": "success", "callID": "call_B", "modelOutputs": [{"for": "B"}]}
        with HostileServer(json_reply(other)) as server:
            connect(server.url)
            with pytest.raises(BananaProtocolError, match="another call") as caught:
                wait(half, "call_A", timeout=10)
            assert server.count("/check") == POLICY.max_attempts  # retried: the next answer may be right
        assert "call_B" in str(caught.value)

    def test_the_trigger_never_hands_over_another_calls_outputs(self, connect: Callable[..., None]) -> None:
        replies = [
            json_reply({"message": "success", "callID": "call_B", "modelOutputs": [{"for": "B"}]}),
            json_reply({"message": "success", "callID": "call_A", "modelOutputs": [{"for": "A"}]}),
        ]
        # The wrong answer is retried (after the default first backoff, a second), the right one taken.
        with HostileServer(replies) as server:
            connect(server.url)
            payload = run_trigger("call_A", timeout=20)
        assert payload["status"] == "success"
        assert payload["model_outputs"] == [{"for": "A"}]

    @pytest.mark.parametrize("half", HALVES)
    def test_an_answer_without_a_call_id_is_fine(self, half: str, connect: Callable[..., None]) -> None:
        with HostileServer(json_reply({"message": "success", "modelOutputs": [{"for": "A"}]})) as server:
            connect(server.url)
            assert wait(half, "call_A", timeout=10) == [{"for": "A"}]


# ---------------------------------------------------------------------------------------------------------
# 7. Limits that protect a server from us, and numbers JSON cannot hold.


class TestLimits:
    @pytest.mark.parametrize("half", HALVES)
    def test_poll_interval_has_a_floor(self, half: str, connect: Callable[..., None]) -> None:
        connect("http://127.0.0.1:9/")
        with pytest.raises(BananaConfigError, match=r"poll_interval must be at least 0\.25 s"):
            wait(half, timeout=5, poll_interval=0.001)
        with pytest.raises(BananaConfigError, match="poll_interval"):
            BananaCallTrigger("call_A", deadline=time.time() + 5, poll_interval=0.001)
        with pytest.raises(BananaConfigError, match="poll_interval"):
            BananaInferenceOperator(task_id="t", model_inputs=INPUTS, poll_interval=0.01)

    @pytest.mark.parametrize("half", HALVES)
    def test_a_server_that_does_not_hold_is_checked_a_few_times_a_second(
        self, half: str, connect: Callable[..., None]
    ) -> None:
        with HostileServer(json_reply(RUNNING)) as server:
            connect(server.url)
            with pytest.raises(BananaTimeoutError):
                wait(half, timeout=2, poll_interval=0.25)
            assert 2 <= server.count("/check") <= 2 / 0.25 + 1

    def test_holds_given_as_strings_are_accepted(self, connect: Callable[..., None]) -> None:
        with HostileServer(json_reply(STARTED)) as server:
            connect(server.url, start_hold="1.5", check_hold="2", read_margin="1", quick_read="3")
            timeouts = sync_hook().settings.timeouts
            assert (timeouts.start_hold, timeouts.check_hold, timeouts.read_margin) == (1.5, 2.0, 1.0)
            assert start("sync").call_id == "call_A"

    @pytest.mark.parametrize(
        ("value", "problem"), [("1e300", "at most"), (1e300, "at most"), ("abc", "must be a number"), ("nan", "")]
    )
    def test_absurd_holds_are_config_errors(self, value: Any, problem: str, connect: Callable[..., None]) -> None:
        connect("http://127.0.0.1:9/", check_hold=value)
        with pytest.raises(BananaConfigError, match=f"check_hold.*{problem}"):
            sync_hook().settings  # noqa: B018

    @pytest.mark.parametrize("half", HALVES)
    def test_nan_and_infinity_in_outputs_are_kept_and_named_in_a_warning(
        self, half: str, connect: Callable[..., None], capfd: pytest.CaptureFixture[str]
    ) -> None:
        body = b'{"message": "success", "modelOutputs": [{"scores": [0.5, NaN, 1e400], "bias": -Infinity}]}'
        with HostileServer(response(200, body)) as server:
            connect(server.url)
            (output,) = check(half).model_outputs
        logs = "".join(capfd.readouterr())
        assert math.isnan(output["scores"][1])
        assert output["scores"][2] == math.inf
        assert output["bias"] == -math.inf
        assert '[0]["scores"][1]' in logs
        assert '[0]["scores"][2]' in logs
        assert '[0]["bias"]' in logs
        assert "XCom stores as null" in logs
