"""Wait for a Banana call that was started elsewhere (by id) to finish."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

try:
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException
except ImportError:  # Airflow 3.1 has them only in airflow.exceptions
    from airflow.exceptions import AirflowSensorTimeout, AirflowSkipException  # type: ignore[no-redef]

from airflow_provider_banana.contract import (
    BananaFinished,
    BananaRetryPolicy,
    OutputsOnServer,
    deadline_for,
    outputs_from_event,
    task_started,
    validate_call_id,
    validate_poll_interval,
)
from airflow_provider_banana.exceptions import BananaCallError, BananaTimeoutError
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class BananaCallSensor(BaseSensorOperator):
    """
    Wait for a Banana call, given its callID, and return its ``modelOutputs`` list.

    In ``poke`` and ``reschedule`` mode each poke is one Check without long poll. With
    ``deferrable=True`` the wait moves to
    :class:`~airflow_provider_banana.triggers.banana.BananaCallTrigger` (long-poll Checks) until
    the sensor's ``timeout``. A failed or unknown call raises a
    :class:`~airflow_provider_banana.exceptions.BananaCallError` (the task fails; with
    ``soft_fail=True`` it is skipped instead); the ``timeout`` behaves as for any sensor.

    :param call_id: the callID to wait for (templated), e.g. the ``call_id`` XCom of a
        :class:`~airflow_provider_banana.operators.banana.BananaInferenceOperator` run with
        ``wait_for_completion=False``.
    :param banana_conn_id: the Airflow connection to use.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param max_attempts: tries of one Check through transient transport trouble, with backoff.

    ``poke_interval`` (a sensor argument) is at least 0.25 s: a call is never Checked more than four
    times a second.
    """

    template_fields: Sequence[str] = ("call_id",)
    ui_color = "#ffe135"

    def __init__(
        self,
        *,
        call_id: str,
        banana_conn_id: str = BananaHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_attempts: int = BananaRetryPolicy.max_attempts,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Each poke is a Check: the floor that protects the server from tight Check loops holds here too.
        validate_poll_interval(self.poke_interval, "poke_interval")
        self.call_id = call_id
        self.banana_conn_id = banana_conn_id
        self.deferrable = deferrable
        # Checked here, before any task runs; BaseOperator's own retry_policy is another thing.
        self.max_attempts = BananaRetryPolicy(max_attempts=max_attempts).max_attempts

    @functools.cached_property
    def hook(self) -> BananaHook:
        """Return the hook (made on first use, so ``__init__`` does no connection lookup)."""
        return BananaHook(self.banana_conn_id, retry_policy=BananaRetryPolicy(max_attempts=self.max_attempts))

    def execute(self, context: Context) -> Any:
        """Poke (or reschedule) as any sensor does, or defer to the trigger."""
        call_id = validate_call_id(self.call_id)
        if not self.deferrable:
            return super().execute(context)
        started_at = time.time()
        self.defer(
            trigger=BananaCallTrigger(
                call_id=call_id,
                banana_conn_id=self.banana_conn_id,
                # execution_timeout, if shorter, holds too: Airflow does not enforce it while deferred.
                deadline=deadline_for(
                    started_at,
                    self.timeout,
                    task_started=task_started(context),
                    execution_timeout=self.execution_timeout,
                ),
                started_at=started_at,
                poll_interval=self.poke_interval,
                long_poll=True,
                max_attempts=self.max_attempts,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        """Check the call once, without long poll."""
        try:
            result = self.hook.check(validate_call_id(self.call_id), long_poll=False)
        except BananaCallError as e:
            self._raise_failed(e)
        if not isinstance(result, BananaFinished):
            self.log.info("Banana call %s is %s", result.call_id, result.status_text)
            return False
        return PokeReturnValue(is_done=True, xcom_value=result.model_outputs)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """
        Return the outputs the trigger reported (fetched, if too large for its event), or raise what it reported.

        :raises AirflowSensorTimeout: the sensor's timeout passed.
        :raises BananaCallError: the call failed or is unknown.
        :raises BananaOutputsError: large outputs could not be fetched as the trigger saw them.
        """
        try:
            call_id, outputs = outputs_from_event(event)
        except BananaTimeoutError as e:
            raise AirflowSensorTimeout(str(e)) from e
        except BananaCallError as e:
            self._raise_failed(e)
        if isinstance(outputs, OutputsOnServer):
            self.log.info(
                "Fetching the outputs of Banana call %s (%d bytes, too large for the trigger's event) with one Check",
                call_id,
                outputs.digest.size,
            )
            outputs = self.hook.fetch_outputs(outputs)
        self.log.info("Banana call %s finished", call_id)
        return outputs

    def _raise_failed(self, error: BananaCallError) -> None:
        # Airflow's poke loop skips on soft_fail only for its own timeout and fail exceptions; a
        # failed call is final (checking it again cannot help), so soft_fail skips on it too.
        if self.soft_fail:
            raise AirflowSkipException(f"Skipping due to soft_fail: {error}") from error
        raise error
