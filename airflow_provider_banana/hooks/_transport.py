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
import os
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_banana.contract import (
    DIRECT,
    BananaNetwork,
    RequestBudget,
    TransportFailure,
    framing_problem,
    framing_problem_of_raw,
    malformed_reply,
    reply_too_large,
    transport_error,
    undecodable_reply,
    unexpected_transport_error,
    unusable_url,
)
from airflow_provider_banana.exceptions import BananaError
from airflow_provider_banana.redact import scrub_library_logs

if TYPE_CHECKING:
    import aiohttp
    import requests

    from airflow_provider_banana.redact import Redactor

#: The loggers of the libraries a request goes through. They may log bytes a server sent (urllib3
#: logs a header line it cannot parse, verbatim: a server echoing the key there puts it in the log),
#: so every request masks its key in their records.
LIBRARY_LOGGERS = ("urllib3", "requests", "charset_normalizer", "aiohttp", "asyncio")
#: How much of an error reply (a status other than 200) is read: enough for its message, no more.
ERROR_BODY_BYTES = 64 * 1024
_CHUNK = 64 * 1024
#: aiohttp rounds a time limit past this many seconds up to a whole second of the loop's clock, so
#: that timers end together; a hold's cut must not (see :class:`HoldCut`), and no limit here needs it.
_NO_ROUNDING = 1e9


class HoldCut(Exception):
    """
    The request was abandoned at its :attr:`Exchange.cut`, unanswered, as asked: not a failure.

    The cut is the request's own whole-request limit (one timer, no task or timeout object of its
    own held through the hold), so ``apost`` tells it from a real timeout. Only the async hook's
    ``_send`` sees it.
    """


class RawReply(NamedTuple):
    """
    What came back, as bytes: the contract parses it.

    A named tuple, as :class:`Exchange`: immutable, and built without a frozen dataclass's call per
    field (two of each per Check, thousands of Checks a minute on a triggerer).

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


class Exchange(NamedTuple):
    """
    One request to send, and what to say if it fails.

    :param url: where to send it.
    :param body: the JSON body.
    :param budget: its time limits.
    :param limit: the largest body to read, after decompression.
    :param endpoint: ``"start"`` or ``"check"``, for the error texts.
    :param call_id: the call a Check is about.
    :param redactor: masks the key in the HTTP library's words.
    :param network: the proxy and the trusted CAs, the same for both halves.
    :param cut: seconds after which to abandon the request unanswered (:class:`HoldCut`), when that
        comes before ``budget.total``; only the async half cuts (a long poll's first hold).
    """

    url: str
    body: bytes
    budget: RequestBudget
    limit: int
    endpoint: str
    call_id: str | None
    redactor: Redactor
    network: BananaNetwork = DIRECT
    cut: float | None = None

    @property
    def cut_first(self) -> bool:
        """Return whether the request is abandoned at :attr:`cut` before ``budget.total`` ends it."""
        return self.cut is not None and self.cut < self.budget.total

    def failed(self, failure: TransportFailure, error: BaseException) -> BananaError:
        """Return our error for a transport failure the library raised."""
        detail = _certificate_problem(error) if failure is TransportFailure.UNTRUSTED_CERTIFICATE else None
        return transport_error(
            failure,
            endpoint=self.endpoint,
            detail=detail or str(error),
            call_id=self.call_id,
            redactor=self.redactor,
            network=self.network,
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
        return undecodable_reply(self.endpoint, self.redactor(self.network.scrub(str(error))), call_id=self.call_id)

    def malformed(self, problem: str) -> BananaError:
        """Return our error for a reply whose head is not well-formed HTTP (see ``framing_problem``)."""
        return malformed_reply(self.endpoint, self.redactor(self.network.scrub(problem)), call_id=self.call_id)

    def unexpected(self, error: BaseException) -> BananaError:
        """Return our error for anything else the library raised."""
        return unexpected_transport_error(
            error, endpoint=self.endpoint, call_id=self.call_id, redactor=self.redactor, network=self.network
        )


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


def _certificate_problem(error: BaseException) -> str | None:
    """Return what certificate verification said, if it is what failed somewhere in ``error``'s chain."""
    # Both libraries wrap the ssl module's error a few layers deep (requests: SSLError, MaxRetryError,
    # urllib3's SSLError; aiohttp: ClientConnectorCertificateError), in args, causes or attributes.
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # aiohttp's ClientConnectorCertificateError is an SSLCertVerificationError too, with none of
        # its fields: the ssl module's own error is its certificate_error.
        message = getattr(current, "verify_message", None)
        if isinstance(current, ssl.SSLCertVerificationError) and message:
            return f"certificate verify failed: {message}"
        linked = (
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            getattr(current, "certificate_error", None),
            *current.args,
        )
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return None


@functools.lru_cache(maxsize=16)
def _trusting(ca_bundle: str | None) -> ssl.SSLContext:
    # Building a context loads its CA bundle: ~25 ms of CPU. Fifty triggers starting together would
    # stall the triggerer's event loop for over a second, so there is one per bundle, for every
    # session and request. A context is not tied to an event loop, unlike a session's connections.
    if ca_bundle is None:
        import certifi  # the bundle requests trusts by default, so that both halves trust the same

        return ssl.create_default_context(cafile=certifi.where())
    if os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    return ssl.create_default_context(cafile=ca_bundle)


def ssl_context(network: BananaNetwork) -> ssl.SSLContext | bool:
    """
    Return aiohttp's ``ssl`` argument for ``network``: the shared context of its CA bundle, or False.

    :param network: the connection's network settings.
    :raises OSError, ssl.SSLError: the bundle cannot be read or holds no certificate.
    """
    return _trusting(network.ca_bundle) if network.verify else False


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


class _MalformedHead(Exception):
    """Raised by the sync half's response class for a head the contract refuses; :func:`post` maps it.

    Not an ``http.client.HTTPException``, which urllib3 would wrap as a dropped connection.
    """


@functools.cache
def _final_response_class() -> type:
    import http.client

    class FinalResponse(http.client.HTTPResponse):
        """
        An ``http.client.HTTPResponse`` that reads through interim (1xx) replies to the final one.

        ``http.client`` skips only ``100 Continue``: a gateway's ``102 Processing`` or
        ``103 Early Hints`` would come back as the reply, after the Start was taken. aiohttp reads
        through them; this makes the sync half do the same. ``101 Switching Protocols`` is final.
        """

        def begin(self) -> None:
            self._begin_one()
            # As many as come, as aiohttp reads them: a server that sends nothing else is ended by
            # the request's deadline (the watchdog), in both halves alike.
            while 100 <= self.status < 200 and self.status != 101:
                # begin() reads a reply only while no headers are set: cleared, the next one is read.
                # An interim reply has no body (RFC 9110 15.2), so the next bytes are a status line.
                self.headers = self.msg = None  # type: ignore[assignment]
                self._begin_one()
            self._check_head()

        def _begin_one(self) -> None:
            try:
                super().begin()
            except http.client.RemoteDisconnected:
                raise  # closed before a status line: the connection broke, the head is not malformed
            except (http.client.BadStatusLine, http.client.LineTooLong, http.client.UnknownProtocol) as e:
                raise _MalformedHead(f"{type(e).__name__}: {e}") from None

        def _check_head(self) -> None:
            # http.client forgives what aiohttp refuses: the contract decides for both halves. A
            # line without a colon ends the parsed headers (email's parser) and leaves a defect.
            if self.msg.defects or self.msg.get_payload():
                raise _MalformedHead("a header line without a colon")
            problem = framing_problem(self.msg.items())
            if problem:
                raise _MalformedHead(problem)

    return FinalResponse


@functools.cache
def _guarded_adapter_class() -> type:
    # Built on first use, so that importing this module does not import requests and urllib3.
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.poolmanager import ProxyManager

    final_response = _final_response_class()

    class Watched:
        sock: Any
        # The documented hook of http.client.HTTPConnection (which urllib3's connections subclass)
        # for the class that reads a reply: ours reads through interim (1xx) replies.
        response_class = final_response

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
    # Proxies and CAs come from the connection's BananaNetwork, as for the async half, never from
    # requests' own reading of the environment (nor credentials from ~/.netrc).
    session.trust_env = False
    session.headers.update(headers)
    adapter_class = _guarded_adapter_class()
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter_class())
    return session


