"""
Plan a batch of inferences: which inputs to start, what a wave of results means, when it is done.

Pure, like :mod:`airflow_provider_banana.contract`: no I/O. The batch operator starts calls and
persists the plan; the batch trigger (or the worker itself) waits for a wave of calls; this module
decides everything in between, and builds and reads the wave event they exchange.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_banana.contract.validation import validate_count
from airflow_provider_banana.exceptions import BananaError

#: What ``on_item_failure`` accepts.
ON_ITEM_FAILURE = ("fail", "skip")
#: Version of the persisted state; a try that finds another version starts the batch afresh.
STATE_VERSION = 1
WAVE = "wave"


class BananaBatchError(BananaError):
    """
    Report the items of a batch that failed after their retries.

    :param failures: input index to Banana's last message for it.
    :param size: the number of inputs in the batch.
    """

    def __init__(self, failures: Mapping[int, str], size: int) -> None:
        self.failures = dict(sorted(failures.items()))
        self.size = size
        shown = "; ".join(f"item {index}: {message}" for index, message in list(self.failures.items())[:20])
        more = f"; and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
        super().__init__(f"{len(self.failures)} of {size} Banana batch items failed: {shown}{more}")

    def __reduce__(self):
        return (type(self), (self.failures, self.size))


class BananaBatchTimeoutError(BananaError):
    """
    Report that a batch's deadline passed with calls still running.

    :param running: input index to call id, for the calls still running (they run on, billed;
        a retry of the task reattaches to them).
    :param timeout: the seconds the deadline stood for.
    :param progress: the batch's counts when it stopped.
    """

    def __init__(self, running: Mapping[int, str], timeout: float, progress: Mapping[str, int]) -> None:
        self.running = dict(sorted(running.items()))
        self.timeout = timeout
        self.progress = dict(progress)
        calls = ", ".join(f"item {i}: {c}" for i, c in list(self.running.items())[:10])
        more = f" and {len(self.running) - 10} more" if len(self.running) > 10 else ""
        counts = ", ".join(f"{v} {k}" for k, v in self.progress.items())
        super().__init__(
            f"Banana batch did not finish within {timeout:g} s ({counts}); still running: {calls}{more}. "
            "Banana v4 cannot cancel them; a retry of this task reattaches to them"
        )

    def __reduce__(self):
        return (type(self), (self.running, self.timeout, self.progress))


def inputs_digest(model_inputs: list[dict[str, Any]]) -> str:
    """
    Return a fingerprint of the batch's inputs, so a retry that rendered other inputs starts afresh.

    :param model_inputs: the validated inputs.
    """
    text = json.dumps(model_inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Wave:
    """
    What one wait on the calls in flight saw.

    :param finished: call id to its ``modelOutputs`` list.
    :param failed: call id to Banana's message, for calls that failed or are unknown.
    :param timed_out: the batch's deadline passed first.
    :param error: transport trouble that outlived the retries, or another local problem.
    """

    finished: dict[str, list[Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False
    error: str | None = None

    @property
    def empty(self) -> bool:
        """Return whether nothing ended and nothing went wrong (a wait that gave up early)."""
        return not (self.finished or self.failed or self.timed_out or self.error)

    def to_event(self) -> dict[str, Any]:
        """Return the trigger event payload: only what ended in this wave."""
        return {
            "status": WAVE,
            "finished": self.finished,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "error": self.error,
        }

    @classmethod
    def from_event(cls, event: Any) -> Wave:
        """
        Read a wave back from a trigger event payload.

        :raises BananaError: a missing or malformed event.
        """
        if not isinstance(event, Mapping) or event.get("status") != WAVE:
            raise BananaError(f"Expected a Banana batch wave event, got {event!r}")
        finished, failed = event.get("finished"), event.get("failed")
        if not isinstance(finished, dict) or not isinstance(failed, dict):
            raise BananaError(f"Malformed Banana batch wave event: {event!r}")
        error = event.get("error")
        return cls(
            finished={str(k): v if isinstance(v, list) else [v] for k, v in finished.items()},
            failed={str(k): str(v) for k, v in failed.items()},
            timed_out=bool(event.get("timed_out")),
            error=str(error) if error else None,
        )


def hand_back_now(ended: int, in_flight: int, since_first_end: float | None, linger: float) -> bool:
    """
    Return whether a wait on ``in_flight`` calls should hand control back to the worker.

    Each hand-back costs a write of the plan and its new outputs, and from the triggerer a task
    resume, so it waits for more than one call to end: all of them, or half, or whatever ended
    within ``linger`` seconds of the first.

    :param ended: calls that ended so far in this wait.
    :param in_flight: calls the wait watches.
    :param since_first_end: seconds since the first call ended, or ``None`` if none has.
    :param linger: how long to wait for more after the first.
    """
    if ended == 0 or since_first_end is None:
        return False
    return ended >= in_flight or 2 * ended >= in_flight or since_first_end >= linger


@dataclass
class BatchPlan:
    """
    The state of one batch: which input is running as which call, finished, failed, or waiting.

    :param size: the number of inputs.
    :param max_in_flight: most calls running at once.
    :param item_retries: times one failed input is started again before it counts as failed.
    :param stop_on_failure: start no new input once one has failed for good (``on_item_failure="fail"``).
    """

    size: int
    max_in_flight: int
    item_retries: int
    stop_on_failure: bool
    digest: str = ""
    running: dict[int, str] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    #: Outputs that arrived in this process; the persisted ones are read back only at the end.
    outputs: dict[int, list[Any]] = field(default_factory=dict)
    finished: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    last_errors: dict[int, str] = field(default_factory=dict)
    retry_queue: list[int] = field(default_factory=list)
    next_fresh: int = 0

    def __post_init__(self) -> None:
        self.max_in_flight = validate_count("max_in_flight", self.max_in_flight)
        self.item_retries = validate_count("item_retries", self.item_retries, minimum=0)

    # -- deciding ---------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Return how many inputs are yet to start (fresh ones and retries)."""
        return self.size - self.next_fresh + len(self.retry_queue)

    @property
    def stopping(self) -> bool:
        """Return whether no new input may start, because an item failed for good under "fail"."""
        return self.stop_on_failure and bool(self.failed)

    @property
    def ended(self) -> bool:
        """Return whether the batch has ended: nothing runs and nothing more will start."""
        return not self.running and (self.waiting == 0 or self.stopping)

    def next_starts(self) -> list[int]:
        """Return the inputs to start now, retries first, keeping at most ``max_in_flight`` running."""
        if self.stopping:
            return []
        free = self.max_in_flight - len(self.running)
        chosen: list[int] = []
        while free > 0 and self.retry_queue:
            chosen.append(self.retry_queue.pop(0))
            free -= 1
        while free > 0 and self.next_fresh < self.size:
            chosen.append(self.next_fresh)
            self.next_fresh += 1
            free -= 1
        return chosen

    def started(self, index: int, call_id: str | None, outputs: list[Any] | None = None) -> None:
        """
        Record that input ``index`` was started (and, if its Start finished at once, its outputs).

        :param index: the input.
        :param call_id: the call's id; may be ``None`` when the Start finished at once.
        :param outputs: the outputs of a Start that finished at once.
        """
        self.attempts[index] = self.attempts.get(index, 0) + 1
        if outputs is not None:
            self._finished(index, outputs)
        elif call_id:
            self.running[index] = call_id

    def _finished(self, index: int, outputs: list[Any]) -> None:
        # Only unfinished items keep their counters, so the persisted state stays small.
        self.outputs[index] = outputs
        self.finished += 1
        self.attempts.pop(index, None)
        self.last_errors.pop(index, None)

    def start_failed(self, index: int, message: str) -> None:
        """
        Record that Banana refused input ``index``'s Start (an error message, so nothing runs).

        :param index: the input.
        :param message: Banana's message.
        """
        self.attempts[index] = self.attempts.get(index, 0) + 1
        self._item_failed(index, message)

    def record(self, wave: Wave) -> None:
        """
        Take the calls that ended in a wave: outputs kept, failures retried or given up.

        :param wave: what the wait saw.
        """
        by_call = {call_id: index for index, call_id in self.running.items()}
        for call_id, outputs in wave.finished.items():
            if (index := by_call.get(call_id)) is not None:
                del self.running[index]
                self._finished(index, outputs)
        for call_id, message in wave.failed.items():
            if (index := by_call.get(call_id)) is not None:
                del self.running[index]
                self._item_failed(index, message)

    def _item_failed(self, index: int, message: str) -> None:
        self.last_errors[index] = message
        if self.attempts.get(index, 0) <= self.item_retries:
            self.retry_queue.append(index)
        else:
            self.failed[index] = message

    def new_try(self) -> None:
        """Give the items that failed for good a fresh set of retries: a new task try retries them."""
        for index in sorted(self.failed):
            self.attempts.pop(index, None)
            self.retry_queue.append(index)
        self.failed.clear()

    def progress(self) -> dict[str, int]:
        """Return the counts a person watching wants: finished, running, waiting, failed."""
        return {
            "finished": self.finished,
            "running": len(self.running),
            "waiting": self.waiting,
            "failed": len(self.failed),
        }

    def result(self, outputs: Mapping[int, list[Any]]) -> list[list[Any] | None]:
        """
        Return one entry per input, in input order: its outputs, or ``None`` for a failed one.

        :param outputs: every output of the batch, by input index (persisted and new).
        :raises BananaBatchError: an item failed and the plan stops on failure.
        """
        if self.stop_on_failure and self.failed:
            raise BananaBatchError(self.failed, self.size)
        return [outputs.get(index) for index in range(self.size)]

    # -- persisting -------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """
        Return the JSON state to persist.

        It holds no outputs (they are persisted in chunks as they arrive) and no counters of
        finished items, so it stays small: the calls in flight, the failures, the retry queue.
        """
        return {
            "version": STATE_VERSION,
            "size": self.size,
            "digest": self.digest,
            "running": {str(k): v for k, v in self.running.items()},
            "attempts": {str(k): v for k, v in self.attempts.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
            "last_errors": {str(k): v for k, v in self.last_errors.items()},
            "retry_queue": self.retry_queue,
            "next_fresh": self.next_fresh,
            # "done" is the key tries of earlier versions wrote: kept, so they resume across an upgrade.
            "done": self.finished,
        }

    def restore(self, state: Any) -> bool:
        """
        Load what an earlier try (or deferral) persisted, if it is for the same inputs.

        Outputs are not part of it: they stay where they were persisted until the batch ends. A
        call whose outputs were persisted but not yet marked finished in the state is still listed as
        running, and the next wave's Check (free) finds it finished again.

        :param state: the JSON state from :meth:`to_state`.
        :return: whether the state was taken.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            return False
        if state.get("size") != self.size or state.get("digest") != self.digest:
            return False
        self.running = {int(k): str(v) for k, v in state.get("running", {}).items()}
        self.attempts = {int(k): int(v) for k, v in state.get("attempts", {}).items()}
        self.failed = {int(k): str(v) for k, v in state.get("failed", {}).items()}
        self.last_errors = {int(k): str(v) for k, v in state.get("last_errors", {}).items()}
        self.retry_queue = [int(i) for i in state.get("retry_queue", [])]
        self.next_fresh = int(state.get("next_fresh", 0))
        self.finished = int(state.get("done", 0))
        self.outputs = {}
        return True
