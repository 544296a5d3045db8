"""BananaHook over real HTTP against the local server: results, quirks, failures, every retry rule."""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_banana.contract import BananaRetryPolicy
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaCallNotFoundError,
    BananaConfigError,
    BananaConnectError,
    BananaHTTPError,
    BananaProtocolError,
    BananaResponseLostError,
    BananaTimeoutError,
)
from airflow_provider_banana.hooks.banana import BananaHook
from benchmarks.harness import free_port
from tests.helpers import API_KEY, FAST, connection_json


def make_hook(**kwargs: Any) -> BananaHook:
    return BananaHook(retry_policy=kwargs.pop("retry_policy", FAST), **kwargs)


@pytest.fixture
def hook(banana_conn: str) -> BananaHook:
    return make_hook(banana_conn_id=banana_conn)


class TestResults:
    def test_waiting_start_returns_outputs(self, hook: BananaHook, server: DevServer) -> None:
        result = hook.start({"prompt": "hello banana world"})
        assert result.finished
        assert result.call_id
        assert result.call_id.startswith("call_")
        assert result.model_outputs == [
            {"words": 3, "characters": 18, "upper": "HELLO BANANA WORLD", "reversed": "dlrow ananab olleh"}
        ]
        assert result.api_version
        assert server.stats()["starts_taken"] == 1

    def test_start_only_then_long_poll_check(self, hook: BananaHook, server: DevServer) -> None:
        result = hook.start({"seconds": 0.5, "result": 7}, "sleep", start_only=True)
        assert not result.finished
        assert result.call_id
        began = time.monotonic()
        checked = hook.check(result.call_id)
        assert checked.finished
        assert checked.model_outputs == [{"slept": pytest.approx(0.5, abs=0.2), "result": 7}]
        assert time.monotonic() - began < 1.5  # woke on completion, not at the end of the hold

    def test_list_outputs_stay_a_list(self, hook: BananaHook) -> None:
        assert hook.run({"items": [3, 1, 2]}, "list") == [[3, 1, 2]]

    def test_model_error_inside_a_reply_is_a_success(self, hook: BananaHook) -> None:
        outputs = hook.run({"message": "CUDA OOM"}, "model-error")
        assert "$error" in outputs[0]

    def test_quirk_empty_message_and_call_id(self, hook: BananaHook, server: DevServer) -> None:
        server.faults(quirk_empty_message=True)
        result = hook.start({"prompt": "quirk"})
        assert result.finished
        assert result.message == ""
        assert result.call_id is None
        assert result.model_outputs is not None
        assert result.model_outputs[0]["words"] == 1
        assert hook.run({"prompt": "a b"}) == [{"words": 2, "characters": 3, "upper": "A B", "reversed": "b a"}]

    def test_run_waits_past_the_start_hold_with_long_polls(self, hook: BananaHook, server: DevServer) -> None:
        outputs = hook.run({"seconds": 2.5}, "sleep", timeout=30)
        assert outputs == [{"slept": pytest.approx(2.5, abs=0.3), "result": None}]
        stats = server.stats()
        assert stats["starts_taken"] == 1
        assert stats["check_requests"] <= 2  # long polls, not a polling loop

    def test_model_key_falls_back_to_the_connection_extra(self, hook: BananaHook) -> None:
        assert hook.settings.model_key == "wordcount"
        assert hook.run({"prompt": "x"})[0]["words"] == 1


class TestFailures:
    def test_failed_inference(self, hook: BananaHook, server: DevServer) -> None:
        with pytest.raises(BananaCallError) as info:
            hook.run({"reason": "GPU on fire"}, "fail")
        assert "GPU on fire" in info.value.message
        assert "error" in info.value.message
        assert server.stats()["starts_taken"] == 1  # a failed inference is not started again

    def test_failed_inference_after_start_only(self, hook: BananaHook) -> None:
        result = hook.start({"reason": "later"}, "fail", start_only=True)
        assert result.call_id
        with pytest.raises(BananaCallError) as info:
            hook.wait(result.call_id, timeout=10)
        assert info.value.call_id == result.call_id
        assert not isinstance(info.value, BananaCallNotFoundError)

    def test_unknown_call(self, hook: BananaHook, server: DevServer) -> None:
        with pytest.raises(BananaCallNotFoundError) as info:
            hook.check("call_does-not-exist")
        assert info.value.call_id == "call_does-not-exist"
        assert "does not exist" in info.value.message
        assert server.stats()["check_requests"] == 1  # terminal: not retried

    def test_timeout_names_the_call_and_does_not_overshoot(self, hook: BananaHook) -> None:
        result = hook.start({"seconds": 10}, "sleep", start_only=True)
        began = time.monotonic()
        with pytest.raises(BananaTimeoutError) as info:
            hook.wait(result.call_id or "", timeout=1.0)
        assert time.monotonic() - began < 2.0
        assert info.value.call_id == result.call_id
        assert result.call_id in str(info.value)

    def test_wrong_api_key(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, api_key="wrong-key"))
        with pytest.raises(BananaCallError, match="apiKey") as info:
            make_hook().start({"prompt": "x"}, "wordcount")
        assert "wrong-key" not in str(info.value)
        assert server.stats()["starts_taken"] == 0


