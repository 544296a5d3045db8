"""
Self-test of the hostile-server harness (``tests/hostile.py``) with standard-library clients.

The hostile-servers suite trusts the harness to misbehave exactly as scripted; these tests check
that it does, with urllib and raw sockets so that no client under test is involved.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
import zlib

import pytest

from tests.hostile import (
    Blackhole,
    HostileServer,
    Request,
    endless_chunked,
    gzip_bomb,
    hang,
    huge,
    json_reply,
    raw,
    redirect,
    trickle,
)

MiB = 1024 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand redirects back as ``HTTPError`` instead of following them."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def _http_error(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, dict[str, str]]:
    """Return the status and headers of a response urllib raises as ``HTTPError``."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(url, timeout=5)
    # The error holds the response open; closing it keeps ResourceWarnings out of later tests.
    with caught.value as error:
        return error.code, dict(error.headers)


def _wait_until(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _get_raw(server: HostileServer, path: str = "/") -> socket.socket:
    """Open a connection, send a GET and return the socket, for reading by hand."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server.host_port}\r\n\r\n".encode())
    return sock


def test_json_round_trip_records_requests() -> None:
    def respond(request: Request) -> list:
        return json_reply({"echo": request.json(), "path": request.path}, status=201)

    with HostileServer(respond, lifetime=10) as server:
        for payload in ({"a": 1}, {"b": [2]}):
            req = urllib.request.Request(
                server.url + "start/v4?x=1",
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json", "X-Api-Key": "k"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=5) as reply:
                assert reply.status == 201
                assert reply.headers["Content-Type"] == "application/json"
                assert json.loads(reply.read()) == {"echo": payload, "path": "/start/v4?x=1"}

        assert server.count("/start") == 2
        assert server.count("/check") == 0
        first = server.requests[0]
        assert first.method == "POST"
        assert first.headers["x-api-key"] == "k"
        assert first.json() == {"a": 1}
        assert server.errors == []


def test_reply_list_repeats_the_last_and_respond_errors_become_500() -> None:
    with HostileServer([json_reply(1), json_reply(2)], lifetime=10) as server:
        got = [_get_json(server.url) for _ in range(3)]
    assert got == [1, 2, 2]

    def broken(request: Request) -> list:
        raise RuntimeError("respond is broken")

    with HostileServer(broken, lifetime=10) as server:
        status, _ = _http_error(urllib.request.build_opener(), server.url)
        assert status == 500
        assert [str(error) for error in server.errors] == ["respond is broken"]


def test_redirect_status_and_location() -> None:
    with HostileServer(lambda request: redirect(307, "http://elsewhere.invalid/x"), lifetime=10) as server:
        status, headers = _http_error(urllib.request.build_opener(_NoRedirects), server.url)
    assert status == 307
    assert headers["Location"] == "http://elsewhere.invalid/x"


def test_trickle_takes_n_times_every() -> None:
    body, every = b"abcde", 0.2
    with HostileServer(lambda request: trickle(200, body, every=every), lifetime=10) as server:
        started = time.monotonic()
        with urllib.request.urlopen(server.url, timeout=5) as reply:
            assert reply.headers["Content-Length"] == "5"
            assert reply.read() == body
        elapsed = time.monotonic() - started
    # A lower bound only: a slow machine may take longer, never shorter.
    assert elapsed >= len(body) * every * 0.9


def test_trickle_stops_quietly_when_the_client_leaves() -> None:
    with HostileServer(lambda request: trickle(200, b"x" * 100, every=0.1, headers_too=True), lifetime=10) as server:
        sock = _get_raw(server)
        assert sock.recv(1) == b"H"
        sock.close()
        assert _wait_until(lambda: server.open_connections == 0)
        assert server.errors == []


@pytest.mark.parametrize("chunked", [False, True])
def test_gzip_bomb_is_small_and_inflates_exactly(chunked: bool) -> None:
    size = 10 * MiB
    # urllib does not decode Content-Encoding, so this reads the compressed body.
    with (
        HostileServer(lambda request: gzip_bomb(size, chunked=chunked), lifetime=10) as server,
        urllib.request.urlopen(server.url, timeout=5) as reply,
    ):
        assert reply.headers["Content-Encoding"] == "gzip"
        assert (reply.headers["Content-Length"] is None) == chunked
        compressed = reply.read()
    assert len(compressed) < size / 100

    # Inflated in bounded steps, as a careful client would, never all at once.
    inflater = zlib.decompressobj(wbits=31)
    inflated, pending = 0, compressed
    while pending:
        piece = inflater.decompress(pending, MiB)
        assert len(piece) <= MiB
        inflated += len(piece)
        pending = inflater.unconsumed_tail
    inflated += len(inflater.flush())
    assert inflater.eof
    assert inflated == size


@pytest.mark.parametrize("content_length", [True, False])
def test_huge_body_is_complete(content_length: bool) -> None:
    size = 3 * MiB + 5
    with (
        HostileServer(lambda request: huge(size, content_length=content_length), lifetime=10) as server,
        urllib.request.urlopen(server.url, timeout=5) as reply,
    ):
        assert (reply.headers["Content-Length"] == str(size)) == content_length
        assert len(reply.read()) == size


def test_endless_chunked_goes_on_until_the_client_closes() -> None:
    with HostileServer(lambda request: endless_chunked(), lifetime=10) as server:
        reply = urllib.request.urlopen(server.url, timeout=5)
        assert reply.headers["Transfer-Encoding"] == "chunked"
        received = 0
        while received <= 4 * MiB:
            received += len(reply.read(256 * 1024))
        reply.close()
        assert _wait_until(lambda: server.open_connections == 0)
        assert server.errors == []


def test_raw_sends_exactly_the_bytes() -> None:
    with HostileServer(lambda request: raw(b"garbage\r\n\r\n"), lifetime=10) as server:
        sock = _get_raw(server)
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
        sock.close()
        assert data == b"garbage\r\n\r\n"
        with pytest.raises(http.client.BadStatusLine):
            urllib.request.urlopen(server.url, timeout=5)


def test_exit_during_hang_closes_connections_and_threads() -> None:
    with HostileServer(lambda request: hang(), lifetime=10) as server:
        socks = [_get_raw(server) for _ in range(3)]
        assert server.wait_for_requests(3, timeout=5)
    for sock in socks:
        assert sock.recv(1) == b""
        sock.close()
    assert server.open_connections == 0
    assert server.live_threads == 0


def test_server_stops_by_itself_after_its_lifetime() -> None:
    server = HostileServer(lambda request: hang(), lifetime=1.0)
    sock = _get_raw(server)
    assert server.wait_for_requests(1, timeout=5)
    # The hang ends with the lifetime: the connection is closed under the client.
    assert sock.recv(1) == b""
    sock.close()
    assert _wait_until(lambda: server.stopped and server.live_threads == 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_blackhole_connect_times_out() -> None:
    with Blackhole() as hole:
        assert hole.url == f"http://{hole.host_port}/"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection((hole.host, hole.port), timeout=1)
        assert time.monotonic() - started >= 0.9
