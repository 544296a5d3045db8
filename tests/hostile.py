"""
A scripted, misbehaving HTTP/1.1 server on 127.0.0.1 for the hostile-servers tests.

A test gives :class:`HostileServer` a ``respond`` callable (or a list of replies) mapping each
parsed :class:`Request` to a :data:`Reply`: a list of actions run in order on the connection --
bytes to send, pauses, a close, a hang. Builders such as :func:`response`, :func:`trickle`,
:func:`endless_chunked`, :func:`gzip_bomb` and :func:`huge` make the usual scripts; :func:`send`,
:func:`pause`, :func:`close`, :func:`reset` and :func:`hang` compose arbitrary ones, e.g.
``[send(head(200, {"Content-Length": 10})), hang()]`` for a body that never comes.

The bytes go out exactly as scripted: nothing is added, nothing is checked, and every connection
is closed after its reply (no keep-alive, so clients simply reconnect). :class:`Blackhole` is an
address whose connects hang, for connect timeouts.

Only the standard library is used, so the harness cannot share a bug with the HTTP clients under
test. Every thread is a daemon, every socket wait is a short ``select`` that also watches the stop
flag, and the server stops by itself after ``lifetime`` seconds: a test that forgets to stop it,
or a client that hangs, cannot keep threads or ports alive for long.

A client that closes its sending side (``shutdown(SHUT_WR)``) counts as gone during pauses and
hangs: HTTP clients do not half-close, and a reply cannot tell a half-close from a hang-up.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = [
    "Blackhole",
    "Close",
    "Hang",
    "HostileServer",
    "Pause",
    "Reply",
    "Request",
    "Reset",
    "Send",
    "Stream",
    "close",
    "endless_chunked",
    "gzip_bomb",
    "gzip_bomb_body",
    "hang",
    "head",
    "huge",
    "json_reply",
    "pause",
    "raw",
    "redirect",
    "reset",
    "response",
    "send",
    "stream",
    "trickle",
]

HOST = "127.0.0.1"
#: Longest a thread sleeps in one wait before looking at the stop flag again.
TICK = 0.1
#: Cap on the request line plus headers, as in common servers.
MAX_HEAD = 64 * 1024
#: Cap on a request body: the clients under test send small JSON documents.
MAX_BODY = 64 * 1024 * 1024
#: Size of the pieces large bodies are streamed in.
PIECE = 64 * 1024

#: A header value: a string (or number), a list for a header repeated on several lines, or
#: ``None`` to drop a header the builder would otherwise set.
HeaderValue = str | int | Sequence[str] | None


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    """One request as the server read it.

    :param method: The request method, as sent (``"POST"``).
    :param path: The request target, query string included (``"/start/v4?x=1"``).
    :param headers: Header names lower-cased; a repeated header's values joined with ``", "``.
    :param body: The body, de-chunked if it came chunked.
    :param received_at: ``time.monotonic()`` when the request was complete, to check client delays.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.body)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Send:
    """Send these bytes.

    :param data: The bytes, sent as they are.
    """

    data: bytes


@dataclass(frozen=True)
class Pause:
    """Send nothing for a while (ended early by the server stopping or the client hanging up).

    :param seconds: How long to pause.
    """

    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection now (a FIN); actions after it are not run."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection now with a TCP RST, so the client sees a connection reset."""


@dataclass(frozen=True)
class Hang:
    """Keep the connection open sending nothing, until the server stops or the client hangs up."""


@dataclass(frozen=True)
class Stream:
    """Send pieces made afresh for each connection, each one preceded by a pause.

    :param pieces: Called once per run; returns the pieces (an iterator may be endless).
    :param every: Seconds to pause before each piece.
    """

    pieces: Callable[[], Iterable[bytes]]
    every: float = 0.0


Action = Send | Pause | Close | Reset | Hang | Stream
#: What a connection is told to do: actions run in order, then the connection is closed.
Reply = Sequence[Action]
_ACTION_TYPES = (Send, Pause, Close, Reset, Hang, Stream)


