"""Run one Banana inference from a DAG, optionally deferring the wait to the triggerer."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BananaRetryPolicy,
    Reattach,
    outputs_from_event,
    reattach_decision,
    validate_model_inputs,
    validate_positive,
)
from airflow_provider_banana.exceptions import BananaCallError, BananaTimeoutError
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Seconds the deferral backstop waits past the trigger's own deadline, so that the trigger's
#: clearer ``timeout`` event normally wins and the backstop only fires if the trigger cannot run.
DEFER_BACKSTOP_MARGIN = 60.0
_NO_CANCEL = "Banana v4 has no cancel endpoint: the call runs on and is billed"
#: The ``task_state_store`` key holding the call a task instance waits for, across its tries.
#: Renaming it on a deployed version breaks the reattachment of tries in flight.
CALL_ID_KEY = "banana_call_id"


class StoredCall:
    """
    The call id a task instance keeps in Airflow's ``task_state_store``, so a retry reattaches.

    Airflow 3.3 gives each task instance a store that outlives its tries (the one
    ``airflow.sdk.ResumableJobMixin`` uses). Where there is none (Airflow before 3.3, or
    ``durable=False``) every method does nothing and a retried task starts a new call.

    :param context: the task's context.
    :param enabled: whether to use the store at all.
    """

    def __init__(self, context: Context, enabled: bool = True) -> None:
        self._store: Any = context.get("task_state_store") if enabled else None

    @property
    def available(self) -> bool:
        """Return whether call ids survive this try."""
        return self._store is not None

    def get(self) -> str | None:
        """Return the call id an earlier try stored, if any."""
        value = self._store.get(CALL_ID_KEY) if self._store is not None else None
        return value if isinstance(value, str) and value else None

    def save(self, call_id: str) -> None:
        """Persist the call id before any wait, so a retry waits for it instead of paying again."""
        if self._store is not None:
            self._store.set(CALL_ID_KEY, call_id)

    def forget(self) -> None:
        """Drop the call id once the call ended, so clearing the task later starts a fresh call."""
        if self._store is not None:
            self._store.delete(CALL_ID_KEY)


class BananaInferenceOperator(BaseOperator):
    """
    Run one inference on a Banana-compatible API and return its ``modelOutputs`` list.

    The Start is always sent from the worker. With ``deferrable=True`` it is a ``startOnly``
    Start, the callID goes to XCom (key ``call_id``) and the wait moves to
    :class:`~airflow_provider_banana.triggers.banana.BananaCallTrigger`, so no worker slot is
    held while the model runs. Otherwise the worker sends a Start that waits up to ~60 s for the
    result, then long-polls Check. Either way the return value (XCom ``return_value``) is the
    ``modelOutputs`` list, so ``op.output`` feeds the next task.

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
    """

    template_fields: Sequence[str] = ("model_inputs", "model_key")
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_inputs = model_inputs
        self.durable = durable
        self.model_key = model_key
        self.banana_conn_id = banana_conn_id
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.timeout = validate_positive("timeout", timeout)
        self.poll_interval = validate_positive("poll_interval", poll_interval)
        self.long_poll = long_poll
        # Checked here, before any task runs; BaseOperator's own retry_policy is another thing.
        self.max_attempts = BananaRetryPolicy(max_attempts=max_attempts).max_attempts
        self._call_id: str | None = None

    @functools.cached_property
    def hook(self) -> BananaHook:
        """Return the hook (made on first use, so ``__init__`` does no connection lookup)."""
        return BananaHook(self.banana_conn_id, retry_policy=BananaRetryPolicy(max_attempts=self.max_attempts))

    def execute(self, context: Context) -> Any:
        """Start the inference (or reattach to this task's earlier call), then return or defer."""
        inputs = validate_model_inputs(self.model_inputs)
        # The timeout counts per try, like execution_timeout: a reattached call gets a full one.
        started_at = time.time()
        stored = StoredCall(context, enabled=self.durable and self.wait_for_completion)
        call_id, outputs = self._reattach(stored)
        if outputs is not None:
            return outputs
        if call_id is None:
            call_id, outputs = self._start(inputs, stored, started_at)
            if outputs is not None:
                return outputs
        self._call_id = call_id
        context["ti"].xcom_push(key="call_id", value=call_id)
        if not self.wait_for_completion:
            self.log.info("Started Banana call %s; not waiting for it", call_id)
            return call_id
        if self.deferrable:
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
        stored.forget()
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
        try:
            outcome: Any = self.hook.check(previous, long_poll=False)
        except BananaCallError as e:
            outcome = e
        decision = reattach_decision(outcome)
        if decision is Reattach.DONE:
            self.log.info("Banana call %s from an earlier try has finished; returning its outputs", previous)
            stored.forget()
            return previous, outcome.model_outputs or []
        if decision is Reattach.WAIT:
            self.log.info(
                "Reattaching to Banana call %s from an earlier try (%s) instead of starting a new one",
                previous,
                outcome.status_text,
            )
            return previous, None
        self.log.warning("Banana call %s from an earlier try ended (%s); starting a new call", previous, outcome)
        stored.forget()
        return None, None

    def _start(self, inputs: dict[str, Any], stored: StoredCall, started_at: float) -> tuple[str, list[Any] | None]:
        # A waiting Start holds the worker up to start_hold, cannot be abandoned at the deadline (its
        # answer is the only copy of the call id) and leaves nothing to reattach to if the worker dies
        # while it waits; deferral, a durable call and a short timeout use startOnly instead.
        short = self.timeout < self.hook.settings.timeouts.start_hold
        start_only = self.deferrable or not self.wait_for_completion or stored.available or short
        result = self.hook.start(inputs, self.model_key, start_only=start_only)
        if result.finished:
            self.log.info("Banana call finished within its Start, in %.1f s", time.time() - started_at)
            return result.call_id or "", result.model_outputs or []
        call_id = result.call_id or ""
        stored.save(call_id)
        return call_id, None

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[Any]:
        """
        Return the outputs the trigger reported, or raise what it reported.

        :raises BananaCallError: the inference failed (naming the call and Banana's message).
        :raises BananaTimeoutError: the timeout passed while deferred.
        :raises BananaError: a missing or malformed event.
        """
        stored = StoredCall(context, enabled=self.durable)
        try:
            call_id, outputs = outputs_from_event(event)
        except BananaCallError:
            stored.forget()
            raise
        stored.forget()
        self.log.info("Banana call %s finished", call_id)
        return outputs

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after deferral; a deferral that timed out fails naming the call it waited for."""
        from airflow.sdk.exceptions import TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout as e:
            ti = context["ti"]
            call_id = ti.xcom_pull(task_ids=ti.task_id, key="call_id", map_indexes=ti.map_index)
            limit = self.execution_timeout.total_seconds() if self.execution_timeout else self.timeout
            raise BananaTimeoutError(call_id, min(self.timeout, limit), f"deferral timed out: {e}") from e

    def on_kill(self) -> None:
        """Log the running call: Banana v4 cannot cancel it."""
        if self._call_id:
            self.log.warning("Task killed while Banana call %s was running. %s", self._call_id, _NO_CANCEL)
