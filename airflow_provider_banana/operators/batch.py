"""
Run many Banana inferences from one task, at most ``max_in_flight`` at a time, deferring to the triggerer between waves.

A thin shell around :class:`~airflow_provider_banana.batch.run.BatchRun`, which drives the batch.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_banana import lineage, metrics
from airflow_provider_banana.batch.files import as_storage_path
from airflow_provider_banana.batch.plan import DEFAULT_MAX_STARTING, ON_ITEM_FAILURE, BatchPlan, Wave
from airflow_provider_banana.batch.run import BatchRun, Done, Pause, fetch_on_server, open_batch, resume
from airflow_provider_banana.batch.watch import DEFAULT_LINGER
from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BananaRetryPolicy,
    task_started,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.contract.failures import NO_CANCEL
from airflow_provider_banana.contract.waiting import DEFAULT_DEFER_AFTER, DEFER_BACKSTOP_MARGIN
from airflow_provider_banana.exceptions import BananaConfigError, BananaError
from airflow_provider_banana.hooks.banana import BananaHook
from airflow_provider_banana.triggers.banana import BananaBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_banana.batch.files import JsonlInputs, JsonlOutput, ListInputs
    from airflow_provider_banana.batch.store import BatchStore

    BatchInputs = ListInputs | JsonlInputs
    BatchParts = tuple[BatchInputs, JsonlOutput | None, BatchPlan, BatchStore]

__all__ = ["BananaBatchInferenceOperator"]


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
            resume(plan, store, self.log, metrics.operator_tags(self))
            # The timeout counts per try, like execution_timeout: a resumed batch gets a full one.
            store.begin_try(
                plan,
                timeout=self.timeout,
                task_started=task_started(context),
                execution_timeout=self.execution_timeout,
            )
            return self._advance(self._run(source, output, plan, store, context))

    @metrics.counts_timeouts
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        """Take a wave of results from the trigger, then start the next calls or finish."""
        with self._batch(context) as (source, output, plan, store):
            if store.load(plan) is None:
                raise BananaError("The Banana batch's persisted plan is missing; cannot resume after the deferral")
            run = self._run(source, output, plan, store, context)
            # Before the run's worker starts anything (it is made lazily): nothing to close on a failure.
            run.take_wave(fetch_on_server(Wave.from_event(event), self.hook, self.log))
            return self._advance(run)

    def _batch(self, context: Context) -> contextlib.AbstractContextManager[BatchParts]:
        return open_batch(
            context,
            model_inputs=self.model_inputs,
            input_path=self.input_path,
            output_path=self.output_path,
            max_in_flight=self.max_in_flight,
            item_retries=self.item_retries,
            stop_on_failure=self.on_item_failure == "fail",
            max_starting=self.max_starting,
            durable=self.durable,
        )

    def _run(
        self, source: BatchInputs, output: JsonlOutput | None, plan: BatchPlan, store: BatchStore, context: Context
    ) -> BatchRun:
        return BatchRun(
            source=source,
            output=output,
            plan=plan,
            store=store,
            deadline=store.try_deadline(
                timeout=self.timeout, task_started=task_started(context), execution_timeout=self.execution_timeout
            ),
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
        self.log.warning("Task killed during a Banana batch. %s; a retry reattaches to the calls in flight", NO_CANCEL)
