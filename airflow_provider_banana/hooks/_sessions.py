"""
The async half's pool of HTTP sessions: one ``aiohttp`` session per event loop and connection, leased by hooks.

The session factories of the two halves are in :mod:`._transport` (``new_session`` and
``new_async_session``); this module only decides which hooks share which session, and when it closes.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from typing import TYPE_CHECKING

from airflow_provider_banana.hooks import _transport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

    from airflow_provider_banana.hooks.banana import BananaSettings


class LoopSessions:
    """The HTTP sessions of one event loop: one per connection (base URL and key), for every hook.

    This is the one lease primitive of the async side: a trigger, a batch trigger and a batch's
    worker watch all enter a :class:`BananaAsyncHook`, which leases its connection's session here
    and gives it back on exit; the last user closes it. An aiohttp session's pool costs the same
    per request however many requests share it, so one session holds any number of long polls.
    Hooks of different connections never share a session, so nothing a server sets (cookies, which
    are ignored anyway) crosses from one connection to another.
    """

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], aiohttp.ClientSession] = {}
        self.users: dict[tuple[str, str], int] = {}
        self.lookups: dict[str, asyncio.Future[BananaSettings]] = {}

    async def settings(self, conn_id: str, resolve: Callable[[str], Awaitable[BananaSettings]]) -> BananaSettings:
        """Return a connection's settings, joining a lookup of the same id already in flight on this loop.

        A lookup costs ~0.5 ms of CPU (the environment-variable backend runs in a thread), reading
        and validating it and registering its key with the secret masker more, and a triggerer that
        restarts or takes over another's triggers starts thousands of hooks at once; they all wait
        for one lookup and share its settings. Nothing is cached: the next lookup after it ends is
        fresh, so a changed connection is seen by the next hook.

        :param conn_id: the Airflow connection id.
        :param resolve: looks a connection id up and returns its settings (the hook's own lookup).
        :raises BananaConfigError: the connection is not a usable Banana connection.
        """
        pending = self.lookups.get(conn_id)
        if pending is None:
            pending = asyncio.ensure_future(resolve(conn_id))
            self.lookups[conn_id] = pending
            pending.add_done_callback(functools.partial(self._lookup_done, conn_id))
        # Shielded: one hook cancelled while it waits must not cancel the lookup for the others.
        return await asyncio.shield(pending)

    def _lookup_done(self, conn_id: str, future: asyncio.Future[BananaSettings]) -> None:
        if self.lookups.get(conn_id) is future:
            del self.lookups[conn_id]
        if not future.cancelled():
            future.exception()  # retrieved: every waiter may have been cancelled meanwhile

    def lease(self, key: tuple[str, str], headers: dict[str, str]) -> aiohttp.ClientSession:
        """Return the connection's session, opening it for its first user; count the user in.

        :param key: the base URL and the API key.
        :param headers: sent with every request of a session opened here.
        """
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = _transport.new_async_session(headers)
            self.users[key] = 0
        self.users[key] += 1
        return session

    async def release(self, key: tuple[str, str]) -> None:
        """Count a user out of the connection's session; the last one closes it.

        :param key: what :meth:`lease` was given.
        """
        self.users[key] -= 1
        if self.users[key] == 0:
            del self.users[key]
            await self.sessions.pop(key).close()


# A session is bound to the loop it was made in (dag.test() runs each deferral in a fresh loop), so
# sessions are kept per loop, and a loop's sessions go away with the loop.
_SHARES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopSessions] = weakref.WeakKeyDictionary()
_SHARES_LOCK = threading.Lock()


def loop_share() -> LoopSessions:
    """Return the running event loop's sessions (made for its first hook)."""
    loop = asyncio.get_running_loop()
    with _SHARES_LOCK:  # one share per loop, even when loops in several threads start together
        share = _SHARES.get(loop)
        if share is None:
            share = _SHARES[loop] = LoopSessions()
    return share
