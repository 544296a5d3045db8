"""Expose the devserver over HTTP: Banana's two endpoints, a healthcheck and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router

from airflow_provider_banana.devserver import protocol
from airflow_provider_banana.devserver.faults import UNPROCESSED_KINDS, FaultRule, FaultSpecError, FaultSwitches

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from airflow_provider_banana.devserver.config import AdminMode
    from airflow_provider_banana.devserver.service import BananaService

log = logging.getLogger(__name__)

_JSON = "application/json"


class ConnectionDropped(Exception):
    """Raised on purpose after a partial answer so that the server aborts the connection.

    uvicorn closes the transport when an app raises after starting its response;
    :class:`DropFilter` keeps that deliberate case out of the error log.
    """


class DropFilter(logging.Filter):
    """Hide uvicorn's "Exception in ASGI application" record for deliberate drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except one caused by :class:`ConnectionDropped`.

        :param record: the log record.
        """
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


class DroppedResponse(Response):
    """Announce the whole body, send half of it, then break the connection.

    The client sees headers and a truncated body, the way a crashed proxy or a
    reset connection looks: ``requests`` raises ``ChunkedEncodingError``,
    httpx ``RemoteProtocolError``.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the start of the response and part of the body, then raise.

        :param scope: the ASGI scope.
        :param receive: the ASGI receive channel.
        :param send: the ASGI send channel.
        :raises ConnectionDropped: always.
        """
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        raise ConnectionDropped()


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Build a compact JSON response.

    :param payload: any JSON-ready value.
    :param status: HTTP status.
    :param headers: extra headers.
    """
    return Response(protocol.encode(payload), status_code=status, headers=headers, media_type=_JSON)


def fault_response(rule: FaultRule, endpoint: str) -> Response:
    """Build the answer of a switch that replaces processing.

    :param rule: a ``fail_next``, ``raw_next`` or ``non_json_next`` switch.
    :param endpoint: ``start`` or ``check``, for the default message.
    """
    if rule.kind == "fail_next":
        headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else None
        message = rule.message or f"injected fault: HTTP {rule.status} on {endpoint}"
        return json_response({"message": message}, status=rule.status, headers=headers)
    if rule.kind == "raw_next":
        return json_response(rule.body, status=rule.status)
    return Response(str(rule.body), media_type=rule.content_type)


