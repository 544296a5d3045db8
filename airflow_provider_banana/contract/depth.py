"""
Measure how deeply JSON nests, without recursion: the one depth limit of replies and model inputs.

Python's JSON parser and encoder recurse once per level of nesting, against the interpreter's
recursion limit, which the caller's own stack shares: the same 900-level document would parse from
a shallow stack and raise ``RecursionError`` from a deep one. So the depth is measured first,
iteratively, and anything deeper than :data:`MAX_JSON_DEPTH` is refused whatever the stack.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from itertools import accumulate
from typing import Any

#: The deepest nesting of arrays and objects accepted in a reply or in ``model_inputs``. Far past
#: any real model's inputs or outputs, and well inside the default recursion limit (1000), which
#: the JSON parser shares with the stack of the code that calls it.
MAX_JSON_DEPTH = 512

#: Documents at most this deep are parsed on the caller's stack; deeper ones (up to the limit) on a
#: fresh thread's, so that how deep the caller's own stack already is cannot change the outcome.
SHALLOW_DEPTH = 64

# A JSON string, escapes included: brackets inside strings are text, not structure.
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
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


def load_json(document: bytes, **kwargs: Any) -> Any:
    """
    Parse a JSON document nested at most :data:`MAX_JSON_DEPTH` deep, whatever the caller's stack.

    :param document: the document's bytes.
    :param kwargs: passed to :func:`json.loads` (``parse_int`` ...).
    :raises JsonTooDeepError: nested deeper than the limit; decided before any parsing.
    :raises ValueError: not JSON.
    """
    depth = json_depth(document)
    if depth > MAX_JSON_DEPTH:
        raise JsonTooDeepError(depth)
    if depth <= SHALLOW_DEPTH:
        return json.loads(document, **kwargs)
    # Rare (real replies nest a few levels): a thread costs ~0.1 ms, and its stack starts empty.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="banana-json") as pool:
        return pool.submit(json.loads, document, **kwargs).result()


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
