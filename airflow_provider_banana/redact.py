"""
Keep the API key out of every text the provider lets out, in whatever encoding a server echoed it.

A server, or a gateway in front of it, may echo the request body (``apiKey`` included) in an error
message, a status line or a non-JSON error page, and not always verbatim: JSON encoders escape
``/`` as ``\\/`` and any character as ``\\u00XX``, HTML pages use ``&#43;``, URL-encoded forms
``%2B``, some echo it upper-cased, base64- or hex-encoded. A key with non-ASCII characters, echoed
raw in a header or status line, comes back as its UTF-8 bytes: escaped (``\\xc3\\xa9``, in a
``repr`` of bytes) or mis-decoded (``Ã©``, the bytes read as Latin-1 or cp1252). A
:class:`Redactor` finds the key in all of these and replaces it with ``***``.

It is applied to the strings that leave the provider (exception texts, log lines, trigger event
messages, ``test_connection`` messages), never to a reply before it is parsed and never to a call's
``modelOutputs``: those are the result, returned exactly as the server sent them. No I/O here.

The HTTP libraries write some of what a server sent into their own log records (urllib3 logs a
header line it cannot parse, verbatim). :func:`scrub_library_logs` puts a :class:`LogScrubber` on
their loggers, which masks every key a request of this process used in their records.
"""

from __future__ import annotations

import base64
import html
import logging
import re
import threading
import unicodedata
from collections import OrderedDict
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
# JSON's escapes, and Python's ``\\xNN`` (a ``repr`` of bytes or of a string shows non-ASCII bytes
# and control characters so: ``b'cl\\xc3\\xa9'``).
_ESCAPE = re.compile(
    r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|\\(.)"
)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", '"': '"', "\\": "\\"}
# The characters cp1252 puts at bytes 0x80-0x9F (Latin-1 has control characters there).
_CP1252 = {
    bytes([byte]).decode("cp1252"): byte for byte in range(0x80, 0xA0) if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}
# A run of characters that UTF-8 bytes become when read as Latin-1 or cp1252 (or as ASCII with
# Python's surrogateescape, which makes byte 0xC3 the lone surrogate U+DCC3). One non-ASCII
# character is two to four bytes, so a run shorter than two is never one.
_MOJIBAKE = re.compile("[\x80-\xff\udc80-\udcff" + "".join(_CP1252) + "]{2,}")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_CP1252_BY_BYTE = {byte: char for char, byte in _CP1252.items()}


def _escape_unescape(match: re.Match[str]) -> str:
    high, low, single, byte, simple = match.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if single is not None:
        return chr(int(single, 16))
    if byte is not None:
        return chr(int(byte, 16))  # a byte, as Latin-1: the mojibake step reads UTF-8 bytes back
    return _SIMPLE_ESCAPES.get(simple, match.group(0))


def _byte_of(char: str) -> int:
    code = ord(char)
    if code < 0x100:
        return code
    if 0xDC80 <= code <= 0xDCFF:
        return code - 0xDC00
    return _CP1252[char]


def _redecode(match: re.Match[str]) -> str:
    # Read the run's bytes back as UTF-8; bytes that are no UTF-8 (text that really was Latin-1,
    # "Ã€É") stay the characters they were.
    run = match.group(0)
    raw = bytes(_byte_of(char) for char in run)
    decoded = raw.decode("utf-8", "surrogateescape")
    if not _ESCAPED_BYTE.search(decoded):
        return decoded
    originals = {_byte_of(char): char for char in run}
    return _ESCAPED_BYTE.sub(lambda byte: originals[ord(byte.group(0)) - 0xDC00], decoded)


def _unescape(text: str) -> str:
    # One round of every escaping a server, or a library quoting it, may apply to text it echoes.
    text = _ESCAPE.sub(_escape_unescape, text) if "\\" in text else text
    text = html.unescape(text) if "&" in text else text
    text = unquote(text) if "%" in text else text
    return text if text.isascii() else _MOJIBAKE.sub(_redecode, text)


def _misread_forms(secret: str) -> set[str]:
    # What a non-ASCII key's UTF-8 bytes look like once mis-decoded or escaped, written out so that
    # they are masked in place (the unescaping in Redactor.contains finds them too, but rewrites the
    # text around them).
    raw = secret.encode("utf-8", "surrogatepass")
    latin1 = raw.decode("latin-1")
    cp1252 = "".join(_CP1252_BY_BYTE.get(byte, chr(byte)) for byte in raw)
    forms = {
        latin1,
        cp1252,
        # repr() of the Latin-1 text: its control characters (0x80-0x9F) as \x escapes.
        "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in latin1),
        # repr() of the bytes, and that inside a JSON string or another repr.
        "".join(chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}" for byte in raw),
        "".join(chr(byte) if 0x20 <= byte < 0x7F else f"\\\\x{byte:02x}" for byte in raw),
        unicodedata.normalize("NFC", secret),
        unicodedata.normalize("NFD", secret),
    }
    if sum(char.isascii() for char in secret) >= MIN_SECRET_LENGTH:
        # Read as ASCII with errors="replace": specific enough only with enough ASCII around.
        forms.add(raw.decode("ascii", "replace"))
    return forms


