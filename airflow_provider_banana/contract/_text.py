"""Bound and shorten the texts taken from a reply, for exceptions, logs and events."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_banana.redact import Redactor

#: The longest text of a reply kept in an exception or event (Banana's own messages are short).
MAX_MESSAGE_LENGTH = 2000


MAX_DETAIL = 300


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


#: The most of a body looked at for an error's excerpt.
EXCERPT_WINDOW = 64 * 1024


_LAST_RUN = re.compile(r"\s\S*\Z")


def cut(text: str, length: int) -> str:
    # The cut may fall inside the key (in some encoding): a key has no whitespace, so dropping the
    # last run of non-space characters drops any part of it that the cut left.
    text = text[:length]
    if not text[-1:].strip():
        return text
    last_run = _LAST_RUN.search(text)
    return text[: last_run.start()] if last_run else ""


def excerpt(raw: bytes, redact: Redactor, *, truncated: bool = False) -> str:
    text = raw[:EXCERPT_WINDOW].decode("utf-8", "replace")
    if truncated or len(raw) > EXCERPT_WINDOW:
        text = cut(text, len(text))
    # Masked before it is shortened, so that shortening cannot leave part of the key behind a mask.
    return shorten(redact(text))


def server_text(text: str, redact: Redactor, length: int = MAX_MESSAGE_LENGTH) -> str:
    # A server's text bound for an exception, a log line or an event: bounded first (masking a
    # megabyte of text is work a server should not be able to make us do at every Check), masked,
    # then clipped.
    if len(text) > 4 * length:
        text = cut(text, 4 * length)
    text = redact(text)
    return text if len(text) <= length else text[: length - 3] + "..."


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