def send(data: bytes) -> Send:
    """Return an action sending ``data`` as it is.

    :param data: The bytes.
    """
    return Send(bytes(data))


def pause(seconds: float) -> Pause:
    """Return an action sending nothing for ``seconds``.

    :param seconds: How long.
    """
    return Pause(float(seconds))


def close() -> Close:
    """Return an action closing the connection now."""
    return Close()


def reset() -> Reset:
    """Return an action aborting the connection with an RST."""
    return Reset()


def hang() -> Hang:
    """Return an action keeping the connection open and silent until the server stops."""
    return Hang()


def stream(pieces: Callable[[], Iterable[bytes]], *, every: float = 0.0) -> Stream:
    """Return an action sending ``pieces()`` one by one, pausing ``every`` seconds before each.

    :param pieces: Called for each connection, so that a reply can be replayed.
    :param every: Seconds to pause before each piece.
    """
    return Stream(pieces, float(every))


# --------------------------------------------------------------------------- builders


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _merge(defaults: Mapping[str, HeaderValue], overrides: Mapping[str, HeaderValue] | None) -> dict[str, HeaderValue]:
    # Caller's headers replace the builder's whatever their case, so that a test can lie about
    # Content-Length or drop Connection: close.
    merged = dict(defaults)
    for name, value in (overrides or {}).items():
        for existing in [key for key in merged if key.lower() == name.lower()]:
            del merged[existing]
        merged[name] = value
    return merged


def head(status: int, headers: Mapping[str, HeaderValue] | None = None, *, reason: str | None = None) -> bytes:
    """Return a status line and headers, up to and including the blank line.

    :param status: The status code; any integer, sent as it is.
    :param headers: Headers in order; a list value repeats the header, ``None`` leaves it out.
    :param reason: The reason phrase; by default the standard one for ``status``.
    """
    lines = [f"HTTP/1.1 {status} {_reason(status) if reason is None else reason}"]
    for name, value in (headers or {}).items():
        if value is None:
            continue
        values = [value] if isinstance(value, str | int) else list(value)
        lines.extend(f"{name}: {item}" for item in values)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _encode_body(body: bytes | str | dict | list) -> tuple[bytes, str | None]:
    if isinstance(body, dict | list):
        return json.dumps(body).encode(), "application/json"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return bytes(body), ("application/octet-stream" if body else None)


def response(
    status: int = 200,
    body: bytes | str | dict | list = b"",
    headers: Mapping[str, HeaderValue] | None = None,
    *,
    reason: str | None = None,
) -> list[Action]:
    """Return a complete response with ``Content-Length`` and ``Connection: close``.

    :param status: The status code.
    :param body: Bytes as they are, a string (UTF-8, text/plain) or a dict/list (JSON).
    :param headers: Extra headers; they replace the defaults (any case), ``None`` drops one.
    :param reason: The reason phrase; by default the standard one.
    """
    data, content_type = _encode_body(body)
    defaults: dict[str, HeaderValue] = {
        "Content-Type": content_type,
        "Content-Length": len(data),
        "Connection": "close",
    }
    return [Send(head(status, _merge(defaults, headers), reason=reason) + data)]


def json_reply(obj: Any, status: int = 200, headers: Mapping[str, HeaderValue] | None = None) -> list[Action]:
    """Return a complete JSON response.

    :param obj: Anything ``json.dumps`` takes.
    :param status: The status code.
    :param headers: Extra headers, as for :func:`response`.
    """
    data = json.dumps(obj).encode()
    return response(status, data, _merge({"Content-Type": "application/json"}, headers))


