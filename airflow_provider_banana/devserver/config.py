"""Hold the devserver's launch configuration and the settings tests may change at run time."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

#: Environment variable holding the only apiKey accepted with ``--require-api-key``.
API_KEY_ENV_VAR = "BANANA_DEVSERVER_API_KEY"
#: Environment variable holding the bearer token that every ``/_admin/`` request must carry.
ADMIN_TOKEN_ENV_VAR = "BANANA_DEVSERVER_ADMIN_TOKEN"

#: How the admin API is exposed: ``open`` (no token), ``token`` (bearer token required), ``off`` (404).
AdminMode = Literal["open", "token", "off"]

DEFAULT_START_HOLD = 50.0
DEFAULT_CHECK_HOLD = 50.0
DEFAULT_RESULT_TTL = 600.0
# Enough parallelism that a test starting a few dozen calls never waits on the
# pool, yet small enough that a runaway client cannot spawn unbounded work.
DEFAULT_REPLICAS = 32
DEFAULT_MODEL_TIMEOUT = 600.0
# Requests one external model server gets at once. Potassium runs one handler at a time
# (0.5.0 queues the rest inside itself, where they would spend --model-timeout waiting;
# 0.4.x answers them 500), so the devserver queues them instead.
DEFAULT_MODEL_CONCURRENCY = 1
# The kernel caps this at net.core.somaxconn; a burst of 1,000+ connects needs
# more than uvicorn's 2048 only beyond that, but asking costs nothing.
DEFAULT_BACKLOG = 4096
# The bytes of inputs and outputs one server keeps at most: a few dozen image-sized results, and a
# bound on its memory (Python's objects for them take several times their JSON size).
DEFAULT_MAX_HELD_BYTES = 256 * 1024 * 1024
# Seconds an idle connection is kept open, before its first request or between two. Longer than
# aiohttp's own 15 s (the triggerer's half): a server that closes first races the client's next
# request on that connection, and a Start lost in that race counts as possibly taken.
DEFAULT_KEEP_ALIVE_TIMEOUT = 20.0


@dataclass(frozen=True)
class DevServerConfig:
    """Describe how one devserver process is launched; fixed for the life of the process.

    :param host: address to bind.
    :param port: port to bind; 0 picks a free one.
    :param start_hold: seconds a Start without ``startOnly`` waits for the result.
    :param check_hold: seconds a long-poll Check waits for the call to finish.
    :param result_ttl: seconds a finished or failed call is kept before it is forgotten (sooner
        when ``max_held_bytes`` needs the room).
    :param max_held_bytes: the most bytes of inputs (request bodies of calls not yet finished) and
        outputs (encoded, of finished calls kept for ``result_ttl``) the server keeps; 0 for no cap.
    :param replicas: calls of one model that may run at once (workers per model).
    :param external_models: model key to base URL of an external model server.
    :param quirk_empty_message: answer finished Starts with empty ``message`` and ``callID``.
    :param api_key: the only accepted apiKey, or None to accept any.
    :param admin_token: the bearer token the admin API requires, or None; see :func:`admin_mode`.
    :param model_timeout: seconds allowed for one request to an external model server, counted
        from when it is sent (a call waiting for its turn at the server is not yet sent).
    :param model_concurrency: requests each external model server gets at once; 0 for no limit
        beyond ``replicas``. Models whose URLs share ``scheme://host:port`` are one server and
        share the limit.
    :param model_concurrency_by_key: the limit of the server of one external model key, overriding
        ``model_concurrency`` for that server (and every other key on it).
    :param log_level: logging level name.
    :param access_log: keep uvicorn's per-request access log.
    :param backlog: listen backlog of the server socket.
    :param http: uvicorn HTTP implementation (``auto``, ``httptools`` or ``h11``).
    :param loop: uvicorn event loop (``auto``, ``uvloop`` or ``asyncio``).
    :param keep_alive_timeout: seconds an idle connection is kept open, before its first request
        or between two (a held request is not idle).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    start_hold: float = DEFAULT_START_HOLD
    check_hold: float = DEFAULT_CHECK_HOLD
    result_ttl: float = DEFAULT_RESULT_TTL
    max_held_bytes: int = DEFAULT_MAX_HELD_BYTES
    replicas: int = DEFAULT_REPLICAS
    external_models: Mapping[str, str] = field(default_factory=dict)
    quirk_empty_message: bool = False
    api_key: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    model_timeout: float = DEFAULT_MODEL_TIMEOUT
    model_concurrency: int = DEFAULT_MODEL_CONCURRENCY
    model_concurrency_by_key: Mapping[str, int] = field(default_factory=dict)
    log_level: str = "info"
    access_log: bool = False
    backlog: int = DEFAULT_BACKLOG
    http: str = "auto"
    loop: str = "auto"
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("start_hold", "check_hold", "result_ttl", "model_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        if not math.isfinite(self.keep_alive_timeout) or self.keep_alive_timeout <= 0:
            raise ValueError("keep_alive_timeout must be a finite number > 0")
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if self.max_held_bytes < 0:
            raise ValueError("max_held_bytes must be >= 0 (0: no cap)")
        if self.model_concurrency < 0 or any(limit < 0 for limit in self.model_concurrency_by_key.values()):
            raise ValueError("model concurrency must be >= 0 (0: no limit)")
        unknown = sorted(set(self.model_concurrency_by_key) - set(self.external_models))
        if unknown:
            raise ValueError(f"model concurrency given for {', '.join(unknown)}, which no external model has as key")
        self.model_servers()  # refuses two different limits for one server
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.admin_token is not None and not self.admin_token:
            raise ValueError("admin_token must not be empty")

    def model_servers(self) -> dict[str, ModelServerLimit]:
        """Group the external models by the server they are on, with each server's concurrency limit.

        :return: ``scheme://host:port`` to its limit and keys, in the order the keys were given.
        :raises ValueError: when two keys on one server were given different limits.
        """
        servers: dict[str, ModelServerLimit] = {}
        chosen: dict[str, tuple[str, int]] = {}
        for key, url in self.external_models.items():
            origin = model_server_origin(url)
            server = servers.setdefault(origin, ModelServerLimit(self.model_concurrency))
            server.keys.append(key)
            if key in self.model_concurrency_by_key:
                limit = self.model_concurrency_by_key[key]
                earlier = chosen.setdefault(origin, (key, limit))
                if earlier[1] != limit:
                    raise ValueError(
                        f"models {earlier[0]} and {key} are on one server ({origin}) but were given "
                        f"different concurrency limits ({earlier[1]} and {limit})"
                    )
                server.limit = limit
        return servers


@dataclass
class ModelServerLimit:
    """How many requests one external model server gets at once, and the model keys it serves.

    :param limit: requests at once; 0 for no limit.
    :param keys: the external model keys whose URLs are on this server.
    """

    limit: int
    keys: list[str] = field(default_factory=list)


def model_server_origin(url: str) -> str:
    """Name the server a model URL is on: ``scheme://host:port``, the port made explicit.

    :param url: an external model's URL.
    :return: e.g. ``http://127.0.0.1:8000`` for ``http://127.0.0.1:8000/sleep``.
    :raises ValueError: on a URL without a host or with a bad port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not host:
        raise ValueError(f"model URL {url!r} has no host")
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Tell whether an address to bind reaches only this machine.

    ``localhost`` and addresses in 127.0.0.0/8 or ``::1`` (also IPv4-mapped, bracketed or
    with a zone) are loopback; anything else, including an empty host (every interface)
    and any other host name, is not.

    :param host: an IP address or host name, as given to ``--host`` or read from the bound socket.
    :return: True only for a loopback address.
    """
    name = host.strip().removeprefix("[").removesuffix("]").partition("%")[0]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def admin_mode(host: str, token: str | None) -> AdminMode:
    """Decide how the admin API is exposed.

    A token always turns it on behind ``Authorization: Bearer <token>``; without one it is
    open on a loopback address and off (404) on any other, so that nobody on the network can
    reset the server or arm its faults.

    :param host: the address the server binds.
    :param token: the admin token, or None (an empty one counts as None).
    :return: ``token``, ``open`` or ``off``.
    """
    if token:
        return "token"
    return "open" if is_loopback(host) else "off"


@dataclass
class Settings:
    """Hold the knobs the admin API may change while the server runs.

    :param start_hold: seconds a Start without ``startOnly`` waits for the result.
    :param check_hold: seconds a long-poll Check waits for the call to finish.
    :param result_ttl: seconds a finished or failed call is kept.
    :param quirk_empty_message: answer finished Starts with empty ``message`` and ``callID``.
    """

    start_hold: float
    check_hold: float
    result_ttl: float
    quirk_empty_message: bool

    @classmethod
    def from_config(cls, config: DevServerConfig) -> Settings:
        """Take the launch values of the run-time settings.

        :param config: the launch configuration.
        :return: fresh settings.
        """
        return cls(
            start_hold=config.start_hold,
            check_hold=config.check_hold,
            result_ttl=config.result_ttl,
            quirk_empty_message=config.quirk_empty_message,
        )

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update after validating all of it, so a bad field changes nothing.

        :param changes: field name to new value.
        :raises ValueError: on an unknown field or a value of the wrong type or range.
        """
        known = {f.name for f in dataclasses.fields(self)}
        validated: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(known)}")
            if name == "quirk_empty_message":
                if not isinstance(value, bool):
                    raise ValueError("quirk_empty_message must be a boolean")
            elif (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0")
            validated[name] = value
        for name, value in validated.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return dataclasses.asdict(self)
