"""The polling trigger most providers ship, as the baseline :class:`BananaCallTrigger` is measured against.

It follows the dbt Cloud and Databricks triggers: every ``poll_interval`` it opens a new
HTTP client (and so a new connection), sends one plain Check (no long poll), closes the
client, and sleeps. It is a benchmark baseline only, never used by the provider; the
decisions about a reply still go through :mod:`airflow_provider_banana.contract`, so the
two triggers differ only in how they wait and send.

One thing is kinder than plain httpx: the clients share one SSL context. ``httpx.AsyncClient()``
builds a new one each time (about 50 ms of CPU on the benchmark machine, which alone would
saturate the loop at 1,000 triggers polling every 5 s), whereas aiohttp, which the dbt Cloud and
Databricks triggers use, caches its default context. So the baseline measures the polling
pattern, not that.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_banana.contract import (
    CHECK,
    build_check_body,
    endpoint_url,
    error_event,
    parse_reply,
    success_event,
    validate_api_key,
    validate_base_url,
)
from airflow_provider_banana.exceptions import BananaTimeoutError


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


class NaivePollTrigger(BaseTrigger):
    """Check one Banana call every ``poll_interval`` with a new ``httpx.AsyncClient`` per Check.

    :param call_id: the callID from Start.
    :param banana_conn_id: the Airflow connection to use.
    :param deadline: ``time.time()`` after which the trigger yields a ``timeout`` event.
    :param poll_interval: seconds slept between two Checks.
    """

    def __init__(
        self, call_id: str, banana_conn_id: str = "banana_default", deadline: float = 0.0, poll_interval: float = 5.0
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.banana_conn_id = banana_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the kwargs that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_id": self.call_id,
                "banana_conn_id": self.banana_conn_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check, sleep, repeat, until the call ends or the deadline passes; yield one event."""
        try:
            # Looked up once per run, which is kinder to the baseline than dbt Cloud's per-request lookup.
            conn = await BaseHook.aget_connection(self.banana_conn_id)
            url = endpoint_url(validate_base_url(conn.host), CHECK)
            api_key = validate_api_key(conn.password)
            while True:
                body = build_check_body(api_key, self.call_id, long_poll=False)
                # The pattern under test: a client (and a connection) per poll.
                async with httpx.AsyncClient(timeout=30, verify=_ssl_context()) as client:
                    response = await client.post(url, json=body)
                result = parse_reply(CHECK, response.status_code, response.content, call_id=self.call_id)
                if result.finished:
                    yield TriggerEvent(success_event(self.call_id, result.model_outputs or []))
                    return
                if time.time() >= self.deadline:
                    raise BananaTimeoutError(self.call_id, self.poll_interval, result.status_text)
                await asyncio.sleep(self.poll_interval)
        except Exception as e:
            yield TriggerEvent(error_event(self.call_id, e))


class BareLongPollTrigger(BaseTrigger):
    """The floor: long-poll one call with bare ``aiohttp`` requests on one shared session, nothing else.

    What a trigger costs when it does only what the protocol needs: one session for every trigger
    on the loop, the connection looked up once per process, a long-poll Check sent again until the
    reply says ``success``, and the reply read with ``json.loads``. No retries, limits, deadlines,
    masking, metrics or logs; never used by the provider. :class:`BananaCallTrigger` is measured
    against it, as ``benchmarks/async_layers.py`` measures the hook against a bare session.

    :param call_id: the callID from Start.
    :param banana_conn_id: the Airflow connection to use.
    """

    _shared: dict[Any, Any] = {}  # the loop's session and its number of users; the process's url and key

    def __init__(self, call_id: str, banana_conn_id: str = "banana_default") -> None:
        super().__init__()
        self.call_id = call_id
        self.banana_conn_id = banana_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the kwargs that rebuild this trigger."""
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"call_id": self.call_id})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Long-poll until the call finishes; yield one event."""
        import json

        import aiohttp

        shared = self._shared
        if "url" not in shared:
            conn = await BaseHook.aget_connection(self.banana_conn_id)
            shared["url"], shared["key"] = endpoint_url(validate_base_url(conn.host), CHECK), conn.password
        loop = asyncio.get_running_loop()
        if shared.get("loop") is not loop:
            shared.update(loop=loop, users=0, session=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        shared["users"] += 1
        try:
            while True:
                body = {"id": "x", "created": 1, "apiKey": shared["key"], "longPoll": True, "callID": self.call_id}
                async with shared["session"].post(shared["url"], data=json.dumps(body).encode()) as response:
                    reply = json.loads(await response.read())
                if reply.get("message") == "success":
                    yield TriggerEvent({"status": "success", "call_id": self.call_id, "message": "success"})
                    return
        finally:
            shared["users"] -= 1
            if not shared["users"]:
                await shared.pop("session").close()
                shared.pop("loop")
