"""
Parse and write large JSON in short steps, so that the thread doing it lets an event loop run between them.

``json.loads`` is one C call: it holds the interpreter's lock (the GIL) from the first byte to the
last, about a second for 64 MiB of small records, and an event loop in another thread of the process
(the triggerer's) stands still all that time, thread or no thread. Here the same C scanner parses
the body a piece at a time: every value that fits in a window of :data:`STEP` characters in one call,
a larger array or object element by element, a larger string a window at a time. No call holds the
lock for more than a window's worth of work (a few milliseconds), and Python switches threads
between two calls.

The result is exactly what :func:`.depth.load_json` gives: the leaves come from the same C scanner,
containers are filled in document order (a repeated key keeps its last value, as there). A body that
is not JSON, or nests too deep, gets the same error too, found in steps as well: the depth with
:func:`.depth.json_depth_in_steps`; a bad string's error from the C scanner run on its piece; any
other from the C scanner run on a short text that puts it where the walk stopped (:class:`_Probe`);
bytes that are not UTF-8 from the decoder's slice. Only a body in another encoding than UTF-8 is
handed to ``load_json`` whole. :func:`dumps_in_steps` is the same for ``json.dumps``.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]  # public in CPython, not in typeshed
from typing import Any

from airflow_provider_banana.contract.depth import (
    MAX_JSON_DEPTH,
    JsonTooDeepError,
    json_depth_in_steps,
    load_json,
    on_stack_for,
    value_depth,
)

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


class _Refused(Exception):
    """
    The body is malformed or nests too deep: :func:`loads_in_steps` then raises what ``load_json`` would.

    :param error: the error ``json.loads`` raises for the body, or how to make it: ``(message, index)``
        of a ``JSONDecodeError``, or a :class:`_Probe` to run; ``None`` when the body nests too deep.
    :param built: a value the walk completed before it stopped (the document's, before extra data).
    """

    def __init__(self, error: BaseException | tuple[str, int] | _Probe | None, built: Any = None) -> None:
        super().__init__()
        self.error = error
        #: Values the walk had built, besides its open containers: freed a piece at a time.
        self.built: list[Any] = [] if built is None else [built]


def loads_in_steps(
    raw: bytes,
    *,
    parse_int: Callable[[str], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
    step: int = STEP,
) -> Any:
    """
    Return what :func:`.depth.load_json` returns for ``raw``, computed in short steps.

    That is ``json.loads(raw, ...)`` for a document nested at most :data:`.MAX_JSON_DEPTH` deep, and
    the same errors as ``load_json`` for any other: :class:`.JsonTooDeepError` (with the depth
    :func:`.depth.json_depth` gives, whether or not the body is JSON), else the ``JSONDecodeError``
    or ``UnicodeDecodeError`` of ``json.loads``, message and position included. Those are worked
    out in steps too: a malformed body costs no more GIL at a time than a valid one.

    :param raw: the JSON document, as bytes (UTF-8, with or without a byte-order mark, as
        ``json.loads`` detects it; other encodings are parsed by ``load_json`` in one call).
    :param parse_int: as for ``json.loads``.
    :param parse_constant: as for ``json.loads`` (``NaN``, ``Infinity``, ``-Infinity``).
    :param step: characters one C call may parse (tests make it small to take every path).
    :raises ValueError: what :func:`.depth.load_json` raises for the same bytes
        (``JsonTooDeepError``, ``JSONDecodeError``, ``UnicodeDecodeError``).
    """
    decoder = json.JSONDecoder(parse_int=parse_int, parse_constant=parse_constant)
    step = max(step, 64)
    text = ""
    steps = None
    try:
        text = _decode(raw, step)
        steps = _Steps(text, decoder, step)
        return steps.document()
    except _Refused as refused:
        error = refused.error
        built = refused.built
    except (_NotStepwise, ValueError, IndexError, StopIteration, RecursionError):
        # An encoding other than UTF-8, or (a bug) an input this path does not take as it should:
        # load_json decides, in one call: its result or its own error, never ours.
        return load_json(raw, parse_int=parse_int, parse_constant=parse_constant)
    # What the walk built before it stopped (a million records, maybe): freed in one call, it would
    # hold the GIL as long as the parse of a step thousands of times over.
    if steps is not None:
        built.extend(frame.container for frame in steps.frames)
        steps.frames.clear()
    _release(built)
    # As load_json: the depth first, measured over the whole body whatever its errors.
    depth = json_depth_in_steps(raw, step)
    if depth > MAX_JSON_DEPTH:
        raise JsonTooDeepError(depth) from None
    try:
        failure = _error(error, text, depth)
    except _NotStepwise:  # the probe parsed where the walk did not (a bug): load_json decides
        return load_json(raw, parse_int=parse_int, parse_constant=parse_constant)
    raise failure


def _error(error: BaseException | tuple[str, int] | _Probe | None, text: str, depth: int) -> BaseException:
    # The error json.loads raises for a body ``depth`` deep (at most MAX_JSON_DEPTH) the walk refused.
    if isinstance(error, _Probe):
        error = on_stack_for(depth, error.run)  # where load_json would have run the parser
    if isinstance(error, tuple):
        return _decode_error(error[0], text, error[1])
    if error is None:  # too deep by the walk, not by json_depth: cannot be
        raise _NotStepwise("too deep by the walk only")
    return error


class _Lines:
    """
    A document as ``JSONDecodeError`` reads it to give an index's line and column, a step at a time.

    It counts the newlines before the index and finds the last one: two calls over up to 64 MiB
    of text otherwise, tens of milliseconds each with the GIL held.

    :param text: the document.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def count(self, newline: str, start: int, end: int) -> int:
        """Return ``text.count(newline, start, end)`` for a one-character ``newline``."""
        return sum(self.text.count(newline, at, min(at + STEP, end)) for at in range(start, end, STEP))

    def rfind(self, newline: str, start: int, end: int) -> int:
        """Return ``text.rfind(newline, start, end)`` for a one-character ``newline``."""
        for stop in range(end, start, -STEP):
            found = self.text.rfind(newline, max(start, stop - STEP), stop)
            if found != -1:
                return found
        return -1


def _decode_error(message: str, text: str, index: int) -> json.JSONDecodeError:
    # json.JSONDecodeError(message, text, index), its line and column counted a step at a time.
    try:
        error = json.JSONDecodeError(message, _Lines(text), index)  # type: ignore[arg-type]
    except (AttributeError, TypeError):  # a Python whose JSONDecodeError reads the text otherwise
        return json.JSONDecodeError(message, text, index)
    error.doc = text
    return error


#: Elements of a container freed in one call.
_RELEASE_STEP = 4096


def _release(values: list[Any]) -> None:
    """Empty ``values``, freeing what it holds a batch of elements at a time (the largest: a million)."""
    # Depth first, containers emptied from the end: a batch's small elements go with it, its large
    # ones are emptied the same way first. Nothing else holds them: the walk built them.
    stack = values
    while stack:
        container = stack[-1]
        if isinstance(container, dict):
            stack[-1] = list(container.values())
            container.clear()
            continue
        if not isinstance(container, list) or not container:
            stack.pop()
            continue
        batch = container[-_RELEASE_STEP:]
        del container[-_RELEASE_STEP:]
        stack.extend(item for item in batch if isinstance(item, (list, dict)) and len(item) > _RELEASE_STEP // 8)
        del batch


def _decode(raw: bytes, step: int) -> str:
    encoding = json.detect_encoding(raw)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise _NotStepwise(encoding)
    # As json.loads decodes bytes: surrogatepass, and a UTF-8 byte-order mark dropped (the codec then
    # decodes what follows it, and an error's positions count from there).
    first = 3 if encoding == "utf-8-sig" else 0
    view = memoryview(raw)
    size = max(step, _DECODE_STEP)
    parts = []
    at = first
    while at < len(raw):
        end = min(at + size, len(raw))
        try:
            # A sequence the slice's end cuts is left for the next slice (final=False).
            part, used = codecs.utf_8_decode(view[at:end], "surrogatepass", end == len(raw))
        except UnicodeDecodeError as e:
            whole = raw[first:] if first else raw
            error = UnicodeDecodeError("utf-8", whole, e.start + at - first, e.end + at - first, e.reason)
            raise _Refused(error) from None
        parts.append(part)
        at += used
    return "".join(parts)


class _Frame:
    """
    An array or object the walk is inside: what it holds so far, and where a parser could resume it.

    :param container: the list or dict being filled.
    :param resume: the index just after its opening bracket, later just after its last element.
    """

    __slots__ = ("container", "fresh", "key", "resume")

    def __init__(self, container: list[Any] | dict[str, Any], resume: int) -> None:
        self.container = container
        self.resume = resume
        self.fresh = True  # no element yet
        self.key = ""  # an object's key whose value comes next


class _Probe:
    """
    Find the error ``json.loads`` gives for a body the walk found malformed, from a short text.

    The C parser (whose messages differ between Python versions) decides, not us: it parses a text
    that puts it in the state it would be in at the innermost open container's ``resume`` index (an
    opening bracket for each container around, then ``null`` for an element already read), followed
    by the body's own text from there to a little past where the walk stopped. Errors come at the
    same indices, shifted; the text is made longer if the error might depend on where it was cut.

    :param text: the whole document.
    :param scan: the C scanner.
    :param frames: the containers open where the walk stopped, outermost first.
    :param at: where the walk stopped.
    """

    def __init__(self, text: str, scan: Callable[[str, int], tuple[Any, int]], frames: list[_Frame], at: int) -> None:
        self.text = text
        self.scan = scan
        opening = ["[" if isinstance(frame.container, list) else '{"":' for frame in frames[:-1]]
        if frames:
            last = frames[-1]
            is_list = isinstance(last.container, list)
            opening.append(("[" if is_list else "{") if last.fresh else ("[null" if is_list else '{"":null'))
            self.resume = last.resume
        else:
            self.resume = at  # the document's value: json.loads starts scanning where it starts
        self.prefix = "".join(opening)
        self.at = at

    def run(self) -> BaseException | tuple[str, int]:
        """Return the error, or (message, index) of a ``JSONDecodeError``."""
        text, shift = self.text, self.resume - len(self.prefix)
        margin = 4096
        while True:
            end = min(len(text), self.at + margin)
            whole = end == len(text)
            probe = self.prefix + text[self.resume : end]
            try:
                self.scan(probe, 0)
            except StopIteration as stop:  # what JSONDecoder.raw_decode makes of it
                message, index = "Expecting value", stop.value + shift
            except json.JSONDecodeError as e:
                message, index = e.msg, e.pos + shift
            except (ValueError, RecursionError) as e:  # parse_int's own error, say: a cut number may change it
                if whole:
                    return e
                message, index = "", end
            else:
                if whole:  # parsed where the walk did not: a bug, load_json decides
                    raise _NotStepwise("the probe parsed")
                message, index = "", end
            # Errors come within a few characters of where the parser stopped reading, except an
            # unterminated string's, which it reports where the string began.
            if whole or (index + 64 < end and message != "Unterminated string starting at"):
                return message, index
            margin *= 4


class _Steps:
    """
    Walk one document: small values in one C call each, large containers and strings in pieces.

    The walk keeps its open containers on a list of its own, not on Python's stack: a document
    nested up to :data:`.MAX_JSON_DEPTH` deep needs no recursion, whatever the caller's stack.

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
        self.frames: list[_Frame] = []

    def malformed(self, at: int) -> _Refused:
        """Return the refusal of a body found malformed at ``at``: a probe decides the error."""
        return _Refused(_Probe(self.text, self.scan, self.frames, at))

    def document(self) -> Any:
        """Return the document's value; refuse a document that is not JSON or nests too deep."""
        text = self.text
        size = len(text)
        frames = self.frames
        i = self.skip(0)
        while True:
            # A value starts at i: small, in one call; an array or object, opened; a long string, in pieces.
            found = self.small(i)
            if found is not None:
                self.check_depth(found, i, len(frames))
                value, i = found
            else:
                first = text[i] if i < size else ""
                if first == "[" or first == "{":
                    if len(frames) >= MAX_JSON_DEPTH:
                        raise _Refused(None)
                    frame = _Frame([] if first == "[" else {}, i + 1)
                    frames.append(frame)
                    i = self.skip(i + 1)
                    if i >= size or text[i] != ("]" if first == "[" else "}"):
                        if first == "{":
                            i = self.key(frame, i)
                        continue  # to the first element, at i
                    frames.pop()
                    value, i = frame.container, i + 1
                elif first == '"':
                    value, i = self.string(i + 1)
                else:
                    # A number or literal longer than a step: nothing to cut it at, so one call.
                    try:
                        value, i = self.scan(text, i)
                    except (StopIteration, ValueError, RecursionError):
                        raise self.malformed(i) from None
            # The value ends at i: it goes into the innermost open container, which may then close.
            while frames:
                frame = frames[-1]
                container = frame.container
                if isinstance(container, list):
                    container.append(value)
                else:
                    container[frame.key] = value
                frame.resume, frame.fresh = i, False
                i = self.skip(i)
                separator = text[i] if i < size else ""
                if separator == ",":
                    i = self.skip(i + 1)
                    if isinstance(container, dict):
                        i = self.key(frame, i)
                    break  # to the next element, at i
                if separator != ("]" if isinstance(container, list) else "}"):
                    raise self.malformed(i)
                frames.pop()
                value, i = container, i + 1
            else:
                end = self.skip(i)
                if end != size:
                    raise _Refused(("Extra data", end), value)  # as JSONDecoder.decode says it
                return value

    def key(self, frame: _Frame, i: int) -> int:
        """Read an object's key at ``i`` and the colon after it; return where its value starts."""
        text = self.text
        if i >= len(text) or text[i] != '"':
            raise self.malformed(i)
        found = self.small(i)
        key, i = found if found is not None else self.string(i + 1)
        i = self.skip(i)
        if i >= len(text) or text[i] != ":":
            raise self.malformed(i)
        frame.key = key
        return self.skip(i + 1)

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
        """Refuse a document that a value parsed in one call takes past :data:`.MAX_JSON_DEPTH`."""
        text = self.text
        end = found[1]
        # Its opening brackets (those in strings too) bound its depth: exact only when that is close.
        brackets = text.count("[", i, end) + text.count("{", i, end)
        if depth + brackets > MAX_JSON_DEPTH and depth + value_depth(found[0], limit=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise _Refused(None)

    def string(self, start: int) -> tuple[str, int]:
        """Return the string whose opening quote is just before ``start``, a window at a time."""
        text = self.text
        quote = start - 1
        pieces: list[str] = []
        while True:
            cut = self.cut(start)
            if cut is None:  # no safe place to cut (a long run of backslashes): the rest in one call
                try:
                    rest, end = scanstring(text, start, True)
                except ValueError:
                    raise self.string_error(quote, start, len(text)) from None
                pieces.append(rest)
                return "".join(pieces), end
            # The piece, closed with a quote of ours: cut between two whole escapes, it decodes to
            # exactly what it contributes to the string. A quote of the text ends the string sooner.
            try:
                piece, end = scanstring(text[start:cut] + '"', 0, True)
            except ValueError:
                raise self.string_error(quote, start, cut) from None
            pieces.append(piece)
            if end <= cut - start:
                return "".join(pieces), start + end
            if cut >= len(text):  # our quote ended it: the text's own never came
                raise self.string_error(quote, start, cut)
            start = cut

    def string_error(self, quote: int, start: int, cut: int) -> _Refused:
        """
        Return the refusal of a string found malformed in its piece from ``start`` to ``cut``.

        The C scanner, run on the text from ``start`` (a cut between escapes) to a little past
        ``cut``, stops at the same error as on the whole text: that is json.loads' error, but for
        where it says an unterminated string starts, which is the string's quote, not ``start - 1``.
        """
        text = self.text
        # Past the cut: the most an escape at the piece's end looks ahead (a surrogate pair's second half).
        end = len(text) if cut + 16 >= len(text) else cut + 16
        try:
            scanstring(text[start:end], 0, True)
        except json.JSONDecodeError as e:
            if e.msg != "Unterminated string starting at":
                return _Refused((e.msg, e.pos + start))
            if end == len(text):
                return _Refused((e.msg, quote))
        raise _NotStepwise("the string scanned otherwise")  # a bug: load_json decides

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
