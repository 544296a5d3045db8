"""
Decide whether a reply's head is well-formed HTTP/1.1 that frames its body one way only.

The two halves' HTTP libraries differ in what they forgive: ``http.client`` reads ``Content-Length:
abc`` as "until the connection closes", skips a header line without a colon (and every header after
it), and takes the first of two lengths, where aiohttp's parser refuses each of them. A reply whose
body boundaries are ambiguous is where answers get mixed up (request smuggling lives there), so
both halves refuse the same heads, with the same error: :func:`framing_problem` is applied to the
head each library read, and what a library refuses by itself is reported through
:func:`.failures.malformed_reply` too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from airflow_provider_banana.contract._text import shorten

# RFC 9110 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def framing_problem(headers: Iterable[tuple[str, str]]) -> str | None:
    """
    Return what is wrong with a reply's head, or ``None`` if its body's length is unambiguous.

    Refused: a field name that is not a token; a value folded onto the next line (obs-fold); a
    ``Content-Length`` that is not one run of digits, or given more than once (even twice alike:
    aiohttp refuses that too); ``Content-Length`` together with ``Transfer-Encoding``; and any
    ``Transfer-Encoding`` but plain ``chunked`` (the client asks for no transfer coding, so
    ``gzip, chunked``, ``chunked, chunked`` or an unknown coding are codings it cannot undo).

    :param headers: the head's fields in order, as the HTTP library read them (names as sent).
    """
    lengths: list[str] = []
    codings: list[str] = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name):  # a space before the colon included (RFC 9112 5.1)
            return "a header field name that is not a token"
        if "\r" in value or "\n" in value:
            return f"the header {name} is folded onto the next line (obs-fold)"
        if name.lower() == "content-length":
            lengths.extend(part.strip() for part in value.split(","))
        elif name.lower() == "transfer-encoding":
            codings.extend(part.strip().lower() for part in value.split(","))
    if codings and lengths:
        return "both Content-Length and Transfer-Encoding"
    if codings and codings != ["chunked"]:
        return f"Transfer-Encoding {shorten(', '.join(codings))!r}: only plain 'chunked' is read"
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not (lengths[0].isascii() and lengths[0].isdigit()):
        return f"Content-Length {shorten(lengths[0])!r} is not a number"
    return None


_TOKEN_BYTES = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def framing_problem_of_raw(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """
    Return :func:`framing_problem` of a head read as bytes (aiohttp's ``raw_headers``).

    The usual head (token names, no folded value, one ``Content-Length`` of digits or one plain
    ``chunked``) is accepted without decoding a byte, since the async half reads one at every
    Check; anything else goes, decoded as Latin-1, to :func:`framing_problem`, which decides and words it.

    :param headers: the head's fields in order, names as sent.
    """
    lengths = codings = 0
    for name, value in headers:
        if not _TOKEN_BYTES.fullmatch(name) or b"\r" in value or b"\n" in value:
            break
        if len(name) == 14 and name.lower() == b"content-length":
            lengths += 1
            if lengths > 1 or not value.strip().isdigit():
                break
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            codings += 1
            if codings > 1 or value.strip().lower() != b"chunked":
                break
    else:
        if not (lengths and codings):
            return None
    return framing_problem((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)
