"""
Test that reading a large reply leaves the event loop free, and that the step-wise JSON is exact.

The loop test reads a reply of a million small records (64 MB) and one of a 50 MB string from a
reply server in another process on 127.0.0.1, with a 10 ms ticker on the same loop. The issue asks
for no stall over 100 ms; the bound asserted is 500 ms, which a loaded 2-core machine does not reach
by noise (an idle ticker there stays under 40 ms) while the code before this change stalled the
loop 1.1-2.8 s on the records (``python -m benchmarks.loop_stall`` prints both). The same holds for
a body the hook refuses: the million records with one byte broken near the end stalled the loop
1.2 s while it was found "not JSON" (the depth measured with one ``re.sub`` over the whole body,
then ``json.loads`` run whole to get its error), and the bound is the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_banana.contract import may_hold_non_finite, non_finite_paths, parse_reply
from airflow_provider_banana.contract.depth import (
    MAX_JSON_DEPTH,
    JsonTooDeepError,
    json_depth,
    json_depth_in_steps,
    load_json,
)
from airflow_provider_banana.contract.stepwise import dumps_in_steps, loads_in_steps
from airflow_provider_banana.exceptions import BananaProtocolError
from airflow_provider_banana.hooks.banana import BananaAsyncHook
from benchmarks.loop_stall import REFUSED, outputs_for
from tests.helpers import ROOT

SERVE = (sys.executable, "-m", "benchmarks.loop_stall", "--serve", "--answer-fd")
#: The longest a 10 ms ticker may wake late while the reply is read (see the module docstring).
STALL_BOUND = 0.5


def _parse_int(digits: str) -> int:
    return int(digits)


# --------------------------------------------------------------------------- documents


def _value(rng: random.Random, depth: int) -> Any:
    pieces = ["", "a", "é", "😀", "\ud83d", '"', "\\", "\n", "\\u", "x" * 50, "\u2028", "/", "\x7f"]
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        kind = rng.randrange(7)
        if kind == 0:
            return rng.randrange(-(10**6), 10**6)
        if kind == 1:
            return rng.random() * 10 ** rng.randrange(-5, 5)
        if kind == 2:
            return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60)))
        if kind == 3:
            return rng.choice([True, False, None])
        if kind == 4:
            return float(rng.choice(["nan", "inf", "-inf"]))
        if kind == 5:
            return rng.choice(["\\\\\\\\\\", "\ud83d\ude00", "\\ud83d"]) * rng.randrange(1, 40)
        return 10 ** rng.randrange(1, 50)
    if roll < 0.65:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 12))]
    return {rng.choice(["a", "b", "é", "k" * 30]) + str(rng.randrange(5)): _value(rng, depth + 1) for _ in range(8)}


def documents(count: int, seed: int) -> Iterator[bytes]:
    """Yield JSON documents of every kind the steps treat apart: escapes, pairs, indents, a BOM."""
    rng = random.Random(seed)
    for _ in range(count):
        text = json.dumps(_value(rng, 0), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 1, "\t"]))
        if rng.random() < 0.2:  # upper-case escapes of a surrogate pair
            text = text.replace("\\ud83d\\ude00", "\\uD83D\\uDE00")
        raw = text.encode("utf-8", "surrogatepass")
        yield b"\xef\xbb\xbf" + raw if rng.random() < 0.1 else raw


def _outcome(parse: Any, raw: bytes) -> Any:
    try:
        return "value", json.dumps(parse(raw), ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError) as e:
        return "error", type(e), str(e)


# --------------------------------------------------------------------------- parsing in steps


@pytest.mark.parametrize("step", [64, 100, 300, 4096])
def test_parsing_in_steps_gives_what_json_loads_gives(step: int) -> None:
    for raw in documents(150, seed=step):
        want = _outcome(lambda r: load_json(r, parse_int=_parse_int), raw)
        assert _outcome(lambda r, s=step: loads_in_steps(r, parse_int=_parse_int, step=s), raw) == want, raw[:300]


def test_malformed_documents_raise_what_json_loads_raises() -> None:
    rng = random.Random(7)
    broken = 0
    for raw in documents(300, seed=7):
        at = rng.randrange(len(raw))
        raw = raw[:at] + bytes([rng.choice(b'{}[],:"\\x \xff')]) + raw[at + 1 :]
        want = _outcome(lambda r: load_json(r, parse_int=_parse_int), raw)
        broken += want[0] == "error"
        assert _outcome(lambda r: loads_in_steps(r, parse_int=_parse_int, step=64), raw) == want, raw[:300]
    assert broken > 50  # the corruption did make most of them malformed


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
def test_nesting_past_the_limit_is_refused_as_load_json_refuses_it(depth: int) -> None:
    # Big enough at every level that the steps descend into it, rather than one C call parsing it.
    raw = ("[" + "1," * 40) * depth + "0" + "]" * depth
    if depth > MAX_JSON_DEPTH:
        with pytest.raises(JsonTooDeepError):
            loads_in_steps(raw.encode(), step=64)
    else:
        assert loads_in_steps(raw.encode(), step=64) == load_json(raw.encode())


def test_long_strings_are_cut_only_between_whole_escapes() -> None:
    for text in [
        "A" * 10_000,
        "\ud83d\ude00" * 3000,
        "\\" * 5000,
        'x"\\/\b\f\n\r\t\u00e9\u2028' * 1000,
        "\\" * 200 + "\ud83d\ude00" + "a" * 1000,
    ]:
        for ensure_ascii in (True, False):
            raw = json.dumps({"s": text, "after": [1, 2]}, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
            want = load_json(raw)  # escaped surrogate pairs are read as one character
            assert want["after"] == [1, 2]
            for step in (64, 65, 66, 67, 68, 69, 70, 127):
                assert loads_in_steps(raw, step=step) == want


def _corrupt(rng: random.Random, raw: bytes) -> bytes:
    # One byte changed, dropped or added, or the body cut short: anywhere, structure or string.
    at = rng.randrange(len(raw) + 1)
    byte = bytes([rng.choice(b'{}[],:"\\x \xff\x01n-0.e')])
    return rng.choice([raw[:at] + byte + raw[at + 1 :], raw[:at] + raw[at + 1 :], raw[:at] + byte + raw[at:], raw[:at]])


def _nested(rng: random.Random, levels: int) -> bytes:
    # Arrays and objects each larger than a step at every level, so that the steps descend into
    # each (rather than parse one in a single call), with strings holding brackets, escaped quotes
    # and backslashes wherever a step may cut.
    fillers = ["1", '"a[b"', '"\\"]}{"', '{"k":"\\\\"}', "[]", '"x{\\""', "2.5e3", '"\\u00e9["']
    opening, closing = [], []
    for _ in range(levels):
        filler = ",".join(rng.choice(fillers) for _ in range(rng.randrange(0, 40)))
        if rng.random() < 0.5:
            opening.append("[" + filler + ("," if filler else ""))
            closing.append("]")
        else:
            opening.append('{"f":[' + filler + '],"in":')
            closing.append("}")
    return ("".join(opening) + '"mid"' + "".join(reversed(closing))).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": [1, 2,, 3]}',
        b'{"a": [1, 2 3]}',
        b'{"a" 1}',
        b'{"a": 1,}',
        b"[1, 2,]",
        b'{"a": 1} x',
        b'{"a": 1}   \n  ]',
        b"",
        b"   ",
        b"[",
        b'{"a": "b',
        b'{"a": "b\\',
        b'{"a": "b\\u12',
        b'{"a": "\\ud83d\\ude00',
        b'{"a": "tab\there"}',
        b'{"a": "bad \\x escape"}',
        b'{"a": "bad \\u12G4"}',
        b"[1.5e, 2]",
        b"[-, 2]",
        b"[nul]",
        b"{'a': 1}",
        b"<html><body>502 Bad Gateway</body></html>",
        b'[1, "\xff"]',
        b'\xef\xbb\xbf[1, "\xe9\x80"]',
        b'[1, "\xed\xa0\x80"]',
    ],
)
@pytest.mark.parametrize("padding", [0, 1, 5000])
def test_malformed_bodies_raise_exactly_what_load_json_raises(raw: bytes, padding: int) -> None:
    # The broken part after padding (a long string with brackets and escaped quotes, elements
    # before it) lies past several steps, with the state the steps carried across them.
    if padding and raw.lstrip(b"\xef\xbb\xbf").startswith((b"{", b"[")):
        bom = b"\xef\xbb\xbf" if raw.startswith(b"\xef\xbb\xbf") else b""
        body = raw[len(bom) :]
        filler = json.dumps(['x[\\"{' * padding, list(range(padding))]).encode()
        raw = bom + body[:1] + (b'"pad": ' if body[:1] == b"{" else b"") + filler + b", " + body[1:]
    want = _outcome(lambda r: load_json(r, parse_int=_parse_int), raw)
    for step in (64, 65, 66, 67, 100, 4096):
        assert _outcome(lambda r, s=step: loads_in_steps(r, parse_int=_parse_int, step=s), raw) == want, step


def test_deep_and_malformed_documents_classified_in_steps_as_whole() -> None:
    rng = random.Random(11)
    kinds = set()
    for _ in range(80):
        raw = _nested(rng, rng.choice([3, 40, 70, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 600]))
        if rng.random() < 0.7:
            raw = _corrupt(rng, raw)
        want = _outcome(lambda r: load_json(r, parse_int=_parse_int), raw)
        kinds.add(want[0] if want[0] == "value" else want[1])
        step = rng.choice([64, 65, 100, 300])
        assert _outcome(lambda r, s=step: loads_in_steps(r, parse_int=_parse_int, step=s), raw) == want, raw[:300]
    assert kinds >= {"value", json.JSONDecodeError, JsonTooDeepError}  # every outcome was met


def test_the_depth_in_steps_is_json_depth_for_any_bytes() -> None:
    # Brackets, quotes and backslashes in any order: strings closed or not, escapes cut by a step.
    rng = random.Random(5)
    for _ in range(3000):
        raw = b"[" * rng.randrange(0, 80) + bytes(rng.choice(b'[]{}"\\ax,') for _ in range(rng.randrange(0, 300)))
        want = json_depth(raw)
        for step in (1, 2, 3, 7, 64):
            assert json_depth_in_steps(raw, step) == want, (raw, step)


def test_bytes_that_are_not_utf8_raise_what_json_loads_raises_wherever_they_are() -> None:
    # Near the 1 MiB slices the bytes are decoded in: a sequence cut by a slice's end is whole in the next.
    good = json.dumps(["é😀" * 200_000, "\ud83d"], ensure_ascii=False).encode("utf-8", "surrogatepass")
    edge = 1024 * 1024
    for at in range(edge - 5, edge + 3):
        for wrong in (b"\xff", b"\xe9", b"\xed\xa0", b"\xf0\x9f\x98"):
            for bom in (b"", b"\xef\xbb\xbf"):
                raw = bom + good[:at] + wrong + good[at:]
                want = _outcome(load_json, raw)
                assert _outcome(lambda r: loads_in_steps(r, step=64), raw) == want, (at, wrong, bom)
    assert loads_in_steps(good) == json.loads(good)


def test_other_encodings_are_parsed_whole() -> None:
    raw = json.dumps({"é": [1, 2.5, "😀"]}).encode("utf-16")
    assert loads_in_steps(raw, step=64) == json.loads(raw)


# --------------------------------------------------------------------------- writing in steps


@pytest.mark.parametrize("step", [64, 100, 4096])
def test_writing_in_steps_gives_what_json_dumps_gives(step: int) -> None:
    options: list[dict[str, Any]] = [{}, {"ensure_ascii": False, "separators": (",", ":")}, {"separators": (",", ":")}]
    rng = random.Random(step)
    for raw in documents(60, seed=step + 1):
        value = json.loads(raw)
        value = [value] * rng.randrange(1, 20) if rng.random() < 0.3 else value
        for option in options:
            assert dumps_in_steps(value, step=step, **option) == json.dumps(value, **option)


def test_writing_in_steps_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        dumps_in_steps([1.0] * 1000 + [float("nan")], allow_nan=False, step=64)
    assert dumps_in_steps({1: [2], "a": None}, step=64) == json.dumps({1: [2], "a": None})


# --------------------------------------------------------------------------- NaN and Infinity


@pytest.mark.parametrize(
    "raw",
    [
        b"[NaN]",
        b"[-Infinity]",
        b"[1e400]",
        b"[1E+309]",
        b"[0.5e0400]",
        b"[" + b"9" * 310 + b".0]",
        b'{"a":[2,Infinity]}',
    ],
)
def test_bodies_that_parse_to_nan_or_infinity_are_seen(raw: bytes) -> None:
    assert may_hold_non_finite(raw)
    assert non_finite_paths(json.loads(raw))


def test_a_body_without_them_needs_no_walk() -> None:
    for raw in documents(200, seed=3):
        if not may_hold_non_finite(raw):
            assert non_finite_paths(json.loads(raw)) == []
    assert not may_hold_non_finite(json.dumps([{"score": i / 7, "e": 1.5e-300} for i in range(5000)]).encode())


def test_a_reply_holding_them_says_where() -> None:
    raw = b'{"message":"success","finished":true,"modelOutputs":[{"a":[1.0,NaN],"b":{"c":1e999},"d":"NaN"}]}'
    for in_steps in (False, True):
        result = parse_reply("start", 200, raw, in_steps=in_steps)
        assert result.non_finite == ('[0]["a"][1]', '[0]["b"]["c"]')


def test_the_walk_spells_paths_as_before() -> None:
    outputs = [{"x": [1.0, float("inf"), {"y\n": float("-inf")}]}, float("nan"), [[[float("nan")]]]]
    assert non_finite_paths(outputs) == ['[0]["x"][1]', '[0]["x"][2]["y\\n"]', "[1]", "[2][0][0][0]"]
    assert non_finite_paths(float("nan")) == ["(the whole value)"]
    assert non_finite_paths([float("nan")] * 50, limit=3) == ["[0]", "[1]", "[2]"]


# --------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def reply_server() -> Iterator[str]:
    """Serve finished replies of a million records, of a 50 MB string, and the records broken, from another process."""
    answer_read, answer_write = os.pipe()
    server = subprocess.Popen(
        [*SERVE, str(answer_write), "--shapes", "records,string,malformed"],
        cwd=ROOT,
        pass_fds=(answer_write,),
    )
    os.close(answer_write)
    try:
        with os.fdopen(answer_read, "rb") as answers:
            ready = answers.readline().decode().split(" ", 2)
        assert ready[0] == "READY", ready
        yield f"http://127.0.0.1:{ready[1]}/"
    finally:
        server.kill()
        server.wait()


async def _read_with_ticker(shape: str) -> tuple[Any, float]:
    lates: list[float] = []
    reading = True

    async def ticker() -> None:
        last = time.perf_counter()
        while reading:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            lates.append(now - last - 0.01)
            last = now

    async with BananaAsyncHook("banana_stall") as hook:
        await hook.start({}, model_key="small")  # lazy imports and the session first
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        try:
            outputs: Any = (await hook.start({}, model_key=shape)).model_outputs
        except BananaProtocolError as error:
            outputs = error
        await asyncio.sleep(0.05)
        reading = False
        await task
    return outputs, max(lates)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("shape", ["records", "string"])
def test_reading_a_large_reply_leaves_the_loop_free(
    shape: str, reply_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "banana", "host": reply_server, "password": "stall-test-key"}
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_STALL", json.dumps(conn))

    outputs, stall = asyncio.run(_read_with_ticker(shape))

    assert outputs == [outputs_for(shape)]
    assert stall < STALL_BOUND, f"the loop stood still {stall * 1000:.0f} ms while the reply was read"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_refusing_a_large_malformed_reply_leaves_the_loop_free(
    reply_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "banana", "host": reply_server, "password": "stall-test-key"}
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_STALL", json.dumps(conn))

    error, stall = asyncio.run(_read_with_ticker("malformed"))

    assert isinstance(error, BananaProtocolError)
    assert REFUSED["malformed"] in str(error)
    assert stall < STALL_BOUND, f"the loop stood still {stall * 1000:.0f} ms while the reply was refused"
