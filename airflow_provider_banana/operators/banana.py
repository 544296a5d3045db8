"""
Run one Banana inference from a DAG, optionally deferring the wait to the triggerer.

The batch operator, :class:`~airflow_provider_banana.operators.batch.BananaBatchInferenceOperator`,
lives in :mod:`airflow_provider_banana.operators.batch` and is importable from here too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_banana import lineage, metrics
from airflow_provider_banana.batch.files import as_storage_path
from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BananaFinished,
    BananaResult,
    BananaRetryPolicy,
    BananaRunning,
    call_timeout_error,
    deadline_for,
    event_summary,
    outputs_from_event,
    task_started,
    use_start_only,
    validate_model_inputs,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.contract.failures import NO_CANCEL
from airflow_provider_banana.contract.waiting import DEFAULT_DEFER_AFTER, DEFER_BACKSTOP_MARGIN
from airflow_provider_banana.exceptions import BananaTimeoutError
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.operators.batch import BananaBatchInferenceOperator
from airflow_provider_banana.operators.outputs import event_result, task_result
from airflow_provider_banana.operators.task_state import CALL_ID_XCOM_KEY, StoredCall
from airflow_provider_banana.triggers.banana import BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

# The batch operator is importable from here too, where the docs and DAGs find both operators.
__all__ = ["BananaBatchInferenceOperator", "BananaInferenceOperator"]


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
        earlier = stored.reattach(self.hook, self.log, lambda: metrics.operator_tags(self))
        if isinstance(earlier, BananaFinished):
            with stored.until_ended():
                return task_result(earlier.model_outputs, path, earlier.call_id, self.log)
        result = earlier or self._start(inputs, stored)
        if isinstance(result, BananaFinished):
            self.log.info("Banana call finished within its Start, in %.1f s", time.time() - started_at)
            # Nothing stored yet: kept only if the outputs cannot leave (a retry then Checks, free).
            with stored.until_ended(unsaved=result.call_id):
                return task_result(result.model_outputs, path, result.call_id, self.log)
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
            return task_result(outputs, path, call_id, self.log)

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
            result = event_result(call_id, outputs, self.output_path, self.hook, self.log)
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
            self.log.warning("Task killed while Banana call %s was running. %s", self._call_id, NO_CANCEL)
