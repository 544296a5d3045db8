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
    outputs_from_event,
    validate_model_inputs,
    validate_positive,
)
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Seconds the deferral backstop waits past the trigger's own deadline, so that the trigger's
#: clearer ``timeout`` event normally wins and the backstop only fires if the trigger cannot run.
DEFER_BACKSTOP_MARGIN = 60.0
_NO_CANCEL = "Banana v4 has no cancel endpoint: the call runs on and is billed"


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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_inputs = model_inputs
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
        """Start the inference, then return its outputs (or its callID), or defer the wait."""
        inputs = validate_model_inputs(self.model_inputs)
        started_at = time.time()
        # A waiting Start holds the worker up to start_hold and cannot be abandoned at the deadline
        # (its answer is the only copy of the callID), so short timeouts and deferral use startOnly.
        short = self.timeout < self.hook.settings.timeouts.start_hold
        start_only = self.deferrable or not self.wait_for_completion or short
        result = self.hook.start(inputs, self.model_key, start_only=start_only)
        if result.finished:
            self.log.info("Banana call finished at once, in %.1f s", time.time() - started_at)
            return result.model_outputs or []
        call_id = self._call_id = result.call_id or ""
        context["ti"].xcom_push(key="call_id", value=call_id)
        if not self.wait_for_completion:
            self.log.info("Started Banana call %s; not waiting for it", call_id)
            return call_id
        if self.deferrable:
            self.log.info("Started Banana call %s; deferring the wait to the triggerer", call_id)
            self.defer(
                trigger=BananaCallTrigger(
                    call_id=call_id,
                    banana_conn_id=self.banana_conn_id,
                    deadline=started_at + self.timeout,
                    started_at=started_at,
                    poll_interval=self.poll_interval,
                    long_poll=self.long_poll,
                    max_attempts=self.max_attempts,
                ),
                method_name="execute_complete",
                # Airflow does not enforce execution_timeout while a task is deferred unless told.
                timeout=timedelta(seconds=self.timeout + DEFER_BACKSTOP_MARGIN),
            )
        return self.hook.wait(
            call_id,
            timeout=self.timeout,
            started_at=started_at,
            long_poll=self.long_poll,
            poll_interval=self.poll_interval,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[Any]:
        """
        Return the outputs the trigger reported, or raise what it reported.

        :raises BananaCallError: the inference failed (naming the call and Banana's message).
        :raises BananaTimeoutError: the timeout passed while deferred.
        :raises BananaError: a missing or malformed event.
        """
        call_id, outputs = outputs_from_event(event)
        self.log.info("Banana call %s finished", call_id)
        return outputs

    def on_kill(self) -> None:
        """Log the running call: Banana v4 cannot cancel it."""
        if self._call_id:
            self.log.warning("Task killed while Banana call %s was running. %s", self._call_id, _NO_CANCEL)
