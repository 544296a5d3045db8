"""The latency proxy of the benchmarks: bytes intact and in order, late by the round trip, many at once, closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.harness import free_port
from benchmarks.latency_proxy import LatencyProxy
from tests.helpers import API_KEY, wait_until

RTT = 0.1
#: Guards against a hang, not timing assertions: every wait below is far shorter.
SOCKET_TIMEOUT = 20.0


class _Echo(socketserver.BaseRequestHandler):
    """Send back what arrives; on the client's half-close, close."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _HelloAndClose(socketserver.BaseRequestHandler):
    """Say hello and close at once, without reading."""

    def handle(self) -> None:
        self.request.sendall(b"hello")


def _serve(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def echo_port() -> Iterator[int]:
    yield from _serve(_Echo)


@pytest.fixture
def hello_port() -> Iterator[int]:
    yield from _serve(_HelloAndClose)


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_closed(sock: socket.socket) -> None:
    """Read until the peer closes or resets the connection; a socket timeout fails the test."""
    with contextlib.suppress(ConnectionResetError):
        _read_to_eof(sock)


@pytest.mark.parametrize("rtt", [0.0, 0.02])
def test_bytes_arrive_intact_in_order_and_half_close_travels_both_ways(echo_port: int, rtt: float) -> None:
    # Many small writes in a burst, then a large one: the echo must be their exact concatenation.
    small = [b"%06d;" % i for i in range(3000)]
    large = os.urandom(2 * 1024 * 1024)
    with LatencyProxy(echo_port, rtt=rtt) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(_read_to_eof(sock)))
        reader.start()
        for piece in small:
            sock.sendall(piece)
        sock.sendall(large)
        # Half-close: the echo server sees EOF only through the proxy, and closes only then;
        # the reader sees EOF only once that close came back.
        sock.shutdown(socket.SHUT_WR)
        reader.join(SOCKET_TIMEOUT + 5)
        assert not reader.is_alive()
        assert bytes(received) == b"".join(small) + large
        wait_until("the connection forgotten", lambda: proxy.open_connections == 0)


def test_a_request_takes_the_round_trip_and_a_new_connection_one_more(server: DevServer) -> None:
    with LatencyProxy(server.port, rtt=RTT) as proxy, requests.Session() as session:
        session.trust_env = False
        began = time.monotonic()
        first = session.get(proxy.url + "healthcheck", timeout=SOCKET_TIMEOUT)
        set_up_and_request = time.monotonic() - began
        assert first.status_code == 200
        # TCP's handshake, then the request: two round trips.
        assert set_up_and_request >= 2 * RTT * 0.9

        began = time.monotonic()
        reply = session.post(
            proxy.url + "start/v4/",
            json={"apiKey": API_KEY, "modelKey": "wordcount", "modelInputs": {"prompt": "through the proxy"}},
            timeout=SOCKET_TIMEOUT,
        )
        request = time.monotonic() - began
        assert reply.status_code == 200
        assert reply.json()["modelOutputs"][0]["reversed"] == "yxorp eht hguorht"
        assert request >= RTT * 0.9  # the kept-alive connection: one round trip


def test_a_close_from_the_server_arrives_after_the_data_and_the_delay(hello_port: int) -> None:
    with LatencyProxy(hello_port, rtt=RTT) as proxy:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.settimeout(SOCKET_TIMEOUT)
            # The SYN's trip to the server, its hello's and its close's trip back.
            assert _read_to_eof(sock) == b"hello"
            assert time.monotonic() - began >= RTT * 0.9


def test_a_hundred_connections_at_once(server: DevServer) -> None:
    count = 100
    with LatencyProxy(server.port, rtt=RTT) as proxy:

        async def one() -> tuple[asyncio.StreamWriter, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            return writer, head

        async def main() -> None:
            replies = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), SOCKET_TIMEOUT)
            assert all(head.startswith(b"HTTP/1.1 200") for _, head in replies)
            # Kept alive, all of them at once.
            assert proxy.open_connections == count
            for writer, _ in replies:
                writer.close()
            await asyncio.gather(*(writer.wait_closed() for writer, _ in replies))

        asyncio.run(main())
        # Each close reaches the server, which closes its side; the proxy then forgets the connection.
        wait_until("every connection closed", lambda: proxy.open_connections == 0, timeout=SOCKET_TIMEOUT)


def test_closing_the_proxy_closes_the_client_connections_and_its_thread(server: DevServer) -> None:
    proxy = LatencyProxy(server.port, rtt=RTT)
    with proxy, socket.create_connection(("127.0.0.1", proxy.port)) as idle:
        idle.settimeout(SOCKET_TIMEOUT)
        idle.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", proxy.port)) as fresh:
            fresh.settimeout(SOCKET_TIMEOUT)
            wait_until("both connections accepted", lambda: proxy.open_connections == 2)
            proxy.close()
            _wait_closed(idle)
            _wait_closed(fresh)
    assert not [thread for thread in threading.enumerate() if thread.name == "latency-proxy"]
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.port


def test_a_refused_connection_to_the_server_closes_the_client() -> None:
    with LatencyProxy(free_port(), rtt=0.02) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        _wait_closed(sock)
        wait_until("the connection forgotten", lambda: proxy.open_connections == 0)