class Redactor:
    """
    Find and mask one secret in texts, in every form a server may echo it.

    :param secret: the API key; ``None`` or ``""`` makes a redactor that changes nothing.
    """

    def __init__(self, secret: str | None) -> None:
        self._pattern: re.Pattern[str] | None = None
        self._length = len(secret or "")
        #: No text shorter than the shortest form can hold the secret, nor can what unescaping makes
        #: of it: an unescape never lengthens a text (a server's "running" is seen at a glance).
        self._shortest = self._length
        if not secret:
            return
        forms = {secret}
        if not secret.isascii():
            forms |= _misread_forms(secret)
        if len(secret) >= MIN_SECRET_LENGTH:
            raw = secret.encode("utf-8", "surrogatepass")
            forms.add(raw.hex())
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                forms.add(encode(raw).decode().rstrip("="))
        self._shortest = min(len(form) for form in forms)
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
        if self._pattern is None or len(text) < self._shortest:
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


#: How many keys :class:`LogScrubber` remembers (the most recently used); a process uses a few.
_MAX_SCRUBBED_KEYS = 64


class LogScrubber(logging.Filter):
    """
    Mask the keys it was given in every log record that passes it: message, traceback and stack.

    Every key a request of this process used, not only the one of the request in flight: some of
    the libraries' records are written after their request ended, or in no request's context at
    all (asyncio reports a connection's failure from the event loop's own callbacks, or when the
    garbage collector finds it). A record without a key passes unchanged; one with a key passes
    masked, formatted (its ``args`` merged into its message, its traceback into ``exc_text``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._redactors: OrderedDict[Redactor, None] = OrderedDict()
        self._newest: Redactor | None = None
        self._lock = threading.Lock()

    def remember(self, redactor: Redactor) -> None:
        """
        Mask ``redactor``'s key from now on.

        :param redactor: a key's redactor.
        """
        # A placeholder key (``x``, ``test``) would mask every "x" and "test" in every record of
        # every connection of the process, for a key that guards nothing (Airflow's own masker skips
        # secrets under 5 characters for the same reason); the provider's own texts still mask it.
        if redactor is self._newest or redactor._pattern is None or redactor._length < MIN_SECRET_LENGTH:
            return  # already the most recent (every request of a connection says it again), or no secret
        with self._lock:
            self._redactors[redactor] = None
            self._redactors.move_to_end(redactor)
            self._newest = redactor
            while len(self._redactors) > _MAX_SCRUBBED_KEYS:
                self._redactors.popitem(last=False)

    def _mask(self, text: str) -> str:
        with self._lock:  # another thread's request may be adding a key
            redactors = tuple(self._redactors)
        for redactor in redactors:
            text = redactor(text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """
        Mask the keys in ``record``; keep every record.

        :param record: a log record of one of the watched loggers.
        """
        if not self._redactors:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format: logging reports it itself, with the record's own text
            return True
        masked = self._mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        traceback = record.exc_text
        if record.exc_info and not traceback:
            traceback = logging.Formatter().formatException(record.exc_info)
        if traceback:
            masked = self._mask(traceback)
            if masked != traceback:
                # Without exc_info, a formatter can only show the masked text, not render the key anew.
                record.exc_info, record.exc_text = None, masked
        if record.stack_info:
            record.stack_info = self._mask(record.stack_info)
        return True


_SCRUBBER = LogScrubber()
_scrubbed_loggers_seen = -1
_scrub_lock = threading.Lock()


def scrub_library_logs(prefixes: tuple[str, ...], redactor: Redactor) -> None:
    """
    Mask ``redactor``'s key in the records of the loggers named ``prefixes`` and of their children.

    Cheap enough to call before every request: the loggers are looked over again only when new
    ones were made since. A filter on a logger sees only the records that logger makes (not those
    its children pass up), hence one on each.

    :param prefixes: top-level logger names (``"urllib3"``, ``"aiohttp"``).
    :param redactor: the key's redactor.
    """
    global _scrubbed_loggers_seen
    _SCRUBBER.remember(redactor)
    manager = logging.Logger.manager
    if len(manager.loggerDict) == _scrubbed_loggers_seen:
        return
    with _scrub_lock:
        for prefix in prefixes:
            logging.getLogger(prefix)
        loggers = list(manager.loggerDict.items())
        for name, logger in loggers:
            if isinstance(logger, logging.Logger) and name.split(".", 1)[0] in prefixes:
                logger.addFilter(_SCRUBBER)  # idempotent: a filter already there is not added twice
        _scrubbed_loggers_seen = len(loggers)
