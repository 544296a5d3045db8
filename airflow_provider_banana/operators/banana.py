"""Run Banana inferences from a DAG (one call, or a batch), optionally deferring the wait to the triggerer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_banana import lineage, metrics
from airflow_provider_banana.batch.files import JsonlInputs, JsonlOutput, ListInputs, as_storage_path, write_outputs
from airflow_provider_banana.batch.plan import (
    DEFAULT_MAX_STARTING,
    ON_ITEM_FAILURE,
    START_LOST_EARLIER,
    BatchPlan,
    Wave,
)
from airflow_provider_banana.batch.run import BatchRun, Done, Pause, counts
from airflow_provider_banana.batch.store import BatchStore
from airflow_provider_banana.batch.watch import DEFAULT_LINGER
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
    call_timeout_error,
    check_storable,
    deadline_for,
    event_summary,
    outputs_from_event,
    reattach_decision,
    task_started,
    use_start_only,
    validate_model_inputs,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaConfigError,
    BananaError,
    BananaTimeoutError,
)
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.operators.task_state import CALL_ID_XCOM_KEY, StoredCall
from airflow_provider_banana.triggers.banana import BananaBatchTrigger, BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    BatchInputs = ListInputs | JsonlInputs

__all__ = ["BananaBatchInferenceOperator", "BananaInferenceOperator"]

#: Seconds the deferral backstop waits past the trigger's own deadline, so that the trigger's
#: clearer ``timeout`` event normally wins and the backstop only fires if the trigger cannot run.
DEFER_BACKSTOP_MARGIN = 60.0
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
        earlier = self._reattach(stored)
        if isinstance(earlier, BananaFinished):
            with stored.until_ended():
                return self._result(earlier.model_outputs, path, earlier.call_id)
        result = earlier or self._start(inputs, stored)
        if isinstance(result, BananaFinished):
            self.log.info("Banana call finished within its Start, in %.1f s", time.time() - started_at)
            # Nothing stored yet: kept only if the outputs cannot leave (a retry then Checks, free).
            with stored.until_ended(unsaved=result.call_id):
                return self._result(result.model_outputs, path, result.call_id)
        call_id = self._call_id = result.call_id
        context["ti"].xcom_push(key=CALL_ID_XCOM_KEY, value=call_id)
        if not self.wait_for_completion:
            self.log.info("Started Banana call %s; not waiting for it", call_id)
            return call_id
        deadline = self._deadline(context, started_at)
        with stored.until_ended():
            if self.deferrable:
                outputs = self._wait_before_deferring(call_id, deadline, started_at)
                if outputs is None:
                    self._defer(call_id, deadline, started_at, path)
            else:
                outputs = self.hook.wait(
                    call_id,
                    deadline=deadline,
                    started_at=started_at,
                    long_poll=self.long_poll,
                    poll_interval=self.poll_interval,
                )
                self.log.info("Banana call %s finished after %.1f s", call_id, time.time() - started_at)
            return self._result(outputs, path, call_id)

    def _defer(self, call_id: str, deadline: float, started_at: float, path: ObjectStoragePath | None) -> NoReturn:
        self.log.info("Waiting for Banana call %s in the triggerer", call_id)
        self.defer(
            trigger=BananaCallTrigger(
                call_id=call_id,
                banana_conn_id=self.banana_conn_id,
                deadline=deadline,
                started_at=started_at,
                poll_interval=self.poll_interval,
                long_poll=self.long_poll,
                max_attempts=self.max_attempts,
                deferred_at=time.time(),
                output_path=None if path is None else str(path),
            ),
            method_name="execute_complete",
            # A backstop in case the trigger cannot run.
            timeout=timedelta(seconds=self.timeout + DEFER_BACKSTOP_MARGIN),
        )

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

    def _wait_before_deferring(self, call_id: str, deadline: float, started_at: float) -> list[Any] | None:
        # A short call is over before a deferral's round trip would be (benchmarks/README.md).
        if not self.defer_after:
            return None
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
        self.log.info(
            "Banana call %s finished after %.1f s, within defer_after: no deferral", call_id, time.time() - started_at
        )
        return outputs

    def _deadline(self, context: Context, started_at: float) -> float:
        return deadline_for(
            started_at, self.timeout, task_started=task_started(context), execution_timeout=self.execution_timeout
        )

    def _reattach(self, stored: StoredCall) -> BananaResult | None:
        # The call an earlier try stored, as a Check finds it: running (wait for it), finished (its
        # outputs are the result), or None: none stored, or it failed or expired (start a new one).
        previous = stored.get()
        if previous is None:
            return None
        outcome: BananaResult | BananaCallError
        try:
            outcome = self.hook.check(previous, long_poll=False)
        except BananaCallError as e:
            outcome = e
        decision = reattach_decision(outcome)
        if isinstance(outcome, BananaCallError) or decision is Reattach.RESTART:
            self.log.warning("Banana call %s from an earlier try ended (%s); starting a new call", previous, outcome)
            stored.forget()
            return None
        metrics.count(metrics.CALL_REATTACHED, metrics.operator_tags(self))
        if decision is Reattach.FINISHED:
            self.log.info("Banana call %s from an earlier try has finished; returning its outputs", previous)
        else:
            self.log.info(
                "Reattaching to Banana call %s from an earlier try (%s) instead of starting a new one",
                previous,
                outcome.status_text,
            )
        return outcome

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
        with stored.until_ended():
            call_id, outputs = outputs_from_event(event)
            result = self._event_result(call_id, outputs)
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
            call_id = ti.xcom_pull(task_ids=ti.task_id, key=CALL_ID_XCOM_KEY, map_indexes=ti.map_index)
            # Counted from the task's start: the Start's own time is not kept across the deferral.
            started = task_started(context)
            since = started.timestamp() if started is not None else time.time()
            deadline = self._deadline(context, since)
            raise call_timeout_error(call_id, deadline, since, f"deferral timed out: {e}") from e

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

    @functools.cached_property
    def hook(self) -> BananaHook:
        """Return the hook (made on first use, so ``__init__`` does no connection lookup)."""
        return BananaHook(self.banana_conn_id, retry_policy=BananaRetryPolicy(max_attempts=self.max_attempts))

    @metrics.counts_timeouts
    def execute(self, context: Context) -> Any:
        """Start the batch (or carry on with this task's earlier calls), then wait or defer."""
        with self._batch(context) as (source, output, plan, store):
            resumed = store.load(plan)
            if resumed is not None:
                if plan.lost_earlier:
                    self.log.warning(
                        "Banana batch items %s: %s; a new try starts them again",
                        ", ".join(map(str, plan.lost_earlier)),
                        START_LOST_EARLIER,
                    )
                if resumed.new_try:
                    plan.new_try()
                self.log.info(
                    "Resuming Banana batch from an earlier try: %s; reattaching to %d running calls",
                    counts(plan),
                    len(plan.running),
                )
                metrics.count(metrics.CALL_REATTACHED, metrics.operator_tags(self), n=len(plan.running))
            # The timeout counts per try, like execution_timeout: a resumed batch gets a full one.
            store.begin_try(
                plan,
                timeout=self.timeout,
                task_started=task_started(context),
                execution_timeout=self.execution_timeout,
            )
            return self._advance(self._run(source, output, plan, store, self._batch_deadline(context, store)))

    @metrics.counts_timeouts
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        """Take a wave of results from the trigger, then start the next calls or finish."""
        with self._batch(context) as (source, output, plan, store):
            if store.load(plan) is None:
                raise BananaError("The Banana batch's persisted plan is missing; cannot resume after the deferral")
            run = self._run(source, output, plan, store, self._batch_deadline(context, store))
            # Before the run's worker starts anything (it is made lazily): nothing to close on a failure.
            run.take_wave(self._fetch_on_server(Wave.from_event(event)))
            return self._advance(run)

    def _batch_deadline(self, context: Context, store: BatchStore) -> float:
        # The same rule as a single call's: timeout from this try's start, or execution_timeout if
        # earlier, which Airflow does not enforce while the batch is deferred. Fixed when the try
        # began (a plan saved without one gets it again from the rule).
        if store.deadline is not None:
            return store.deadline
        return deadline_for(
            store.started_at,
            self.timeout,
            task_started=task_started(context),
            execution_timeout=self.execution_timeout,
        )

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

    def _run(
        self, source: BatchInputs, output: JsonlOutput | None, plan: BatchPlan, store: BatchStore, deadline: float
    ) -> BatchRun:
        return BatchRun(
            source=source,
            output=output,
            plan=plan,
            store=store,
            deadline=deadline,
            banana_conn_id=self.banana_conn_id,
            retry_policy=BananaRetryPolicy(max_attempts=self.max_attempts),
            model_key=self.model_key,
            long_poll=self.long_poll,
            poll_interval=self.poll_interval,
            linger=self.linger,
            defer_after=self.defer_after if self.deferrable else None,
            log=self.log,
            tags=metrics.operator_tags(self),
        )

    def _advance(self, run: BatchRun) -> Any:
        with contextlib.closing(run):
            while True:
                step = run.advance()
                if isinstance(step, Done):
                    return step.result
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                    continue
                self.defer(
                    trigger=BananaBatchTrigger(
                        call_ids=step.call_ids,
                        banana_conn_id=self.banana_conn_id,
                        deadline=run.deadline,
                        started_at=run.store.started_at,
                        poll_interval=self.poll_interval,
                        long_poll=self.long_poll,
                        max_attempts=self.max_attempts,
                        linger=self.linger,
                    ),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=run.deadline - time.time() + DEFER_BACKSTOP_MARGIN),
                )

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
