"""Run Banana inferences from a DAG (one call, or a batch), optionally deferring the wait to the triggerer."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_banana import lineage, metrics
from airflow_provider_banana.batch.files import JsonlInputs, JsonlOutput, ListInputs, as_storage_path, write_outputs
from airflow_provider_banana.batch.plan import (
    DEFAULT_MAX_STARTING,
    ON_ITEM_FAILURE,
    START_LOST,
    START_LOST_EARLIER,
    BatchPlan,
    Wave,
)
from airflow_provider_banana.batch.store import BATCH_CHUNK_KEY, BATCH_STATE_KEY, BatchStore
from airflow_provider_banana.batch.watch import DEFAULT_LINGER, BatchWorker
from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BananaFinished,
    BananaResult,
    BananaRetryPolicy,
    BananaRunning,
    EventOutputs,
    OutputsOnServer,
    OutputsWritten,
    Reattach,
    check_storable,
    event_summary,
    outputs_from_event,
    reattach_decision,
    use_start_only,
    validate_model_inputs,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.contract.waiting import time_left
from airflow_provider_banana.exceptions import (
    BananaBatchTimeoutError,
    BananaCallError,
    BananaConfigError,
    BananaError,
    BananaOutputsNotStorableError,
    BananaTimeoutError,
    BananaTransportError,
)
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.operators.task_state import CALL_ID_KEY, StoredCall
from airflow_provider_banana.triggers.banana import BananaBatchTrigger, BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    BatchInputs = ListInputs | JsonlInputs

__all__ = [
    "BATCH_CHUNK_KEY",
    "BATCH_STATE_KEY",
    "CALL_ID_KEY",
    "BananaBatchInferenceOperator",
    "BananaInferenceOperator",
    "BatchStore",
    "StoredCall",
]

#: Seconds the deferral backstop waits past the trigger's own deadline, so that the trigger's
#: clearer ``timeout`` event normally wins and the backstop only fires if the trigger cannot run.
DEFER_BACKSTOP_MARGIN = 60.0
#: Seconds a batch pauses when nothing runs because every input left to start was refused at its
#: Start (an "error" message) and waits for its retry.
REFUSED_START_PAUSE = 1.0
#: Most seconds a wave in the worker lingers after its first call ended (``linger`` is the triggerer's).
WORKER_LINGER = 0.1
#: With an output file, lines are written once this many per ``max_in_flight`` slot are ready (and
#: always before a deferral and at the end), so a batch of 100,000 writes a few hundred parts.
FLUSH_LINES_PER_SLOT = 2
#: Seconds a deferrable batch's worker waits for a call to end before deferring: about what the
#: round trip through the triggerer costs here (benchmarks/README.md, batch against mapping).
DEFAULT_DEFER_AFTER = 5.0
_NO_CANCEL = "Banana v4 has no cancel endpoint: the call runs on and is billed"


class BananaInferenceOperator(BaseOperator):
    """
    Run one inference on a Banana-compatible API and return its ``modelOutputs`` list.

    The Start is always sent from the worker. With ``deferrable=True`` it is a ``startOnly``
    Start, the callID goes to XCom (key ``call_id``) and the wait moves to
    :class:`~airflow_provider_banana.triggers.banana.BananaCallTrigger`, so no worker slot is
    held while the model runs. Otherwise the worker sends a Start that waits up to ~60 s for the
    result, then long-polls Check. Either way the return value (XCom ``return_value``) is the
    ``modelOutputs`` list, so ``op.output`` feeds the next task; with ``output_path`` it is
    ``{"output_path", "bytes", "sha256"}`` instead, the outputs being in that file.

    Outputs past 64 KiB never travel in the trigger's event (Airflow stores it and prints it in the
    trigger's log): the event carries their size and sha256, and the worker fetches them with one
    Check (free) and verifies them; if the server has forgotten the call by then (its result
    retention ended), the task fails with
    :class:`~airflow_provider_banana.exceptions.BananaOutputsExpiredError` and starts no new call.

    :param model_inputs: the model's inputs (templated): a dict, or a string that renders to a
        JSON object. Works with ``.partial(...).expand(model_inputs=[...])``.
    :param model_key: the model (templated); defaults to the connection extra's ``model_key``.
    :param banana_conn_id: the Airflow connection to use.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param wait_for_completion: ``False`` sends a ``startOnly`` Start and returns the callID at
        once (for :class:`~airflow_provider_banana.sensors.banana.BananaCallSensor` downstream).
    :param timeout: seconds the inference may take, counted from Start, in both modes; then the
        task fails with :class:`~airflow_provider_banana.exceptions.BananaTimeoutError`.
    :param poll_interval: least seconds between the starts of two Checks: the pause when long
        polling is off, or after a Check that came back at once.
    :param long_poll: let Banana hold each Check up to 50 s until the call finishes (one request
        per 50 s of waiting instead of one per ``poll_interval``).
    :param max_attempts: tries of one request through transient trouble, with exponential backoff
        and jitter (a Start only where it provably was not taken).
    :param durable: keep the call id in Airflow's ``task_state_store`` (Airflow 3.3+) before
        waiting, so that a retried task, or one whose worker died, reattaches to its call instead
        of paying for a second one. The Start is then always ``startOnly``, so that the id is
        stored before any wait.
    :param defer_after: with ``deferrable=True``, seconds the worker waits for the call itself
        after its Start (long-poll Checks) before it defers; a call that finishes sooner returns at
        once, without the round trip through the triggerer (a task resume: seconds of scheduling,
        a worker start and a DAG parse). ``0`` defers right after the Start.
    :param output_path: a file (templated URI string, or an ``ObjectStoragePath``) that receives the
        outputs as JSON (the ``modelOutputs`` list, compact, UTF-8) instead of XCom; the task returns
        ``{"output_path": ..., "bytes": ..., "sha256": ...}``. The process that holds the outputs
        first writes it: the triggerer, for a deferred call, so nothing depends on the server keeping
        the result.
    """

    template_fields: Sequence[str] = ("model_inputs", "model_key", "output_path")
    template_fields_renderers = {"model_inputs": "json"}
    ui_color = "#ffe135"

    def __init__(
        self,
        *,
        model_inputs: Any,
        model_key: str | None = None,
        banana_conn_id: str = BananaHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        long_poll: bool = True,
        max_attempts: int = BananaRetryPolicy.max_attempts,
        durable: bool = True,
        defer_after: float = DEFAULT_DEFER_AFTER,
        output_path: str | ObjectStoragePath | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if output_path is not None and not isinstance(output_path, str):
            as_storage_path(output_path, "output_path")  # an ObjectStoragePath, or a clear error now
        self.output_path = output_path
        self.model_inputs = model_inputs
        self.durable = durable
        self.defer_after = validate_seconds("defer_after", defer_after, zero_ok=True)
        self.model_key = model_key
        self.banana_conn_id = banana_conn_id
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.timeout = validate_seconds("timeout", timeout)
        self.poll_interval = validate_poll_interval(poll_interval)
        self.long_poll = long_poll
        # Checked here, before any task runs; BaseOperator's own retry_policy is another thing.
        self.max_attempts = BananaRetryPolicy(max_attempts=max_attempts).max_attempts
        self._call_id: str | None = None

    @functools.cached_property
    def hook(self) -> BananaHook:
        """Return the hook (made on first use, so ``__init__`` does no connection lookup)."""
        return BananaHook(self.banana_conn_id, retry_policy=BananaRetryPolicy(max_attempts=self.max_attempts))

    @metrics.counts_timeouts
    def execute(self, context: Context) -> Any:
        """Start the inference (or reattach to this task's earlier call), then return or defer."""
        inputs = validate_model_inputs(self.model_inputs)
        path = self._output_path()
        # The timeout counts per try, like execution_timeout: a reattached call gets a full one.
        started_at = time.time()
        stored = StoredCall(context, enabled=self.durable and self.wait_for_completion)
        call_id, outputs = self._reattach(stored)
        if outputs is not None:
            # Forgotten only once the outputs are known to leave: a retry reattaches (a Check, free).
            reattached = self._result(outputs, path, call_id)
            stored.forget()
            return reattached
        if call_id is None:
            result = self._start(inputs, stored)
            if isinstance(result, BananaFinished):
                self.log.info("Banana call finished within its Start, in %.1f s", time.time() - started_at)
                try:
                    return self._result(result.model_outputs, path, result.call_id)
                except BananaOutputsNotStorableError:
                    if result.call_id:  # a retry reattaches to it (a Check) rather than paying again
                        stored.save(result.call_id)
                    raise
            call_id = result.call_id
        self._call_id = call_id
        context["ti"].xcom_push(key="call_id", value=call_id)
        if not self.wait_for_completion:
            self.log.info("Started Banana call %s; not waiting for it", call_id)
            return call_id
        if self.deferrable:
            outputs = self._wait_before_deferring(call_id, context, started_at, stored)
            if outputs is not None:
                written = self._result(outputs, path, call_id)
                stored.forget()
                return written
            self.log.info("Waiting for Banana call %s in the triggerer", call_id)
            self.defer(
                trigger=BananaCallTrigger(
                    call_id=call_id,
                    banana_conn_id=self.banana_conn_id,
                    deadline=self._deadline(context, started_at),
                    started_at=started_at,
                    poll_interval=self.poll_interval,
                    long_poll=self.long_poll,
                    max_attempts=self.max_attempts,
                    deferred_at=time.time(),
                    output_path=None if path is None else str(path),
                ),
                method_name="execute_complete",
                # A backstop in case the trigger cannot run; Airflow also caps it by execution_timeout.
                timeout=timedelta(seconds=self.timeout + DEFER_BACKSTOP_MARGIN),
            )
        try:
            outputs = self.hook.wait(
                call_id,
                timeout=self.timeout,
                started_at=started_at,
                long_poll=self.long_poll,
                poll_interval=self.poll_interval,
            )
        except BananaCallError:
            stored.forget()
            raise
        written = self._result(outputs, path, call_id)
        stored.forget()
        self.log.info("Banana call %s finished after %.1f s", call_id, time.time() - started_at)
        return written

    def _output_path(self) -> ObjectStoragePath | None:
        # Checked before any Start: a bad path is the user's to fix, and costs no call.
        return None if self.output_path is None else as_storage_path(self.output_path, "output_path")

    def _result(self, outputs: list[Any], path: ObjectStoragePath | None, call_id: str | None = None) -> Any:
        # With output_path the worker writes only outputs it holds itself; a deferred call's file is
        # the triggerer's to write (it holds them first).
        if path is None:
            # Every way out to XCom passes here, before the stored call is forgotten: outputs Airflow
            # cannot store fail the task as they are, and a retry reattaches to the call instead of
            # paying again. (A file written with output_path holds them whatever they are.)
            check_storable(outputs, call_id=call_id)
            return outputs
        written = write_outputs(path, outputs)
        self.log.info(
            "Wrote the Banana outputs to %s: %d bytes, sha256 %s",
            written.output_path,
            written.digest.size,
            written.digest.sha256,
        )
        return written.task_result()

    def _event_result(self, call_id: str, outputs: EventOutputs) -> Any:
        if isinstance(outputs, OutputsWritten):
            self.log.info(
                "The triggerer wrote the outputs of Banana call %s to %s: %d bytes, sha256 %s",
                call_id,
                outputs.output_path,
                outputs.digest.size,
                outputs.digest.sha256,
            )
            return outputs.task_result()
        if isinstance(outputs, OutputsOnServer):
            self.log.info(
                "Fetching the outputs of Banana call %s (%d bytes, too large for the trigger's event) with one Check",
                call_id,
                outputs.digest.size,
            )
            outputs = self.hook.fetch_outputs(outputs)
        return self._result(outputs, self._output_path(), call_id)

    def _wait_before_deferring(
        self, call_id: str, context: Context, started_at: float, stored: StoredCall
    ) -> list[Any] | None:
        # A short call is over before a deferral's round trip would be (benchmarks/README.md).
        if not self.defer_after:
            return None
        deadline = self._deadline(context, started_at)
        try:
            outputs = self.hook.wait(
                call_id,
                started_at=started_at,
                deadline=min(deadline, time.time() + self.defer_after),
                long_poll=self.long_poll,
                poll_interval=self.poll_interval,
            )
        except BananaTimeoutError:
            return None  # still running (or the deadline came): the trigger takes over, and says which
        except BananaCallError:
            stored.forget()
            raise
        self.log.info(
            "Banana call %s finished after %.1f s, within defer_after: no deferral", call_id, time.time() - started_at
        )
        return outputs

    def _deadline(self, context: Context, started_at: float) -> float:
        # The trigger's own deadline honours execution_timeout too, so a deferred task times out
        # with our error naming the call, wherever the trigger runs (dag.test() runs it inline,
        # where Airflow's deferral timeout is not enforced).
        deadline = started_at + self.timeout
        task_started = getattr(context.get("ti"), "start_date", None)
        if self.execution_timeout is not None and task_started is not None:
            deadline = min(deadline, task_started.timestamp() + self.execution_timeout.total_seconds())
        return deadline

    def _reattach(self, stored: StoredCall) -> tuple[str | None, list[Any] | None]:
        previous = stored.get()
        if previous is None:
            return None, None
        outcome: BananaResult | BananaCallError
        try:
            outcome = self.hook.check(previous, long_poll=False)
        except BananaCallError as e:
            outcome = e
        decision = reattach_decision(outcome)
        if decision in (Reattach.FINISHED, Reattach.WAIT):
            metrics.count(metrics.CALL_REATTACHED, **metrics.operator_tags(self))
        if decision is Reattach.FINISHED:
            self.log.info("Banana call %s from an earlier try has finished; returning its outputs", previous)
            return previous, cast("BananaFinished", outcome).model_outputs
        if decision is Reattach.WAIT:
            self.log.info(
                "Reattaching to Banana call %s from an earlier try (%s) instead of starting a new one",
                previous,
                cast("BananaRunning", outcome).status_text,
            )
            return previous, None
        self.log.warning("Banana call %s from an earlier try ended (%s); starting a new call", previous, outcome)
        stored.forget()
        return None, None

    def _start(self, inputs: dict[str, Any], stored: StoredCall) -> BananaResult:
        # The call is handed off (to the trigger, a sensor, or a retry through the stored id) unless
        # the worker waits for it itself and nothing needs its id first.
        hand_off = self.deferrable or not self.wait_for_completion or stored.available
        start_only = use_start_only(
            timeout=self.timeout, start_hold=self.hook.settings.timeouts.start_hold, hand_off=hand_off
        )
        result = self.hook.start(inputs, self.model_key, start_only=start_only)
        if isinstance(result, BananaRunning):
            stored.save(result.call_id)
        return result

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """
        Return the outputs the trigger reported (fetched, if too large for its event), or raise what it reported.

        :raises BananaCallError: the inference failed (naming the call and Banana's message).
        :raises BananaTimeoutError: the timeout passed while deferred.
        :raises BananaOutputsError: large outputs could not be fetched as the trigger saw them.
        :raises BananaError: a missing or malformed event.
        """
        stored = StoredCall(context, enabled=self.durable)
        # The trigger's own summary, here too: Airflow 3.3 truncates a trigger's log at each deferral.
        summary = event_summary(event)
        if summary and event is not None:
            self.log.info("The triggerer's watch of the call ended (%s): %s", event.get("status"), summary)
        try:
            call_id, outputs = outputs_from_event(event)
        except BananaCallError:
            stored.forget()
            raise
        result = self._event_result(call_id, outputs)
        stored.forget()
        self.log.info("Banana call %s finished", call_id)
        return result

    @metrics.counts_timeouts
    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after deferral; a deferral that timed out fails naming the call it waited for."""
        try:
            from airflow.sdk.exceptions import TaskDeferralTimeout
        except ImportError:  # Airflow 3.1 raises the one in airflow.exceptions
            from airflow.exceptions import TaskDeferralTimeout  # type: ignore[no-redef]

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout as e:
            ti = context["ti"]
            call_id = ti.xcom_pull(task_ids=ti.task_id, key="call_id", map_indexes=ti.map_index)
            limit = self.execution_timeout.total_seconds() if self.execution_timeout else self.timeout
            raise BananaTimeoutError(call_id, min(self.timeout, limit), f"deferral timed out: {e}") from e

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        Report the file written with ``output_path`` as an OpenLineage output dataset.

        Called by the OpenLineage provider, where installed, when the task ends.

        :param task_instance: the task instance (unused: the rendered ``output_path`` says it all).
        :return: the provider's ``OperatorLineage``.
        """
        return lineage.files_lineage({}, {"output_path": self.output_path})

    def on_kill(self) -> None:
        """Log the running call: Banana v4 cannot cancel it."""
        if self._call_id:
            self.log.warning("Task killed while Banana call %s was running. %s", self._call_id, _NO_CANCEL)


class BananaBatchInferenceOperator(BaseOperator):
    """
    Run many inferences from one task, at most ``max_in_flight`` at a time, and return all outputs.

    The inputs are ``model_inputs`` (a list) or the lines of ``input_path`` (a JSONL file), each
    the ``modelInputs`` of one call. Starts are sent only from the worker, up to ``max_starting`` at
    once, each call id recorded as its answer arrives; the worker then follows the calls in flight
    and starts the next inputs as waves of them end. With ``deferrable=True``, once no call ended
    within ``defer_after`` seconds, the task defers: one
    :class:`~airflow_provider_banana.triggers.banana.BananaBatchTrigger` watches the calls in
    flight and hands control back when a wave of them ended, so the worker can start the next
    ones, and so on.

    Without ``output_path`` the return value is a list with one entry per input, in input order:
    that call's ``modelOutputs`` list, or ``None`` for an input that failed under
    ``on_item_failure="skip"``. With ``output_path`` the results go to that JSONL file instead, one
    line per input in input order (``{"index", "status", "call_id", "model_outputs", "message"}``),
    and the task returns ``{"output_path": ..., "succeeded": n, "failed": k}``.

    :param model_inputs: a list whose items are the inputs of one call each (templated, or an
        upstream task's output); a string that renders to a JSON array works too. Exclusive with
        ``input_path``.
    :param input_path: a JSONL file (templated URI string, or an ``ObjectStoragePath``), one JSON
        object per line, each the inputs of one call; every line is checked before any Start.
    :param output_path: a JSONL file (templated URI string, or an ``ObjectStoragePath``) that
        receives one line per input, in input order, instead of XCom.
    :param model_key: the model (templated); defaults to the connection extra's ``model_key``.
    :param banana_conn_id: the Airflow connection to use.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param max_in_flight: most calls running (or starting) at once.
    :param max_starting: most Starts sent at once. A worker that dies mid-batch loses the call ids
        of at most this many Starts (the next try reports those inputs as possibly billed, and
        starts them again).
    :param timeout: seconds the whole batch may take, per try; then the task fails naming the calls
        still running (a retry reattaches to them).
    :param item_retries: times one failed input is started again before it counts as failed.
    :param on_item_failure: ``"fail"``: once an input failed after its retries no new input is
        started, the calls in flight are waited for (their outputs are kept for a retry), and the
        task fails naming the failed inputs and their messages; ``"skip"``: a failed input's entry
        is ``None`` (a ``"failed"`` line with ``output_path``), it is logged, and the batch goes on.
    :param poll_interval: least seconds between the starts of two Checks of one call.
    :param long_poll: let Banana hold each Check up to 50 s until the call finishes.
    :param max_attempts: tries of one request through transient trouble (see the README).
    :param durable: keep the plan in Airflow's ``task_state_store`` (Airflow 3.3+), so a retried
        task starts no finished input again and reattaches to the running ones.
    :param linger: seconds a wave in the triggerer lingers after its first call ended before handing
        back (unless half the calls ended), so a hand-back (a task resume) carries several results;
        the worker's own waves linger at most 0.1 s, since a hand-back there costs one state write.
    :param defer_after: with ``deferrable=True``, seconds the worker waits, after starting calls,
        for one of them to end before it defers; while calls keep ending sooner, the batch goes on
        in the worker, since a deferral costs a task resume (seconds of scheduling, a worker start
        and a DAG parse). ``0`` defers at once.
    """

    template_fields: Sequence[str] = ("model_inputs", "model_key", "input_path", "output_path")
    template_fields_renderers = {"model_inputs": "json"}
    ui_color = "#ffe135"

    def __init__(
        self,
        *,
        model_inputs: Any = None,
        input_path: str | ObjectStoragePath | None = None,
        output_path: str | ObjectStoragePath | None = None,
        model_key: str | None = None,
        banana_conn_id: str = BananaHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_in_flight: int = 8,
        max_starting: int = DEFAULT_MAX_STARTING,
        timeout: float = DEFAULT_TIMEOUT,
        item_retries: int = 2,
        on_item_failure: str = "fail",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        long_poll: bool = True,
        max_attempts: int = BananaRetryPolicy.max_attempts,
        durable: bool = True,
        linger: float = DEFAULT_LINGER,
        defer_after: float = DEFAULT_DEFER_AFTER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_item_failure not in ON_ITEM_FAILURE:
            raise BananaConfigError(f"on_item_failure must be one of {ON_ITEM_FAILURE}, got {on_item_failure!r}")
        if (model_inputs is None) == (input_path is None):
            raise BananaConfigError(
                "Give the batch's inputs as exactly one of model_inputs (a list) and input_path (a JSONL file)"
            )
        for name, value in (("input_path", input_path), ("output_path", output_path)):
            if value is not None and not isinstance(value, str):
                as_storage_path(value, name)  # an ObjectStoragePath, or a clear error now
        # Built once here so bad numbers fail when the DAG is parsed.
        BatchPlan(0, max_in_flight, item_retries, stop_on_failure=True, max_starting=max_starting)
        self.model_inputs = model_inputs
        self.input_path = input_path
        self.output_path = output_path
        self.model_key = model_key
        self.banana_conn_id = banana_conn_id
        self.deferrable = deferrable
        self.max_in_flight = max_in_flight
        self.max_starting = max_starting
        self.timeout = validate_seconds("timeout", timeout)
        self.item_retries = item_retries
        self.on_item_failure = on_item_failure
        self.poll_interval = validate_poll_interval(poll_interval)
        self.long_poll = long_poll
        self.max_attempts = BananaRetryPolicy(max_attempts=max_attempts).max_attempts
        self.durable = durable
        self.linger = validate_seconds("linger", linger)
        self.defer_after = validate_seconds("defer_after", defer_after, zero_ok=True)
        # Outputs taken from a wave, persisted with the next write of the plan.
        self._unsaved: dict[int, list[Any]] = {}
        # The batch's finished and failed inputs already counted as metrics.
        self._items_counted = (0, 0)

    @functools.cached_property
    def hook(self) -> BananaHook:
        """Return the hook (made on first use, so ``__init__`` does no connection lookup)."""
        return BananaHook(self.banana_conn_id, retry_policy=BananaRetryPolicy(max_attempts=self.max_attempts))

    @metrics.counts_timeouts
    def execute(self, context: Context) -> Any:
        """Start the batch (or carry on with this task's earlier calls), then wait or defer."""
        with self._batch(context) as (source, output, plan, store):
            state = store.load(plan)
            if state is not None:
                if plan.lost_earlier:
                    self.log.warning(
                        "Banana batch items %s: %s; a new try starts them again",
                        ", ".join(map(str, plan.lost_earlier)),
                        START_LOST_EARLIER,
                    )
                if state.get("try_number") != context["ti"].try_number:
                    plan.new_try()
                self.log.info(
                    "Resuming Banana batch from an earlier try: %s; reattaching to %d running calls",
                    _counts(plan),
                    len(plan.running),
                )
                metrics.count(metrics.CALL_REATTACHED, n=len(plan.running), **metrics.operator_tags(self))
            # The timeout counts per try, like execution_timeout: a resumed batch gets a full one.
            store.begin_try(plan)
            self._items_counted = (plan.finished, plan.failed_count)
            return self._advance(source, output, plan, store)

    @metrics.counts_timeouts
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        """Take a wave of results from the trigger, then start the next calls or finish."""
        with self._batch(context) as (source, output, plan, store):
            if store.load(plan) is None:
                raise BananaError("The Banana batch's persisted plan is missing; cannot resume after the deferral")
            self._items_counted = (plan.finished, plan.failed_count)
            self._take_wave(plan, store, self._fetch_on_server(Wave.from_event(event)))
            return self._advance(source, output, plan, store)

    def _fetch_on_server(self, wave: Wave) -> Wave:
        # Outputs too large for the wave's event stayed on the server: one Check each (free, not
        # held: the calls have finished), verified against what the trigger saw.
        if not wave.on_server:
            return wave
        finished = dict(wave.finished)
        for call_id, left in wave.on_server.items():
            finished[call_id] = self.hook.fetch_outputs(left)
        self.log.info(
            "Banana batch: fetched the outputs of %d calls, too large for the trigger's event", len(wave.on_server)
        )
        return dataclasses.replace(wave, finished=finished, on_server={})

    @contextlib.contextmanager
    def _batch(self, context: Context) -> Iterator[tuple[BatchInputs, JsonlOutput | None, BatchPlan, BatchStore]]:
        # Everything about the inputs and the files is checked here, before any Start.
        output = JsonlOutput(as_storage_path(self.output_path, "output_path")) if self.output_path else None
        source: BatchInputs
        if self.input_path is not None:
            path = as_storage_path(self.input_path, "input_path")
            if output is not None and str(path) == str(output.path):
                raise BananaConfigError(f"output_path must not be input_path ({path})")
            source = JsonlInputs(path).scan()
        else:
            source = ListInputs(self._inputs())
        try:
            plan = BatchPlan(
                size=source.size,
                max_in_flight=self.max_in_flight,
                item_retries=self.item_retries,
                stop_on_failure=self.on_item_failure == "fail",
                digest=source.digest + (":to-file" if output else ""),
                max_starting=self.max_starting,
                ordered=output is not None,
            )
            yield source, output, plan, BatchStore(context, self.durable)
        finally:
            source.close()

    def _inputs(self) -> list[dict[str, Any]]:
        value = self.model_inputs
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise BananaConfigError(f"model_inputs is a string but not a JSON array: {e}") from e
        if isinstance(value, Mapping) or not isinstance(value, Iterable):
            raise TypeError(f"model_inputs must be a list of inputs, got {type(value).__name__}")
        inputs = []
        for index, item in enumerate(value):
            try:
                inputs.append(validate_model_inputs(item))
            except (TypeError, ValueError) as e:
                raise type(e)(f"model_inputs[{index}]: {e}") from e
        return inputs

    def _advance(self, source: BatchInputs, output: JsonlOutput | None, plan: BatchPlan, store: BatchStore) -> Any:
        started_at = store.started_at
        deadline = started_at + self.timeout
        worker = BatchWorker(
            self.banana_conn_id,
            BananaRetryPolicy(max_attempts=self.max_attempts),
            # A hand-back costs the worker one write of the state, not a task resume: the slots
            # of the calls that ended are refilled at once rather than a second later.
            linger=min(self.linger, WORKER_LINGER),
            deadline=deadline,
            started_at=started_at,
            long_poll=self.long_poll,
            poll_interval=self.poll_interval,
        )
        with contextlib.closing(worker):
            if output is not None:
                self._refetch(plan, store, worker)
            while True:
                self._start_next(source, plan, store, worker)
                self._flush(plan, store, output)
                self.log.info("Banana batch: %s", _progress(plan, store, time.time() - started_at))
                self._count_items(plan)
                if plan.ended:
                    return self._finish(plan, store, output)
                if time.time() >= deadline:
                    raise BananaBatchTimeoutError(plan.running, self.timeout, plan.progress())
                running = list(plan.running.values())
                if not running:  # every input left was refused at its Start and waits for its retry
                    time.sleep(REFUSED_START_PAUSE)
                    continue
                if not self.deferrable:
                    self._take_wave(plan, store, worker.wave(running))
                    continue
                # A deferral costs a task resume (scheduling, a worker start, a DAG parse: seconds),
                # so while calls keep ending within defer_after the batch goes on in the worker.
                wave = worker.wave(running, within=self.defer_after) if self.defer_after else Wave()
                if wave.empty:
                    # What is held in memory does not survive the deferral: write what can be.
                    self._flush(plan, store, output, force=True)
                    self.defer(
                        trigger=BananaBatchTrigger(
                            call_ids=running,
                            banana_conn_id=self.banana_conn_id,
                            deadline=deadline,
                            started_at=started_at,
                            poll_interval=self.poll_interval,
                            long_poll=self.long_poll,
                            max_attempts=self.max_attempts,
                            linger=self.linger,
                        ),
                        method_name="execute_complete",
                        timeout=timedelta(seconds=deadline - time.time() + DEFER_BACKSTOP_MARGIN),
                    )
                self._take_wave(plan, store, wave)

    def _count_items(self, plan: BatchPlan) -> None:
        # Counted as the progress line shows them: the inputs that ended since the last line.
        finished, failed = self._items_counted
        tags = metrics.operator_tags(self)
        metrics.count(metrics.BATCH_INPUT_FINISHED, n=plan.finished - finished, **tags)
        metrics.count(metrics.BATCH_INPUT_FAILED, n=plan.failed_count - failed, **tags)
        self._items_counted = (plan.finished, plan.failed_count)

    def _start_next(self, source: BatchInputs, plan: BatchPlan, store: BatchStore, worker: BatchWorker) -> None:
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
                    pending[worker.start(body, self.model_key)] = index
                if not pending:
                    break
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    error = self._record_start(plan, pending.pop(future), future, new_outputs) or error
        finally:
            store.save(plan, new_outputs)
        if error is not None:
            self.log.warning("Banana batch stopped starting inputs (%s): %s", _counts(plan), error)
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
            self.log.warning("Banana refused item %d: %s", index, e.message)
            plan.start_failed(index, e.message)
            return None
        except BananaTransportError as e:
            if e.request_sent:
                self.log.warning("Banana batch item %d: %s: %s", index, START_LOST, e)
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
                self.log.warning("Banana batch item %d: %s", index, e)
                plan.outputs_not_storable(index, e.message, result.call_id)
                return None
            new_outputs[index] = outputs
        # At debug level: the mapping is in the persisted plan (running calls) and the output file.
        self.log.debug("Banana batch item %d: call %s", index, result.call_id or "finished within its Start")
        plan.started(index, result.call_id, outputs)
        return None

    def _take_wave(self, plan: BatchPlan, store: BatchStore, wave: Wave) -> None:
        by_call = {call_id: index for index, call_id in plan.running.items()}
        new_outputs = {by_call[c]: outputs for c, outputs in wave.finished.items() if c in by_call}
        for call_id, message in wave.failed.items():
            if call_id in by_call:
                self.log.warning("Banana batch item %d (call %s) failed: %s", by_call[call_id], call_id, message)
        for call_id, message in wave.unstorable.items():
            if call_id in by_call:
                self.log.warning(
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
                f"Waiting for the Banana batch's calls failed: {wave.error} ({_counts(plan)}); "
                "the calls run on, and a retry of this task reattaches to them"
            )
        if wave.timed_out:
            raise BananaBatchTimeoutError(plan.running, self.timeout, plan.progress())

    def _refetch(self, plan: BatchPlan, store: BatchStore, worker: BatchWorker) -> None:
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
        self.log.info("Banana batch: fetched the outputs of %d finished inputs not yet written", len(checks))
        store.save(plan, {})

    def _flush(self, plan: BatchPlan, store: BatchStore, output: JsonlOutput | None, force: bool = False) -> None:
        if output is None:
            return
        lines = plan.ready_lines()
        if not lines or (not force and len(lines) < FLUSH_LINES_PER_SLOT * plan.max_in_flight):
            return
        output.write_part(store.parts, lines)
        plan.lines_written(len(lines))
        store.parts += 1
        store.save(plan, {})

    def _finish(self, plan: BatchPlan, store: BatchStore, output: JsonlOutput | None) -> Any:
        if output is not None:
            plan.raise_if_failed()
            self._flush(plan, store, output, force=True)
            if plan.written != plan.size:
                raise BananaError(f"The Banana batch ended with {plan.written} of {plan.size} output lines written")
            output.assemble(store.parts)
            self.log.info("Banana batch: wrote %d lines to %s", plan.size, output.path)
            store.clear()
            output.remove_parts()
            return {"output_path": str(output.path), "succeeded": plan.finished, "failed": plan.failed_count}
        if plan.failed and not plan.stop_on_failure:
            for index, message in sorted(plan.failed.items()):
                self.log.warning(
                    "Banana batch item %d failed after its retries; its output is None: %s", index, message
                )
        try:
            return plan.result(store.outputs())
        finally:
            if not (plan.failed and plan.stop_on_failure):
                store.clear()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        Report ``input_path`` and ``output_path`` as OpenLineage input and output datasets.

        Called by the OpenLineage provider, where installed, when the task ends.

        :param task_instance: the task instance (unused: the rendered paths say it all).
        :return: the provider's ``OperatorLineage``.
        """
        return lineage.files_lineage({"input_path": self.input_path}, {"output_path": self.output_path})

    def on_kill(self) -> None:
        """Say that the calls in flight run on: Banana v4 cannot cancel them."""
        self.log.warning("Task killed during a Banana batch. %s; a retry reattaches to the calls in flight", _NO_CANCEL)


def _progress(plan: BatchPlan, store: BatchStore, elapsed: float) -> str:
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


def _counts(plan: BatchPlan) -> str:
    return ", ".join(f"{value} {name}" for name, value in plan.progress().items())
