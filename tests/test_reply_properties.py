"""
Property tests (Hypothesis): whatever bytes a reply holds, only the provider's errors come out.

Arbitrary bytes, arbitrary JSON and Banana-shaped replies with the key echoed in some encoding go
through the reply parsing: first the pure contract with plain data (many examples), then over real
HTTP through both hooks (fewer). Every outcome is a result or a ``BananaError``; no text of either
holds the key; a successful reply's outputs are exactly what the server sent.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_banana.contract import CHECK, START, BananaFinished, BananaResult, BananaRetryPolicy, parse_reply
from airflow_provider_banana.exceptions import BananaError
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from tests.helpers import connection_json
from tests.hostile import HostileServer, Request, response
from tests.leaks import KEY, assert_no_key, error_texts, key_forms

# In CI the examples are the same at every run, so that a red run is reproducible; locally they vary.
PROFILE = {"derandomize": bool(os.environ.get("CI")), "database": None, "deadline": None}

ENCODED_KEYS = st.sampled_from(list(key_forms().values()))
TEXTS = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda before, key, after: before + key + after, st.text(max_size=15), ENCODED_KEYS, st.text(max_size=15)
    ),
    st.sampled_from(["success", "SUCCESS", "running", "", "error", "inference server error: taskID does not exist"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | TEXTS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)
BANANA_BODIES = st.fixed_dictionaries(
    {"message": st.one_of(TEXTS, JSON_VALUES)},
    optional={
        "callID": st.one_of(TEXTS, st.just("call_A"), JSON_VALUES),
        "finished": st.one_of(st.booleans(), JSON_VALUES),
        "modelOutputs": JSON_VALUES,
        "apiVersion": st.one_of(TEXTS, JSON_VALUES),
        "id": TEXTS,
    },
)


def _json_bytes(body: Any, ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


CONTENTS = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda before, key, after: before + key.encode() + after,
        st.binary(max_size=30),
        ENCODED_KEYS,
        st.binary(max_size=30),
    ),
    st.builds(_json_bytes, JSON_VALUES, st.booleans()),
    st.builds(_json_bytes, BANANA_BODIES, st.booleans()),
    # A JSON text whose strings hold the key JSON-escaped, as PHP and many encoders write it.
    st.builds(lambda body: _json_bytes(body, True).replace(b"/", b"\\/"), BANANA_BODIES),
)
STATUSES = st.sampled_from([200, 200, 200, 200, 301, 307, 400, 404, 429, 500, 502, 503])
LOCATIONS = st.one_of(st.none(), TEXTS, st.builds(lambda key: f"http://{key}@evil.example/?k={key}", ENCODED_KEYS))


def expected_outputs(content: bytes) -> list[Any] | None:
    """Return the outputs a finished reply carries, read by the standard library alone (None: cannot tell)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return None
    outputs = body.get("modelOutputs") if isinstance(body, dict) else None
    if outputs is None:
        return []
    return outputs if isinstance(outputs, list) else [outputs]


def check_outcome(outcome: BananaResult | BaseException, content: bytes) -> None:
    """Assert the one rule of every property here."""
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, BananaError), repr(outcome)
        assert_no_key(*error_texts(outcome))
        return
    assert_no_key(outcome.message, outcome.api_version or "", outcome.call_id or "")
    if isinstance(outcome, BananaFinished):
        expected = expected_outputs(content)
        if expected is not None:
            assert json.dumps(outcome.model_outputs) == json.dumps(expected)  # NaN-safe equality


def parse(endpoint: str, status: int, content: bytes, location: str | None) -> BananaResult | BaseException:
    try:
        return parse_reply(
            endpoint,
            status,
            content,
            location=location,
            url="http://127.0.0.1:9/start/v4/",
            call_id="call_A" if endpoint == CHECK else None,
            secret=KEY,
        )
    except Exception as e:
        return e


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], **PROFILE)
@given(endpoint=st.sampled_from([START, CHECK]), status=STATUSES, content=CONTENTS, location=LOCATIONS)
def test_parsing_any_reply_gives_a_result_or_our_error_and_never_the_key(
    endpoint: str, status: int, content: bytes, location: str | None
) -> None:
    check_outcome(parse(endpoint, status, content, location), content)


# Over real HTTP: one scripted server for the module, answering each request with the current example.


class Script:
    """The reply the server gives next, set by each example."""

    def __init__(self) -> None:
        self.status = 200
        self.content = b""
        self.headers: dict[str, str | None] = {}

    def __call__(self, request: Request) -> Any:
        return response(self.status, self.content, {"Content-Type": "application/json", **self.headers})


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[HostileServer, Script]]:
    script = Script()
    with HostileServer(script, lifetime=600) as server:
        yield server, script


POLICY = BananaRetryPolicy(max_attempts=1)


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], **PROFILE)
@given(endpoint=st.sampled_from([START, CHECK]), status=STATUSES, content=CONTENTS, location=LOCATIONS)
def test_both_hooks_turn_any_reply_into_a_result_or_our_error(
    scripted: tuple[HostileServer, Script],
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    status: int,
    content: bytes,
    location: str | None,
) -> None:
    server, script = scripted
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, KEY, model_key="m"))
    script.status, script.content = status, content
    script.headers = {"Location": location} if location and location.isprintable() and location.isascii() else {}

    def sync() -> BananaResult | BaseException:
        hook = BananaHook(retry_policy=POLICY)
        try:
            if endpoint == START:
                return hook.start({"x": 1}, start_only=True)
            return hook.check("call_A", long_poll=False)
        except Exception as e:
            return e
        finally:
            hook.close()

    async def in_loop() -> BananaResult | BaseException:
        try:
            async with BananaAsyncHook(retry_policy=POLICY) as hook:
                if endpoint == START:
                    return await hook.start({"x": 1}, start_only=True)
                return await hook.check("call_A", long_poll=False)
        except Exception as e:
            return e

    sync_outcome, async_outcome = sync(), asyncio.run(in_loop())
    check_outcome(sync_outcome, content)
    check_outcome(async_outcome, content)
    # The two halves agree: the same kind of outcome, and the same result.
    assert type(sync_outcome) is type(async_outcome)
    if isinstance(sync_outcome, BananaFinished):
        assert isinstance(async_outcome, BananaFinished)
        assert json.dumps(sync_outcome.model_outputs) == json.dumps(async_outcome.model_outputs)
