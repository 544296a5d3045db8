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

from airflow_provider_banana.contract.events import OutputsOnServer, wave_outputs_event, wave_outputs_from_event
from airflow_provider_banana.contract.validation import validate_count
from airflow_provider_banana.exceptions import BananaBatchError, BananaError

#: What ``on_item_failure`` accepts.
ON_ITEM_FAILURE = ("fail", "skip")
#: Version of the persisted state; a try that finds another version starts the batch afresh.
STATE_VERSION = 1
WAVE = "wave"


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
    :param on_server: calls that finished whose outputs the event left on the server (too large for
        it): the worker fetches them, then moves them to ``finished``.
    :param unstorable: call id to why Airflow cannot store its outputs (which stay out of the wave):
        the calls finished, and a new Start would bring the same outputs, so their inputs fail for good.
    """

    finished: dict[str, list[Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False
    error: str | None = None
    on_server: dict[str, OutputsOnServer] = field(default_factory=dict)
    unstorable: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Return whether nothing ended and nothing went wrong (a wait that gave up early)."""
        return not (self.finished or self.failed or self.timed_out or self.error or self.on_server or self.unstorable)

    def to_event(self) -> dict[str, Any]:
        """
        Return the trigger event payload: only what ended in this wave, outputs inline up to 64 KiB in all.

        Serializing the outputs takes time for large ones: a trigger calls this in a thread.
        """
        return {
            "status": WAVE,
            **wave_outputs_event(self.finished),
            "failed": self.failed,
            "timed_out": self.timed_out,
            "error": self.error,
            "unstorable": self.unstorable,
        }

    @classmethod
    def from_event(cls, event: Any) -> Wave:
        """
        Read a wave back from a trigger event payload.

        :raises BananaError: a missing or malformed event.
        """
        if not isinstance(event, Mapping) or event.get("status") != WAVE:
            raise BananaError(f"Expected a Banana batch wave event, got {event!r}")
        failed = event.get("failed")
        if not isinstance(failed, dict):
            raise BananaError(f"Malformed Banana batch wave event: {event!r}")
        finished, on_server = wave_outputs_from_event(event)
        error = event.get("error")
        return cls(
            finished=finished,
            failed={str(k): str(v) for k, v in failed.items()},
            timed_out=bool(event.get("timed_out")),
            error=str(error) if error else None,
            on_server=on_server,
            # Absent from the events of earlier versions.
            unstorable={str(k): str(v) for k, v in (event.get("unstorable") or {}).items()},
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


#: Why an input whose Start got no recorded answer counts as failed: it may have been taken.
START_LOST = "its Start may have been taken (and billed) but no answer was recorded"
#: The same, for a Start an earlier process sent and then stopped (killed) before its answer was recorded.
START_LOST_EARLIER = "its Start was sent by a worker that stopped before recording the answer: it may have been billed"
#: With an output file, how many inputs past the first unwritten line may start, in multiples of
#: ``max_in_flight``: the lines between are held in memory until they can be written in order.
ORDER_WINDOW = 4
#: Default for ``max_starting``: most Starts sent at once, and so most call ids a dying worker loses.
DEFAULT_MAX_STARTING = 32


@dataclass
class BatchPlan:
    """
    The state of one batch: which input is running as which call, finished, failed, or waiting.

    An input goes from waiting to *starting* when its Start is sent, and to running (or finished)
    only once the Start's answer is recorded; a Start refused by Banana or never sent puts it back
    for a retry, one that may have been taken without an answer fails it naming that it may have
    been billed. So no input is ever silently dropped, and a worker that dies loses at most the ids
    of the ``max_starting`` Starts it had in flight (the next try reports them as possibly billed).

    With ``ordered`` (an output file), results are written as lines in input order: :meth:`ready_lines`
    gives the lines that can be written next, and no input starts more than ``ORDER_WINDOW x
    max_in_flight`` past the first unwritten one, so what is held meanwhile stays bounded.

    :param size: the number of inputs.
    :param max_in_flight: most calls running (or starting) at once.
    :param item_retries: times one failed input is started again before it counts as failed.
    :param stop_on_failure: start no new input once one has failed for good (``on_item_failure="fail"``).
    :param max_starting: most Starts in flight at once.
    :param ordered: results go to an output file, in input order.
    """

    size: int
    max_in_flight: int
    item_retries: int
    stop_on_failure: bool
    digest: str = ""
    max_starting: int = DEFAULT_MAX_STARTING
    ordered: bool = False
    running: dict[int, str] = field(default_factory=dict)
    starting: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
    #: Outputs that arrived in this process; the persisted ones are read back only at the end.
    outputs: dict[int, list[Any]] = field(default_factory=dict)
    finished: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    last_errors: dict[int, str] = field(default_factory=dict)
    #: The call of an input that failed, when it had one (for its output line).
    failed_calls: dict[int, str] = field(default_factory=dict)
    retry_queue: list[int] = field(default_factory=list)
    next_fresh: int = 0
    #: With ``ordered``: lines written so far (inputs ``0 .. written - 1``), and those written as failed.
    written: int = 0
    failed_written: int = 0
    #: With ``ordered``: finished inputs not yet written, to their call id (its outputs can be
    #: fetched again with a free Check) or, for a Start that finished at once, their outputs.
    held: dict[int, Any] = field(default_factory=dict)
    #: Inputs whose calls finished with outputs Airflow cannot store: failed, never started again.
    unstorable: dict[int, str] = field(default_factory=dict)
    #: Inputs whose Starts the persisted state had in flight: no answer recorded (see :meth:`restore`).
    lost_earlier: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.max_in_flight = validate_count("max_in_flight", self.max_in_flight)
        self.item_retries = validate_count("item_retries", self.item_retries, minimum=0)
        self.max_starting = validate_count("max_starting", self.max_starting)

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
        return not self.running and not self.starting and (self.waiting == 0 or self.stopping)

    @property
    def failed_count(self) -> int:
        """Return how many inputs failed for good (written as lines or not)."""
        return len(self.failed) + self.failed_written

    def next_starts(self) -> list[int]:
        """
        Return the inputs to start now, retries first, and mark them starting.

        At most ``max_in_flight`` run or start at once, at most ``max_starting`` start at once, and
        with ``ordered`` none starts ``ORDER_WINDOW x max_in_flight`` or more past the first unwritten line.
        """
        if self.stopping:
            return []
        free = min(
            self.max_in_flight - len(self.running) - len(self.starting),
            self.max_starting - len(self.starting),
        )
        chosen: list[int] = []
        while free > 0 and self.retry_queue:
            chosen.append(self.retry_queue.pop(0))
            free -= 1
        end = self.size
        if self.ordered:
            end = min(end, self.written + ORDER_WINDOW * self.max_in_flight)
        while free > 0 and self.next_fresh < end:
            chosen.append(self.next_fresh)
            self.next_fresh += 1
            free -= 1
        self.starting.update(chosen)
        return chosen

    def started(self, index: int, call_id: str | None, outputs: list[Any] | None = None) -> None:
        """
        Record the answer to input ``index``'s Start: running as ``call_id``, or finished at once.

        :param index: the input.
        :param call_id: the call's id; may be ``None`` when the Start finished at once.
        :param outputs: the outputs of a Start that finished at once.
        """
        self.starting.discard(index)
        self.attempts[index] = self.attempts.get(index, 0) + 1
        if outputs is not None:
            self._finished(index, outputs, call_id)
        elif call_id:
            self.running[index] = call_id

    def _finished(self, index: int, outputs: list[Any], call_id: str | None) -> None:
        # Only unfinished items keep their counters, so the persisted state stays small.
        self.outputs[index] = outputs
        self.finished += 1
        self.attempts.pop(index, None)
        self.last_errors.pop(index, None)
        self.failed_calls.pop(index, None)
        if self.ordered:
            self.held[index] = call_id if call_id else {"outputs": outputs}

    def start_failed(self, index: int, message: str) -> None:
        """
        Record that Banana refused input ``index``'s Start (an error message, so nothing runs).

        :param index: the input.
        :param message: Banana's message.
        """
        self.starting.discard(index)
        self.attempts[index] = self.attempts.get(index, 0) + 1
        self._item_failed(index, message)

    def start_not_sent(self, index: int) -> None:
        """
        Put input ``index`` back, first in line: its Start provably never reached the server.

        :param index: the input.
        """
        self.starting.discard(index)
        self.retry_queue.insert(0, index)

    def start_lost(self, index: int, message: str = START_LOST) -> None:
        """
        Fail input ``index`` for good: its Start may have been taken, but no answer was recorded.

        Not retried within the try: a second Start could pay twice. A new try of the task retries
        it (:meth:`new_try`), as it does every failed input.

        :param index: the input.
        :param message: why, for the failure's text.
        """
        self.starting.discard(index)
        self.attempts[index] = self.attempts.get(index, 0) + 1
        self.last_errors[index] = message
        self.failed[index] = message

    def output_lost(self, index: int, message: str) -> None:
        """
        Fail finished input ``index`` for good: its outputs, held for the output file, cannot be had again.

        :param index: the input.
        :param message: why.
        """
        self.held.pop(index, None)
        self.outputs.pop(index, None)
        self.finished -= 1
        self.last_errors[index] = message
        self.failed[index] = message

    def record(self, wave: Wave) -> None:
        """
        Take the calls that ended in a wave: outputs kept, failures retried or given up.

        :param wave: what the wait saw.
        """
        by_call = {call_id: index for index, call_id in self.running.items()}
        for call_id, outputs in wave.finished.items():
            if (index := by_call.get(call_id)) is not None:
                del self.running[index]
                self._finished(index, outputs, call_id)
        for call_id, message in wave.failed.items():
            if (index := by_call.get(call_id)) is not None:
                del self.running[index]
                self.failed_calls[index] = call_id
                self._item_failed(index, message)
        for call_id, message in wave.unstorable.items():
            if (index := by_call.get(call_id)) is not None:
                del self.running[index]
                self.outputs_not_storable(index, message, call_id)

    def outputs_not_storable(self, index: int, message: str, call_id: str | None) -> None:
        """
        Fail input ``index`` for good: its call finished with outputs Airflow cannot store.

        Never started again, in this try or the next (:meth:`new_try`): a new Start would pay for
        the same outputs. Under ``"fail"`` the batch fails naming it; under ``"skip"`` its entry is ``None``.

        :param index: the input.
        :param message: where and why (a ``BananaOutputsNotStorableError``'s ``message``).
        :param call_id: the finished call, if it has an id (a Start that finished at once may not).
        """
        self.starting.discard(index)
        self.running.pop(index, None)
        self.attempts[index] = self.attempts.get(index, 0) + 1
        if call_id:
            self.failed_calls[index] = call_id
        self.last_errors[index] = message
        self.failed[index] = message
        self.unstorable[index] = message

    def _item_failed(self, index: int, message: str) -> None:
        self.last_errors[index] = message
        if self.attempts.get(index, 0) <= self.item_retries:
            self.retry_queue.append(index)
        else:
            self.failed[index] = message

    def new_try(self) -> None:
        """Give the items that failed for good a fresh set of retries, except those a Start cannot mend."""
        for index in sorted(self.failed):
            if index in self.unstorable:
                continue  # a new Start would pay for the same outputs
            self.attempts.pop(index, None)
            self.retry_queue.append(index)
        self.failed = {index: message for index, message in self.failed.items() if index in self.unstorable}

    def progress(self) -> dict[str, int]:
        """Return the counts a person watching wants: finished, running, waiting, failed."""
        return {
            "finished": self.finished,
            "running": len(self.running) + len(self.starting),
            "waiting": self.waiting,
            "failed": self.failed_count,
        }

    def result(self, outputs: Mapping[int, list[Any]]) -> list[list[Any] | None]:
        """
        Return one entry per input, in input order: its outputs, or ``None`` for a failed one.

        :param outputs: every output of the batch, by input index (persisted and new).
        :raises BananaBatchError: an item failed and the plan stops on failure.
        """
        self.raise_if_failed()
        return [outputs.get(index) for index in range(self.size)]

    def raise_if_failed(self) -> None:
        """:raises BananaBatchError: an item failed for good and the plan stops on failure."""
        if self.stop_on_failure and self.failed:
            raise BananaBatchError(self.failed, self.size)

    # -- the output file (ordered) ----------------------------------------------------------------------

    def refetch(self) -> dict[int, str]:
        """Return the held inputs whose outputs this process lacks, to their call id (a Check fetches them)."""
        return {i: c for i, c in self.held.items() if i not in self.outputs and isinstance(c, str)}

    def ready_lines(self) -> list[dict[str, Any]]:
        """
        Return the output lines that can be written next, in input order (changing nothing).

        A line is ready once its input finished (with its outputs at hand) or, under ``"skip"``,
        failed for good; the first input that is neither ends the run of ready lines.
        """
        lines: list[dict[str, Any]] = []
        index = self.written
        while index < self.size:
            if index in self.held:
                kept = self.held[index]
                outputs = kept["outputs"] if isinstance(kept, dict) else self.outputs.get(index)
                if outputs is None:
                    break
                call_id = kept if isinstance(kept, str) else None
                line = {"index": index, "status": "success", "call_id": call_id, "model_outputs": outputs}
                lines.append({**line, "message": None})
            elif index in self.failed and not self.stop_on_failure:
                lines.append(
                    {
                        "index": index,
                        "status": "failed",
                        "call_id": self.failed_calls.get(index),
                        "model_outputs": None,
                        "message": self.failed[index],
                    }
                )
            else:
                break
            index += 1
        return lines

    def lines_written(self, count: int) -> None:
        """
        Record that the first ``count`` lines of :meth:`ready_lines` were written: forget them.

        :param count: how many were written.
        """
        for index in range(self.written, self.written + count):
            self.held.pop(index, None)
            self.outputs.pop(index, None)
            self.unstorable.pop(index, None)
            if self.failed.pop(index, None) is not None:
                self.failed_written += 1
                self.last_errors.pop(index, None)
                self.failed_calls.pop(index, None)
                self.attempts.pop(index, None)
        self.written += count

    # -- persisting -------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """
        Return the JSON state to persist.

        It holds no outputs (they are persisted in chunks as they arrive, or written to the output
        file) and no counters of finished items, so it stays small: the calls in flight, the
        failures, the retry queue, the Starts awaiting their answer.
        """
        return {
            "version": STATE_VERSION,
            "size": self.size,
            "digest": self.digest,
            "running": {str(k): v for k, v in self.running.items()},
            "starting": sorted(self.starting),
            "attempts": {str(k): v for k, v in self.attempts.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
            "failed_calls": {str(k): v for k, v in self.failed_calls.items()},
            "last_errors": {str(k): v for k, v in self.last_errors.items()},
            "retry_queue": self.retry_queue,
            "next_fresh": self.next_fresh,
            "written": self.written,
            "failed_written": self.failed_written,
            "held": {str(k): v for k, v in self.held.items()},
            "unstorable": {str(k): v for k, v in self.unstorable.items()},
            # "done" is the key tries of earlier versions wrote: kept, so they resume across an upgrade.
            "done": self.finished,
        }

    def restore(self, state: Any) -> bool:
        """
        Load what an earlier try (or deferral) persisted, if it is for the same inputs.

        Outputs are not part of it: they stay where they were persisted until the batch ends. A
        call whose outputs were persisted but not yet marked finished in the state is still listed as
        running, and the next wave's Check (free) finds it finished again. Starts that were in flight
        when the state was written have no recorded answer: their inputs fail as possibly billed.

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
        self.failed_calls = {int(k): str(v) for k, v in state.get("failed_calls", {}).items()}
        self.last_errors = {int(k): str(v) for k, v in state.get("last_errors", {}).items()}
        self.retry_queue = [int(i) for i in state.get("retry_queue", [])]
        self.next_fresh = int(state.get("next_fresh", 0))
        self.finished = int(state.get("done", 0))
        self.written = int(state.get("written", 0))
        self.failed_written = int(state.get("failed_written", 0))
        self.held = {int(k): v for k, v in state.get("held", {}).items()}
        self.unstorable = {int(k): str(v) for k, v in state.get("unstorable", {}).items()}
        self.outputs = {}
        self.starting = set()
        self.lost_earlier = sorted(int(index) for index in state.get("starting", []))
        for index in self.lost_earlier:
            self.start_lost(index, START_LOST_EARLIER)
        return True