def new_async_session(headers: dict[str, str]) -> aiohttp.ClientSession:
    """
    Return an ``aiohttp.ClientSession`` for :func:`apost`: one per event loop and connection (see ``_sessions``).

    :param headers: sent with every request.
    """
    import aiohttp  # here, not at the top: DAG files import the operator at every parse

    return aiohttp.ClientSession(
        headers=headers,
        # Long polls hold a connection each for up to 50 s: a connection limit would queue them.
        # Each request names its own proxy and SSL context (see _transport.apost): sessions are per
        # base URL and key, and two connections to one server may reach it differently.
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        # The hooks only send JSON bodies and read replies: a server's cookies are not kept.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Proxies and CAs come from the connection's BananaNetwork, the same for the sync side, never
        # from aiohttp's own reading of the environment.
        trust_env=False,
        # Each request sets its own whole-request limit (see _transport.apost).
        timeout=aiohttp.ClientTimeout(total=None),
    )


def _requests_failure(error: requests.RequestException) -> TransportFailure:
    import requests
    import urllib3.exceptions

    # Order matters: ConnectTimeout is both a ConnectionError and a Timeout.
    if _certificate_problem(error) is not None:
        return TransportFailure.UNTRUSTED_CERTIFICATE
    if isinstance(error, requests.exceptions.ProxyError):
        return TransportFailure.PROXY
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

    scrub_library_logs(LIBRARY_LOGGERS, exchange.redactor)
    budget = exchange.budget
    ends_at = time.monotonic() + budget.total
    deadline = _Deadline(budget.total)
    try:
        with deadline:
            # Straight to the adapter, not session.post: even with allow_redirects=False, Session.send
            # reads a redirect's whole body, unbounded, to work out where it would go next.
            prepared = session.prepare_request(requests.Request("POST", exchange.url, data=exchange.body))
            proxy = exchange.network.proxy
            response = session.get_adapter(prepared.url or "").send(
                prepared,
                stream=True,
                timeout=(budget.connect, budget.total),
                verify=exchange.network.requests_verify,
                proxies={"http": proxy, "https": proxy} if proxy else {},
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
    except _MalformedHead as e:
        raise exchange.malformed(str(e)) from None
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

    # Order matters: a connection timeout is a ServerTimeoutError and an asyncio.TimeoutError too; a
    # proxy that refuses is a ClientConnectorError too.
    if _certificate_problem(error) is not None:
        return TransportFailure.UNTRUSTED_CERTIFICATE
    if isinstance(error, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        return TransportFailure.PROXY
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return TransportFailure.CONNECT_TIMEOUT
    if isinstance(error, (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError)):
        return TransportFailure.CONNECT
    if isinstance(error, asyncio.TimeoutError):
        return TransportFailure.READ_TIMEOUT
    if isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return TransportFailure.CONNECTION_LOST
    return TransportFailure.OTHER


def _parser_error(error: BaseException) -> BaseException | None:
    # aiohttp chains its parser's own error under one or two wrappers (ClientResponseError, then a
    # bare HttpProcessingError): the innermost says whether the head or the body was at fault.
    found = None
    cause = error.__cause__
    for _ in range(4):
        if cause is None:
            break
        found, cause = cause, cause.__cause__
    return found


async def apost(session: aiohttp.ClientSession, exchange: Exchange) -> RawReply:
    """
    Send one POST through ``session`` and return its reply's bytes; see :func:`post`.

    :param session: the connection's ``aiohttp.ClientSession`` (see the hook's lease).
    :param exchange: the request and its limits.
    :raises BananaError: the exchange failed; nothing else comes out.
    """
    import aiohttp

    scrub_library_logs(LIBRARY_LOGGERS, exchange.redactor)
    budget = exchange.budget
    cut = exchange.cut if exchange.cut_first else None
    # One limit for the whole request, the cut's when it comes first, and one for opening a
    # connection (a socket's connect, a proxy's tunnel and the TLS handshake: aiohttp's sock_connect
    # would only add a timer inside it). Never rounded up: a cut at a time of its own is its point.
    timeout = aiohttp.ClientTimeout(
        total=budget.total if cut is None else cut, connect=budget.connect, ceil_threshold=_NO_ROUNDING
    )
    network = exchange.network
    # The proxy's credentials go in a header, since aiohttp does not take them from the proxy's URL:
    # of the CONNECT for https, of the request itself (which the proxy reads) for plain http.
    authorization = network.proxy_authorization
    tunnelled = exchange.url.lower().startswith("https:")
    to_proxy = {"Proxy-Authorization": authorization} if authorization else None
    try:
        async with session.post(
            exchange.url,
            data=exchange.body,
            timeout=timeout,
            allow_redirects=False,
            proxy=network.proxy_url,
            headers=None if tunnelled else to_proxy,
            proxy_headers=to_proxy if tunnelled else None,
            ssl=ssl_context(network),
        ) as response:
            # aiohttp's parser refused much by itself (see below); the rest is the contract's call.
            problem = framing_problem_of_raw(response.raw_headers)
            if problem:
                raise exchange.malformed(problem)
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
        # "content-encoding", not "encoding": a TransferEncodingError (a body cut short) says "Encoding" too.
        if isinstance(cause, aiohttp.http_exceptions.ContentEncodingError) or "content-encoding" in str(e).lower():
            raise exchange.undecodable(e) from None
        raise exchange.failed(TransportFailure.CONNECTION_LOST, e) from None
    except aiohttp.ClientHttpProxyError as e:  # the proxy refused the tunnel (407, 502 ...): nothing was sent
        raise exchange.failed(TransportFailure.PROXY, e) from None
    except aiohttp.ClientResponseError as e:
        # Raised (never for a status: the hook reads those) when aiohttp's parser refused the bytes.
        underlying = _parser_error(e)
        body_fault = isinstance(underlying, aiohttp.http_exceptions.PayloadEncodingError)
        if body_fault or "chunk" in str(underlying).lower():
            # The body, not the head: cut short or badly chunked. aiohttp says so this way only when
            # the body came in the head's packet (later, it raises ClientPayloadError); the sync half
            # reports both as a broken connection, so this half does too.
            raise exchange.failed(TransportFailure.CONNECTION_LOST, e) from None
        raise exchange.malformed(str(underlying or e.message)) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        failure = _aiohttp_failure(e)
        if cut is not None and (
            failure is TransportFailure.READ_TIMEOUT
            # Still connecting at the cut: only when opening a connection may take longer than it.
            or (failure is TransportFailure.CONNECT_TIMEOUT and budget.connect > cut)
        ):
            raise HoldCut from None
        if failure is TransportFailure.READ_TIMEOUT:
            raise exchange.timed_out() from None
        raise exchange.failed(failure, e) from None
    except Exception as e:  # anything else the libraries raise on bytes they did not expect
        raise exchange.unexpected(e) from None
