"""
A real forward HTTP proxy on 127.0.0.1, standard library only, for the network tests.

It speaks what corporate proxies speak: absolute-form requests for plain HTTP
(``POST http://host:port/path HTTP/1.1``, forwarded in origin form) and ``CONNECT host:port`` tunnels
for HTTPS. It knows host names nobody else does (``banana.internal.test`` -> ``127.0.0.1``): a
client that reaches a server by such a name went through the proxy, since the name resolves
nowhere else. Names it does not know get ``502``, so nothing is ever sent off the machine.

It counts what it saw (:attr:`ForwardProxy.seen`), may require ``Proxy-Authorization`` (``407``
otherwise) and stops by itself after ``lifetime`` seconds. Every reply to a client says
``Connection: close`` and the connection is closed after it, so a client never reuses a
connection the proxy is about to drop.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import urlsplit

#: The name the tests reach the servers by: only the proxy knows it.
INTERNAL_HOST = "banana.internal.test"

_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te", b"upgrade"}
_MAX_HEAD = 64 * 1024


class ForwardProxy:
    """
    Forward proxy on 127.0.0.1 (a free port); use as a context manager.

    :param hosts: host names the proxy resolves, each to ``127.0.0.1`` (the only address allowed).
    :param credentials: ``(user, password)`` a client must send as ``Proxy-Authorization``; None
        lets any client through.
    :param lifetime: seconds after which the proxy stops by itself.
    """

    def __init__(
        self,
        hosts: Mapping[str, str] | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        lifetime: float = 120.0,
    ) -> None:
        self.hosts = {name.lower(): address for name, address in (hosts or {INTERNAL_HOST: "127.0.0.1"}).items()}
        if set(self.hosts.values()) - {"127.0.0.1"}:
            raise ValueError("the test proxy forwards to 127.0.0.1 only")
        self._expected = None
        if credentials is not None:
            pair = f"{credentials[0]}:{credentials[1]}".encode()
            self._expected = b"Basic " + base64.b64encode(pair)
        #: Each request it handled: ``"POST http://host:port/path"`` or ``"CONNECT host:port"``.
        self.seen: list[str] = []
        #: Requests it refused for missing or wrong credentials.
        self.refused = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="forward-proxy", daemon=True)
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        """The proxy's URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """Return the proxy's URL carrying credentials (``http://user:password@127.0.0.1:PORT``)."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def count(self, fragment: str = "") -> int:
        """Return how many handled requests contain ``fragment`` (all of them by default)."""
        with self._lock:
            return sum(fragment in line for line in self.seen)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and end every tunnel and relay."""
        self._stopped.set()
        self._timer.cancel()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with contextlib.closing(client):
            client.settimeout(10)
            try:
                head, rest = _read_head(client)
            except OSError:
                return
            if head is None:
                return
            lines = head.split(b"\r\n")
            try:
                method, target, _version = lines[0].decode("latin-1").split(" ", 2)
            except ValueError:
                client.sendall(_reply(400, "Bad Request"))
                return
            headers = [line.split(b":", 1) for line in lines[1:] if b":" in line]
            if self._expected is not None:
                given = next((v.strip() for k, v in headers if k.strip().lower() == b"proxy-authorization"), None)
                if given != self._expected:
                    with self._lock:
                        self.refused += 1
                    client.sendall(_reply(407, "Proxy Authentication Required", b'Proxy-Authenticate: Basic realm="t"'))
                    return
            if method.upper() == "CONNECT":
                self._tunnel(client, target, rest)
            else:
                self._forward(client, method, target, headers, rest)

    def _resolve(self, host: str) -> str | None:
        return self.hosts.get(host.lower().rstrip("."))

    def _tunnel(self, client: socket.socket, target: str, rest: bytes) -> None:
        host, _, port = target.rpartition(":")
        address = self._resolve(host)
        if address is None or not port.isdigit():
            client.sendall(_reply(502, "Bad Gateway"))
            return
        with self._lock:
            self.seen.append(f"CONNECT {target}")
        try:
            upstream = socket.create_connection((address, int(port)), timeout=10)
        except OSError:
            client.sendall(_reply(502, "Bad Gateway"))
            return
        with contextlib.closing(upstream):
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            self._relay(client, upstream)

    def _forward(
        self, client: socket.socket, method: str, target: str, headers: list[list[bytes]], rest: bytes
    ) -> None:
        parts = urlsplit(target)
        address = self._resolve(parts.hostname or "")
        if parts.scheme != "http" or address is None:
            client.sendall(_reply(502, "Bad Gateway"))
            return
        with self._lock:
            self.seen.append(f"{method} {target}")
        length = next((int(v) for k, v in headers if k.strip().lower() == b"content-length"), 0)
        body = rest
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                return
            body += chunk
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        out = [f"{method} {path} HTTP/1.1".encode()]
        out += [k + b":" + v for k, v in headers if k.strip().lower() not in _HOP_BY_HOP]
        out.append(b"Connection: close")
        try:
            upstream = socket.create_connection((address, parts.port or 80), timeout=30)
        except OSError:
            client.sendall(_reply(502, "Bad Gateway"))
            return
        with contextlib.closing(upstream):
            upstream.sendall(b"\r\n".join(out) + b"\r\n\r\n" + body[:length])
            reply_head, reply_rest = _read_head(upstream)
            if reply_head is None:
                client.sendall(_reply(502, "Bad Gateway"))
                return
            reply_lines = reply_head.split(b"\r\n")
            kept = [reply_lines[0]] + [
                line for line in reply_lines[1:] if line.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP
            ]
            client.sendall(b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + reply_rest)
            self._relay(upstream, client, one_way=True)

    def _relay(self, a: socket.socket, b: socket.socket, *, one_way: bool = False) -> None:
        # Bytes both ways until either side closes (one way: from ``a`` to ``b`` only).
        sockets = [a] if one_way else [a, b]
        while not self._stopped.is_set():
            readable, _, _ = select.select(sockets, [], [], 0.2)
            for source in readable:
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    (b if source is a else a).sendall(data)
                except OSError:
                    return


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > _MAX_HEAD:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _reply(status: int, reason: str, *extra: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}".encode(), *extra, b"Content-Length: 0", b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"
