"""Every bad input a user can give fails with an error naming the problem, before any request."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.operators.banana import BananaInferenceOperator
from airflow_provider_banana.sensors.banana import BananaCallSensor
from tests.helpers import connection_json


def no_request_sent(server: DevServer) -> None:
    stats = server.stats()
    assert stats["start_requests"] == 0
    assert stats["check_requests"] == 0


class Context(dict):
    """The smallest task context these code paths read before any request: no XCom, no store."""


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -5}, "timeout must be a positive number"),
        ({"timeout": "soon"}, "timeout must be a positive number"),
        ({"poll_interval": 0}, "poll_interval must be a positive number"),
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
    ],
)
def test_operator_arguments_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(BananaConfigError, match=match):
        BananaInferenceOperator(task_id="t", model_inputs={}, **kwargs)


def test_sensor_max_attempts_fails_when_the_dag_is_parsed() -> None:
    with pytest.raises(BananaConfigError, match="max_attempts"):
        BananaCallSensor(task_id="t", call_id="call_1", max_attempts=-1)


@pytest.mark.parametrize(
    ("model_inputs", "error", "match"),
    [
        ({"when": object()}, TypeError, "cannot be sent as JSON"),
        ("{'prompt': 'single quotes'}", BananaConfigError, "not valid JSON"),
        ("[1, 2]", BananaConfigError, "JSON object"),
        (42, TypeError, "must be a dict"),
    ],
)
def test_operator_model_inputs(
    model_inputs: Any, error: type[Exception], match: str, server: DevServer, banana_conn: str
) -> None:
    op = BananaInferenceOperator(task_id="t", model_inputs=model_inputs)
    with pytest.raises(error, match=match):
        op.execute(Context())  # type: ignore[arg-type]
    no_request_sent(server)


def test_operator_missing_model_key(server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url))
    op = BananaInferenceOperator(task_id="t", model_inputs={"prompt": "x"})
    with pytest.raises(BananaConfigError, match="No Banana model key"):
        op.execute(Context())  # type: ignore[arg-type]
    no_request_sent(server)


@pytest.mark.parametrize("call_id", ["", "   "])
def test_sensor_empty_call_id(call_id: str, server: DevServer, banana_conn: str) -> None:
    for sensor in (
        BananaCallSensor(task_id="t", call_id=call_id),
        BananaCallSensor(task_id="t", call_id=call_id, deferrable=True),
    ):
        with pytest.raises(BananaConfigError, match="call id must be a non-empty string"):
            sensor.execute(Context())  # type: ignore[arg-type]
    no_request_sent(server)


def test_unknown_connection_is_named() -> None:
    from airflow.exceptions import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match="no_such_banana"):
        BananaHook("no_such_banana").start({"prompt": "x"}, "m")


@pytest.mark.parametrize(
    ("conn", "match"),
    [
        ({"api_key": None}, "no API key"),
        ({"api_key": ""}, "no API key"),
        ({"url": "127.0.0.1:8000"}, "must be a URL with http:// or https://"),
        ({"url": "ftp://127.0.0.1/"}, "must be a URL with http:// or https://"),
        ({"check_hold": 0}, "check_hold must be a positive number"),
    ],
)
def test_bad_connections(conn: dict[str, Any], match: str, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = conn.pop("url", server.url)
    kwargs: dict[str, Any] = {"model_key": "wordcount", **conn}
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(url, **kwargs))
    op = BananaInferenceOperator(task_id="t", model_inputs={"prompt": "x"})
    with pytest.raises(BananaConfigError, match=match):
        op.execute(Context())  # type: ignore[arg-type]
    no_request_sent(server)
