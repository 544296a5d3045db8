"""Define the models the devserver can run: the built-in demo models and external model servers.

A model is an async callable taking the call's ``modelInputs`` and returning its
JSON reply. It raises :class:`ModelError` to fail the call with a message the
client sees, or :class:`ModelBusy` to have the call put back to queued and
retried (Potassium 0.1.x answers 423 while busy).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Model = Callable[[Any], Awaitable[Any]]

# A body quoted in an error message keeps its last few non-empty lines, at most this many
# characters: a model server's 500 is a whole traceback whose useful line is the last one.
_EXCERPT_LINES = 5
_EXCERPT_LIMIT = 500
# What an HTML error page needs stripped to read as text.
_HTML_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_HTML_BLOCK_TAG = re.compile(
    r"</?(?:address|article|aside|blockquote|body|br|dd|details|div|dl|dt|footer|form|h[1-6]|head|header|hr|html"
    r"|li|main|nav|ol|p|pre|section|summary|table|tbody|td|textarea|tfoot|th|thead|title|tr|ul)\b[^>]*>",
    re.IGNORECASE,
)
_HTML_TAG = re.compile(r"<[^>]*>")
# Python 3.11+ underlines the failing expression of a frame with a line of ^ and ~ only.
_MARKER_LINE = re.compile(r"[\^~]+")
# A sleep model longer than a day is a typo, not a test.
_MAX_SLEEP = 86400.0
# The largest output the ``bytes`` model makes: past the client's default max_reply_bytes (64 MiB).
_MAX_OUTPUT_BYTES = 256 * 1024 * 1024


class ModelError(Exception):
    """The call failed; ``message`` is what the client sees.

    :param message: the error text; starts with "error:".
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelBusy(Exception):
    """The model cannot take the call now; keep it queued and try again shortly."""


def _object(inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise ModelError("error: bad modelInputs: expected a JSON object")
    return inputs


def _number(inputs: dict[str, Any], name: str, default: float) -> float:
    value = inputs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"error: bad modelInputs: {name!r} must be a number")
    return float(value)


def _seconds(inputs: dict[str, Any], default: float) -> float:
    seconds = _number(inputs, "seconds", default)
    if not 0 <= seconds <= _MAX_SLEEP:
        raise ModelError(f"error: bad modelInputs: 'seconds' must be between 0 and {_MAX_SLEEP:g}")
    return seconds


async def wordcount(inputs: Any) -> Any:
    """Describe the ``prompt`` text: word and character counts, upper-cased and reversed.

    :param inputs: ``{"prompt": str}``.
    :raises ModelError: when there is no ``prompt`` string.
    """
    prompt = _object(inputs).get("prompt")
    if not isinstance(prompt, str):
        raise ModelError("error: bad modelInputs: 'prompt' must be a string")
    return {
        "words": len(prompt.split()),
        "characters": len(prompt),
        "upper": prompt.upper(),
        "reversed": prompt[::-1],
    }


async def sleep(inputs: Any) -> Any:
    """Sleep as long as asked, then echo ``result``.

    ``until`` (Unix time) instead of ``seconds`` ends the sleep at a given
    instant, which lets a benchmark know to the millisecond when calls finish.

    :param inputs: ``{"seconds": float = 1.0, "until": float | None, "result": any JSON}``.
    :raises ModelError: on a negative, non-numeric or over-long duration.
    """
    data = _object(inputs)
    if data.get("until") is not None:
        until = _number(data, "until", 0.0)
        seconds = min(max(0.0, until - time.time()), _MAX_SLEEP)
    else:
        seconds = _seconds(data, 1.0)
    await asyncio.sleep(seconds)
    return {"slept": round(seconds, 3), "result": data.get("result")}


async def fail(inputs: Any) -> Any:
    """Always fail, with ``reason`` in the message.

    :param inputs: ``{"reason": str = "demo failure"}``.
    :raises ModelError: always.
    """
    reason = inputs.get("reason", "demo failure") if isinstance(inputs, dict) else "demo failure"
    raise ModelError(f"error: model crashed: {reason}")


async def items_list(inputs: Any) -> Any:
    """Reply with a JSON list instead of an object, so ``modelOutputs`` is ``[[...]]``.

    :param inputs: ``{"items": list = [1, 2, 3]}``.
    :raises ModelError: when ``items`` is not a list.
    """
    items = _object(inputs).get("items", [1, 2, 3])
    if not isinstance(items, list):
        raise ModelError("error: bad modelInputs: 'items' must be a list")
    return items


