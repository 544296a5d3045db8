"""
Measure how deeply JSON nests, without recursion: the one depth limit of replies and model inputs.

Python's JSON parser and encoder recurse once per level of nesting, against the interpreter's
recursion limit, which the caller's own stack shares: the same 900-level document would parse from
a shallow stack and raise ``RecursionError`` from a deep one. So the depth is measured first,
iteratively, and anything deeper than :data:`MAX_JSON_DEPTH` is refused whatever the stack.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, TypeVar

T = TypeVar("T")

#: The deepest nesting of arrays and objects accepted in a reply or in ``model_inputs``. Far past
#: any real model's inputs or outputs, and well inside the default recursion limit (1000), which
#: the JSON parser shares with the stack of the code that calls it.
MAX_JSON_DEPTH = 512

#: Documents at most this deep are parsed on the caller's stack; deeper ones (up to the limit) on a
#: fresh thread's, so that how deep the caller's own stack already is cannot change the outcome.
SHALLOW_DEPTH = 64

# A JSON string, escapes included: brackets inside strings are text, not structure.
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# The inside of a string, from just after its opening quote to just before its closing one.
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
# Keep only the brackets, opening ones as +1 and closing ones as -1 (as signed bytes).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SIGNS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


class JsonTooDeepError(ValueError):
    """
    Report a JSON document nested deeper than :data:`MAX_JSON_DEPTH`; it was not parsed.

    :param depth: how deep it nests.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        super().__init__(f"nested {depth} levels deep, past the limit of {MAX_JSON_DEPTH}")


def json_depth(document: bytes) -> int:
    """
    Return how deeply a JSON document's arrays and objects nest (0 for a scalar).

    Linear in the document's size and without recursion, so a hostile document costs no stack. A
    document with at most :data:`SHALLOW_DEPTH` brackets gets their number instead (it cannot nest
    deeper). A document that is not JSON gets a number too; the parser then refuses it.

    :param document: the document's bytes, in any encoding JSON allows (UTF-8, -16, -32).
    """
    opening = document.count(b"[") + document.count(b"{")
    if opening <= SHALLOW_DEPTH:
        return opening
    if b"\x00" in document[:4]:  # UTF-16 or -32: measured in UTF-8, where a quote is one byte
        document = document.decode(json.detect_encoding(document), "replace").encode()
    brackets = _STRINGS.sub(b"", document).translate(_SIGNS, _NOT_BRACKETS)
    return max(accumulate(memoryview(brackets).cast("b")), default=0)


def json_depth_in_steps(document: bytes, step: int) -> int:
    """
    Return :func:`json_depth` of a UTF-8 document, computed a slice of ``step`` bytes at a time.

    The same answer for every document, malformed ones included (it decides which error a body
    that is both malformed and too deep gets), but no call holds the interpreter's lock for more
    than a slice's worth of work: see :mod:`.stepwise`. A slice's complete strings go in one
    ``re.sub``, as :func:`json_depth` removes them from the whole; a string the slice's end cuts is
    followed a slice at a time to its closing quote. One that never closes is what the whole
    ``re.sub`` leaves too: nothing after its quote is a string (any later quote is one of its
    escaped ones), so from there on every bracket counts.

    :param document: the document's bytes, in UTF-8 (a byte-order mark allowed). Transcoding UTF-8
        to UTF-8, as :func:`json_depth` does for a document with a NUL byte near its start, changes
        no quote, backslash or bracket, so it is skipped.
    :param step: bytes one call may look through.
    """
    size = len(document)
    opening = sum(
        document.count(b"[", start, start + step) + document.count(b"{", start, start + step)
        for start in range(0, size, step)
    )
    if opening <= SHALLOW_DEPTH:
        return opening
    counter = _BracketCounter()
    start = 0
    while start < size:
        piece = document[start : start + step]
        kept = _STRINGS.sub(b"", piece)
        quote = kept.find(b'"')
        if quote == -1:
            counter.add(kept)
            start += len(piece)
            continue
        # A string this slice does not close: what follows its quote is the slice's tail, untouched.
        counter.add(kept[:quote])
        opened = start + len(piece) - (len(kept) - quote)
        closed = _closing_quote(document, opened + 1, step)
        if closed is None:
            for rest in range(opened + 1, size, step):
                counter.add(document[rest : rest + step])
            break
        start = closed + 1
    return counter.deepest


