"""
Send one request's bytes and bring back its reply's bytes, within a whole-request time and size limit.

The hooks' thin I/O layer, one function per half: :func:`post` (``requests``) and :func:`apost`
(``aiohttp``). Each promises the same, whatever the server or a gateway in front of it does:

* no redirect is followed (the body carries the API key; the 3xx comes back as a reply, and the
  contract makes it an error);
* the request never outlives ``budget.total``, however slowly the bytes arrive (a per-read timeout
  alone lets a server that sends a byte a second hold a request forever);
* a body is never read past ``limit`` bytes after decompression;
* only :class:`~airflow_provider_banana.exceptions.BananaError` comes out, its text built by the
  contract, with the key masked.

Neither HTTP library is imported here at module level: DAG files import the operator at every parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.contract import (
    RequestBudget,
    TransportFailure,
    reply_too_large,
    transport_error,
    undecodable_reply,
    unexpected_transport_error,
    unusable_url,
)
from airflow_provider_banana.exceptions import BananaError

if TYPE_CHECKING:
    import aiohttp
    import requests

    from airflow_provider_banana.redact import Redactor

#: How much of an error reply (a status other than 200) is read: enough for its message, no more.
ERROR_BODY_BYTES = 64 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RawReply:
    """
    What came back, as bytes: the contract parses it.

    :param status_code: the HTTP status.
    :param content: the body, decompressed (of an error reply, its first :data:`ERROR_BODY_BYTES`).
    :param retry_after: the ``Retry-After`` header, if any.
    :param location: the ``Location`` header, if any.
    :param truncated: ``content`` is the start of a longer body.
    """

    status_code: int
    content: bytes
    retry_after: str | None
    location: str | None
    truncated: bool = False


@dataclass(frozen=True)
class Exchange:
    """
    One request to send, and what to say if it fails.

    :param url: where to send it.
    :param body: the JSON body.
    :param budget: its time limits.
    :param limit: the largest body to read, after decompression.
    :param endpoint: ``"start"`` or ``"check"``, for the error texts.
    :param call_id: the call a Check is about.
    :param redactor: masks the key in the HTTP library's words.
    """

    url: str
    body: bytes
    budget: RequestBudget
    limit: int
    endpoint: str
    call_id: str | None
    redactor: Redactor

    def failed(self, failure: TransportFailure, error: BaseException) -> BananaError:
        """Return our error for a transport failure the library raised."""
        return transport_error(
            failure, endpoint=self.endpoint, detail=str(error), call_id=self.call_id, redactor=self.redactor
        )

    def timed_out(self) -> BananaError:
        """Return our error for a request that outlived ``budget.total``."""
        return transport_error(
            TransportFailure.READ_TIMEOUT,
            endpoint=self.endpoint,
            detail=f"{self.budget.total:g} s",
            call_id=self.call_id,
        )

    def too_large(self) -> BananaError:
        """Return our error for a body past ``limit``."""
        return reply_too_large(self.endpoint, self.limit, call_id=self.call_id)

    def undecodable(self, error: BaseException) -> BananaError:
        """Return our error for a body whose Content-Encoding could not be undone."""
        return undecodable_reply(self.endpoint, self.redactor(str(error)), call_id=self.call_id)

    def unexpected(self, error: BaseException) -> BananaError:
        """Return our error for anything else the library raised."""
        return unexpected_transport_error(error, endpoint=self.endpoint, call_id=self.call_id, redactor=self.redactor)


def _declared_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


class _Body:
    """
    Keep a reply's (decompressed) chunks as they arrive, within the limit; both halves feed it.

    A 200 is kept whole, up to ``exchange.limit`` (past it: :class:`BananaReplyTooLargeError`); an
    error reply only as far as its message needs (:data:`ERROR_BODY_BYTES`), the rest dropped.

    :param status_code: the reply's status.
    :param headers: the reply's headers (``Content-Length``, ``Retry-After``, ``Location``).
    :param exchange: the request and its limits.
    """

    def __init__(self, status_code: int, headers: Any, exchange: Exchange) -> None:
        self.status_code = status_code
        self.headers = headers
        self.exchange = exchange
        self.cap = exchange.limit if status_code == 200 else ERROR_BODY_BYTES
        self.kept: list[bytes] = []
        self.size = 0
        self.truncated = False
        declared = _declared_length(headers)
        if status_code == 200 and declared is not None and declared > exchange.limit:
            raise exchange.too_large()  # refused before reading a byte of it

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; return whether to read on."""
        self.size += len(chunk)
        if self.size > self.cap:
            if self.status_code == 200:
                raise self.exchange.too_large()
            self.kept.append(chunk[: len(chunk) - (self.size - self.cap)])
            self.truncated = True
            return False
        self.kept.append(chunk)
        return True

    def reply(self) -> RawReply:
        """Return what was kept."""
        return RawReply(
            status_code=self.status_code,
            content=b"".join(self.kept),
            retry_after=self.headers.get("Retry-After"),
            location=self.headers.get("Location"),
            truncated=self.truncated,
        )


