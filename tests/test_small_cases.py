"""
Small cases found on the way: odd connection extras, JSON depth, junk framing, spaces around the key.

* A connection extra that is JSON but not an object is a :class:`BananaConfigError` naming the extra.
* One JSON depth limit (``MAX_JSON_DEPTH``, 512 levels) for replies and model inputs, whatever the
  caller's stack depth; ``model_inputs`` nested 100,000 deep is refused before anything is sent.
* Both halves refuse the same junk ``Content-Length`` / ``Transfer-Encoding`` and header lines
  without a colon, with the same error class.
* Spaces around the connection's password are stripped, with a warning naming the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_banana.contract import (
    CHECK,
    framing_problem,
    framing_problem_of_raw,
    parse_reply,
    validate_model_inputs,
)
from airflow_provider_banana.contract.depth import MAX_JSON_DEPTH, json_depth, value_depth
from airflow_provider_banana.exceptions import (
    BananaConfigError,
    BananaError,
    BananaProtocolError,
    BananaResponseLostError,
)
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from tests.helpers import AIRFLOW_VERSION, connection_json
from tests.hostile import Action, HostileServer, close, json_reply, pause, send
from tests.leaks import KEY

OUTPUTS = [{"ok": 1}]
FINISHED = {"message": "", "callID": "", "finished": True, "modelOutputs": OUTPUTS}
HALVES = ["sync", "async"]


@pytest.fixture
def server() -> Iterator[HostileServer]:
    """A server answering every Start with a finished call."""
    with HostileServer(json_reply(FINISHED)) as gateway:
        yield gateway


def set_connection(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    conn: dict[str, Any] = {"conn_type": "banana", "host": "http://127.0.0.1:9/", "password": KEY, **fields}
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", json.dumps(conn))


def start(half: str, inputs: Any = None) -> Any:
    inputs = {"prompt": "hi"} if inputs is None else inputs
    if half == "sync":
        return BananaHook().start(inputs, "m", start_only=True)

    async def run() -> Any:
        async with BananaAsyncHook() as hook:
            return await hook.start(inputs, "m", start_only=True)

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------------------
# 1. An extra that is JSON, but not an object.


@pytest.mark.skipif(
    AIRFLOW_VERSION < (3, 2),
    reason="Airflow 3.1's environment-variable backend drops such a connection itself (the conn_id is not defined)",
)
class TestExtraNotAnObject:
    @pytest.mark.parametrize(
        ("extra", "kind"),
        [([1, 2], "list"), (5, "number"), (1.5, "number"), ('"model"', "string"), (True, "boolean")],
    )
    @pytest.mark.parametrize("half", HALVES)
    def test_is_a_config_error_naming_the_extra(
        self, half: str, extra: Any, kind: str, server: HostileServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_connection(monkeypatch, host=server.url, extra=extra)
        with pytest.raises(BananaConfigError) as caught:
            start(half)
        text = str(caught.value)
        assert "extra of Banana connection 'banana_default' must be a JSON object" in text
        assert f"got a JSON {kind}" in text
        assert KEY not in text
        assert server.count() == 0

    @pytest.mark.parametrize("extra", ["[1,2]", "5"])
    def test_test_connection_says_so(self, extra: str, server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> None:
        set_connection(monkeypatch, host=server.url, extra=json.loads(extra))
        ok, message = BananaHook().test_connection()
        assert ok is False
        assert "must be a JSON object" in message
        assert server.count() == 0

    def test_no_extra_at_all_is_fine(self, server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> None:
        set_connection(monkeypatch, host=server.url)
        assert start("sync").model_outputs == OUTPUTS


# ---------------------------------------------------------------------------------------------------------
# 2. One JSON depth limit, whatever the caller's stack.


def nested_reply(depth: int) -> bytes:
    """Return a finished Check reply whose JSON nests ``depth`` levels in all."""
    inner = depth - 2  # the reply object and the modelOutputs list are two levels
    return b'{"message":"success","modelOutputs":[' + b"[" * inner + b"]" * inner + b"]}"


def from_deep_stack(call: Callable[[], Any], frames: int) -> Any:
    """Call ``call`` with ``frames`` more Python frames on the stack."""
    if frames <= 0:
        return call()
    return from_deep_stack(call, frames - 1)


def outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        call()
    except Exception as e:
        return type(e).__name__, str(e)[:200]
    return "parsed", ""


class TestJsonDepth:
    @pytest.mark.parametrize(
        ("depth", "expected"),
        [(MAX_JSON_DEPTH, "parsed"), (MAX_JSON_DEPTH + 1, "BananaProtocolError"), (900, "BananaProtocolError")],
    )
    def test_a_reply_parses_or_not_whatever_the_callers_stack(self, depth: int, expected: str) -> None:
        reply = nested_reply(depth)
        assert json_depth(reply) == depth

        def parse() -> Any:
            return parse_reply(CHECK, 200, reply, call_id="call_A")

        # Deep enough that a parse on the caller's stack would raise RecursionError at this depth.
        deep = sys.getrecursionlimit() - MAX_JSON_DEPTH // 2
        shallow, from_deep = outcome(parse), outcome(lambda: from_deep_stack(parse, deep))
        assert shallow == from_deep
        assert shallow[0] == expected
        if expected != "parsed":
            assert "too deeply nested (more than 512 levels" in shallow[1]

    def test_brackets_inside_strings_are_not_nesting(self) -> None:
        text = json.dumps({"message": "success", "modelOutputs": ["[" * 5000, "{" * 5000]}).encode()
        assert json_depth(text) == 2
        assert parse_reply(CHECK, 200, text, call_id="c").model_outputs == ["[" * 5000, "{" * 5000]

    def test_the_depth_of_utf16_json_is_measured_too(self) -> None:
        # More brackets than a shallow document has, so that they are measured, not just counted.
        outputs = [[[1]], '"' + "[" * 100]
        text = json.dumps({"message": "success", "modelOutputs": outputs}).encode("utf-16")
        assert json_depth(text) == 4
        assert parse_reply(CHECK, 200, text, call_id="c").model_outputs == outputs

    @pytest.mark.parametrize("half", HALVES)
    def test_a_900_deep_start_reply_is_one_protocol_error_sent_once(
        self, half: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        body = b'{"message":"","callID":"","finished":true,"modelOutputs":' + b"[" * 900 + b"]" * 900 + b"}"
        with HostileServer(json_reply_bytes(body)) as gateway:
            set_connection(monkeypatch, host=gateway.url)
            with pytest.raises(BananaProtocolError, match="too deeply nested") as caught:
                from_deep_stack(lambda: start(half), 300)
            assert gateway.count("/start") == 1
        assert "may have been taken" in str(caught.value)


def json_reply_bytes(body: bytes) -> list[Action]:
    return [send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)]


def nested_inputs(depth: int) -> dict[str, Any]:
    """Return model inputs that nest ``depth`` dicts deep in all."""
    inputs: dict[str, Any] = {}
    inner = inputs
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return inputs


class TestDeepModelInputs:
    @pytest.mark.parametrize("form", ["dict", "string"])
    @pytest.mark.parametrize("half", HALVES)
    def test_100000_deep_is_a_config_error_and_nothing_is_sent(
        self, half: str, form: str, server: HostileServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_connection(monkeypatch, host=server.url)
        depth = 100_000
        inputs: Any = nested_inputs(depth) if form == "dict" else '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
        with pytest.raises(BananaConfigError, match="model_inputs nest more than 512 levels") as caught:
            start(half, inputs)
        assert "nothing was sent" in str(caught.value)
        assert server.count() == 0

    def test_the_limit_is_the_replies_limit(self) -> None:
        assert value_depth(nested_inputs(MAX_JSON_DEPTH)) == MAX_JSON_DEPTH
        validate_model_inputs(nested_inputs(MAX_JSON_DEPTH))
        from_deep_stack(lambda: validate_model_inputs(json.dumps(nested_inputs(MAX_JSON_DEPTH))), 300)
        with pytest.raises(BananaConfigError, match="512"):
            validate_model_inputs(nested_inputs(MAX_JSON_DEPTH + 1))

    def test_inputs_that_contain_themselves_are_refused_not_walked_forever(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        loop.append(loop)
        with pytest.raises(BananaConfigError, match="contain themselves"):
            validate_model_inputs({"x": loop})


# ---------------------------------------------------------------------------------------------------------
# 3. Junk framing: both halves, side by side, reach the same outcome.

BODY = json.dumps(FINISHED).encode()
CT = b"Content-Type: application/json"


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def reply(*lines: bytes, body: bytes = BODY) -> list[Action]:
    return [send(b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body), close()]


LENGTH = b"Content-Length: %d" % len(BODY)
#: name: (reply, the error class both halves raise)
FRAMING: dict[str, tuple[list[Action], type[BananaError]]] = {
    "length abc": (reply(CT, b"Content-Length: abc"), BananaProtocolError),
    "length -1": (reply(CT, b"Content-Length: -1"), BananaProtocolError),
    "length +N": (reply(CT, b"Content-Length: +%d" % len(BODY)), BananaProtocolError),
    "two different lengths": (reply(CT, LENGTH, b"Content-Length: 5"), BananaProtocolError),
    "two lengths in one line": (reply(CT, LENGTH + b", 5"), BananaProtocolError),
    "the same length twice": (reply(CT, LENGTH, LENGTH), BananaProtocolError),
    "length shorter than the body": (reply(CT, b"Content-Length: 5"), BananaProtocolError),
    "length longer than the body": (reply(CT, b"Content-Length: 9999"), BananaResponseLostError),
    "gzip, chunked": (reply(CT, b"Transfer-Encoding: gzip, chunked", body=chunked(BODY)), BananaProtocolError),
    "chunked, chunked": (reply(CT, b"Transfer-Encoding: chunked, chunked", body=chunked(BODY)), BananaProtocolError),
    "chunked, gzip": (reply(CT, b"Transfer-Encoding: chunked, gzip", body=chunked(BODY)), BananaProtocolError),
    "unknown coding": (reply(CT, b"Transfer-Encoding: foo"), BananaProtocolError),
    "unknown coding, chunked": (reply(CT, b"Transfer-Encoding: foo, chunked", body=chunked(BODY)), BananaProtocolError),
    "chunked and a length": (
        reply(CT, b"Transfer-Encoding: chunked", b"Content-Length: 3", body=chunked(BODY)),
        BananaProtocolError,
    ),
    "bad chunk size": (
        reply(CT, b"Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"),
        BananaResponseLostError,
    ),
    "body cut mid-chunk": (
        [send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), pause(0.2), send(b"ff\r\nabc"), close()],
        BananaResponseLostError,
    ),
    "no colon, first line": (reply(b"X-Debug-Echo whatever", CT, LENGTH), BananaProtocolError),
    "no colon, last line": (reply(CT, LENGTH, b"X-Debug-Echo whatever"), BananaProtocolError),
    "space before the colon": (reply(CT, b"Content-Length : %d" % len(BODY)), BananaProtocolError),
    "folded line": (reply(CT, LENGTH, b" folded"), BananaProtocolError),
    "header name not a token": (reply(b"X-Bad\xff: v", CT, LENGTH), BananaProtocolError),
    "no status line": ([send(b"garbage\r\n\r\n"), close()], BananaProtocolError),
    "HTTP/2.0 status line": ([send(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"), close()], BananaProtocolError),
    "closed before a status line": ([close()], BananaResponseLostError),
}
#: Still read as they should be: plain chunked in any case, and a well-formed head.
FINE = {
    "CHUNKED": reply(CT, b"Transfer-Encoding: CHUNKED", body=chunked(BODY)),
    "chunked": reply(CT, b"Transfer-Encoding:  chunked ", body=chunked(BODY)),
    "plain": reply(CT, LENGTH),
}


def outcome_of(half: str) -> BaseException | None:
    try:
        start(half)
    except BananaError as e:
        return e
    return None


class TestJunkFraming:
    @pytest.mark.parametrize(("junk", "expected"), FRAMING.values(), ids=FRAMING.keys())
    def test_both_halves_reach_the_same_outcome(
        self, junk: list[Action], expected: type[BananaError], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        errors = {}
        for half in HALVES:
            with HostileServer(junk) as gateway:
                set_connection(monkeypatch, host=gateway.url, extra={"quick_read": 3})
                errors[half] = outcome_of(half)
                assert gateway.count("/start") == 1, half  # a Start is never sent again after this
        assert type(errors["sync"]) is type(errors["async"]), errors
        assert type(errors["sync"]) is expected, errors
        for error in errors.values():
            assert "may have been taken" in str(error)
            assert KEY not in str(error)

    @pytest.mark.parametrize("half", HALVES)
    @pytest.mark.parametrize("good", FINE.values(), ids=FINE.keys())
    def test_well_formed_framing_still_reads(
        self, good: list[Action], half: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with HostileServer(good) as gateway:
            set_connection(monkeypatch, host=gateway.url)
            assert start(half).model_outputs == OUTPUTS

    @pytest.mark.parametrize("half", HALVES)
    def test_a_check_with_junk_framing_is_retried(self, half: str, monkeypatch: pytest.MonkeyPatch) -> None:
        finished_check = json_reply({"message": "success", "modelOutputs": OUTPUTS})
        with HostileServer([reply(CT, b"Content-Length: abc"), finished_check]) as gateway:
            set_connection(monkeypatch, host=gateway.url)
            if half == "sync":
                result = BananaHook().check("call_A", long_poll=False)
            else:

                async def run() -> Any:
                    async with BananaAsyncHook() as hook:
                        return await hook.check("call_A", long_poll=False)

                result = asyncio.run(run())
            assert gateway.count("/check") == 2
        assert result.model_outputs == OUTPUTS


_NAMES = st.sampled_from(
    [
        b"Content-Length",
        b"content-length",
        b"CONTENT-LENGTH",
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"Content-Type",
        b"X-Y",
        b"Content-Length ",
        b"X\xe9",
        b"",
        b"Content-Lengt",
        b"a b",
    ]
)
_VALUES = st.sampled_from(
    [
        b"12",
        b" 12 ",
        b"12, 12",
        b"1 2",
        b"",
        b"\xb2",
        b"\xa012",
        b"\x0b12",
        b"chunked",
        b" CHUNKED ",
        b"gzip, chunked",
        b"chunked,",
        b"a\r\nb",
        b"x\ny",
        b"\xa0chunked",
        b"text/json",
    ]
)


@given(head=st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
@settings(max_examples=500, deadline=None)
def test_the_raw_head_check_decides_as_the_decoded_one(head: list[tuple[bytes, bytes]]) -> None:
    """The async half checks the bytes of each head (fast for the usual one) and must agree with the rule."""
    decoded = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head]
    assert framing_problem_of_raw(head) == framing_problem(decoded)


# ---------------------------------------------------------------------------------------------------------
# 4. Spaces around the password.


class TestPasswordSpaces:
    @pytest.mark.parametrize("padded", [f" {KEY}", f"{KEY} ", f"\t{KEY}\n"], ids=["leading", "trailing", "tab-newline"])
    @pytest.mark.parametrize("half", HALVES)
    def test_are_stripped_with_a_warning_naming_the_connection(
        self, half: str, padded: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        with HostileServer(json_reply(FINISHED)) as gateway:
            monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(gateway.url, api_key=padded))
            with caplog.at_level(logging.WARNING, logger="airflow_provider_banana"):
                assert start(half).model_outputs == OUTPUTS
            [request] = gateway.requests
        assert request.json()["apiKey"] == KEY
        warnings = [r.getMessage() for r in caplog.records if "spaces or line breaks around it" in r.getMessage()]
        assert warnings == [
            "The password of Banana connection 'banana_default' has spaces or line breaks around "
            "it; they were removed before the key was used"
        ]
        assert all(KEY not in record.getMessage() for record in caplog.records)

    def test_a_clean_password_gives_no_warning(
        self, server: HostileServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url))
        with caplog.at_level(logging.WARNING, logger="airflow_provider_banana"):
            start("sync")
        assert not [r for r in caplog.records if "spaces or line breaks" in r.getMessage()]
