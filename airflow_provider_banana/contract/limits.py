"""Set how long one request may take and how large its reply may be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from airflow_provider_banana.contract.validation import number_from_extra, validate_count, validate_seconds
from airflow_provider_banana.contract.wire import CHECK, START

#: Default largest reply body, after decompression: real image outputs fit, a runaway body does not.
DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024


#: The smallest ``max_reply_bytes`` accepted: any Banana reply at all needs a few hundred bytes.
MIN_MAX_REPLY_BYTES = 1024


@dataclass(frozen=True)
class BananaTimeouts:
    """
    The client's request timeouts, derived from how long the server holds requests.

    Banana holds a Start up to ~60 s and a long-poll Check up to 50 s; a self-hosted server may
    hold for other times. Each field can be set in the connection's extra under its own name.

    :param start_hold: longest time the server holds a Start that waits for its result.
    :param check_hold: longest time the server holds a long-poll Check.
    :param read_margin: added to a hold to get the read timeout: the answer must have time to
        arrive after the hold ends, or every long poll that comes back "running" would look lost.
    :param quick_read: read timeout of a request the server does not hold.
    :param connect_timeout: time allowed to open a connection.
    """

    start_hold: float = 60.0
    check_hold: float = 50.0
    read_margin: float = 15.0
    quick_read: float = 30.0
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in _TIMEOUT_FIELDS:
            validate_seconds(name, getattr(self, name))

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> BananaTimeouts:
        """
        Return the timeouts a connection's extra sets, defaults elsewhere.

        :param extra: the connection's extra, as a dict; numbers may be strings (a URI connection's are).
        :raises BananaConfigError: a value that is not a positive number of seconds, or is absurdly large.
        """
        return cls(
            **{name: number_from_extra(name, extra[name]) for name in _TIMEOUT_FIELDS if extra.get(name) is not None}
        )

    def for_request(self, endpoint: str, *, waits: bool, remaining: float | None = None) -> RequestBudget:
        """
        Return the time one request may take: to connect, and in all, from sending to the last byte.

        The whole-request limit is the point: a server that trickles one byte a second satisfies
        any per-read timeout forever, so the I/O layers hold a request to ``total`` however the
        bytes arrive.

        :param endpoint: :data:`START` or :data:`CHECK`.
        :param waits: the server may hold the request (a Start without startOnly, a long-poll Check).
        :param remaining: seconds left before the caller's deadline. A Check's limits are cut to it,
            since nothing is lost by abandoning a Check; a Start's never are, since its answer
            carries the only copy of the callID of a call already billed.
        """
        if not waits:
            total = self.quick_read
        else:
            total = (self.start_hold if endpoint == START else self.check_hold) + self.read_margin
        connect = self.connect_timeout
        if endpoint == CHECK and remaining is not None:
            total = max(min(total, remaining), 0.1)
            connect = min(connect, total)
        return RequestBudget(connect=connect, total=total)


_TIMEOUT_FIELDS = ("start_hold", "check_hold", "read_margin", "quick_read", "connect_timeout")


class RequestBudget(NamedTuple):
    """
    The time limits of one request, as :meth:`BananaTimeouts.for_request` sets them.

    :ivar connect: seconds to open a connection.
    :ivar total: seconds from sending the request to the last byte of its answer.
    """

    connect: float
    total: float


def max_reply_bytes_from_extra(extra: Mapping[str, Any]) -> int:
    """
    Return the largest reply body a connection accepts, after decompression, in bytes.

    :param extra: the connection's extra; ``max_reply_bytes`` may be a number or a string.
    :raises BananaConfigError: not a whole number of at least :data:`MIN_MAX_REPLY_BYTES`.
    """
    value = extra.get("max_reply_bytes")
    if value is None:
        return DEFAULT_MAX_REPLY_BYTES
    return validate_count("max_reply_bytes", number_from_extra("max_reply_bytes", value), minimum=MIN_MAX_REPLY_BYTES)
