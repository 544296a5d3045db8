"""
What a newcomer reads first: a refused API key names the connection, time left never reads
"-0 s", and the local server says at start whether it checks the key and which models it serves.
"""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_banana.contract import parse_reply
from airflow_provider_banana.contract.waiting import time_left
from airflow_provider_banana.contract.wire import START
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaCallError
from tests.helpers import API_KEY, connection_json

WRONG_KEY = "sk-wrong-" + "7" * 24


@pytest.mark.parametrize(
    ("seconds", "estimate", "text"),
    [
        (-0.4, False, "no time left"),
        (0.0, False, "no time left"),
        (0.4, True, "under 1 s left"),
        (0.999, False, "under 1 s left"),
        (1.4, False, "1 s left"),
        (88.2, True, "about 88 s left"),
    ],
)
def test_time_left_never_says_zero_or_minus_zero(seconds: float, estimate: bool, text: str) -> None:
    assert time_left(seconds, estimate=estimate) == text


def test_a_refused_key_names_the_connection_and_its_password_field() -> None:
    body = b'{"message": "error: invalid apiKey", "finished": false, "callID": "", "modelOutputs": null}'
    with pytest.raises(BananaCallError) as raised:
        parse_reply(START, 200, body, secret=WRONG_KEY, conn_id="banana_prod")
    assert "error: invalid apiKey" in str(raised.value)
    assert "the Password field, of Airflow connection 'banana_prod'" in str(raised.value)
    # Any other failure is the model's, and says nothing about the key.
    other = b'{"message": "error: model crashed", "finished": false, "callID": "call_1", "modelOutputs": null}'
    with pytest.raises(BananaCallError) as raised:
        parse_reply(START, 200, other, conn_id="banana_prod")
    assert "connection" not in str(raised.value)


@pytest.fixture
def wrong_key_conn(server: DevServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_WRONG_KEY", connection_json(server.url, api_key=WRONG_KEY))
    return "banana_wrong_key"


def test_the_sync_hook_names_the_connection_of_a_refused_key(wrong_key_conn: str, server: DevServer) -> None:
    from airflow_provider_banana.hooks.banana import BananaHook

    with BananaHook(wrong_key_conn) as hook, pytest.raises(BananaCallError) as raised:
        hook.start({"prompt": "hi"}, "wordcount")
    message = str(raised.value)
    assert f"of Airflow connection '{wrong_key_conn}'" in message
    assert WRONG_KEY not in message
    assert API_KEY not in message
    assert server.stats()["starts_taken"] == 0


def test_the_async_hook_names_the_connection_of_a_refused_key(wrong_key_conn: str) -> None:
    from airflow_provider_banana.hooks.banana import BananaAsyncHook

    async def start() -> None:
        async with BananaAsyncHook(wrong_key_conn) as hook:
            await hook.start({"prompt": "hi"}, "wordcount")

    with pytest.raises(BananaCallError, match=f"Password field, of Airflow connection '{wrong_key_conn}'"):
        asyncio.run(start())


def test_the_local_server_says_it_requires_a_key_and_what_it_serves(devserver: DevServer) -> None:
    log = devserver.log_text()  # the session's server runs with --require-api-key
    assert "API key required: only the one in $BANANA_DEVSERVER_API_KEY is accepted" in log
    assert "Models served: wordcount, sleep, fail" in log
    assert API_KEY not in log


def test_the_local_server_says_it_checks_no_key() -> None:
    with DevServer() as server:
        log = server.log_text()
    assert "API key not checked: any apiKey is accepted" in log
    assert "Models served: wordcount," in log
