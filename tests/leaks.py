"""
Look for the API key in texts, in every encoding the hostile-server tests make a server echo it in.

A helper module shared by the hostile-server and property tests (test modules never import each
other). The search here is independent of the provider's own ``Redactor``: each form is written
out by the standard library's encoders.
"""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote

#: A key with characters that JSON, URL and HTML encoders all escape.
KEY = "sk-live/9f+Qa=é7Zx&<k>"


def key_forms(key: str = KEY) -> dict[str, str]:
    """Return the key in every encoding the tests make a server echo it in."""
    return {
        "raw": key,
        "json \\/": key.replace("/", "\\/"),
        "json \\u": "".join(f"\\u{ord(c):04x}" for c in key),
        "json ascii": json.dumps(key)[1:-1],
        "url": quote(key, safe=""),
        "html": html.escape(key),
        "html numeric": "".join(f"&#{ord(c)};" for c in key),
        "upper": key.upper(),
        "base64": base64.b64encode(key.encode()).decode(),
    }


def assert_no_key(*texts: str) -> None:
    """Assert that no text holds the key in any form :func:`key_forms` knows."""
    for text in texts:
        for name, form in key_forms().items():
            assert form.lower() not in text.lower(), f"key ({name}) in {text!r}"


def error_texts(error: BaseException) -> list[str]:
    """Return every text an exception carries: its str, its repr and its attributes."""
    return [str(error), repr(error), *(str(value) for value in vars(error).values())]
