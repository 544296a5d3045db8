"""Hold the fault switches that make the next few Start or Check requests misbehave.

A switch is armed with a count and the endpoints it applies to; each matching
request consumes one. A request consumes at most one switch, tried in the
order of :data:`FAULT_KINDS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("start", "check")

#: Every switch, in the order a request tries them.
FAULT_KINDS = ("fail_next", "raw_next", "non_json_next", "drop_next", "delay_next")

#: Switches whose request is answered without being processed.
UNPROCESSED_KINDS = frozenset({"fail_next", "raw_next", "non_json_next"})

_DEFAULT_HTML = "<html>oops</html>"

# Fields each switch accepts besides count and endpoints; a typo fails loudly.
_FIELDS: dict[str, frozenset[str]] = {
    "fail_next": frozenset({"status", "retry_after", "message"}),
    "raw_next": frozenset({"body", "status"}),
    "non_json_next": frozenset({"body", "content_type"}),
    "drop_next": frozenset(),
    "delay_next": frozenset({"seconds"}),
}


class FaultSpecError(ValueError):
    """An admin request asked for a switch that does not exist or gave it bad fields."""


@dataclass
class FaultRule:
    """One armed switch.

    :param kind: one of :data:`FAULT_KINDS`.
    :param remaining: requests it still applies to.
    :param endpoints: the endpoints it applies to.
    :param status: HTTP status of the injected answer (``fail_next``, ``raw_next``).
    :param retry_after: ``Retry-After`` header value (``fail_next``).
    :param message: the JSON body's ``message`` (``fail_next``).
    :param body: JSON to send (``raw_next``) or text to send (``non_json_next``).
    :param content_type: media type of a ``non_json_next`` body.
    :param seconds: how long ``delay_next`` waits.
    """

    kind: str
    remaining: int
    endpoints: frozenset[str]
    status: int = 200
    retry_after: str | None = None
    message: str | None = None
    body: Any = None
    content_type: str = "text/html"
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Describe the switch for the admin API."""
        data: dict[str, Any] = {"count": self.remaining, "endpoints": sorted(self.endpoints)}
        if self.kind == "fail_next":
            data.update(status=self.status, retry_after=self.retry_after, message=self.message)
        elif self.kind == "raw_next":
            data.update(status=self.status, body=self.body)
        elif self.kind == "non_json_next":
            data.update(body=self.body, content_type=self.content_type)
        elif self.kind == "delay_next":
            data.update(seconds=self.seconds)
        return data


class FaultSwitches:
    """The armed switches of one server process."""

    def __init__(self) -> None:
        self._rules: dict[str, FaultRule] = {}

    def update(self, spec: Mapping[str, Any]) -> None:
        """Arm, re-arm or (with ``null`` or a count of 0) disarm switches; others stay as they are.

        Validates the whole spec before changing anything.

        :param spec: switch name to its settings, e.g. ``{"fail_next": {"count": 2, "status": 503}}``.
        :raises FaultSpecError: on an unknown switch or a bad field.
        """
        parsed: dict[str, FaultRule | None] = {}
        for kind, fields in spec.items():
            if kind not in _FIELDS:
                raise FaultSpecError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
            parsed[kind] = None if fields is None else _parse_rule(kind, fields)
        for kind, rule in parsed.items():
            if rule is None or rule.remaining == 0:
                self._rules.pop(kind, None)
            else:
                self._rules[kind] = rule

    def take(self, endpoint: str) -> FaultRule | None:
        """Consume the first armed switch that applies to a request on this endpoint.

        :param endpoint: ``start`` or ``check``.
        :return: the switch to apply, or None to serve the request normally.
        """
        if not self._rules:
            return None
        for kind in FAULT_KINDS:
            rule = self._rules.get(kind)
            if rule is not None and endpoint in rule.endpoints:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._rules[kind]
                return rule
        return None

    def clear(self) -> None:
        """Disarm every switch."""
        self._rules.clear()

    def to_json(self) -> dict[str, Any]:
        """Describe the armed switches for the admin API."""
        return {kind: rule.to_json() for kind, rule in self._rules.items()}


def _parse_rule(kind: str, fields: Any) -> FaultRule:
    if not isinstance(fields, Mapping):
        raise FaultSpecError(f"{kind} must be an object or null")
    unknown = set(fields) - _FIELDS[kind] - {"count", "endpoints"}
    if unknown:
        raise FaultSpecError(f"{kind} has unknown fields {sorted(unknown)}")
    count = fields.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise FaultSpecError(f"{kind}.count must be an integer >= 0")
    endpoints = fields.get("endpoints", list(ENDPOINTS))
    if not isinstance(endpoints, list) or not endpoints or any(endpoint not in ENDPOINTS for endpoint in endpoints):
        raise FaultSpecError(f"{kind}.endpoints must be a non-empty list of {list(ENDPOINTS)}")
    rule = FaultRule(kind=kind, remaining=count, endpoints=frozenset(endpoints))
    if kind == "fail_next":
        rule.status = _status(kind, fields.get("status", 503), low=400)
        rule.retry_after = _retry_after(fields.get("retry_after"))
        message = fields.get("message")
        if message is not None and not isinstance(message, str):
            raise FaultSpecError("fail_next.message must be a string")
        rule.message = message
    elif kind == "raw_next":
        if "body" not in fields:
            raise FaultSpecError("raw_next.body is required (any JSON)")
        try:
            json.dumps(fields["body"])
        except (TypeError, ValueError) as e:
            raise FaultSpecError(f"raw_next.body is not JSON-serialisable: {e}") from None
        rule.body = fields["body"]
        rule.status = _status(kind, fields.get("status", 200), low=100)
    elif kind == "non_json_next":
        body = fields.get("body", _DEFAULT_HTML)
        content_type = fields.get("content_type", "text/html")
        if not isinstance(body, str) or not isinstance(content_type, str):
            raise FaultSpecError("non_json_next.body and content_type must be strings")
        rule.body = body
        rule.content_type = content_type
    elif kind == "delay_next":
        seconds = fields.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise FaultSpecError("delay_next.seconds must be a number >= 0")
        rule.seconds = float(seconds)
    return rule


def _status(kind: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 599:
        raise FaultSpecError(f"{kind}.status must be an integer between {low} and 599")
    return value


def _retry_after(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FaultSpecError("fail_next.retry_after must be a number of seconds or an HTTP date")
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str) and value and "\n" not in value and "\r" not in value:
        return value
    raise FaultSpecError("fail_next.retry_after must be a number of seconds or an HTTP date")
