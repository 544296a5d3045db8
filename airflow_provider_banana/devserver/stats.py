"""Count what the devserver received and did, for the admin API's ``/_admin/stats``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class Gauge:
    """A value that goes up and down, remembering its peak since the last reset."""

    __slots__ = ("peak", "value")

    def __init__(self) -> None:
        self.value = 0
        self.peak = 0

    def inc(self) -> None:
        """Add one and raise the peak if needed."""
        self.value += 1
        if self.value > self.peak:
            self.peak = self.value

    def dec(self) -> None:
        """Subtract one."""
        self.value -= 1

    def reset_peak(self) -> None:
        """Restart peak tracking from the current value."""
        self.peak = self.value

    @contextmanager
    def held(self) -> Iterator[None]:
        """Count one for as long as the block runs."""
        self.inc()
        try:
            yield
        finally:
            self.dec()


class ModelStats:
    """Counters of one model."""

    __slots__ = ("queued", "running", "starts_taken")

    def __init__(self) -> None:
        self.starts_taken = 0
        self.running = Gauge()
        self.queued = Gauge()

    def reset(self) -> None:
        """Zero the counter; the gauges keep their current value and restart their peak from it."""
        self.starts_taken = 0
        self.running.reset_peak()
        self.queued.reset_peak()

    def to_json(self) -> dict[str, int]:
        """Return the counters as a JSON-ready dict."""
        return {
            "starts_taken": self.starts_taken,
            "running": self.running.value,
            "running_max": self.running.peak,
            "queued": self.queued.value,
            "queued_max": self.queued.peak,
        }


class Stats:
    """All counters of one server process.

    Plain attributes mutated from the event loop's single thread, so no locking.

    :param model_keys: the models served, each counted separately.
    """

    def __init__(self, model_keys: Iterable[str]) -> None:
        self.long_polls_open = Gauge()
        self.start_holds_open = Gauge()
        self.running = Gauge()
        self.queued = Gauge()
        self.per_model = {key: ModelStats() for key in model_keys}
        self._zero_counters()

    def _zero_counters(self) -> None:
        self.start_requests = 0
        self.starts_taken = 0
        self.check_requests = 0
        self.finished = 0
        self.failed = 0
        self.faults_served = 0

    def reset(self) -> None:
        """Zero the counters; gauges keep their current value and restart their peak from it."""
        self._zero_counters()
        for gauge in (self.long_polls_open, self.start_holds_open, self.running, self.queued):
            gauge.reset_peak()
        for model in self.per_model.values():
            model.reset()

    def to_json(self, calls_kept: int) -> dict[str, Any]:
        """Return every counter as a JSON-ready dict.

        :param calls_kept: calls currently remembered (pending, or finished within the TTL).
        """
        return {
            "start_requests": self.start_requests,
            "starts_taken": self.starts_taken,
            "check_requests": self.check_requests,
            "long_polls_open": self.long_polls_open.value,
            "long_polls_open_max": self.long_polls_open.peak,
            "start_holds_open": self.start_holds_open.value,
            "start_holds_open_max": self.start_holds_open.peak,
            "running": self.running.value,
            "running_max": self.running.peak,
            "queued": self.queued.value,
            "queued_max": self.queued.peak,
            "finished": self.finished,
            "failed": self.failed,
            "faults_served": self.faults_served,
            "calls_kept": calls_kept,
            "per_model": {key: model.to_json() for key, model in self.per_model.items()},
        }
