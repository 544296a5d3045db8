"""
Turn a transport failure, as the I/O layer saw it, into our exception.

A failure below HTTP (no connection, a lost answer, an untrusted certificate), or a reply that came
but could not be read: larger than ``max_reply_bytes``, undecodable, or not well-formed HTTP.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from airflow_provider_banana.contract._text import describe_error, shorten, size_text
from airflow_provider_banana.contract.wire import START
from airflow_provider_banana.exceptions import (
    BananaCertificateError,
    BananaConfigError,
    BananaConnectError,
    BananaProtocolError,
    BananaReplyTooLargeError,
    BananaResponseLostError,
    BananaTransportError,
)

if TYPE_CHECKING:
    from airflow_provider_banana.contract.network import BananaNetwork
    from airflow_provider_banana.redact import Redactor


class TransportFailure(enum.Enum):
    """What went wrong below HTTP, as the I/O layer saw it; decides whether the request was taken."""

    #: Refused, DNS failure, TLS handshake failure: nothing reached the server.
    CONNECT = "could not connect"
    #: The proxy refused the connection, was unreachable, or would not open a tunnel: nothing was sent.
    PROXY = "could not connect through the proxy"
    #: The server's TLS certificate failed verification: nothing was sent, and a retry fails alike.
    UNTRUSTED_CERTIFICATE = "the server's TLS certificate is not trusted"
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


_NOT_SENT = {
    TransportFailure.CONNECT,
    TransportFailure.PROXY,
    TransportFailure.UNTRUSTED_CERTIFICATE,
    TransportFailure.CONNECT_TIMEOUT,
    TransportFailure.POOL_TIMEOUT,
}

#: What every error of a Start that the server may have taken says, in one place: a lost answer, a
#: garbled or oversized reply, a 5xx that is not a refusal. A person reads the same words each time.
START_MAY_BE_TAKEN = "the Start may have been taken and billed, so it is not sent again"
#: What a task killed while its calls run says of them.
NO_CANCEL = "Banana v4 has no cancel endpoint: the call runs on and is billed"


def note_start_taken(endpoint: str, text: str) -> str:
    """
    Return ``text``, followed by :data:`START_MAY_BE_TAKEN` when it is about a Start.

    :param endpoint: :data:`START` or :data:`CHECK` (a Check is free, so it is said of a Start only).
    :param text: the error's words.
    """
    return f"{text}; {START_MAY_BE_TAKEN}" if endpoint == START else text


def transport_error(
    failure: TransportFailure,
    *,
    endpoint: str,
    detail: str = "",
    call_id: str | None = None,
    redactor: Redactor | None = None,
    network: BananaNetwork | None = None,
) -> BananaTransportError:
    """
    Return our exception for a transport failure.

    :param failure: what the I/O layer saw.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param detail: the library's own words. They may quote bytes the server sent (a malformed
        header line, say), so the key is masked in them.
    :param call_id: the call a Check was about.
    :param redactor: masks the key in ``detail``.
    :param network: how the request went: names the proxy and the trusted CAs in the text, and masks
        the proxy's credentials in ``detail``.
    """
    if detail and network is not None:
        detail = network.scrub(detail)
    if detail and redactor is not None:
        detail = redactor(detail)
    if failure is TransportFailure.UNTRUSTED_CERTIFICATE:
        return untrusted_certificate(detail, endpoint=endpoint, call_id=call_id, network=network)
    what = failure.value
    if failure is TransportFailure.PROXY and network is not None and network.proxy is not None:
        what = f"{what} {network.proxy_shown} (from {network.proxy_source})"
    text = what + (f" ({shorten(detail)})" if detail else "")
    if failure in _NOT_SENT:
        return BananaConnectError(text, endpoint=endpoint, call_id=call_id)
    return BananaResponseLostError(note_start_taken(endpoint, text), endpoint=endpoint, call_id=call_id)


def untrusted_certificate(
    detail: str, *, endpoint: str, call_id: str | None = None, network: BananaNetwork | None = None
) -> BananaCertificateError:
    """
    Return the error for a server whose TLS certificate failed verification, with what to do about it.

    Nothing was sent, and the same certificate would fail again: never retried (see :mod:`.retries`).

    :param detail: the verification's own words (``certificate verify failed: ...``).
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param call_id: the call a Check was about.
    :param network: which CA certificates were trusted.
    """
    trusted = network.trusted() if network is not None else "the default CA bundle"
    return BananaCertificateError(
        f"{TransportFailure.UNTRUSTED_CERTIFICATE.value} ({shorten(detail)}); nothing was sent, and it is not "
        f"retried. Trusted now: {trusted}. If a private CA signed the server's certificate, set the connection "
        "extra 'ca_bundle' (or REQUESTS_CA_BUNDLE or SSL_CERT_FILE in the environment) to its PEM file",
        endpoint=endpoint,
        call_id=call_id,
    )


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
    error: BaseException,
    *,
    endpoint: str,
    call_id: str | None = None,
    redactor: Redactor | None = None,
    network: BananaNetwork | None = None,
) -> BananaTransportError:
    """
    Return our exception for anything else the HTTP library raised while sending or reading.

    The provider raises only its own errors, and not knowing what happened means the request may
    have been taken: a Start is reported as possibly billed, never sent again.

    :param error: what the library raised.
    :param endpoint: :data:`START` or :data:`CHECK`.
    :param call_id: the call a Check was about.
    :param redactor: masks the key in the library's words.
    :param network: masks the proxy's credentials in the library's words.
    """
    return transport_error(
        TransportFailure.OTHER,
        endpoint=endpoint,
        detail=describe_error(error),
        call_id=call_id,
        redactor=redactor,
        network=network,
    )


def reply_too_large(endpoint: str, limit: int, *, call_id: str | None = None) -> BananaReplyTooLargeError:
    """
    Return the error for a reply whose body, decompressed, passed ``max_reply_bytes``.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param limit: the limit, in bytes.
    :param call_id: the call a Check was about.
    """
    text = (
        f"the reply is larger than max_reply_bytes ({size_text(limit)}), so it was not read to the end; "
        "if the model's outputs really are that large, raise 'max_reply_bytes' in the connection's extra"
    )
    return BananaReplyTooLargeError(note_start_taken(endpoint, text), endpoint=endpoint, call_id=call_id, limit=limit)


def undecodable_reply(endpoint: str, detail: str, *, call_id: str | None = None) -> BananaProtocolError:
    """
    Return the error for a reply whose ``Content-Encoding`` (gzip, deflate ...) could not be undone.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param detail: the HTTP library's words.
    :param call_id: the call a Check was about.
    """
    text = f"the reply's compressed body could not be decoded ({shorten(detail)})"
    return BananaProtocolError(note_start_taken(endpoint, text), endpoint=endpoint, call_id=call_id)


def malformed_reply(endpoint: str, problem: str, *, call_id: str | None = None) -> BananaProtocolError:
    """
    Return the error for a reply whose head is not well-formed HTTP (see :func:`.framing.framing_problem`).

    A Check is retried (the next answer may be well-formed); a Start is not: it may have been taken.

    :param endpoint: :data:`START` or :data:`CHECK`.
    :param problem: what is wrong, the key already masked in it.
    :param call_id: the call a Check was about.
    """
    text = f"the reply is not well-formed HTTP ({shorten(problem)})"
    return BananaProtocolError(note_start_taken(endpoint, text), endpoint=endpoint, call_id=call_id)
