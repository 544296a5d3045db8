"""
Drive one batch from the worker: start inputs, take the waves of calls that ended, write outputs, and say when to defer.

The operator (:class:`~airflow_provider_banana.operators.batch.BananaBatchInferenceOperator`) is a
thin shell around :class:`BatchRun`: it builds one per ``execute`` or ``execute_complete``, calls
:meth:`BatchRun.advance` until it says :class:`Done`, sleeps on :class:`Pause`, and defers to the
trigger on :class:`Defer`. The plan (:mod:`.plan`) decides; the store (:mod:`.store`) persists; the
worker (:mod:`.watch`) sends; this module runs the loop between them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_banana import metrics
from airflow_provider_banana.batch.files import JsonlInputs, JsonlOutput, ListInputs, as_storage_path
from airflow_provider_banana.batch.plan import START_LOST, START_LOST_EARLIER, BatchPlan, Wave
from airflow_provider_banana.batch.store import BatchStore
from airflow_provider_banana.batch.watch import BatchWorker
from airflow_provider_banana.contract import (
    BananaFinished,
    BananaResult,
    BananaRetryPolicy,
    batch_timeout_error,
    check_storable,
    validate_batch_inputs,
)
from airflow_provider_banana.contract.waiting import time_left
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaConfigError,
    BananaError,
    BananaOutputsNotStorableError,
    BananaTransportError,
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_banana.hooks.banana import BananaHook

    BatchInputs = ListInputs | JsonlInputs

#: Seconds a batch pauses when nothing runs because every input left to start was refused at its
#: Start (an "error" message) and waits for its retry.
REFUSED_START_PAUSE = 1.0
#: Most seconds a wave in the worker lingers after its first call ended (``linger`` is the triggerer's).
WORKER_LINGER = 0.1
#: With an output file, lines are written once this many per ``max_in_flight`` slot are ready (and
#: always before a deferral and at the end), so a batch of 100,000 writes a few hundred parts.
FLUSH_LINES_PER_SLOT = 2


@dataclass(frozen=True)
class Done:
    """
    The batch ended: ``result`` is the task's return value.

    :param result: the outputs in input order, or the output file's summary.
    """

    result: Any


@dataclass(frozen=True)
class Defer:
    """
    No call ended within ``defer_after``: hand these calls to the triggerer.

    :param call_ids: the calls in flight.
    """

    call_ids: list[str]


@dataclass(frozen=True)
class Pause:
    """
    Nothing runs (every input left was refused at its Start and waits for its retry): sleep, then advance again.

    :param seconds: how long to sleep.
    """

    seconds: float = REFUSED_START_PAUSE


class BatchRun:
    """
    One stretch of a batch in the worker, between two deferrals (or from its start to its end).

    :param source: the inputs.
    :param output: the output file, if any.
    :param plan: the plan, loaded from the store if the batch resumes.
    :param store: where the plan is persisted.
    :param deadline: ``time.time()`` this try must end by (see :func:`~airflow_provider_banana.contract.deadline_for`).
    :param banana_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff of every request.
    :param model_key: the model; defaults to the connection extra's ``model_key``.
    :param long_poll: use long-poll Checks.
    :param poll_interval: least seconds between the starts of two Checks of one call.
    :param linger: seconds a wave in the triggerer lingers; the worker's own linger at most :data:`WORKER_LINGER`.
    :param defer_after: seconds to wait in the worker for a call to end before deferring; ``None``
        never defers (the worker follows every call to its end).
    :param log: the task's logger.
    :param tags: the metric tags of the task.
    """

    def __init__(
        self,
        *,
        source: BatchInputs,
        output: JsonlOutput | None,
        plan: BatchPlan,
        store: BatchStore,
        deadline: float,
        banana_conn_id: str,
        retry_policy: BananaRetryPolicy,
        model_key: str | None,
        long_poll: bool,
        poll_interval: float,
        linger: float,
        defer_after: float | None,
        log: logging.Logger | Any,
        tags: metrics.Tags,
    ) -> None:
        self.source = source
        self.output = output
        self.plan = plan
        self.store = store
        self.deadline = deadline
        self._model_key = model_key
        self._defer_after = defer_after
        self._log = log
        self._tags = tags
        self._worker = BatchWorker(
            banana_conn_id,
            retry_policy,
            # A hand-back costs the worker one write of the state, not a task resume: the slots
            # of the calls that ended are refilled at once rather than a second later.
            linger=min(linger, WORKER_LINGER),
            deadline=deadline,
            started_at=store.started_at,
            long_poll=long_poll,
            poll_interval=poll_interval,
        )
        # Outputs taken from a wave, persisted with the next write of the plan.
        self._unsaved: dict[int, list[Any]] = {}
        # The batch's finished and failed inputs already counted as metrics.
        self._items_counted = (plan.finished, plan.failed_count)
        self._begun = False

    def advance(self) -> Done | Defer | Pause:
        """
        Start the next inputs and follow the calls until the batch ends, should defer, or must pause.

        :raises BananaBatchError: inputs failed after their retries under ``on_item_failure="fail"``.
        :raises BananaBatchTimeoutError: the deadline passed with calls running.
        :raises BananaError: Starts or the wait failed for good (the calls run on; a retry reattaches).
        """
        plan, store, started_at = self.plan, self.store, self.store.started_at
        if not self._begun:
            self._begun = True
            if self.output is not None:
                self._refetch()
        while True:
            self._start_next()
            self._flush()
            self._log.info("Banana batch: %s", progress_line(plan, store, time.time() - started_at))
            self._count_items()
            if plan.ended:
                return Done(self._finish())
            if time.time() >= self.deadline:
                raise batch_timeout_error(plan.running, plan.progress(), self.deadline, started_at)
            running = list(plan.running.values())
            if not running:
                return Pause()
            if self._defer_after is None:
                self.take_wave(self._worker.wave(running))
                continue
            # A deferral costs a task resume (scheduling, a worker start, a DAG parse: seconds),
            # so while calls keep ending within defer_after the batch goes on in the worker.
            wave = self._worker.wave(running, within=self._defer_after) if self._defer_after else Wave()
            if wave.empty:
                # What is held in memory does not survive the deferral: write what can be.
                self._flush(force=True)
                return Defer(running)
            self.take_wave(wave)

    def close(self) -> None:
        """Stop following the calls (they run on) and release the worker's loop and session."""
        self._worker.close()

    def _count_items(self) -> None:
        plan = self.plan
        # Counted as the progress line shows them: the inputs that ended since the last line.
        finished, failed = self._items_counted
        tags = self._tags
        metrics.count(metrics.BATCH_INPUT_FINISHED, tags, n=plan.finished - finished)
        metrics.count(metrics.BATCH_INPUT_FAILED, tags, n=plan.failed_count - failed)
        self._items_counted = (plan.finished, plan.failed_count)

    def _start_next(self) -> None:
        source, plan, store, worker = self.source, self.plan, self.store, self._worker
        # Starts go out concurrently, at most max_starting at once. Each burst's inputs are saved
        # as "starting" before it is sent, and each answer is saved as it arrives (grouped with
        # the next burst's write), so a worker that dies loses at most the ids of the Starts in flight.
        pending: dict[concurrent.futures.Future[BananaResult], int] = {}
        new_outputs, self._unsaved = self._unsaved, {}
        error: BananaError | None = None
        try:
            while True:
                chosen = [] if error else plan.next_starts()
                try:
                    bodies = [(index, source.get(index)) for index in chosen]
                except BaseException:
                    for index in chosen:
                        plan.start_not_sent(index)
                    raise
                if chosen:
                    store.save(plan, new_outputs)
                for index, body in bodies:
                    pending[worker.start(body, self._model_key)] = index
                if not pending:
                    break
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    error = self._record_start(plan, pending.pop(future), future, new_outputs) or error
        finally:
            store.save(plan, new_outputs)
        if error is not None:
            self._log.warning("Banana batch stopped starting inputs (%s): %s", counts(plan), error)
            raise error

    def _record_start(
        self,
        plan: BatchPlan,
        index: int,
        future: concurrent.futures.Future[BananaResult],
        new_outputs: dict[int, list[Any]],
    ) -> BananaError | None:
        try:
            result = future.result()
        except BananaCallError as e:
            self._log.warning("Banana refused item %d: %s", index, e.message)
            plan.start_failed(index, e.message)
            return None
        except BananaTransportError as e:
            if e.request_sent:
                self._log.warning("Banana batch item %d: %s: %s", index, START_LOST, e)
                plan.start_lost(index, f"{START_LOST} ({e})")
            else:
                plan.start_not_sent(index)
            return e
        except BananaError as e:  # a bad connection or model key: raised before anything was sent
            plan.start_not_sent(index)
            return e
        outputs = result.model_outputs if isinstance(result, BananaFinished) else None
        if outputs is not None:
            try:
                check_storable(outputs, call_id=result.call_id)
            except BananaOutputsNotStorableError as e:
                self._log.warning("Banana batch item %d: %s", index, e)
                plan.outputs_not_storable(index, e.message, result.call_id)
                return None
            new_outputs[index] = outputs
        # At debug level: the mapping is in the persisted plan (running calls) and the output file.
        self._log.debug("Banana batch item %d: call %s", index, result.call_id or "finished within its Start")
        plan.started(index, result.call_id, outputs)
        return None

    def take_wave(self, wave: Wave) -> None:
        """
        Record a wave of calls that ended, from the worker or the triggerer.

        :param wave: what ended (outputs too large for a trigger's event already fetched).
        :raises BananaError: the wave's wait failed (the calls run on; a retry reattaches to them).
        :raises BananaBatchTimeoutError: the deadline passed.
        """
        plan, store = self.plan, self.store
        by_call = {call_id: index for index, call_id in plan.running.items()}
        new_outputs = {by_call[c]: outputs for c, outputs in wave.finished.items() if c in by_call}
        for call_id, message in wave.failed.items():
            if call_id in by_call:
                self._log.warning("Banana batch item %d (call %s) failed: %s", by_call[call_id], call_id, message)
        for call_id, message in wave.unstorable.items():
            if call_id in by_call:
                self._log.warning(
                    "Banana batch item %d (call %s) finished, but fails for good (no new Start): %s",
                    by_call[call_id],
                    call_id,
                    message,
                )
        plan.record(wave)
        if wave.error or wave.timed_out:
            store.save(plan, new_outputs)
        else:
            # Saved with the next burst of Starts, before any is sent (_start_next always saves):
            # one write per wave, not two. A worker that dies first leaves these calls listed as
            # running, and the next try's Check (free) finds them finished again.
            self._unsaved.update(new_outputs)
        if wave.error:
            raise BananaError(
                f"Waiting for the Banana batch's calls failed: {wave.error} ({counts(plan)}); "
                "the calls run on, and a retry of this task reattaches to them"
            )
        if wave.timed_out:
            raise batch_timeout_error(plan.running, plan.progress(), self.deadline, store.started_at)

    def _refetch(self) -> None:
        plan, store, worker = self.plan, self.store, self._worker
        # Outputs of finished inputs not yet written do not survive a deferral or a dead worker:
        # their calls are Checked again (free; the calls have finished, so no Check is held).
        wanted = plan.refetch()
        if not wanted:
            return
        checks = {index: worker.check(call_id) for index, call_id in wanted.items()}
        for index, future in checks.items():
            try:
                result = future.result()
            except BananaError as e:
                plan.output_lost(index, f"its outputs could not be fetched again from call {wanted[index]}: {e}")
                continue
            if isinstance(result, BananaFinished):
                plan.outputs[index] = result.model_outputs
            else:
                plan.output_lost(index, f"call {wanted[index]} had finished but now reads {result.status_text!r}")
        self._log.info("Banana batch: fetched the outputs of %d finished inputs not yet written", len(checks))
        store.save(plan, {})

    def _flush(self, force: bool = False) -> None:
        plan, store, output = self.plan, self.store, self.output
        if output is None:
            return
        lines = plan.ready_lines()
        if not lines or (not force and len(lines) < FLUSH_LINES_PER_SLOT * plan.max_in_flight):
            return
        output.write_part(store.parts, lines)
        plan.lines_written(len(lines))
        store.parts += 1
        store.save(plan, {})

    def _finish(self) -> Any:
        plan, store, output = self.plan, self.store, self.output
        if output is not None:
            plan.raise_if_failed()
            self._flush(force=True)
            if plan.written != plan.size:
                raise BananaError(f"The Banana batch ended with {plan.written} of {plan.size} output lines written")
            output.assemble(store.parts)
            self._log.info("Banana batch: wrote %d lines to %s", plan.size, output.path)
            store.clear()
            output.remove_parts()
            return {"output_path": str(output.path), "succeeded": plan.finished, "failed": plan.failed_count}
        if plan.failed and not plan.stop_on_failure:
            for index, message in sorted(plan.failed.items()):
                self._log.warning(
                    "Banana batch item %d failed after its retries; its output is None: %s", index, message
                )
        try:
            return plan.result(store.outputs())
        finally:
            if not (plan.failed and plan.stop_on_failure):
                store.clear()