def redirect(status: int, location: str, headers: Mapping[str, HeaderValue] | None = None) -> list[Action]:
    """Return a redirect to ``location`` with a small HTML body.

    :param status: 301, 302, 303, 307, 308 -- or anything else a test wants to call a redirect.
    :param location: The ``Location`` header, sent as it is (relative, absolute, other host...).
    :param headers: Extra headers, as for :func:`response`.
    """
    body = f'<a href="{location}">moved</a>\n'.encode()
    defaults = {"Location": location, "Content-Type": "text/html"}
    return response(status, body, _merge(defaults, headers))


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def trickle(
    status: int,
    body: bytes,
    *,
    every: float = 1.0,
    chunk: int = 1,
    headers_too: bool = False,
    headers: Mapping[str, HeaderValue] | None = None,
) -> list[Action]:
    """Return a response whose body (and, optionally, head) arrives ``chunk`` bytes at a time.

    Each body chunk is preceded by a pause of ``every`` seconds, so ``n`` chunks take
    ``n * every`` seconds after the head; the reply ends quietly when the client hangs up.

    :param status: The status code.
    :param body: The whole body; ``Content-Length`` gives its full length.
    :param every: Seconds to pause before each chunk.
    :param chunk: Bytes per chunk.
    :param headers_too: Trickle the status line and headers as well, in the same chunks.
    :param headers: Extra headers, as for :func:`response`.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1 byte")
    [whole] = response(status, body, headers)
    assert isinstance(whole, Send)
    if headers_too:
        return [stream(functools.partial(_slices, whole.data, chunk), every=every)]
    head_bytes = whole.data[: len(whole.data) - len(body)]
    return [Send(head_bytes), stream(functools.partial(_slices, bytes(body), chunk), every=every)]


def _chunk_frame(piece: bytes) -> bytes:
    return f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def endless_chunked(
    piece: bytes = b"x" * 65536, *, status: int = 200, headers: Mapping[str, HeaderValue] | None = None
) -> list[Action]:
    """Return a chunked response that never ends (until the client hangs up or the server stops).

    :param piece: The data of every chunk; must not be empty (that would end the body).
    :param status: The status code.
    :param headers: Extra headers, as for :func:`response`.
    """
    if not piece:
        raise ValueError("an empty chunk would end the body")
    defaults: dict[str, HeaderValue] = {
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        "Connection": "close",
    }
    frame = _chunk_frame(bytes(piece))
    return [Send(head(status, _merge(defaults, headers))), stream(functools.partial(itertools.repeat, frame))]


@functools.lru_cache(maxsize=16)
def gzip_bomb_body(inflated_bytes: int) -> bytes:
    """Return a gzip member of zeros that inflates to ``inflated_bytes`` (cached per size).

    The zeros are streamed through the compressor a block at a time, so a 1 GiB bomb costs
    about 1 MiB of memory, not 1 GiB -- but some 5 s of CPU (deflate manages ~1032:1 at best).

    :param inflated_bytes: The size once inflated.
    """
    # wbits=31: a gzip header and trailer, as Content-Encoding: gzip requires.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts: list[bytes] = []
    remaining = inflated_bytes
    while remaining > 0:
        size = min(remaining, len(block))
        parts.append(compressor.compress(block if size == len(block) else block[:size]))
        remaining -= size
    parts.append(compressor.flush())
    return b"".join(parts)


def gzip_bomb(
    inflated_bytes: int,
    *,
    chunked: bool = False,
    status: int = 200,
    headers: Mapping[str, HeaderValue] | None = None,
) -> list[Action]:
    """Return a small ``Content-Encoding: gzip`` response that inflates to ``inflated_bytes`` of zeros.

    It is labelled JSON, as the API's replies are, so that a client that decodes before
    checking sizes is caught.

    :param inflated_bytes: The size once inflated.
    :param chunked: Send the compressed body chunked instead of with a ``Content-Length``.
    :param status: The status code.
    :param headers: Extra headers, as for :func:`response`.
    """
    data = gzip_bomb_body(inflated_bytes)
    defaults: dict[str, HeaderValue] = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    if not chunked:
        return response(status, data, _merge(defaults, headers))
    defaults.update({"Transfer-Encoding": "chunked", "Connection": "close"})
    frames = [_chunk_frame(piece) for piece in _slices(data, PIECE)] + [b"0\r\n\r\n"]
    return [Send(head(status, _merge(defaults, headers))), stream(lambda: frames)]


def _filler(total_bytes: int, fill: bytes) -> Iterator[bytes]:
    block = (fill * (PIECE // len(fill) + 1))[:PIECE]
    remaining = total_bytes
    while remaining > 0:
        size = min(remaining, PIECE)
        yield block if size == PIECE else block[:size]
        remaining -= size


def huge(
    total_bytes: int,
    *,
    content_length: bool = True,
    fill: bytes = b"x",
    status: int = 200,
    headers: Mapping[str, HeaderValue] | None = None,
) -> list[Action]:
    """Return a response with a body of ``total_bytes``, streamed in 64 KiB pieces.

    :param total_bytes: The body's size.
    :param content_length: Send a ``Content-Length``; without one the body ends when the
        connection closes (``Connection: close``).
    :param fill: The bytes the body repeats.
    :param status: The status code.
    :param headers: Extra headers, as for :func:`response`.
    """
    if not fill:
        raise ValueError("fill must not be empty")
    defaults: dict[str, HeaderValue] = {
        "Content-Type": "application/json",
        "Content-Length": total_bytes if content_length else None,
        "Connection": "close",
    }
    return [Send(head(status, _merge(defaults, headers))), stream(functools.partial(_filler, total_bytes, bytes(fill)))]


def raw(data: bytes) -> list[Action]:
    """Return a reply sending exactly ``data``, then closing.

    :param data: The whole reply: garbage, half a status line, two responses...
    """
    return [Send(bytes(data)), Close()]


def _as_actions(reply: Any) -> list[Action]:
    if isinstance(reply, _ACTION_TYPES):
        return [reply]
    if isinstance(reply, bytes | bytearray | str) or not isinstance(reply, Sequence):
        raise TypeError(f"a reply is a sequence of actions, not {type(reply).__name__}")
    for action in reply:
        if not isinstance(action, _ACTION_TYPES):
            raise TypeError(f"not an action: {action!r}")
    return list(reply)


# --------------------------------------------------------------------------- connections


class _ClientGone(Exception):
    """The client hung up, or the server is stopping: end the connection quietly."""


#: What a hung-up client looks like from ``send``/``recv``.
_HANGUPS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Connection:
    """One accepted socket, non-blocking, waited on in short ``select`` ticks."""

    def __init__(self, sock: socket.socket, stopped: threading.Event) -> None:
        self.sock = sock
        self.stopped = stopped
        self.buffer = b""
        sock.setblocking(False)

    def _check(self) -> None:
        if self.stopped.is_set():
            raise _ClientGone("server stopping")

    def _recv(self, timeout: float) -> bytes | None:
        """Return what arrived within ``timeout`` (``None``: nothing yet); raise if the client left."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return None
        try:
            data = self.sock.recv(PIECE)
        except BlockingIOError:
            return None
        except _HANGUPS as exc:
            raise _ClientGone("client reset") from exc
        if not data:
            raise _ClientGone("client closed")
        return data

    def _fill(self) -> None:
        while True:
            self._check()
            data = self._recv(TICK)
            if data is not None:
                self.buffer += data
                return

    def read_until(self, delimiter: bytes, cap: int) -> bytes | None:
        """Return the buffered bytes through ``delimiter``, or ``None`` if there are over ``cap`` first."""
        while (end := self.buffer.find(delimiter)) < 0:
            if len(self.buffer) > cap:
                return None
            self._fill()
        end += len(delimiter)
        if end > cap:
            return None
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check()
            _, writable, _ = select.select([], [self.sock], [], TICK)
            if not writable:
                continue
            try:
                sent = self.sock.send(view[:PIECE])
            except BlockingIOError:
                continue
            except _HANGUPS as exc:
                raise _ClientGone("client hung up") from exc
            view = view[sent:]

    def wait(self, seconds: float | None) -> None:
        """Send nothing for ``seconds`` (``None``: forever), returning early only by raising."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            self._check()
            remaining = TICK if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            # Watching the socket notices a hang-up at once rather than at the next send; whatever
            # else the client sends meanwhile is read and dropped.
            self._recv(min(remaining, TICK))

    def reset(self) -> None:
        # Linger with a zero timeout makes close() send an RST instead of a FIN.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _parse_head(data: bytes) -> tuple[str, str, dict[str, str]]:
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line: {line!r}")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return parts[0], parts[1], headers


def _read_chunked(conn: _Connection) -> bytes | None:
    body = b""
    while True:
        line = conn.read_until(b"\r\n", 1024)
        if line is None:
            return None
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, if any, end with a blank line.
            while conn.read_until(b"\r\n", MAX_HEAD) not in (b"\r\n", None):
                pass
            return body
        if len(body) + size > MAX_BODY:
            return None
        body += conn.read_exact(size)
        conn.read_exact(2)


# --------------------------------------------------------------------------- servers


class HostileServer:
    """A scripted HTTP/1.1 server on ``127.0.0.1:<free port>``; one thread per connection.

    Used as a context manager; it stops by itself after ``lifetime`` seconds even if the test
    forgets (all sockets closed, threads are daemons).

    :param respond: Maps each request to a :data:`Reply`; or a list of replies, the i-th request
        getting the i-th reply and the last one repeating (a single reply: the same every time).
        An exception raised here is recorded in :attr:`errors` and answered with a 500.
    :param lifetime: Seconds after which the server stops on its own.
    """

    def __init__(self, respond: Callable[[Request], Reply] | Sequence[Reply], *, lifetime: float = 60.0) -> None:
        if callable(respond):
            self._respond = respond
        else:
            replies = list(respond)
            if not replies:
                raise ValueError("give at least one reply")
            # HostileServer(json_reply(...)) means that reply every time, not one action per request.
            if all(isinstance(item, _ACTION_TYPES) for item in replies):
                replies = [replies]
            self._respond = self._scripted(replies)
        self.lifetime = lifetime
        #: Every complete request received, in order.
        self.requests: list[Request] = []
        #: Exceptions raised by ``respond`` (or by running a bad reply), in order.
        self.errors: list[BaseException] = []
        self._lock = threading.Condition()
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.host_port = f"{HOST}:{self.port}"
        self.url = f"http://{self.host_port}/"
        self._deadline = time.monotonic() + lifetime
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"hostile-{self.port}", daemon=True)
        self._acceptor.start()

    def _scripted(self, replies: list[Reply]) -> Callable[[Request], Reply]:
        def respond(request: Request) -> Reply:
            # Found by identity: with concurrent connections, respond may run out of arrival order.
            with self._lock:
                index = next(i for i, seen in enumerate(self.requests) if seen is request)
            return replies[min(index, len(replies) - 1)]

        return respond

    # ------------------------------------------------------------------ public

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        """Whether the server has stopped (by :meth:`stop` or its lifetime)."""
        return self._stopped.is_set()

    @property
    def open_connections(self) -> int:
        """How many accepted connections are still being served."""
        with self._lock:
            return len(self._connections)

    @property
    def live_threads(self) -> int:
        """How many of the server's threads (acceptor included) are still running."""
        with self._lock:
            threads = [self._acceptor, *self._threads]
        return sum(1 for thread in threads if thread.is_alive())

    def count(self, path_prefix: str = "/") -> int:
        """Return how many requests had a path starting with ``path_prefix``.

        :param path_prefix: e.g. ``"/start"``.
        """
        with self._lock:
            return sum(1 for request in self.requests if request.path.startswith(path_prefix))

    def wait_for_requests(self, number: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``number`` requests have arrived; return whether they did.

        :param number: How many requests.
        :param timeout: Seconds to wait at most.
        """
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= number, timeout)

    def stop(self) -> None:
        """Stop: close the listening socket and every connection, and join the threads briefly."""
        self._stopped.set()
        if threading.current_thread() is not self._acceptor:
            self._acceptor.join(1.0)
        # The acceptor closes the listener itself; this is for the case it could not.
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        # shutdown() wakes a thread waiting on its socket; each thread closes its own socket, so
        # that no file descriptor is closed under a thread still using it.
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 1.0
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._connections)
        for sock in leftovers:
            with contextlib.suppress(OSError):
                sock.close()

    # ------------------------------------------------------------------ internals

    def _accept_loop(self) -> None:
        try:
            while not self._stopped.is_set():
                if time.monotonic() >= self._deadline:
                    break
                try:
                    readable, _, _ = select.select([self._listener], [], [], TICK)
                    if not readable:
                        continue
                    sock, _ = self._listener.accept()
                except BlockingIOError:
                    continue
                except OSError:
                    break
                thread = threading.Thread(
                    target=self._serve, args=(sock,), name=f"hostile-{self.port}-conn", daemon=True
                )
                with self._lock:
                    self._connections.add(sock)
                    self._threads.append(thread)
                thread.start()
        finally:
            # Closing here, at once, is what makes the port refuse connections after the lifetime.
            with contextlib.suppress(OSError):
                self._listener.close()
            if not self._stopped.is_set():
                self.stop()

    def _serve(self, sock: socket.socket) -> None:
        conn = _Connection(sock, self._stopped)
        try:
            actions = self._read_and_respond(conn)
            self._run(conn, actions)
        except _ClientGone:
            pass
        except OSError as exc:
            # After stop() sockets fail in assorted ways; before it, an OS error is worth seeing.
            if not self._stopped.is_set():
                with self._lock:
                    self.errors.append(exc)
        except Exception as exc:
            with self._lock:
                self.errors.append(exc)
        finally:
            with self._lock:
                self._connections.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _read_and_respond(self, conn: _Connection) -> list[Action]:
        data = conn.read_until(b"\r\n\r\n", MAX_HEAD)
        if data is None:
            return response(431, "request head too large")
        try:
            method, path, headers = _parse_head(data)
        except ValueError as exc:
            return response(400, str(exc))
        if headers.get("expect", "").lower() == "100-continue":
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            try:
                body = _read_chunked(conn)
            except ValueError:
                return response(400, "bad chunked body")
            if body is None:
                return response(413, "request body too large")
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return response(400, "bad Content-Length")
            if length > MAX_BODY:
                return response(413, "request body too large")
            body = conn.read_exact(length)
        request = Request(method, path, headers, body)
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
        try:
            return _as_actions(self._respond(request))
        except Exception as exc:
            with self._lock:
                self.errors.append(exc)
            return response(500, {"error": f"{type(exc).__name__}: {exc}"})

    @staticmethod
    def _run(conn: _Connection, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                conn.send(action.data)
            elif isinstance(action, Pause):
                conn.wait(action.seconds)
            elif isinstance(action, Stream):
                for piece in action.pieces():
                    if action.every > 0:
                        conn.wait(action.every)
                    conn.send(piece)
            elif isinstance(action, Hang):
                conn.wait(None)
            elif isinstance(action, Reset):
                conn.reset()
                return
            elif isinstance(action, Close):
                return


class Blackhole:
    """An address on 127.0.0.1 where TCP connects hang, for connect-timeout tests.

    A listening socket with a backlog of 0 never accepts, and its accept queue is filled with
    connections opened here; Linux then drops further SYNs, so a client's ``connect()`` waits
    until its own timeout. Used as a context manager.

    :raises RuntimeError: If the kernel keeps completing connects (the queue never fills).
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self.host = HOST
        self.host_port = f"{HOST}:{self.port}"
        self.url = f"http://{self.host_port}/"
        self._fillers: list[socket.socket] = []
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    def _fill(self) -> None:
        # How many connections fit depends on the kernel (Linux: backlog + 1), so open them one by
        # one until a connect stays pending: the queue is then full, and that one stays pending too.
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            self._fillers.append(filler)
            filler.connect_ex((HOST, self.port))
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:
                return
        raise RuntimeError("the kernel completed every connect: cannot make a blackhole here")

    def close(self) -> None:
        """Close the fillers and the listening socket."""
        for sock in [*self._fillers, self._listener]:
            with contextlib.suppress(OSError):
                sock.close()
        self._fillers.clear()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