def _closing_quote(document: bytes, start: int, step: int) -> int | None:
    # The index of the quote that closes a string whose inside starts at ``start``, or None if it
    # runs to the end. A slice's end may split an escape: the match then stops before its backslash.
    size = len(document)
    while True:
        # At least two bytes, so that an escape at the slice's start always fits.
        end = _STRING_BODY.match(document, start, min(start + max(step, 2), size)).end()  # type: ignore[union-attr]
        if end >= size or (end == size - 1 and document[end] == ord("\\")):
            return None
        if document[end] == ord('"'):
            return end
        start = end


class _BracketCounter:
    """The running sum of brackets (+1 opening, -1 closing) and its largest value, as json_depth has it."""

    def __init__(self) -> None:
        self.level = 0
        self.highest: int | None = None

    def add(self, piece: bytes) -> None:
        """Count the brackets of a piece of the document outside strings."""
        signs = memoryview(piece.translate(_SIGNS, _NOT_BRACKETS)).cast("b")
        if not len(signs):
            return
        if self.highest is None:  # the level before the first bracket (0) is not a depth reached
            self.highest = max(accumulate(signs))
        else:  # initial=: the level this piece starts from, which the piece before reached already
            self.highest = max(self.highest, max(accumulate(signs, initial=self.level)))
        self.level += sum(signs)

    @property
    def deepest(self) -> int:
        """The depth, as :func:`json_depth` gives it (0 without brackets)."""
        return 0 if self.highest is None else self.highest


def load_json(
    document: bytes,
    *,
    parse_int: Callable[[str], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """
    Parse a JSON document nested at most :data:`MAX_JSON_DEPTH` deep, whatever the caller's stack.

    The same as ``json.loads(document, parse_int=..., parse_constant=...)`` (the encoding detected
    as it does it), with the decoder made once per option set: ``json.loads`` with options builds
    one per call, and every Check is parsed here.

    :param document: the document's bytes.
    :param parse_int: as for :func:`json.loads`.
    :param parse_constant: as for :func:`json.loads`.
    :raises JsonTooDeepError: nested deeper than the limit; decided before any parsing.
    :raises ValueError: not JSON.
    """
    depth = json_depth(document)
    if depth > MAX_JSON_DEPTH:
        raise JsonTooDeepError(depth)
    text = document.decode(json.detect_encoding(document), "surrogatepass")
    return on_stack_for(depth, functools.partial(_decoder(parse_int, parse_constant).decode, text))


@functools.lru_cache(maxsize=8)
def _decoder(parse_int: Callable[[str], Any] | None, parse_constant: Callable[[str], Any] | None) -> json.JSONDecoder:
    # A decoder keeps no state between documents (its memo of keys is cleared after each).
    return json.JSONDecoder(parse_int=parse_int, parse_constant=parse_constant)


def on_stack_for(depth: int, parse: Callable[[], T]) -> T:
    """
    Run ``parse`` (a recursive parse of a document ``depth`` deep) where its depth cannot matter.

    At most :data:`SHALLOW_DEPTH` deep, on the caller's stack; deeper (up to the limit), on a fresh
    thread's, so that how deep the caller's own stack already is cannot change the outcome.

    :param depth: how deeply the document nests (:func:`json_depth`).
    :param parse: the parse, its result or its error passed on.
    """
    if depth <= SHALLOW_DEPTH:
        return parse()
    # Rare (real replies nest a few levels): a thread costs ~0.1 ms, and its stack starts empty.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="banana-json") as pool:
        return pool.submit(parse).result()


def value_depth(value: Any, *, limit: int = MAX_JSON_DEPTH) -> int:
    """
    Return how deeply a Python value's dicts, lists and tuples nest, stopping once past ``limit``.

    Depth first and without recursion: a value that contains itself goes past ``limit`` quickly
    and is reported as too deep, rather than walked forever.

    :param value: what is about to be sent as JSON.
    :param limit: stop measuring past this depth (the result is then ``limit + 1``).
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
