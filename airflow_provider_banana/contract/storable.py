"""
Decide whether Airflow can store a call's outputs, before they leave the operator or the trigger.

A reply's JSON can hold values that Python reads exactly but that Airflow cannot pass on: each value
a task returns, each trigger event and each ``task_state_store`` entry travels as a pydantic
``JsonValue`` (in production over the task's msgpack channel to its supervisor, then as JSON to the
API server). Three kinds of value break that, after the call was paid for:

* a string (or a key) holding a surrogate code point (``"\\ud800"``, which JSON allows as an escape):
  UTF-8, and so msgpack and the API's JSON, cannot encode it;
* an integer outside the 64-bit range msgpack carries (``-2**63`` to ``2**64 - 1``); one of more than
  4,300 digits fails even where no msgpack is involved (``dag.test()``), in ``json.dumps``;
* nesting deeper than pydantic validates (254 levels of lists and objects on Airflow 3.3).

NaN and Infinity are not among them (XCom stores them as null; the hook warns). Nothing here alters
the outputs: a caller that finds a problem fails with
:class:`~airflow_provider_banana.exceptions.BananaOutputsNotStorableError` and keeps the call, so a
retry of the task reattaches to it with a Check (free) instead of paying for a new Start.
"""

from __future__ import annotations

import decimal
import json
import re
from typing import Any

from airflow_provider_banana.contract.depth import json_depth
from airflow_provider_banana.exceptions import BananaOutputsNotStorableError

#: Deepest nesting of lists and objects accepted in a call's ``modelOutputs``, the list itself
#: counting as level 1. Pydantic's ``JsonValue`` (every message between a task and Airflow) refuses
#: a 255th level, and the outputs travel inside up to three levels of ours (a trigger event's
#: ``model_outputs``, a batch wave's ``finished`` map, a batch's list of results); Airflow's own
#: recursive serializer gives up near 480 levels on Python 3.11 (two frames a level).
MAX_OUTPUT_DEPTH = 250
#: The integers msgpack, which carries every message between a task and its supervisor, can encode.
MIN_STORABLE_INT = -(2**63)
MAX_STORABLE_INT = 2**64 - 1
#: Most problems one check reports (the walk stops there).
MAX_PROBLEMS = 10
# Any surrogate code point is unencodable: json.loads already joins a valid escaped pair into one.
_SURROGATE = re.compile("[\ud800-\udfff]")
# A path shown in an error keeps this many characters at each end of a longer one.
_PATH_END = 60
# A key shown in a path keeps this many characters.
_KEY_CHARS = 40


def unstorable_values(outputs: Any, *, limit: int = MAX_PROBLEMS) -> list[tuple[str, str]]:
    """
    Return where and why Airflow cannot store ``outputs``: ``(path, reason)`` pairs, in order.

    Paths read like ``[0]["image"]["x"]`` (as the NaN warning's do). Iterative, so deep outputs
    cannot exhaust the stack; a subtree past :data:`MAX_OUTPUT_DEPTH` is reported once and not
    walked. Changes nothing.

    :param outputs: the parsed ``modelOutputs`` (or any JSON value).
    :param limit: most problems to return.
    :return: an empty list when Airflow can store every value.
    """
    found: list[tuple[str, str]] = []
    stack: list[tuple[tuple[Any, ...], int, Any]] = [((), 1, outputs)]
    while stack and len(found) < limit:
        steps, depth, value = stack.pop()
        reason = _problem(value, depth)
        if reason is not None:
            found.append((_path(steps), reason))
            continue
        if isinstance(value, list):
            stack.extend(((*steps, i), depth + 1, item) for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if isinstance(key, str) and _SURROGATE.search(key):
                    stack.append(((*steps, key), depth, _BadKey(key)))
                else:
                    stack.append(((*steps, key), depth + 1, item))
    return found


def check_storable(
    outputs: Any, *, call_id: str | None = None, limit: int = MAX_PROBLEMS, canonical: bytes | None = None
) -> None:
    """
    Raise unless Airflow can store ``outputs`` as they are (they are never changed to fit).

    :param outputs: the call's ``modelOutputs``.
    :param call_id: the call, for the error.
    :param limit: most problems the error names.
    :param canonical: the :func:`~airflow_provider_banana.contract.events.canonical_outputs` of
        small outputs, when the caller has them: bytes that show none of the three problems clear
        the outputs without walking them (a trigger's event, thousands a minute); any sign of one,
        and the walk decides and names it. Not for megabytes: the glance's C scans hold the GIL.
    :raises BananaOutputsNotStorableError: naming the path and the reason of each problem found.
    """
    if canonical is not None and _clearly_storable(canonical):
        return
    problems = unstorable_values(outputs, limit=limit)
    if problems:
        raise BananaOutputsNotStorableError(problems, call_id=call_id)


# In canonical bytes (UTF-8 with "surrogatepass"), a surrogate code point is ED A0-BF, then one more byte.
_SURROGATE_BYTES = re.compile(b"\xed[\xa0-\xbf]")
# Twenty digits in a row, or a minus and nineteen: perhaps an integer past 2**64 - 1 or below -2**63;
# or a float or a string that only looks so, which the walk then clears.
_LONG_DIGITS = re.compile(b"[0-9]{20}|-[0-9]{19}")


def _clearly_storable(canonical: bytes) -> bool:
    # Each test errs only towards "not clearly": digits inside a string or a float look like a long
    # integer. json_depth counts the outer list as level 1, as MAX_OUTPUT_DEPTH does.
    return (
        not _SURROGATE_BYTES.search(canonical)
        and not _LONG_DIGITS.search(canonical)
        and json_depth(canonical) <= MAX_OUTPUT_DEPTH
    )


class _BadKey(str):
    """A key holding a surrogate: stands on the stack where its value would, to be reported at its path."""


def _problem(value: Any, depth: int) -> str | None:
    if isinstance(value, _BadKey):
        return f"a key holding a lone surrogate ({_code_point(value)}), which UTF-8 cannot encode"
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return f"a string holding a lone surrogate ({_code_point(value)}), which UTF-8 cannot encode"
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_STORABLE_INT <= value <= MAX_STORABLE_INT:
            return None
        return (
            f"an integer of {_digits(value)} digits, outside the 64-bit range Airflow's task messages "
            "carry (-2**63 to 2**64 - 1)"
        )
    if isinstance(value, (list, dict)) and depth > MAX_OUTPUT_DEPTH:
        return f"nesting deeper than the {MAX_OUTPUT_DEPTH} levels of lists and objects Airflow can store"
    return None


def _code_point(text: str) -> str:
    match = _SURROGATE.search(text)
    return f"U+{ord(match.group()):04X}" if match else "?"


def _digits(value: int) -> str:
    # str() of an int past 4,300 digits raises (CPython's guard); Decimal converts it exactly.
    return f"{decimal.Decimal(abs(value)).adjusted() + 1:,}"


def _path(steps: tuple[Any, ...]) -> str:
    if not steps:
        return "(the whole value)"
    parts = []
    for step in steps:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            key = step if len(step) <= _KEY_CHARS else step[:_KEY_CHARS] + "..."
            parts.append(f"[{json.dumps(key)}]")  # ASCII: a surrogate shows as its \\u escape
    path = "".join(parts)
    if len(path) > 2 * _PATH_END + 20:
        path = f"{path[:_PATH_END]}...({len(steps)} levels)...{path[-_PATH_END:]}"
    return path
