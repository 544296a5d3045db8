"""A TCP proxy on 127.0.0.1 that puts a fixed network latency between a client and a local server.

Every byte is delayed, not throttled: a chunk that reaches the proxy at time ``t`` leaves it at
``t + rtt / 2``, in order, whatever else is in flight. The connection set-up costs what TCP's
handshake costs against a distant server: the client's first bytes reach the server no earlier
than one round trip (the SYN and SYN-ACK) plus half of one after the client connected, so the
first request on a new connection takes two round trips and the next ones on it one. A
half-close (``shutdown(SHUT_WR)``) and a close travel the same way, after the data sent before
them; a connection reset arrives as one.

One asyncio event loop in one background thread serves every connection (hundreds at once cost
no thread each)::

    with LatencyProxy(server.port, rtt=0.1) as proxy:
        requests.get(f"http://127.0.0.1:{proxy.port}/healthcheck")  # >= 200 ms: set-up + request

There is no flow control: a sender faster than its receiver fills this process's memory, which
request and reply traffic never does. Standard library only.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from types import TracebackType
from typing import Final

#: Markers queued after the data, so that a half-close or a close keeps its place behind it.
_EOF: Final = "eof"
_CLOSE: Final = "close"
_RESET: Final = "reset"
_Item = bytes | str


class _Pipe:
    """One direction of one connection: each item leaves ``delay`` seconds after it arrived, in order.

    :param link: the connection this direction belongs to.
    :param delay: seconds each item is held.
    :param not_before: loop time before which nothing may leave (minus the delay).
    """

    def __init__(self, link: _Link, delay: float, not_before: float = 0.0) -> None:
        self._link = link
        self._loop = link.loop
        self._delay = delay
        self._not_before = not_before
        self._queue: collections.deque[tuple[float, _Item]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        #: Where the items go; None until that side is connected.
        self.target: asyncio.Transport | None = None

    def put(self, item: _Item) -> None:
        """Queue data or a marker, to leave ``delay`` seconds from now.

        :param item: bytes, or one of ``_EOF``, ``_CLOSE``, ``_RESET``.
        """
        due = max(self._loop.time(), self._not_before) + self._delay
        self._queue.append((due, item))
        if self._timer is None and len(self._queue) == 1:
            self._timer = self._loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Send every item that is due, and wait for the next one (or for a target)."""
        if self._timer is not None:  # called early, by a side that just connected
            self._timer.cancel()
            self._timer = None
        if self.target is None:
            return  # attach() flushes again
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now:
            _, item = self._queue.popleft()
            self._deliver(self.target, item)
        if self._queue:
            self._timer = self._loop.call_at(self._queue[0][0], self.flush)

    def cancel(self) -> None:
        """Drop every queued item and the pending timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()

    def _deliver(self, target: asyncio.Transport, item: _Item) -> None:
        if target.is_closing():
            return
        if isinstance(item, bytes):
            target.write(item)
        elif item == _EOF:
            if target.can_write_eof():
                try:
                    target.write_eof()
                except OSError:  # the peer reset meanwhile (ENOTCONN): close it as a reset would
                    target.abort()
                    return
            self._link.eof_delivered()
        elif item == _CLOSE:
            target.close()  # after what is buffered
        else:
            target.abort()


class _Side(asyncio.Protocol):
    """One socket of a connection, the client's or the server's; what it reads goes into ``outgoing``.

    :param link: the connection.
    :param outgoing: the direction its data travels.
    """

    def __init__(self, link: _Link, outgoing: _Pipe) -> None:
        self._link = link
        self._outgoing = outgoing
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._link.connected(self)

    def data_received(self, data: bytes) -> None:
        self._outgoing.put(data)

    def eof_received(self) -> bool:
        self._outgoing.put(_EOF)
        return True  # half-closed: keep the transport open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self._outgoing.put(_CLOSE if exc is None else _RESET)
        self._link.lost(self)


class _Link:
    """One proxied connection: the client's socket, the server's, and a pipe each way.

    :param proxy: the proxy, which keeps every open link.
    """

    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        assert proxy.loop is not None
        self.loop = proxy.loop
        one_way = proxy.rtt / 2
        accepted = self.loop.time()
        # TCP's handshake: the client sends nothing before its SYN-ACK came back, a round trip.
        self.to_server = _Pipe(self, one_way, not_before=accepted + proxy.rtt)
        self.to_client = _Pipe(self, one_way)
        self.client = _Side(self, self.to_server)
        self.server = _Side(self, self.to_client)
        self._connect: asyncio.Task[None] | None = None
        self._eofs = 0
        self._gone = 0

    def connected(self, side: _Side) -> None:
        """Called by each side's ``connection_made``: the client's starts the server's, after the SYN's trip.

        :param side: the side that connected.
        """
        pipe = self.to_client if side is self.client else self.to_server
        pipe.target = side.transport
        pipe.flush()
        if side is self.client:
            self.proxy.links.add(self)
            self.loop.call_later(self.proxy.rtt / 2, self._open_server)

    def _open_server(self) -> None:
        if self.client.transport is None or self.client.transport.is_closing():
            self._gone += 1  # the client left during the SYN's trip: the server side never comes
            self._forget()
            return
        self._connect = self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            await self.loop.create_connection(lambda: self.server, self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.to_client.put(_RESET)  # refused: the client learns it half a round trip later
            self._gone += 1
            self._forget()

    def eof_delivered(self) -> None:
        """Called once per direction whose half-close was delivered; both done, both sockets close."""
        self._eofs += 1
        if self._eofs == 2:
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()

    def lost(self, side: _Side) -> None:
        """Called by each side's ``connection_lost``: nothing more can go to that side.

        :param side: the side whose socket is closed.
        """
        (self.to_client if side is self.client else self.to_server).cancel()
        self._gone += 1
        self._forget()

    def abort(self) -> asyncio.Task[None] | None:
        """Drop everything queued and reset both sockets now.

        :return: the server side's connection attempt, cancelled, if one was under way.
        """
        self.to_client.cancel()
        self.to_server.cancel()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
            return self._connect
        return None

    def _forget(self) -> None:
        if self._gone >= 2:
            self.proxy.links.discard(self)


class LatencyProxy:
    """Forward TCP connections from a port on 127.0.0.1 to ``target_host:target_port``, ``rtt / 2`` late each way.

    :param target_port: the server's port.
    :param rtt: the round trip to add, in seconds: each direction is delayed by half of it.
    :param target_host: the server's address.
    :param close_timeout: seconds :meth:`close` waits for the loop's thread.
    """

    def __init__(
        self, target_port: int, rtt: float = 0.1, target_host: str = "127.0.0.1", *, close_timeout: float = 10.0
    ) -> None:
        if rtt < 0:
            raise ValueError(f"rtt must not be negative, got {rtt}")
        self.target_port = target_port
        self.target_host = target_host
        self.rtt = rtt
        self._close_timeout = close_timeout
        #: The connections open now, touched only from the loop's thread.
        self.links: set[_Link] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._port is None:
            raise RuntimeError("the proxy is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``, for HTTP clients."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def open_connections(self) -> int:
        """How many client connections are open (or closing) now."""
        return len(self.links)

    def start(self) -> None:
        """Start the loop's thread and listen on a free port."""
        if self.loop is not None:
            raise RuntimeError("the proxy is already running")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="latency-proxy", daemon=True)
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(self._close_timeout)
        except BaseException:
            self.close()
            raise
        self._port = self._server.sockets[0].getsockname()[1]

    async def _listen(self) -> asyncio.Server:
        assert self.loop is not None
        return await self.loop.create_server(lambda: _Link(self).client, "127.0.0.1", 0)

    def close(self) -> None:
        """Stop listening, reset every connection at once, stop the loop and join its thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self._close_timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._close_timeout)
            if not thread.is_alive():
                loop.close()
            self.loop = self._thread = self._server = self._port = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        connecting = [task for task in (link.abort() for link in list(self.links)) if task is not None]
        await asyncio.gather(*connecting, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports' connection_lost callbacks run
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> LatencyProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
