"""
Keep the API key out of every text the provider lets out, in whatever encoding a server echoed it.

A server, or a gateway in front of it, may echo the request body (``apiKey`` included) in an error
message, a status line or a non-JSON error page, and not always verbatim: JSON encoders escape
``/`` as ``\\/`` and any character as ``\\u00XX``, HTML pages use ``&#43;``, URL-encoded forms
``%2B``, some echo it upper-cased, base64- or hex-encoded. A :class:`Redactor` finds the key in all
of these and replaces it with ``***``.

It is applied to the strings that leave the provider (exception texts, log lines, trigger event
messages, ``test_connection`` messages), never to a reply before it is parsed and never to a call's
``modelOutputs``: those are the result, returned exactly as the server sent them. No I/O here.
"""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import unquote

#: What stands in for the key.
MASK = "***"
#: Keys shorter than this are placeholders (``x``, ``test``): still scrubbed from texts, but their
#: base64 and hex forms are too short to look for without masking random text, and a callID that
#: happens to contain one is no leak.
MIN_SECRET_LENGTH = 8
# Rounds of unescaping: enough for an escape inside an escape (a JSON string holding HTML), bounded
# so that a hostile text cannot make it loop.
_MAX_ROUNDS = 3
_JSON_ESCAPE = re.compile(r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\(.)")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", '"': '"', "\\": "\\"}


def _json_unescape(match: re.Match[str]) -> str:
    high, low, single, simple = match.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if single is not None:
        return chr(int(single, 16))
    return _SIMPLE_ESCAPES.get(simple, match.group(0))


def _unescape(text: str) -> str:
    # One round of every escaping a server may apply to text it echoes.
    text = _JSON_ESCAPE.sub(_json_unescape, text) if "\\" in text else text
    text = html.unescape(text) if "&" in text else text
    return unquote(text) if "%" in text else text


class Redactor:
    """
    Find and mask one secret in texts, in every form a server may echo it.

    :param secret: the API key; ``None`` or ``""`` makes a redactor that changes nothing.
    """

    def __init__(self, secret: str | None) -> None:
        self._pattern: re.Pattern[str] | None = None
        self._length = len(secret or "")
        if not secret:
            return
        forms = {secret}
        if len(secret) >= MIN_SECRET_LENGTH:
            raw = secret.encode()
            forms.add(raw.hex())
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                forms.add(encode(raw).decode().rstrip("="))
        # Longest first, so that a form containing another is masked whole.
        alternatives = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
        self._pattern = re.compile(alternatives, re.IGNORECASE)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'***' if self._pattern else None})"

    def contains(self, text: str) -> bool:
        """
        Return whether ``text`` holds the secret in any form.

        :param text: any text.
        """
        if self._pattern is None:
            return False
        for _ in range(_MAX_ROUNDS + 1):
            if self._pattern.search(text):
                return True
            decoded = _unescape(text)
            if decoded == text:
                return False
            text = decoded
        return bool(self._pattern.search(text))

    def __call__(self, text: str) -> str:
        """
        Return ``text`` with every form of the secret masked.

        A text without the secret comes back unchanged. One that had it comes back masked and, where
        the secret was hidden behind escapes, unescaped (the escapes are what hid it).

        :param text: any text bound for an exception, a log line or an event.
        """
        if self._pattern is None or not self.contains(text):
            return text
        for _ in range(_MAX_ROUNDS + 1):
            text = self._pattern.sub(MASK, text)
            decoded = _unescape(text)
            if decoded == text:
                break
            text = decoded
        text = self._pattern.sub(MASK, text)
        if self.contains(text):  # an encoding deeper than the rounds allow: say nothing of it
            return "(withheld: it contains the API key)"
        return text

    def call_id_leaks(self, call_id: str) -> bool:
        """
        Return whether a callID from a reply carries the secret (a server echoing the body).

        A placeholder key shorter than :data:`MIN_SECRET_LENGTH` is no secret worth refusing a
        reply for, and would match ordinary ids.

        :param call_id: the callID a reply gave.
        """
        return self._length >= MIN_SECRET_LENGTH and self.contains(call_id)


#: Changes nothing: for texts built where no key is known.
NO_SECRET = Redactor(None)