async def output_bytes(inputs: Any) -> Any:
    """Reply with a string of ``size`` characters (ASCII, so as many bytes), the way an image model replies.

    The text repeats the sha256 of ``seed`` in hex, so two calls with one seed reply alike and
    calls with other seeds do not.

    :param inputs: ``{"size": int, "seed": str = "", "seconds": float = 0}``.
    :raises ModelError: on a size that is not a whole number within 0..256 MiB.
    """
    data = _object(inputs)
    size = data.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_OUTPUT_BYTES:
        raise ModelError(f"error: bad modelInputs: 'size' must be a whole number within 0..{_MAX_OUTPUT_BYTES}")
    await asyncio.sleep(_seconds(data, 0.0))
    unit = hashlib.sha256(str(data.get("seed", "")).encode()).hexdigest()
    return {"data": (unit * (size // len(unit) + 1))[:size]}


async def model_error(inputs: Any) -> Any:
    """Report an error inside a successful reply, the way Banana passes it on untouched.

    :param inputs: ``{"message": str = "the model reported an error"}``.
    """
    message = "the model reported an error"
    if isinstance(inputs, dict) and isinstance(inputs.get("message"), str):
        message = inputs["message"]
    return {"$error": {"code": "ModelError", "message": message}}


class FlakyModel:
    """Fail the first ``fail_times`` calls for each ``key``, then succeed.

    The counters live as long as the server process (or until an admin reset), so
    a client's retries of one logical call hit the same counter.
    """

    def __init__(self) -> None:
        self._attempts: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every key's attempts."""
        self._attempts.clear()

    async def __call__(self, inputs: Any) -> Any:
        """Count an attempt for ``key`` and fail it while attempts <= ``fail_times``.

        :param inputs: ``{"key": str = "default", "fail_times": int = 1, "seconds": float = 0}``.
        :raises ModelError: for the first ``fail_times`` attempts of a key, or on bad inputs.
        """
        data = _object(inputs)
        key = data.get("key", "default")
        fail_times = data.get("fail_times", 1)
        if not isinstance(key, str):
            raise ModelError("error: bad modelInputs: 'key' must be a string")
        if isinstance(fail_times, bool) or not isinstance(fail_times, int) or fail_times < 0:
            raise ModelError("error: bad modelInputs: 'fail_times' must be an integer >= 0")
        seconds = _seconds(data, 0.0)
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        if seconds:
            await asyncio.sleep(seconds)
        if attempt <= fail_times:
            raise ModelError(f"error: model crashed: flaky failure {attempt} of {fail_times} for key {key!r}")
        return {"key": key, "attempt": attempt}


class ExternalModel:
    """Forward calls to a model server speaking Banana's container contract.

    The inputs are POSTed to the URL exactly as given: ``http://host:8000`` and
    ``http://host:8000/`` reach ``POST /``, ``http://host:8000/sleep`` reaches Potassium's
    ``@app.handler("/sleep")`` (whose route does not match ``/sleep/``).

    :param url: the model server's URL, used as it is.
    :param client: the process-wide HTTP client.
    """

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self._client = client

    async def __call__(self, inputs: Any) -> Any:
        """POST the inputs verbatim and return the JSON reply.

        :param inputs: the call's ``modelInputs``.
        :raises ModelBusy: on HTTP 423.
        :raises ModelError: on any other non-200 status, a non-JSON reply, or a transport failure.
        """
        try:
            response = await self._client.post(self.url, json=inputs)
        except httpx.TimeoutException as e:
            raise ModelError(f"error: model server timed out: {type(e).__name__}") from e
        except httpx.HTTPError as e:
            raise ModelError(f"error: model server unreachable: {type(e).__name__}: {excerpt(str(e))}") from e
        if response.status_code == 423:
            raise ModelBusy()
        if response.status_code != 200:
            is_html = "html" in response.headers.get("content-type", "").lower()
            raise ModelError(
                f"error: model server answered HTTP {response.status_code}: {excerpt(response.text, as_html=is_html)}"
            )
        try:
            return response.json()
        except ValueError:
            raise ModelError(
                f"error: model server answered HTTP 200 with a non-JSON body: {excerpt(response.text)}"
            ) from None


def excerpt(text: str, *, as_html: bool = False) -> str:
    """Keep the end of a body for an error message: its last few non-empty lines, joined by `` | ``.

    A Python traceback ends with the exception line (``ValueError: bad weights``), so that line
    is always kept; earlier lines are added while the excerpt stays within
    :data:`_EXCERPT_LIMIT` characters. A last line longer than that keeps its start. Lines of
    only ``^`` and ``~`` (the markers under a frame in Python 3.11+ tracebacks) do not count.

    :param text: the body.
    :param as_html: read it as an HTML error page: drop scripts, styles and tags first.
    :return: the excerpt, possibly empty.
    """
    if as_html:
        text = _html_text(text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line and not _MARKER_LINE.fullmatch(line)]
    kept: list[str] = []
    size = 0
    for line in reversed(lines[-_EXCERPT_LINES:]):
        if kept and size + len(line) + 3 > _EXCERPT_LIMIT:
            break
        kept.append(line)
        size += len(line) + 3
    result = " | ".join(reversed(kept))
    if len(result) > _EXCERPT_LIMIT:
        result = result[: _EXCERPT_LIMIT - 1] + "…"
    return result


def _html_text(page: str) -> str:
    # A block element's tags end a line of the excerpt; inline tags (<code>, <b>) just vanish.
    return html.unescape(_HTML_TAG.sub("", _HTML_BLOCK_TAG.sub("\n", _HTML_HIDDEN.sub("", page))))


def builtin_models() -> dict[str, Model]:
    """Build a fresh set of the built-in demo models, keyed by modelKey."""
    return {
        "wordcount": wordcount,
        "sleep": sleep,
        "fail": fail,
        "list": items_list,
        "model-error": model_error,
        "flaky": FlakyModel(),
        "bytes": output_bytes,
    }


#: The built-in model keys, for help texts and validation.
BUILTIN_MODEL_KEYS = ("wordcount", "sleep", "fail", "list", "model-error", "flaky", "bytes")
