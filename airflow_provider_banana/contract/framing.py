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
from collections.abc import Iterable

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