class TestValidationBeforeAnyRequest:
    def assert_no_request(self, server: DevServer) -> None:
        stats = server.stats()
        assert stats["start_requests"] == 0
        assert stats["check_requests"] == 0

    def test_missing_model_key(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url))
        with pytest.raises(BananaConfigError, match="model key"):
            make_hook().start({"prompt": "x"})
        self.assert_no_request(server)

    def test_inputs_json_cannot_hold(self, hook: BananaHook, server: DevServer) -> None:
        with pytest.raises(TypeError, match="cannot be sent as JSON"):
            hook.start({"when": object()})
        with pytest.raises(BananaConfigError, match="not valid JSON"):
            hook.start("{not json")
        self.assert_no_request(server)

    @pytest.mark.parametrize("api_key", [None, "", "   "])
    def test_empty_api_key(self, server: DevServer, monkeypatch: pytest.MonkeyPatch, api_key: str | None) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, api_key=api_key))
        with pytest.raises(BananaConfigError, match="API key"):
            make_hook().start({"prompt": "x"}, "wordcount")
        self.assert_no_request(server)

    def test_base_url_without_scheme(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(f"127.0.0.1:{server.port}"))
        with pytest.raises(BananaConfigError, match="http://"):
            make_hook().start({"prompt": "x"}, "wordcount")
        self.assert_no_request(server)

    def test_empty_call_id(self, hook: BananaHook, server: DevServer) -> None:
        with pytest.raises(BananaConfigError, match="call id"):
            hook.check("")
        self.assert_no_request(server)


