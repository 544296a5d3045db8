"""Run Banana inferences from a DAG (one call, or a batch), optionally deferring the wait to the triggerer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_banana.batch import (
    ON_ITEM_FAILURE,
    BananaBatchTimeoutError,
    BatchPlan,
    Wave,
    inputs_digest,
)
from airflow_provider_banana.contract import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    BananaFinished,
    BananaResult,
    BananaRetryPolicy,
    BananaRunning,
    Reattach,
    event_summary,
    outputs_from_event,
    reattach_decision,
    use_start_only,
    validate_model_inputs,
    validate_poll_interval,
    validate_seconds,
)
from airflow_provider_banana.exceptions import BananaCallError, BananaConfigError, BananaError, BananaTimeoutError
from airflow_provider_banana.hooks.banana import DEFAULT_LINGER, BananaAsyncHook, BananaHook, CallWatch
from airflow_provider_banana.operators.task_state import (
    BATCH_CHUNK_KEY,
    BATCH_STATE_KEY,
    CALL_ID_KEY,
    BatchStore,
    StoredCall,
)
from airflow_provider_banana.triggers.banana import BananaBatchTrigger, BananaCallTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

T = TypeVar("T")

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
#: Seconds closing a batch's watch may take (cancelling Checks, closing connections).
_CLOSE_TIMEOUT = 30.0
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
    :param defer_after: with ``deferrable=True``, seconds the worker waits for the call itself
        after its Start (long-poll Checks) before it defers; a call that finishes sooner returns at
        once, without the round trip through the triggerer (a task resume: seconds of scheduling,
        a worker start and a DAG parse). ``0`` defers right after the Start.
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
        defer_after: float = DEFAULT_DEFER_AFTER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
            result = self._start(inputs, stored)
            if isinstance(result, BananaFinished):
                self.log.info("Banana call finished within its Start, in %.1f s", time.time() - started_at)
                return result.model_outputs
            call_id = result.call_id
        self._call_id = call_id
        context["ti"].xcom_push(key="call_id", value=call_id)
        if not self.wait_for_completion:
            self.log.info("Started Banana call %s; not waiting for it", call_id)
            return call_id
        if self.deferrable:
            outputs = self._wait_before_deferring(call_id, context, started_at, stored)
            if outputs is not None:
                stored.forget()
                return outputs
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
        self.log.info("Banana call %s finished after %.1f s", call_id, time.time() - started_at)
        return outputs

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
        if decision is Reattach.FINISHED:
            self.log.info("Banana call %s from an earlier try has finished; returning its outputs", previous)
            stored.forget()
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

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[Any]:
        """
        Return the outputs the trigger reported, or raise what it reported.

        :raises BananaCallError: the inference failed (naming the call and Banana's message).
        :raises BananaTimeoutError: the timeout passed while deferred.
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
        stored.forget()
        self.log.info("Banana call %s finished", call_id)
        return outputs

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

    def on_kill(self) -> None:
        """Log the running call: Banana v4 cannot cancel it."""
        if self._call_id:
            self.log.warning("Task killed while Banana call %s was running. %s", self._call_id, _NO_CANCEL)


class BananaBatchInferenceOperator(BaseOperator):
    """
    Run many inferences from one task, at most ``max_in_flight`` at a time, and return all outputs.

    Each item of ``model_inputs`` is the ``modelInputs`` of one call. Starts are sent only from the
    worker, which then follows the calls in flight and starts the next inputs as waves of them
    end. With ``deferrable=True``, once no call ended within ``defer_after`` seconds, the task
    defers: one :class:`~airflow_provider_banana.triggers.banana.BananaBatchTrigger` watches the
    calls in flight and hands control back when a wave of them ended, so the worker can start the
    next ones, and so on. The return value is a list with one entry per input, in input order:
    that call's ``modelOutputs`` list, or ``None`` for an input that failed under
    ``on_item_failure="skip"``.

    :param model_inputs: a list whose items are the inputs of one call each (templated, or an
        upstream task's output); a string that renders to a JSON array works too.
    :param model_key: the model (templated); defaults to the connection extra's ``model_key``.
    :param banana_conn_id: the Airflow connection to use.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param max_in_flight: most calls running at once.
    :param timeout: seconds the whole batch may take, per try; then the task fails naming the calls
        still running (a retry reattaches to them).
    :param item_retries: times one failed input is started again before it counts as failed.
    :param on_item_failure: ``"fail"``: once an input failed after its retries no new input is
        started, the calls in flight are waited for (their outputs are kept for a retry), and the
        task fails naming the failed inputs and their messages; ``"skip"``: a failed input's entry
        is ``None``, it is logged, and the batch goes on.
    :param poll_interval: least seconds between the starts of two Checks of one call.
    :param long_poll: let Banana hold each Check up to 50 s until the call finishes.
    :param max_attempts: tries of one request through transient trouble (see the README).
    :param durable: keep the plan in Airflow's ``task_state_store`` (Airflow 3.3+), so a retried
        task starts no finished input again and reattaches to the running ones.
    :param linger: seconds a wave lingers after its first call ended before handing back (unless
        half the calls ended), so a hand-back carries several results.
    :param defer_after: with ``deferrable=True``, seconds the worker waits, after starting calls,
        for one of them to end before it defers; while calls keep ending sooner, the batch goes on
        in the worker, since a deferral costs a task resume (seconds of scheduling, a worker start
        and a DAG parse). ``0`` defers at once.
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
        max_in_flight: int = 8,
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
        # Built once here so bad numbers fail when the DAG is parsed.
        BatchPlan(0, max_in_flight, item_retries, stop_on_failure=True)
        self.model_inputs = model_inputs
        self.model_key = model_key
        self.banana_conn_id = banana_conn_id
        self.deferrable = deferrable
        self.max_in_flight = max_in_flight
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

    def execute(self, context: Context) -> Any:
        """Start the batch (or carry on with this task's earlier calls), then wait or defer."""
        inputs = self._inputs()
        plan, store = self._plan(inputs), BatchStore(context, self.durable)
        state = store.load(plan)
        if state is not None:
            if state.get("try_number") != context["ti"].try_number:
                plan.new_try()
            self.log.info(
                "Resuming Banana batch from an earlier try: %s; reattaching to %d running calls",
                _counts(plan),
                len(plan.running),
            )
        # The timeout counts per try, like execution_timeout: a resumed batch gets a full one.
        store.begin_try(plan)
        return self._advance(inputs, plan, store)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        """Take a wave of results from the trigger, then start the next calls or finish."""
        inputs = self._inputs()
        plan, store = self._plan(inputs), BatchStore(context, self.durable)
        if store.load(plan) is None:
            raise BananaError("The Banana batch's persisted plan is missing; cannot resume after the deferral")
        self._take_wave(plan, store, Wave.from_event(event))
        return self._advance(inputs, plan, store)

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

    def _plan(self, inputs: list[dict[str, Any]]) -> BatchPlan:
        return BatchPlan(
            size=len(inputs),
            max_in_flight=self.max_in_flight,
            item_retries=self.item_retries,
            stop_on_failure=self.on_item_failure == "fail",
            digest=inputs_digest(inputs),
        )

    def _advance(self, inputs: list[dict[str, Any]], plan: BatchPlan, store: BatchStore) -> Any:
        started_at = store.started_at
        deadline = started_at + self.timeout
        worker_watch = _WorkerWatch(
            self.banana_conn_id,
            BananaRetryPolicy(max_attempts=self.max_attempts),
            linger=self.linger,
            deadline=deadline,
            started_at=started_at,
            long_poll=self.long_poll,
            poll_interval=self.poll_interval,
        )
        with contextlib.closing(worker_watch):
            while True:
                self._start_next(inputs, plan, store)
                self.log.info("Banana batch: %s", _progress(plan, store, time.time() - started_at))
                if plan.ended:
                    return self._finish(plan, store)
                if time.time() >= deadline:
                    raise BananaBatchTimeoutError(plan.running, self.timeout, plan.progress())
                running = list(plan.running.values())
                if not running:  # every input left was refused at its Start and waits for its retry
                    time.sleep(REFUSED_START_PAUSE)
                    continue
                if not self.deferrable:
                    self._take_wave(plan, store, worker_watch.wave(running))
                    continue
                # A deferral costs a task resume (scheduling, a worker start, a DAG parse: seconds),
                # so while calls keep ending within defer_after the batch goes on in the worker.
                wave = worker_watch.wave(running, within=self.defer_after) if self.defer_after else Wave()
                if wave.empty:
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

    def _start_next(self, inputs: list[dict[str, Any]], plan: BatchPlan, store: BatchStore) -> None:
        new_outputs: dict[int, list[Any]] = {}
        try:
            for index in plan.next_starts():
                try:
                    result = self.hook.start(inputs[index], self.model_key, start_only=True, quiet=True)
                except BananaCallError as e:
                    self.log.warning("Banana refused item %d: %s", index, e.message)
                    plan.start_failed(index, e.message)
                    continue
                if isinstance(result, BananaFinished):
                    new_outputs[index] = result.model_outputs
                # Which input runs as which (billed) call, in the task log too: with durable=False
                # a try that dies keeps no other record of it.
                self.log.info("Banana batch item %d: call %s", index, result.call_id or "finished within its Start")
                plan.started(index, result.call_id, new_outputs.get(index))
                # Persisted after every Start: a worker that dies mid-burst loses no call id.
                store.save(plan, new_outputs)
        finally:
            store.save(plan, new_outputs)

    def _take_wave(self, plan: BatchPlan, store: BatchStore, wave: Wave) -> None:
        by_call = {call_id: index for index, call_id in plan.running.items()}
        new_outputs = {by_call[c]: outputs for c, outputs in wave.finished.items() if c in by_call}
        for call_id, message in wave.failed.items():
            if call_id in by_call:
                self.log.warning("Banana batch item %d (call %s) failed: %s", by_call[call_id], call_id, message)
        plan.record(wave)
        store.save(plan, new_outputs)
        if wave.error:
            raise BananaError(
                f"Waiting for the Banana batch's calls failed: {wave.error} ({_counts(plan)}); "
                "the calls run on, and a retry of this task reattaches to them"
            )
        if wave.timed_out:
            raise BananaBatchTimeoutError(plan.running, self.timeout, plan.progress())

    def _finish(self, plan: BatchPlan, store: BatchStore) -> list[list[Any] | None]:
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

    def on_kill(self) -> None:
        """Say that the calls in flight run on: Banana v4 cannot cancel them."""
        self.log.warning("Task killed during a Banana batch. %s; a retry reattaches to the calls in flight", _NO_CANCEL)


class _WorkerWatch:
    """
    The calls a batch follows from its worker: one event loop, in a thread of its own, per try.

    The loop keeps running while the worker's own thread starts the next calls and writes the
    plan (both synchronous), so the calls' long polls, and the connections they open, carry on
    meanwhile and no call is Checked afresh after each wave. Both threads never talk to Airflow at
    once: the loop's thread does so only while entering the hook, when the worker's thread waits
    for it. Made on the first wave: a batch that defers at once (``defer_after=0``) never makes it.

    :param banana_conn_id: the Airflow connection to use.
    :param retry_policy: attempts and backoff of every Check.
    :param linger: seconds a wave lingers after its first call ended.
    :param wait_kwargs: ``deadline``, ``started_at``, ``long_poll`` and ``poll_interval`` of
        :meth:`BananaAsyncHook.watch`.
    """

    def __init__(
        self, banana_conn_id: str, retry_policy: BananaRetryPolicy, *, linger: float, **wait_kwargs: Any
    ) -> None:
        self._hook = BananaAsyncHook(banana_conn_id, retry_policy=retry_policy)
        self._linger = linger
        self._wait_kwargs = wait_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exits = contextlib.AsyncExitStack()
        self._watch: CallWatch | None = None
        self._pending: concurrent.futures.Future[Any] | None = None

    def wave(self, call_ids: list[str], within: float | None = None) -> Wave:
        """
        Follow ``call_ids`` too, and return the next wave of calls that ended.

        :param call_ids: the calls in flight.
        :param within: most seconds to wait for the first call to end; an empty wave if none did.
        """
        if self._watch is None:
            hook = self._run(self._exits.enter_async_context(self._hook))
            self._watch = hook.watch(**self._wait_kwargs)
            self._exits.push_async_callback(self._watch.aclose)
        return self._run(self._watch.wave(call_ids, linger=self._linger, within=within))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="banana-batch-watch", daemon=True)
            self._thread.start()
        self._pending = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return self._pending.result()
        finally:
            self._pending = None

    def close(self) -> None:
        """Stop following the calls (they run on), release the clients, stop the loop and its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._pending is not None:  # a wave interrupted in this thread (execution_timeout, SIGTERM)
                self._pending.cancel()
            asyncio.run_coroutine_threadsafe(self._exits.aclose(), loop).result(timeout=_CLOSE_TIMEOUT)
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=_CLOSE_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CLOSE_TIMEOUT)
            if not thread.is_alive():
                loop.close()


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
    if this_try > 0 and elapsed > 0:
        rate = this_try / elapsed
        line += f"; {rate:.1f} inputs/s, about {(plan.size - ended) / rate:.0f} s left"
    return line


def _counts(plan: BatchPlan) -> str:
    return ", ".join(f"{value} {name}" for name, value in plan.progress().items())
