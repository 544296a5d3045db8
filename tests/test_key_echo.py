"""
A server that echoes the API key where no reply should carry it: the key leaves in no form.

A server, or a gateway in front of it, echoes the key (ASCII, or with non-ASCII characters sent as
raw UTF-8) in a header line without a colon, in an ordinary header, in a redirect's ``Location``,
in the status line's reason, in a status line that does not parse, in the body. The HTTP libraries
quote such bytes in their own words: urllib3 logs the header line it cannot parse, http.client's
``BadStatusLine`` reads the bytes as Latin-1 (``clÃ©``), aiohttp writes them as ``b'cl\\xc3\\xa9'``.

Each case goes through the sync hook, the async hook, the trigger's event and ``test_connection``,
and some through ``dag.test()``; the key must be in none of its forms in any exception text,
result, event, message or log record (``caplog``, a plain handler on the root logger, and the
process's output). The forms are written out here with the standard library's codecs, not with
the provider's ``Redactor``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_banana.contract import BananaRetryPolicy
from airflow_provider_banana.exceptions import BananaError
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from airflow_provider_banana.redact import Redactor, _unescape
from airflow_provider_banana.triggers.banana import BananaCallTrigger
from tests.helpers import collect, connection_json, states
from tests.hostile import HostileServer, Request, json_reply, raw, response
from tests.leaks import error_texts

POLICY = BananaRetryPolicy(max_attempts=1)
INPUTS = {"prompt": "hello"}
STARTED = {"message": "", "callID": "call_A", "finished": False, "modelOutputs": None}

#: An ASCII key, and one whose UTF-8 bytes every library quotes its own way.
KEYS = {"ascii": "sk-live-3f9a0c7e1b2d4f68", "non-ascii": "clé-é-ü-秘密"}


def key_forms(key: str) -> dict[str, str]:
    """Return the key as the libraries and encoders quote it: escaped, mis-decoded, encoded."""
    data = key.encode()
    latin1 = data.decode("latin-1")
    bytes_repr = repr(data)[2:-1]
    return {
        "raw": key,
        "bytes repr": bytes_repr,  # aiohttp: b'cl\xc3\xa9'
        "bytes repr quoted again": repr(bytes_repr)[1:-1],  # that inside a repr or a JSON string
        "latin-1": latin1,  # http.client's headers and status line: clÃ©
        "latin-1 repr": repr(latin1)[1:-1],  # BadStatusLine('...\x98...')
        "cp1252": data.decode("cp1252", "replace"),
        "json": json.dumps(key)[1:-1],
        "json of latin-1": json.dumps(latin1)[1:-1],
        "percent": quote(key, safe=""),
        "base64": base64.b64encode(data).decode().rstrip("="),
        "hex": data.hex(),
    }


def assert_no_key(key: str, *texts: str) -> None:
    """Assert that no text holds ``key`` in any of :func:`key_forms`."""
    forms = key_forms(key)
    for text in texts:
        for name, form in forms.items():
            assert form.lower() not in text.lower(), f"key ({name}) in {text!r}"


def echoes(key: str) -> dict[str, Any]:
    """Return each reply that echoes ``key`` (as raw UTF-8 bytes) somewhere odd."""
    k = key.encode()
    started = json.dumps(STARTED).encode()
    return {
        "header line without a colon": raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Debug-Echo apiKey=" + k + b"\r\n"
            b"Content-Length: " + str(len(started)).encode() + b"\r\nConnection: close\r\n\r\n" + started
        ),
        "ordinary header": raw(
            b"HTTP/1.1 500 Internal Server Error\r\nX-Echo: apiKey=" + k + b"\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        ),
        "location": raw(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/start/v4/?apiKey=" + k + b"\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        "status reason": raw(
            b"HTTP/1.1 500 refused apiKey " + k + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        ),
        "bad status line": raw(
            b"HTTP/1.1 xx refused apiKey " + k + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        ),
        "json body": response(200, json.dumps({"message": f"error: invalid apiKey {key}"}, ensure_ascii=False)),
        "text body": response(502, f"upstream refused apiKey={key} for /start"),
    }


ECHOES = list(echoes("x"))


# ---------------------------------------------------------------------------------------------------------
# The Redactor alone: every form found, nothing else touched.


@pytest.mark.parametrize("form", list(key_forms(KEYS["non-ascii"])))
@pytest.mark.parametrize("key_kind", list(KEYS))
def test_the_redactor_masks_every_form(key_kind: str, form: str) -> None:
    key = KEYS[key_kind]
    echoed = key_forms(key)[form]
    for text in (f"bad key {echoed} here", repr(f"bad key {echoed} here"), json.dumps(f"bad key {echoed}")):
        masked = Redactor(key)(text)
        assert "***" in masked
        assert_no_key(key, masked)


@pytest.mark.parametrize(
    "text",
    [
        "café, naïve, Ã€É, 秘密, \\xc3\\xa9, %C3%A9, \\u00e9, 😀",  # text in those encodings, but not the key
        "clé-é-ü-秘",  # most of the key is not the key
        "b'cl\\xc3\\xa9-\\xc3\\xa9-\\xc3\\xbc-\\xe7\\xa7'",
    ],
)
def test_the_redactor_leaves_other_text_alone(text: str) -> None:
    assert Redactor(KEYS["non-ascii"])(text) == text
    assert Redactor(KEYS["ascii"])(text) == text


#: Text rich in what the redactor unescapes: backslash escapes, entities, percent signs, mojibake.
_ESCAPY = st.text(
    alphabet=st.sampled_from(
        list("\\ux0123456789abcdefABCDEF%&#;ampltgquo'\"nrt é\u00c3\u00a9\u00e2\u20ac\ud83d\udcc3")
    ),
    max_size=60,
)


@settings(max_examples=1000, deadline=None)
@given(text=_ESCAPY | st.text(max_size=60))
def test_unescaping_never_lengthens_a_text(text: str) -> None:
    # What lets the redactor pass a text shorter than the key's shortest form at a glance.
    assert len(_unescape(text)) <= len(text)


@pytest.mark.parametrize("key_kind", list(KEYS))
def test_a_text_shorter_than_every_form_of_the_key_is_passed_as_it_is(key_kind: str) -> None:
    redactor = Redactor(KEYS[key_kind])
    shortest = min(len(form) for form in key_forms(KEYS[key_kind]).values())
    for text in ("running", "", "success", "x" * (shortest - 1)):
        assert not redactor.contains(text)
        assert redactor(text) == text
    assert redactor.contains(KEYS[key_kind])


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """Capture every log record (DEBUG and up) with caplog and a plain handler on the root logger."""
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    # The standard formatter writes a record's traceback too (from exc_info, or exc_text).
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield lambda: caplog.text + "\n" + stream.getvalue()
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    """Point ``banana_default`` at a URL with a given key."""

    def point(url: str, key: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(url, key, model_key="m"))

    return point


def outcome(run: Callable[[], Any]) -> list[str]:
    """Return the texts a call let out: its error's, or its result's."""
    try:
        result = run()
    except BananaError as e:
        return error_texts(e)
    return [repr(result)]


def sync_start() -> list[str]:
    return outcome(lambda: BananaHook(retry_policy=POLICY).start(INPUTS, start_only=True))


def async_start() -> list[str]:
    async def main() -> Any:
        async with BananaAsyncHook(retry_policy=POLICY) as hook:
            return await hook.start(INPUTS, start_only=True)

    return outcome(lambda: asyncio.run(main()))


def trigger_event() -> list[str]:
    now = time.time()
    trigger = BananaCallTrigger("call_A", deadline=now + 30, started_at=now, max_attempts=1)
    events = asyncio.run(collect(trigger))
    assert len(events) == 1, events
    return [json.dumps(events[0].payload), json.dumps(events[0].payload, ensure_ascii=False)]


def connection_test() -> list[str]:
    _ok, message = BananaHook(retry_policy=POLICY).test_connection()
    return [message]


PATHS = {"sync": sync_start, "async": async_start, "trigger": trigger_event, "test_connection": connection_test}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("echo", ECHOES)
@pytest.mark.parametrize("key_kind", list(KEYS))
def test_an_echoed_key_is_in_no_text_and_no_log(
    key_kind: str,
    echo: str,
    path: str,
    connect: Callable[[str, str], None],
    logs: Callable[[], str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    key = KEYS[key_kind]
    with HostileServer(echoes(key)[echo]) as server:
        connect(server.url, key)
        texts = PATHS[path]()
        assert server.count() >= 1  # the reply that echoes the key was read
    captured = logs()
    out, err = capfd.readouterr()
    assert texts
    assert all(texts)
    assert_no_key(key, *texts, captured, out, err)


@pytest.mark.parametrize("key_kind", list(KEYS))
def test_urllib3s_record_of_an_unparsable_header_line_is_masked(
    key_kind: str, connect: Callable[[str, str], None], logs: Callable[[], str]
) -> None:
    # urllib3 logs a header line it could not parse, verbatim and with a traceback, when http.client
    # leaves it unparsed (the sync half now refuses such a reply before urllib3 looks, so the record
    # is written here as urllib3 writes it, on urllib3's logger, after a request with the key).
    from urllib3.exceptions import HeaderParsingError

    key = KEYS[key_kind]
    with HostileServer(echoes(key)["ordinary header"]) as server:
        connect(server.url, key)
        sync_start()
    # http.client reads a head as Latin-1: urllib3 quotes that text's repr.
    unparsed = "X-Debug-Echo apiKey=" + key.encode().decode("latin-1") + "\r\nContent-Length: 2\r\n\r\n"
    try:
        raise HeaderParsingError(defects=[], unparsed_data=unparsed)
    except HeaderParsingError as error:
        logging.getLogger("urllib3.connection").warning(
            "Failed to parse headers (url=%s): %s", server.url, error, exc_info=True
        )
    captured = logs()
    assert "Failed to parse headers" in captured
    assert "X-Debug-Echo apiKey=***" in captured  # masked, not dropped
    assert "HeaderParsingError" in captured  # the traceback is kept, masked
    assert_no_key(key, captured)


def test_a_library_record_outside_any_request_is_masked_too(logs: Callable[[], str]) -> None:
    # asyncio and aiohttp report some failures from the event loop's own callbacks or from the
    # garbage collector, outside the request's context: every key a request used is masked there.
    key = KEYS["non-ascii"]
    from airflow_provider_banana.hooks import _transport
    from airflow_provider_banana.redact import scrub_library_logs

    scrub_library_logs(_transport.LIBRARY_LOGGERS, Redactor(key))
    library_logger = logging.getLogger("asyncio")
    try:
        raise ConnectionError(f"peer said {key.encode()!r}")
    except ConnectionError:
        library_logger.exception("Fatal error on transport: %s", key.encode().decode("latin-1"))
    captured = logs()
    assert "Fatal error on transport: ***" in captured
    assert "ConnectionError" in captured  # the traceback is kept, masked
    assert_no_key(key, captured)


# ---------------------------------------------------------------------------------------------------------
# dag.test(): a task's own output, as a user sees it.


def _echoing_checks(key: str) -> Callable[[Request], Any]:
    # A Start that is taken, then Checks answered with the key in a header line without a colon.
    echo = echoes(key)["header line without a colon"]

    def respond(request: Request) -> Any:
        return json_reply(STARTED) if request.path.startswith("/start") else echo

    return respond


@pytest.mark.parametrize("key_kind", list(KEYS))
@pytest.mark.parametrize("echo", ["header line without a colon", "bad status line"])
def test_dag_test_output_holds_no_key(
    key_kind: str,
    echo: str,
    airflow_db: Any,
    connect: Callable[[str, str], None],
    logs: Callable[[], str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    from tests.dags import banana_test_dags as scenarios

    key = KEYS[key_kind]
    with HostileServer(echoes(key)[echo]) as server:
        connect(server.url, key)
        run = scenarios.blocking_success.test()
        assert server.count("/start") == 1
    out, err = capfd.readouterr()
    assert states(run)["infer"] == "failed"
    assert "Banana" in out + err  # the task's logs were captured, so the scan means something
    assert_no_key(key, out, err, logs())


@pytest.mark.parametrize("key_kind", list(KEYS))
def test_dag_test_deferred_output_holds_no_key(
    key_kind: str,
    airflow_db: Any,
    connect: Callable[[str, str], None],
    logs: Callable[[], str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    from tests.dags import banana_test_dags as scenarios

    key = KEYS[key_kind]
    with HostileServer(_echoing_checks(key)) as server:
        connect(server.url, key)
        run = scenarios.deferrable_success.test()
        assert server.count("/start") == 1
        assert server.count("/check") >= 1
    out, err = capfd.readouterr()
    assert states(run)["infer"] == "failed"
    assert "Banana" in out + err
    assert_no_key(key, out, err, logs())