# ---------------------------------------------------------------------------------------------------------
# The sync half: requests.
#
# requests has no whole-request timeout: its read timeout applies to each socket read. So each request
# runs under a watchdog (:class:`_Deadline`) that shuts the connection's socket down when the budget is
# spent; the blocked read then ends at once, whatever phase the exchange is in (headers or body).
# Connections learn which watchdog is theirs from a context variable set around the request.

_CURRENT: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("banana_request_deadline", default=None)


class _Deadline:
    """Shut down the socket of the request running under it once ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._sockets: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._token: contextvars.Token[_Deadline | None] | None = None

    def __enter__(self) -> _Deadline:
        self._token = _CURRENT.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        if self._token is not None:
            _CURRENT.reset(self._token)

    def watch(self, sock: Any) -> None:
        """Shut ``sock`` down when the time is up (at once if it already is)."""
        with self._lock:
            if not self.fired:
                self._sockets.append(sock)
                return
        _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)


def _shut(sock: Any) -> None:
    # The plain socket's shutdown, even under TLS: SSLSocket.shutdown would drop its SSL object under
    # the reading thread's feet, while the plain one just ends the reads (they return EOF).
    sock = getattr(sock, "socket", sock)  # urllib3's SSLTransport (TLS through a TLS proxy) wraps one
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


@functools.cache
def _guarded_adapter_class() -> type:
    # Built on first use, so that importing this module does not import requests and urllib3.
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.poolmanager import ProxyManager

    class Watched:
        sock: Any

        def request(self, *args: Any, **kwargs: Any) -> Any:
            deadline = _CURRENT.get()
            try:
                return super().request(*args, **kwargs)  # type: ignore[misc]
            finally:
                # Connected by now (lazily, for plain HTTP) and the request sent; the answer is next.
                if deadline is not None and self.sock is not None:
                    deadline.watch(self.sock)

        def connect(self) -> None:
            super().connect()  # type: ignore[misc]
            deadline = _CURRENT.get()
            if deadline is not None and self.sock is not None:
                deadline.watch(self.sock)

    class WatchedHTTPConnection(Watched, HTTPConnection):
        pass

    class WatchedHTTPSConnection(Watched, HTTPSConnection):
        pass

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    pools = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}

    class GuardedAdapter(HTTPAdapter):
        """An HTTPAdapter whose connections run under the current request's watchdog."""

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if type(manager) is ProxyManager:  # a SOCKS manager keeps its own pools
                manager.pool_classes_by_scheme = pools
            return manager

    return GuardedAdapter


def new_session(headers: dict[str, str]) -> requests.Session:
    """
    Return a ``requests.Session`` whose requests :func:`post` can hold to a whole-request deadline.

    :param headers: sent with every request.
    """
    import requests

    session = requests.Session()
    session.headers.update(headers)
    adapter_class = _guarded_adapter_class()
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter_class())
    return session


def _requests_failure(error: requests.RequestException) -> TransportFailure:
    import requests
    import urllib3.exceptions

    # Order matters: ConnectTimeout is both a ConnectionError and a Timeout.
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return TransportFailure.CONNECT_TIMEOUT
    if isinstance(error, requests.exceptions.ReadTimeout):
        return TransportFailure.READ_TIMEOUT
    if isinstance(error, requests.exceptions.SSLError):
        return TransportFailure.CONNECT
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return TransportFailure.CONNECTION_LOST
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = error.args[0] if error.args else None
        if isinstance(reason, urllib3.exceptions.ReadTimeoutError):  # a timeout while reading the body
            return TransportFailure.READ_TIMEOUT
        reason = getattr(reason, "reason", None)
        if isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProxyError)):
            return TransportFailure.CONNECT
        if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
            return TransportFailure.CONNECT_TIMEOUT
        return TransportFailure.CONNECTION_LOST
    return TransportFailure.OTHER


