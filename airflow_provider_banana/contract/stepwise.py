"""
Parse and write large JSON in short steps, so that the thread doing it lets an event loop run between them.

``json.loads`` is one C call: it holds the interpreter's lock (the GIL) from the first byte to the
last, about a second for 64 MiB of small records, and an event loop in another thread of the process
(the triggerer's) stands still all that time, thread or no thread. Here the same C scanner parses
the body a piece at a time: every value that fits in a window of :data:`STEP` characters in one call,
a larger array or object element by element, a larger string a window at a time. No call holds the
lock for more than a window's worth of work (a few milliseconds), and Python switches threads
between two calls.

The result is exactly what ``json.loads`` gives: the leaves come from the same C scanner, containers
are filled in document order (a repeated key keeps its last value, as there), and a body this path
cannot take, or finds malformed, is handed to :func:`.depth.load_json` whole, which then gives its
own result or raises its own error. :func:`dumps_in_steps` is the same for ``json.dumps``.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]  # public in CPython, not in typeshed
from typing import Any

from airflow_provider_banana.contract.depth import MAX_JSON_DEPTH, load_json, value_depth

#: Characters one C call may parse: a few milliseconds of work, the longest a step holds the GIL.
STEP = 128 * 1024
#: Bytes decoded to text in one call.
_DECODE_STEP = 1024 * 1024
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LOW_SURROGATE_ESCAPE = re.compile(r"\\u[dD][c-fC-F]")
#: What may follow the part of a number that a window cut: more of the number.
_NUMBER_TAIL = frozenset("0123456789.eE+-")
#: The longest run of backslashes looked through when cutting a string between two escapes.
_BACKSLASH_RUN_LIMIT = 64


class _NotStepwise(Exception):
    """The body is not one this path takes: :func:`.depth.load_json` parses it whole."""


def loads_in_steps(
    raw: bytes,
    *,
    parse_int: Callable[[str], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
    step: int = STEP,
) -> Any:
    """
    Return what :func:`.depth.load_json` returns for ``raw``, computed in short steps.

    That is ``json.loads(raw, ...)`` for a document nested at most :data:`.MAX_JSON_DEPTH` deep;
    a deeper one, or one that is not JSON, goes to :func:`.depth.load_json` whole, which raises.

    :param raw: the JSON document, as bytes (UTF-8, with or without a byte-order mark, as
        ``json.loads`` detects it; other encodings are parsed by ``json.loads`` in one call).
    :param parse_int: as for ``json.loads``.
    :param parse_constant: as for ``json.loads`` (``NaN``, ``Infinity``, ``-Infinity``).
    :param step: characters one C call may parse (tests make it small to take every path).
    :raises ValueError: what :func:`.depth.load_json` raises for the same bytes
        (``JsonTooDeepError``, ``JSONDecodeError``, ``UnicodeDecodeError``).
    """
    decoder = json.JSONDecoder(parse_int=parse_int, parse_constant=parse_constant)
    try:
        return _Steps(_decode(raw, step), decoder, max(step, 64)).document()
    except (_NotStepwise, ValueError, IndexError, StopIteration, RecursionError):
        # Whatever stopped the steps (a malformed body, an encoding other than UTF-8, nesting near
        # the limit, an input this path does not cut well), load_json decides, in one call: its
        # result or its own error, never ours. Rare, and for malformed bodies only slow, not wrong.
        return load_json(raw, parse_int=parse_int, parse_constant=parse_constant)


def _decode(raw: bytes, step: int) -> str:
    encoding = json.detect_encoding(raw)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise _NotStepwise(encoding)
    # As json.loads decodes bytes: surrogatepass, and a UTF-8 byte-order mark dropped.
    decoder = codecs.getincrementaldecoder(encoding)("surrogatepass")
    view = memoryview(raw)
    size = max(step, _DECODE_STEP)
    parts = [decoder.decode(view[i : i + size]) for i in range(0, len(raw), size)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


class _Steps:
    """
    Walk one document: small values in one C call each, large containers and strings in pieces.

    :param text: the document.
    :param decoder: gives the C scanner (``scan_once``) its ``parse_int`` and ``parse_constant``.
    :param step: characters one C call may parse.
    """

    def __init__(self, text: str, decoder: json.JSONDecoder, step: int) -> None:
        self.text = text
        # The C scanner json.loads itself uses: parse one value at an index, return it and its end.
        self.scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
        self.step = step
        # A window is a copy of text[start:start + step]: values are parsed from it, so that the
        # C scanner never sees (and never scans to the end of) more than a step's worth of text.
        self.window = ""
        self.window_start = 0

    def document(self) -> Any:
        """Return the document's value; raise if anything but whitespace follows it."""
        i = self.skip(0)
        value, i = self.value(i, 0)
        if self.skip(i) != len(self.text):
            raise _NotStepwise("extra data")
        return value

    def skip(self, i: int) -> int:
        """Return the index of the first non-whitespace character at or after ``i``."""
        text = self.text
        if i < len(text) and text[i] not in " \t\n\r":
            return i
        while True:  # a step at a time: a megabyte of spaces is one long call otherwise
            found = _WHITESPACE.match(text, i, i + self.step)  # always matches, maybe nothing
            end = found.end() if found else i
            if end < i + self.step or end >= len(text):
                return end
            i = end

    def value(self, i: int, depth: int) -> tuple[Any, int]:
        """Return the value at ``i`` and the index just after it.

        :param i: where the value starts.
        :param depth: the arrays and objects around it; past :data:`.MAX_JSON_DEPTH` in all, the
            document goes to :func:`.depth.load_json`, which refuses it as it would have anyway.
        """
        found = self.small(i)
        if found is not None:
            self.check_depth(found, i, depth)
            return found
        first = self.text[i]
        if first in "[{" and depth >= MAX_JSON_DEPTH:
            raise _NotStepwise("too deep")
        if first == "[":
            return self.array(i + 1, depth + 1)
        if first == "{":
            return self.object(i + 1, depth + 1)
        if first == '"':
            return self.string(i + 1)
        # A number or literal longer than a step: nothing to cut it at, so one call.
        return self.scan(self.text, i)

    def small(self, i: int) -> tuple[Any, int] | None:
        """Return the value at ``i`` if it fits in a window, else ``None``."""
        text = self.text
        offset = i - self.window_start
        fresh = False
        # A fresh window when ``i`` is not in this one, or too near its end to hold a value, unless
        # the window already reaches the end of the text.
        near_end = offset + self.step // 2 > len(self.window)
        if offset < 0 or (near_end and self.window_start + len(self.window) < len(text)):
            self.window, self.window_start, offset, fresh = text[i : i + self.step], i, 0, True
        while True:
            window = self.window
            try:
                value, end = self.scan(window, offset)
            except (StopIteration, ValueError, RecursionError):
                end = -1
            # A number cut by the window's edge ("1.|5", "1.5e|3") reads as a shorter one, which
            # ends where the edge or a character of a number follows it: it counts only when
            # something else follows it in the window, or the window ends the text.
            if end != -1 and (
                self.window_start + len(window) >= len(text) or (end < len(window) and window[end] not in _NUMBER_TAIL)
            ):
                return value, self.window_start + end
            if fresh:
                return None  # larger than a step (or malformed: the caller's pieces will tell)
            self.window, self.window_start, offset, fresh = text[i : i + self.step], i, 0, True

    def check_depth(self, found: tuple[Any, int], i: int, depth: int) -> None:
        """Raise if a value parsed in one call takes the document past :data:`.MAX_JSON_DEPTH`."""
        text = self.text
        end = found[1]
        # Its opening brackets (those in strings too) bound its depth: exact only when that is close.
        brackets = text.count("[", i, end) + text.count("{", i, end)
        if depth + brackets > MAX_JSON_DEPTH and depth + value_depth(found[0], limit=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise _NotStepwise("too deep")

    def array(self, i: int, depth: int) -> tuple[list[Any], int]:
        """Return the array whose ``[`` is just before ``i``, element by element."""
        text = self.text
        items: list[Any] = []
        i = self.skip(i)
        if text[i] == "]":
            return items, i + 1
        while True:
            item, i = self.value(i, depth)
            items.append(item)
            i = self.skip(i)
            separator = text[i]
            if separator == "]":
                return items, i + 1
            if separator != ",":
                raise _NotStepwise("expected , or ]")
            i = self.skip(i + 1)

    def object(self, i: int, depth: int) -> tuple[dict[str, Any], int]:
        """Return the object whose ``{`` is just before ``i``, member by member."""
        text = self.text
        members: dict[str, Any] = {}
        i = self.skip(i)
        if text[i] == "}":
            return members, i + 1
        while True:
            if text[i] != '"':
                raise _NotStepwise("expected a key")
            key, i = self.value(i, depth)
            i = self.skip(i)
            if text[i] != ":":
                raise _NotStepwise("expected :")
            members[key], i = self.value(self.skip(i + 1), depth)
            i = self.skip(i)
            separator = text[i]
            if separator == "}":
                return members, i + 1
            if separator != ",":
                raise _NotStepwise("expected , or }")
            i = self.skip(i + 1)

    def string(self, start: int) -> tuple[str, int]:
        """Return the string whose opening quote is just before ``start``, a window at a time."""
        text = self.text
        pieces: list[str] = []
        while True:
            cut = self.cut(start)
            if cut is None:  # no safe place to cut (a long run of backslashes): the rest in one call
                rest, end = scanstring(text, start, True)
                pieces.append(rest)
                return "".join(pieces), end
            # The piece, closed with a quote of ours: cut between two whole escapes, it decodes to
            # exactly what it contributes to the string. A quote of the text ends the string sooner.
            piece, end = scanstring(text[start:cut] + '"', 0, True)
            pieces.append(piece)
            if end <= cut - start:
                return "".join(pieces), start + end
            if cut >= len(text):
                raise _NotStepwise("unterminated string")
            start = cut

    def cut(self, start: int) -> int | None:
        """Return where to end the next piece of a string begun (or last cut) at ``start``."""
        text = self.text
        end = start + self.step
        if end >= len(text):
            return len(text)
        # No backslash in the last six characters: the cut is not inside an escape (\uXXXX is the
        # longest), nor between the two escapes of a surrogate pair, which decode to one character.
        if text.find("\\", end - 6, end) == -1:
            return end
        # Else just before an escape that is not the low half of a pair: a backslash that starts
        # an escape is preceded by an even number of backslashes (each pair an escaped backslash).
        candidate = end
        for _ in range(_BACKSLASH_RUN_LIMIT):
            candidate = text.rfind("\\", start + 1, candidate)
            if candidate == -1:
                return None
            run = 0
            while run < _BACKSLASH_RUN_LIMIT and candidate - 1 - run >= start and text[candidate - 1 - run] == "\\":
                run += 1
            if run < _BACKSLASH_RUN_LIMIT and run % 2 == 0 and not _LOW_SURROGATE_ESCAPE.match(text, candidate):
                return candidate
        return None


#: Elements of a container that can go to the C encoder in one call with their neighbours.
_FLAT_CHILDREN = 4096
_FLAT_STRING = 256
#: Deeper than this, the rest of a value goes to the encoder in one call (real outputs are shallow).
_ENCODE_DEPTH = 64


def dumps_in_steps(
    value: Any,
    *,
    ensure_ascii: bool = True,
    separators: tuple[str, str] | None = None,
    allow_nan: bool = True,
    step: int = STEP,
) -> str:
    """
    Return ``json.dumps(value, ensure_ascii=..., separators=..., allow_nan=...)``, computed in short steps.

    ``json.dumps`` is one C call too: tens of MiB of outputs hold the GIL for a second or more.
    Here the same encoder writes a long array a run of elements at a time, an object member by
    member and a long string a window at a time, and the pieces are joined: the same text, since
    JSON's text for a container is its members' texts between separators.

    :param value: a JSON value (what ``json.loads`` gives: dicts with string keys, lists, strings,
        numbers, booleans, None); anything else is written in one call, as ``json.dumps`` would.
    :param ensure_ascii: as for ``json.dumps``.
    :param separators: as for ``json.dumps`` (``(", ", ": ")`` when None).
    :param allow_nan: as for ``json.dumps``.
    :param step: about how many characters one call writes.
    :raises ValueError: NaN or Infinity with ``allow_nan=False``, as ``json.dumps`` raises.
    """
    item_separator, key_separator = separators or (", ", ": ")
    encoder = json.JSONEncoder(
        ensure_ascii=ensure_ascii, allow_nan=allow_nan, separators=(item_separator, key_separator)
    )
    writer = _Writer(encoder.encode, item_separator, key_separator, max(step, 64))
    writer.value(value, 0)
    return "".join(writer.parts)


class _Writer:
    """
    Write one value in pieces to ``parts``.

    :param encode: the configured ``JSONEncoder.encode``.
    :param item_separator: between two elements or members.
    :param key_separator: between a key and its value.
    :param step: about how many characters one call writes.
    """

    def __init__(self, encode: Callable[[Any], str], item_separator: str, key_separator: str, step: int) -> None:
        self.encode = encode
        self.item_separator = item_separator
        self.key_separator = key_separator
        self.step = step
        self.parts: list[str] = []

    def value(self, value: Any, depth: int) -> None:
        """Write ``value``."""
        if depth > _ENCODE_DEPTH:
            self.parts.append(self.encode(value))
        elif isinstance(value, str) and len(value) > self.step:
            # Any cut of a str is between two code points, and JSON escapes each on its own.
            self.parts.append('"')
            for start in range(0, len(value), self.step):
                self.parts.append(self.encode(value[start : start + self.step])[1:-1])
            self.parts.append('"')
        elif isinstance(value, (list, tuple)) and value:
            self.array(value, depth)
        elif isinstance(value, dict) and value and all(isinstance(key, str) for key in value):
            self.object(value, depth)
        else:
            self.parts.append(self.encode(value))

    def array(self, items: list[Any] | tuple[Any, ...], depth: int) -> None:
        """Write an array: runs of small elements in one call each, any other element on its own."""
        parts = self.parts
        parts.append("[")
        run = 1  # elements per call, grown to about a step's worth of text
        i = 0
        while i < len(items):
            if i:
                parts.append(self.item_separator)
            if not _flat(items[i]):
                self.value(items[i], depth + 1)
                i += 1
                continue
            j = i + 1
            while j < len(items) and j - i < run and _flat(items[j]):
                j += 1
            text = self.encode(items[i:j])
            parts.append(text[1:-1])
            run = max(1, min(int(self.step * (j - i) / max(len(text), 1)), 1 << 16))
            i = j
        parts.append("]")

    def object(self, members: dict[str, Any], depth: int) -> None:
        """Write an object member by member."""
        parts = self.parts
        parts.append("{")
        for n, (key, item) in enumerate(members.items()):
            if n:
                parts.append(self.item_separator)
            parts.append(self.encode(key))
            parts.append(self.key_separator)
            self.value(item, depth + 1)
        parts.append("}")


def _flat(value: Any) -> bool:
    # Small enough to write with its neighbours: a scalar, a short string, or a container of those.
    if isinstance(value, str):
        return len(value) <= _FLAT_STRING
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    else:
        return True
    return len(value) <= _FLAT_CHILDREN and not any(map(_not_leaf, children))


def _not_leaf(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict)) or (isinstance(value, str) and len(value) > _FLAT_STRING)