def progress_line(plan: BatchPlan, store: BatchStore, elapsed: float) -> str:
    # "120/1000 finished (12%), 64 running, 816 waiting, 0 failed after 12.0 s; 10.0 inputs/s, about
    # 88 s left": the rate counts this try's inputs only (a resumed try starts from what it found).
    counts = plan.progress()
    ended = counts["finished"] + counts["failed"]
    line = (
        f"{counts['finished']}/{plan.size} finished ({counts['finished'] / max(plan.size, 1):.0%}), "
        f"{counts['running']} running, {counts['waiting']} waiting, {counts['failed']} failed after {elapsed:.1f} s"
    )
    this_try = ended - store.ended_at_start
    if this_try > 0 and elapsed > 0 and ended < plan.size:
        rate = this_try / elapsed
        line += f"; {rate:.1f} inputs/s, {time_left((plan.size - ended) / rate, estimate=True)}"
    return line


def counts(plan: BatchPlan) -> str:
    return ", ".join(f"{value} {name}" for name, value in plan.progress().items())


@contextlib.contextmanager
def open_batch(
    context: Context,
    *,
    model_inputs: Any,
    input_path: str | ObjectStoragePath | None,
    output_path: str | ObjectStoragePath | None,
    max_in_flight: int,
    item_retries: int,
    stop_on_failure: bool,
    max_starting: int,
    durable: bool,
) -> Iterator[tuple[BatchInputs, JsonlOutput | None, BatchPlan, BatchStore]]:
    """
    Check the batch's inputs and files, and yield its source, output, fresh plan and store (the source closed after).

    Everything about the inputs and the files is checked here, before any Start.

    :param context: the task's context.
    :param model_inputs: the inputs as a list (or a JSON array string), if not ``input_path``.
    :param input_path: the JSONL file of inputs, if not ``model_inputs``.
    :param output_path: the JSONL file of results, if any.
    :param max_in_flight: most calls running (or starting) at once.
    :param item_retries: times one failed input is started again.
    :param stop_on_failure: ``on_item_failure="fail"``.
    :param max_starting: most Starts sent at once.
    :param durable: keep the plan in the ``task_state_store`` when there is one.
    :raises BananaConfigError: bad inputs, or ``output_path`` the same file as ``input_path``.
    """
    output = JsonlOutput(as_storage_path(output_path, "output_path")) if output_path else None
    source: BatchInputs
    if input_path is not None:
        path = as_storage_path(input_path, "input_path")
        if output is not None and str(path) == str(output.path):
            raise BananaConfigError(f"output_path must not be input_path ({path})")
        source = JsonlInputs(path).scan()
    else:
        source = ListInputs(validate_batch_inputs(model_inputs))
    try:
        plan = BatchPlan(
            size=source.size,
            max_in_flight=max_in_flight,
            item_retries=item_retries,
            stop_on_failure=stop_on_failure,
            digest=source.digest + (":to-file" if output else ""),
            max_starting=max_starting,
            ordered=output is not None,
        )
        yield source, output, plan, BatchStore(context, durable)
    finally:
        source.close()


