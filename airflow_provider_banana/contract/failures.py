"""Turn a transport failure, as the I/O layer saw it, into our exception."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from airflow_provider_banana.contract._text import describe_error, shorten
from airflow_provider_banana.contract.wire import START
from airflow_provider_banana.exceptions import (
    BananaConfigError,
    BananaConnectError,
    BananaResponseLostError,
    BananaTransportError,
)

if TYPE_CHECKING:
    from airflow_provider_banana.redact import Redactor


class TransportFailure(enum.Enum):
    """What went wrong below HTTP, as the I/O layer saw it; decides whether the request was taken."""

    #: Refused, DNS failure, TLS handshake failure: nothing reached the server.
    CONNECT = "could not connect"
    #: No connection within the connect timeout: nothing reached the server.
    CONNECT_TIMEOUT = "timed out connecting"
    #: No free connection in the client's own pool: nothing was sent.
    POOL_TIMEOUT = "timed out waiting for a free connection"
    #: Sent, and no whole answer within the request's time (however slowly the bytes came).
    READ_TIMEOUT = "sent, but no whole answer within the request's time limit"
    #: Sent, and the connection broke before the whole answer arrived.
    CONNECTION_LOST = "sent, but the connection broke before the whole answer arrived"
    #: Anything else: assume the request may have been taken.
    OTHER = "failed"


_NOT_SENT = {TransportFailure.CONNECT, TransportFailure.CONNECT_TIMEOUT, TransportFailure.POOL_TIMEOUT}


def transport_error(
    failure: TransportFailure,
    *,
    endpoint: str,
    detail: str = "",
    call_id: str | None = None,
    redactor: Redactor | None = None,
) -> BananaTransportError:
    """
    Return our exception for a transport failure.

    :param failure: what the I/O layer saw.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param detail: the library's own words. They may quote bytes the server sent (a malformed
        header line, say), so the key is masked in them.
    :param call_id: the call a Check was about.
    :param redactor: masks the key in ``detail``.
    """
    if detail and redactor is not None:
        detail = redactor(detail)
    text = failure.value + (f" ({shorten(detail)})" if detail else "")
    if failure in _NOT_SENT:
        return BananaConnectError(text, endpoint=endpoint, call_id=call_id)
    if endpoint == START:
        text += "; the Start may have been taken and billed, so it is not sent again"
    return BananaResponseLostError(text, endpoint=endpoint, call_id=call_id)


def unusable_url(detail: str, *, redactor: Redactor | None = None) -> BananaConfigError:
    """
    Return the error for a base URL that the HTTP library refused before sending anything.

    :func:`validate_base_url` rejects what it can see; this covers what only the library knows
    (an unencodable host name, say). Nothing was sent, so nothing was billed.

    :param detail: the library's own words.
    :param redactor: masks the key in ``detail``.
    """
    if redactor is not None:
        detail = redactor(detail)
    return BananaConfigError(
        f"The Banana connection's host is not a URL the HTTP client can use ({shorten(detail)}); nothing was sent"
    )


def unexpected_transport_error(
    error: BaseException, *, endpoint: str, call_id: str | None = None, redactor: Redactor | None = None
) -> BananaTransportError:
    """
    Return our exception for anything else the HTTP library raised while sending or reading.

    The provider raises only its own errors, and not knowing what happened means the request may
    have been taken: a Start is reported as possibly billed, never sent again.

    :param error: what the library raised.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param call_id: the call a Check was about.
    :param redactor: masks the key in the library's words.
    """
    return transport_error(
        TransportFailure.OTHER, endpoint=endpoint, detail=describe_error(error), call_id=call_id, redactor=redactor
    )
