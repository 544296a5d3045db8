"""Serve Banana's Start and Check semantics on top of the call registry and the model pools.

This is the server's behaviour without HTTP: :mod:`.app` feeds it request
bodies and sends back the reply dicts it builds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from airflow_provider_banana.devserver import protocol
from airflow_provider_banana.devserver.calls import CallRegistry, CallState
from airflow_provider_banana.devserver.config import DevServerConfig, Settings
from airflow_provider_banana.devserver.models import (
    ExternalModel,
    FlakyModel,
    Model,
    builtin_models,
)
from airflow_provider_banana.devserver.stats import Stats
from airflow_provider_banana.devserver.workers import ModelPool

log = logging.getLogger(__name__)

# Connecting to a model server should be quick; only the inference itself may take long.
_MODEL_CONNECT_TIMEOUT = 10.0


class BananaService:
    """One devserver's calls, models, settings and counters.

    :param config: the launch configuration.
    """

    def __init__(self, config: DevServerConfig) -> None:
        self.config = config
        self.settings = Settings.from_config(config)
        self.model_keys = sorted({*builtin_models(), *config.external_models})
        self.stats = Stats(self.model_keys)
        self.calls = CallRegistry(self.stats, lambda: self.settings.result_ttl, config.max_held_bytes)
        self._pools: dict[str, ModelPool] = {}
        self._models: dict[str, Model] = {}
        self._http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        """Create the model pools, the HTTP client for external models and the TTL sweeper."""
        models = builtin_models()
        slots: dict[str, asyncio.Semaphore] = {}
        if self.config.external_models:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.model_timeout, connect=_MODEL_CONNECT_TIMEOUT),
                # The pools already bound concurrency; the client must not add a second, lower cap.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.config.replicas),
                # Model servers are named explicitly; a proxy from the environment would only misroute.
                trust_env=False,
            )
            for key, url in self.config.external_models.items():
                if key in models:
                    log.info("External model server replaces the built-in model %s", key)
                models[key] = ExternalModel(url, self._http)
            for origin, server in self.config.model_servers().items():
                if server.limit:
                    # One semaphore per server: Potassium runs one handler at a time across all its routes.
                    semaphore = asyncio.Semaphore(server.limit)
                    slots.update(dict.fromkeys(server.keys, semaphore))
                # The origin only: a URL's user info or query may hold a secret.
                log.info(
                    "Model server %s (models %s): %s",
                    origin,
                    ", ".join(server.keys),
                    f"{server.limit} request(s) at once" if server.limit else "no limit on requests at once",
                )
        self._models = models
        replicas = self.config.replicas
        self._pools = {key: ModelPool(key, fn, replicas, self.calls, slots.get(key)) for key, fn in models.items()}
        for pool in self._pools.values():
            pool.start()
        self.calls.start()
        log.info("Serving models %s with %d replicas each", ", ".join(sorted(self._pools)), self.config.replicas)

    async def close(self) -> None:
        """Stop the workers, release held requests and close the HTTP client."""
        self.calls.release_waiters()
        await asyncio.gather(*(pool.stop() for pool in self._pools.values()))
        await self.calls.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def release_holds(self) -> None:
        """Answer every held Start and Check now; called when shutdown begins."""
        self.calls.release_waiters()

    async def start(self, body: bytes, gone: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Serve one Start request.

        :param body: the raw request body.
        :param gone: returns once the client has disconnected; ends a hold early (the call runs on).
        :return: the reply.
        """
        try:
            request = protocol.parse_start(body, self.config.api_key)
        except protocol.RequestError as e:
            return protocol.error_reply(e.request_id, e.message)
        pool = self._pools.get(request.model_key)
        if pool is None:
            return protocol.error_reply(
                request.request_id, f"error: unknown modelKey {protocol.echo(request.model_key)}"
            )
        if not self.calls.admit(len(body)):
            # Refused before a call exists: nothing runs, and a client may send it again later.
            log.warning(
                "Refused a Start of %d bytes: the calls still running hold %d bytes, and --max-held-bytes is %d",
                len(body),
                self.calls.held_bytes,
                self.calls.max_held_bytes,
            )
            return protocol.error_reply(
                request.request_id,
                f"error: the server is full: the inputs of the calls still running and this Start's "
                f"({len(body)} bytes) would pass its --max-held-bytes ({self.calls.max_held_bytes}); "
                "nothing was started, so the Start may be sent again once calls finish",
            )
        call = self.calls.create(request.model_key, request.model_inputs, len(body))
        pool.submit(call)
        if not request.start_only:
            with self.stats.start_holds_open.held():
                await self.calls.wait(call, self.settings.start_hold, gone)
        if call.forgotten:
            return protocol.start_pending_reply(request.request_id, call.call_id)
        if call.state is CallState.SUCCEEDED:
            return protocol.start_finished_reply(
                request.request_id,
                call.call_id,
                call.output,
                empty_message=self.settings.quirk_empty_message,
            )
        if call.state is CallState.FAILED:
            return protocol.start_failed_reply(request.request_id, call.call_id, call.error or "error")
        return protocol.start_pending_reply(request.request_id, call.call_id)

    async def check(self, body: bytes, gone: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Serve one Check request, holding it when it asks for a long poll.

        :param body: the raw request body.
        :param gone: returns once the client has disconnected; ends a long poll early, so that
            ``long_polls_open`` counts only long polls somebody still waits on.
        :return: the reply.
        """
        try:
            request = protocol.parse_check(body, self.config.api_key)
        except protocol.RequestError as e:
            return protocol.error_reply(e.request_id, e.message)
        call = self.calls.get(request.call_id)
        if call is not None and request.long_poll and not call.state.settled:
            with self.stats.long_polls_open.held():
                await self.calls.wait(call, self.settings.check_hold, gone)
            # Look again: a forget or the TTL may have removed it meanwhile.
            call = self.calls.get(request.call_id)
        if call is None:
            return protocol.check_missing_reply(request.request_id, request.call_id)
        if call.state is CallState.SUCCEEDED:
            return protocol.check_reply(request.request_id, "success", call.output)
        if call.state is CallState.FAILED:
            return protocol.check_reply(request.request_id, call.error or "error")
        return protocol.check_reply(request.request_id, call.state.value)

    async def forget(self) -> int:
        """Drop every call and result, as a restart would; running calls are cancelled.

        :return: how many calls were dropped.
        """
        # Stop the workers first so that no call changes state while it is dropped.
        await asyncio.gather(*(pool.stop() for pool in self._pools.values()))
        dropped = self.calls.forget_all()
        for pool in self._pools.values():
            pool.start()
        log.info("Forgot %d calls", dropped)
        return dropped

    async def reset(self, *, forget_calls: bool) -> None:
        """Zero the counters, restore the launch settings and the flaky model's attempt counts.

        :param forget_calls: also drop every call and result.
        """
        if forget_calls:
            await self.forget()
        self.stats.reset()
        self.settings = Settings.from_config(self.config)
        flaky = self._models.get("flaky")
        if isinstance(flaky, FlakyModel):
            flaky.reset()