class AdminTokenGuard:
    """Let an admin request through only with ``Authorization: Bearer <token>``; answer others 401.

    :param app: the admin API's router.
    :param token: the required token.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request's token, then hand it on or refuse it.

        :param scope: the ASGI scope.
        :param receive: the ASGI receive channel.
        :param send: the ASGI send channel.
        """
        if scope["type"] == "http" and not self._authorized(scope):
            log.debug("Refused an admin request to %s without a valid token", scope.get("path"))
            response = json_response(
                {"error": "the admin API needs an Authorization: Bearer <admin token> header"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)


async def client_gone(request: Request) -> None:
    """Return once the client has disconnected; only after the whole body was read.

    With the body read, the server's next ASGI message is ``http.disconnect``: sent when the
    connection is lost (or, harmlessly, once the response is complete), so a held request
    learns at once that nobody waits for its answer any more.

    :param request: the request, its body already read.
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def read_body(request: Request) -> bytes | None:
    """Read a request body, refusing one larger than :data:`protocol.MAX_BODY_BYTES`.

    :param request: the request.
    :return: the body, or None when it is too large.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > protocol.MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > protocol.MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class BananaApp:
    """Serve one service over HTTP: Banana's two endpoints, a healthcheck and the admin API.

    Each route's handler is a method; :meth:`build` assembles them into the Starlette app.

    :param service: the server's state and behaviour; opened and closed by the app's lifespan.
    :param admin: how the ``/_admin/`` routes are exposed, usually from
        :func:`~airflow_provider_banana.devserver.config.admin_mode`: ``open`` to anyone,
        ``token`` only with ``Authorization: Bearer <admin_token>`` (401 otherwise), ``off``
        not at all (404, like any unknown path).
    :param admin_token: the token ``admin="token"`` requires; only with that mode.
    :raises ValueError: when ``admin`` is unknown or does not match ``admin_token``.
    """

    def __init__(self, service: BananaService, admin: AdminMode = "open", admin_token: str | None = None) -> None:
        if admin not in ("open", "token", "off"):
            raise ValueError(f"admin must be 'open', 'token' or 'off', not {admin!r}")
        if (admin == "token") != bool(admin_token):
            raise ValueError('admin_token is required with admin="token" and only then')
        self.service = service
        self.admin = admin
        self.admin_token = admin_token
        self.faults = FaultSwitches()

    def build(self) -> Starlette:
        """Return the Starlette application routing every path to its handler."""
        routes: list[BaseRoute] = [
            *(Route(path, self.start, methods=["POST"]) for path in ("/start/v4/", "/start/v4")),
            *(Route(path, self.check, methods=["POST"]) for path in ("/check/v4/", "/check/v4")),
            Route("/healthcheck", self.healthcheck, methods=["GET"]),
        ]
        if self.admin != "off":
            admin_router = Router(
                routes=[
                    Route("/stats", self.admin_stats, methods=["GET"]),
                    Route("/reset", self.admin_reset, methods=["POST"]),
                    Route("/forget", self.admin_forget, methods=["POST"]),
                    Route("/faults", self.admin_faults, methods=["GET", "POST"]),
                    Route("/settings", self.admin_settings, methods=["GET", "POST"]),
                ],
                redirect_slashes=False,
            )
            # Mounted, so that the guard sees every /_admin/ request, unknown paths and methods included.
            admin_app: ASGIApp = (
                admin_router if self.admin_token is None else AdminTokenGuard(admin_router, self.admin_token)
            )
            routes.append(Mount("/_admin", app=admin_app))
        app = Starlette(routes=routes, lifespan=self.lifespan)
        # Both spellings of each path are routed; anything else is a plain 404, never a redirect.
        app.router.redirect_slashes = False
        return app

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the service while the app serves, and close it after.

        :param app: the application starting.
        """
        await self.service.open()
        try:
            yield
        finally:
            await self.service.close()

    async def start(self, request: Request) -> Response:
        """Answer ``POST /start/v4/``.

        :param request: the request.
        """
        return await self._banana_endpoint(request, "start")

    async def check(self, request: Request) -> Response:
        """Answer ``POST /check/v4/``.

        :param request: the request.
        """
        return await self._banana_endpoint(request, "check")

    async def healthcheck(self, request: Request) -> Response:
        """Answer ``GET /healthcheck``.

        :param request: the request.
        """
        return json_response({"state": "healthy"})

    async def admin_stats(self, request: Request) -> Response:
        """Answer ``GET /_admin/stats`` with every counter.

        :param request: the request.
        """
        return json_response(self.service.stats.to_json(calls_kept=len(self.service.calls)))

    async def admin_reset(self, request: Request) -> Response:
        """Answer ``POST /_admin/reset``: zero the counters, clear the fault switches, maybe forget the calls.

        :param request: the request, its body ``{"forget_calls": bool}`` or empty.
        """
        body = await _admin_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("forget_calls", False), bool):
            return _admin_error('expected {"forget_calls": bool}')
        await self.service.reset(forget_calls=body.get("forget_calls", False))
        self.faults.clear()
        return json_response({"reset": True, "forgot_calls": body.get("forget_calls", False)})

    async def admin_forget(self, request: Request) -> Response:
        """Answer ``POST /_admin/forget``: forget every call.

        :param request: the request.
        """
        return json_response({"forgotten": await self.service.forget()})

    async def admin_faults(self, request: Request) -> Response:
        """Answer ``/_admin/faults``: show the fault switches, and on POST set them first.

        :param request: the request; a POST's body is a JSON object of fault switches.
        """
        if request.method == "POST":
            body = await _admin_body(request)
            if not isinstance(body, dict):
                return _admin_error("expected a JSON object of fault switches")
            spec = dict(body)
            quirk = spec.pop("quirk_empty_message", None)
            if quirk is not None and not isinstance(quirk, bool):
                return _admin_error("quirk_empty_message must be a boolean")
            try:
                self.faults.update(spec)
            except FaultSpecError as e:
                return _admin_error(str(e))
            if quirk is not None:
                self.service.settings.quirk_empty_message = quirk
            log.info("Fault switches now %s", self.faults.to_json())
        return json_response(
            {"faults": self.faults.to_json(), "quirk_empty_message": self.service.settings.quirk_empty_message}
        )

    async def admin_settings(self, request: Request) -> Response:
        """Answer ``/_admin/settings``: show the settings, and on POST change them first.

        :param request: the request; a POST's body is a JSON object of settings.
        """
        if request.method == "POST":
            body = await _admin_body(request)
            if not isinstance(body, dict):
                return _admin_error("expected a JSON object of settings")
            try:
                self.service.settings.update(body)
            except ValueError as e:
                return _admin_error(str(e))
            log.info("Settings now %s", self.service.settings.to_json())
        return json_response(self.service.settings.to_json())

    async def _banana_endpoint(self, request: Request, endpoint: str) -> Response:
        if endpoint == "start":
            self.service.stats.start_requests += 1
        else:
            self.service.stats.check_requests += 1
        rule = self.faults.take(endpoint)
        if rule is not None:
            self.service.stats.faults_served += 1
            log.debug("Injecting %s into a %s request", rule.kind, endpoint)
            if rule.kind in UNPROCESSED_KINDS:
                return fault_response(rule, endpoint)
        try:
            body = await read_body(request)
        except ClientDisconnect:
            log.debug("Client left before sending its %s request body", endpoint)
            return Response(status_code=400)
        if rule is not None and rule.kind == "delay_next":
            # The body is already read, so the request is served after the delay even if
            # the client timed out meanwhile: the case a client must not blindly retry.
            await asyncio.sleep(rule.seconds)
        if body is None:
            reply = protocol.error_reply(protocol.new_request_id(), "error: request body too large")
        elif endpoint == "start":
            reply = await self.service.start(body, functools.partial(client_gone, request))
        else:
            reply = await self.service.check(body, functools.partial(client_gone, request))
        if rule is not None and rule.kind == "drop_next":
            return DroppedResponse(protocol.encode(reply), media_type=_JSON)
        return json_response(reply)


def create_app(service: BananaService, admin: AdminMode = "open", admin_token: str | None = None) -> Starlette:
    """Build the ASGI app around a service (see :class:`BananaApp` for the arguments).

    :param service: the server's state and behaviour.
    :param admin: how the ``/_admin/`` routes are exposed: ``open``, ``token`` or ``off``.
    :param admin_token: the token ``admin="token"`` requires; only with that mode.
    :return: the Starlette application.
    :raises ValueError: when ``admin`` is unknown or does not match ``admin_token``.
    """
    return BananaApp(service, admin=admin, admin_token=admin_token).build()


async def _admin_body(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError:
        return None


def _admin_error(message: str) -> Response:
    return json_response({"error": message}, status=400)