def post(session: requests.Session, exchange: Exchange) -> RawReply:
    """
    Send one POST through ``session`` (from :func:`new_session`) and return its reply's bytes.

    :param session: the hook's session.
    :param exchange: the request and its limits.
    :raises BananaError: the exchange failed; nothing else comes out.
    """
    import requests

    budget = exchange.budget
    ends_at = time.monotonic() + budget.total
    deadline = _Deadline(budget.total)
    try:
        with deadline:
            # Straight to the adapter, not session.post: even with allow_redirects=False, Session.send
            # reads a redirect's whole body, unbounded, to work out where it would go next.
            prepared = session.prepare_request(requests.Request("POST", exchange.url, data=exchange.body))
            environment = session.merge_environment_settings(prepared.url, {}, True, None, None)
            verify = environment.get("verify")
            response = session.get_adapter(prepared.url or "").send(
                prepared,
                stream=True,
                timeout=(budget.connect, budget.total),
                verify=True if verify is None else verify,
                cert=environment.get("cert"),
                proxies=environment.get("proxies"),
            )
            try:
                body = _Body(response.status_code, response.headers, exchange)
                for chunk in response.iter_content(_CHUNK):
                    if not body.add(chunk):
                        break
                    if time.monotonic() > ends_at:  # a second line of defence behind the watchdog
                        raise exchange.timed_out()
            finally:
                response.close()
    except BananaError:
        raise
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema) as e:
        raise unusable_url(str(e), redactor=exchange.redactor) from None
    except requests.exceptions.ContentDecodingError as e:
        raise exchange.undecodable(e) from None
    except requests.RequestException as e:
        if deadline.fired:
            raise exchange.timed_out() from None
        raise exchange.failed(_requests_failure(e), e) from None
    except Exception as e:  # anything else the libraries raise on bytes they did not expect
        if deadline.fired:
            raise exchange.timed_out() from None
        raise exchange.unexpected(e) from None
    return body.reply()


# ---------------------------------------------------------------------------------------------------------
# The async half: aiohttp. Its ``total`` timeout is a wall-clock limit on the whole exchange, body
# included (a timer cancels the request when it runs out), so a trickle cannot outlive it.


def _aiohttp_failure(error: BaseException) -> TransportFailure:
    import aiohttp

    # Order matters: a connection timeout is a ServerTimeoutError and an asyncio.TimeoutError too.
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return TransportFailure.CONNECT_TIMEOUT
    if isinstance(error, (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError)):
        return TransportFailure.CONNECT
    if isinstance(error, asyncio.TimeoutError):
        return TransportFailure.READ_TIMEOUT
    if isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return TransportFailure.CONNECTION_LOST
    return TransportFailure.OTHER


async def apost(session: aiohttp.ClientSession, exchange: Exchange) -> RawReply:
    """
    Send one POST through ``session`` and return its reply's bytes; see :func:`post`.

    :param session: the connection's ``aiohttp.ClientSession`` (see the hook's lease).
    :param exchange: the request and its limits.
    :raises BananaError: the exchange failed; nothing else comes out.
    """
    import aiohttp

    budget = exchange.budget
    timeout = aiohttp.ClientTimeout(total=budget.total, connect=budget.connect, sock_connect=budget.connect)
    try:
        async with session.post(exchange.url, data=exchange.body, timeout=timeout, allow_redirects=False) as response:
            body = _Body(response.status, response.headers, exchange)
            # Decompressed chunks: the limit counts what the body inflates to, not what was sent.
            async for chunk in response.content.iter_chunked(_CHUNK):
                if not body.add(chunk):
                    break
            return body.reply()
    except BananaError:
        raise
    except aiohttp.InvalidURL as e:
        raise unusable_url(str(e), redactor=exchange.redactor) from None
    except aiohttp.ClientPayloadError as e:
        # aiohttp before 3.14 refuses, by itself, a network read that inflates past 32 MiB: a bomb.
        cause = e.__cause__
        if isinstance(cause, aiohttp.http_exceptions.DecompressSizeError) or "exceeds the configured limit" in str(e):
            raise exchange.too_large() from None
        if isinstance(cause, aiohttp.http_exceptions.ContentEncodingError) or "encoding" in str(e).lower():
            raise exchange.undecodable(e) from None
        raise exchange.failed(TransportFailure.CONNECTION_LOST, e) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        failure = _aiohttp_failure(e)
        if failure is TransportFailure.READ_TIMEOUT:
            raise exchange.timed_out() from None
        raise exchange.failed(failure, e) from None
    except Exception as e:  # anything else the libraries raise on bytes they did not expect
        raise exchange.unexpected(e) from None