class TestRetries:
    def test_start_retried_after_a_503_with_retry_after_answered_before_processing(
        self, hook: BananaHook, server: DevServer
    ) -> None:
        server.faults(fail_next={"count": 2, "status": 503, "endpoints": ["start"], "retry_after": 0})
        assert hook.run({"prompt": "a"})[0]["words"] == 1
        stats = server.stats()
        assert stats["start_requests"] == 3
        assert stats["starts_taken"] == 1

    def test_start_honours_retry_after(self, hook: BananaHook, server: DevServer) -> None:
        server.faults(fail_next={"count": 1, "status": 429, "endpoints": ["start"], "retry_after": 1})
        began = time.monotonic()
        assert hook.run({"prompt": "a"})[0]["words"] == 1
        assert time.monotonic() - began >= 1.0
        assert server.stats()["starts_taken"] == 1

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_start_not_retried_after_other_5xx(self, hook: BananaHook, server: DevServer, status: int) -> None:
        server.faults(fail_next={"count": 1, "status": status, "endpoints": ["start"]})
        with pytest.raises(BananaHTTPError) as info:
            hook.start({"prompt": "a"})
        assert info.value.status_code == status
        assert server.stats()["start_requests"] == 1

    def test_start_never_resent_after_the_answer_was_lost(self, hook: BananaHook, server: DevServer) -> None:
        server.faults(drop_next={"count": 1, "endpoints": ["start"]})
        with pytest.raises(BananaResponseLostError, match="not sent again") as info:
            hook.start({"prompt": "a"})
        assert info.value.request_sent
        stats = server.stats()
        assert stats["start_requests"] == 1
        assert stats["starts_taken"] == 1  # the server took it: sending it again would pay twice

    def test_start_never_resent_after_a_read_timeout(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, model_key="wordcount", quick_read=0.5)
        )
        server.faults(delay_next={"count": 1, "seconds": 1.5, "endpoints": ["start"]})
        with pytest.raises(BananaResponseLostError, match=r"no whole answer within the request's time limit"):
            make_hook().start({"prompt": "a"}, start_only=True)
        # The server takes the delayed Start after the client gave up; wait for that (so it does not
        # land in the next test's counters), then count.
        server.wait_until(lambda stats: stats["starts_taken"] == 1, timeout=5)
        assert server.stats()["start_requests"] == 1

    def test_start_non_json_body_is_not_retried(self, hook: BananaHook, server: DevServer) -> None:
        server.faults(non_json_next={"count": 1, "endpoints": ["start"]})
        with pytest.raises(BananaProtocolError, match="not JSON"):
            hook.start({"prompt": "a"})
        assert server.stats()["start_requests"] == 1

    @pytest.mark.parametrize(
        "fault",
        [
            {"fail_next": {"count": 2, "status": 502, "endpoints": ["check"]}},
            {"fail_next": {"count": 1, "status": 500, "endpoints": ["check"]}},
            {"fail_next": {"count": 1, "status": 429, "endpoints": ["check"], "retry_after": 0}},
            {"drop_next": {"count": 2, "endpoints": ["check"]}},
            {"non_json_next": {"count": 1, "endpoints": ["check"]}},
            {"raw_next": {"count": 1, "endpoints": ["check"], "body": [1, 2]}},
            {"raw_next": {"count": 1, "endpoints": ["check"], "body": {"status": "ok"}}},
        ],
        ids=["502x2", "500", "429", "drop", "non-json", "json-list", "no-message"],
    )
    def test_check_retried_through_transient_trouble(
        self, hook: BananaHook, server: DevServer, fault: dict[str, Any]
    ) -> None:
        call_id = hook.start({"seconds": 0.2}, "sleep", start_only=True).call_id or ""
        server.faults(**fault)
        assert hook.check(call_id).model_outputs == [{"slept": pytest.approx(0.2, abs=0.2), "result": None}]
        assert server.stats()["check_requests"] >= 2

    def test_check_gives_up_after_max_attempts(self, hook: BananaHook, server: DevServer) -> None:
        server.faults(fail_next={"count": 10, "status": 503, "endpoints": ["check"]})
        with pytest.raises(BananaHTTPError) as info:
            hook.check("call_x")
        assert info.value.status_code == 503
        assert server.stats()["check_requests"] == FAST.max_attempts

    def test_check_read_timeout_is_retried(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        # quick_read holds the whole request: 1 s leaves the Start room on a loaded machine.
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, quick_read=1.0))
        hook = make_hook()
        call_id = hook.start({"seconds": 0.1}, "sleep", start_only=True).call_id or ""
        server.faults(delay_next={"count": 1, "seconds": 3, "endpoints": ["check"]})
        assert hook.check(call_id, long_poll=False).finished
        assert server.stats()["check_requests"] >= 2

    def test_connection_refused_is_retried_then_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_BANANA_DEFAULT", connection_json(f"http://127.0.0.1:{free_port()}/", model_key="m")
        )
        began = time.monotonic()
        with pytest.raises(BananaConnectError) as info:
            make_hook().start({"prompt": "x"})
        assert not info.value.request_sent
        assert "could not connect" in str(info.value)
        assert time.monotonic() - began < 5
        assert API_KEY not in str(info.value)

    def test_a_failed_inference_is_not_retried(self, hook: BananaHook, server: DevServer) -> None:
        result = hook.start({}, "fail", start_only=True)
        with pytest.raises(BananaCallError):
            hook.check(result.call_id or "")
        assert server.stats()["check_requests"] == 1


class TestConnection:
    def test_test_connection_ok(self, hook: BananaHook, server: DevServer) -> None:
        ok, message = hook.test_connection()
        assert ok, message
        assert server.url in message
        assert API_KEY not in message
        assert server.stats()["starts_taken"] == 0  # proving the key costs no inference

    def test_test_connection_wrong_key(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, api_key="not-the-key"))
        ok, message = make_hook().test_connection()
        assert not ok
        assert "apiKey" in message
        assert "not-the-key" not in message

    def test_test_connection_server_down(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(f"http://127.0.0.1:{free_port()}/"))
        ok, message = make_hook(retry_policy=BananaRetryPolicy(max_attempts=1)).test_connection()
        assert not ok
        assert "could not connect" in message

    def test_test_connection_no_key(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, api_key=None))
        ok, message = make_hook().test_connection()
        assert not ok
        assert "API key" in message

    def test_one_keep_alive_session_per_hook(self, hook: BananaHook) -> None:
        session = hook.get_conn()
        hook.run({"prompt": "one"})
        hook.run({"prompt": "two"})
        assert hook.get_conn() is session
        hook.close()
        assert hook.get_conn() is not session  # a closed hook opens a fresh session on next use

    def test_settings_repr_hides_the_key(self, hook: BananaHook) -> None:
        assert API_KEY not in repr(hook.settings)
        assert hook.settings.api_key == API_KEY