def resume(plan: BatchPlan, store: BatchStore, log: logging.Logger | Any, tags: metrics.Tags) -> None:
    """
    Load the plan an earlier try or deferral persisted, if any, and say so (a new try restarts the lost Starts).

    :param plan: a fresh plan for the same inputs.
    :param store: where it was persisted.
    :param log: the task's logger.
    :param tags: the metric tags of the task.
    """
    resumed = store.load(plan)
    if resumed is None:
        return
    if plan.lost_earlier:
        log.warning(
            "Banana batch items %s: %s; a new try starts them again",
            ", ".join(map(str, plan.lost_earlier)),
            START_LOST_EARLIER,
        )
    if resumed.new_try:
        plan.new_try()
    log.info(
        "Resuming Banana batch from an earlier try: %s; reattaching to %d running calls",
        counts(plan),
        len(plan.running),
    )
    metrics.count(metrics.CALL_REATTACHED, tags, n=len(plan.running))


def fetch_on_server(wave: Wave, hook: BananaHook, log: logging.Logger | Any) -> Wave:
    """
    Return ``wave`` with the outputs too large for its event fetched: one Check each (free: the calls ended).

    :param wave: a wave from the trigger's event.
    :param hook: the hook that fetches and verifies them against what the trigger saw.
    :param log: the task's logger.
    """
    if not wave.on_server:
        return wave
    finished = dict(wave.finished)
    for call_id, left in wave.on_server.items():
        finished[call_id] = hook.fetch_outputs(left)
    log.info("Banana batch: fetched the outputs of %d calls, too large for the trigger's event", len(wave.on_server))
    return dataclasses.replace(wave, finished=finished, on_server={})
