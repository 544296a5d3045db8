"""Run one model's calls on at most ``replicas`` asyncio workers fed by a FIFO queue.

An external model's pool also shares a slot limit with every other model on the same
model server: a call waits for a slot in the queue, still ``queued``, and becomes
``running`` only when its request is about to be sent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from airflow_provider_banana.devserver.models import Model, ModelBusy, ModelError

if TYPE_CHECKING:
    from airflow_provider_banana.devserver.calls import Call, CallRegistry

log = logging.getLogger(__name__)

# A busy model server (HTTP 423) is retried quickly at first, then no more
# often than this, so a long busy spell does not turn into a request storm.
BUSY_RETRY_FIRST = 0.2
BUSY_RETRY_MAX = 2.0


class ModelPool:
    """Queue calls for one model and run at most ``replicas`` of them at once, in arrival order.

    A worker is started when a call arrives and fewer than ``replicas`` run, and ends when the
    queue is empty, so an idle model costs nothing: ``--replicas 10000`` (a benchmark's setting)
    no longer keeps 60,000 idle tasks, ten thousand per built-in model, for the server's life.

    :param model_key: the model's key, for logs.
    :param model: the model to run.
    :param replicas: most workers, i.e. calls running at once.
    :param calls: the registry every state change goes through.
    :param slots: shared with the other pools on the same model server: a worker holds one
        while its call runs (busy back-offs included); None for no limit beyond ``replicas``.
    """

    def __init__(
        self,
        model_key: str,
        model: Model,
        replicas: int,
        calls: CallRegistry,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.model_key = model_key
        self.model = model
        self.replicas = replicas
        self._calls = calls
        self._slots = slots
        self._queue: collections.deque[Call] = collections.deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._started = False
        self._accepting = False

    def start(self) -> None:
        """Run calls from now on, the queued ones first; call from inside the running loop."""
        self._started = self._accepting = True
        for _ in range(min(self.replicas, len(self._queue))):
            self._spawn()

    async def stop(self) -> None:
        """Cancel the workers and the calls they run.

        Calls still queued stay until :meth:`start`, so a Start that arrives meanwhile still has
        somewhere to go; the caller forgets those calls.
        """
        self._accepting = False
        workers, self._workers = self._workers, set()
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers)

    def submit(self, call: Call) -> None:
        """Append a queued call to the model's queue, starting a worker if fewer than ``replicas`` run.

        :param call: a call in the queued state.
        :raises RuntimeError: if the pool was never started.
        """
        if not self._started:
            raise RuntimeError(f"model pool {self.model_key!r} is not running")
        self._queue.append(call)
        # A worker at the cap takes the call when it is done with its own: workers end only on an
        # empty queue, and this runs on the loop's one thread, so no call is left behind.
        if self._accepting and len(self._workers) < self.replicas:
            self._spawn()

    def _spawn(self) -> None:
        worker = asyncio.create_task(self._work(), name=f"banana-devserver-{self.model_key}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        while self._queue:
            if self._slots is None:
                await self._run_next()
                continue
            # The call is taken from the queue only once a slot is free, so until then it is
            # queued, and the model timeout starts only when its request is sent.
            async with self._slots:
                await self._run_next()

    async def _run_next(self) -> None:
        # Another worker may have emptied the queue while this one waited for a slot.
        while self._queue:
            call = self._queue.popleft()
            if not call.forgotten:
                await self._run(call)
                return

    async def _run(self, call: Call) -> None:
        busy_pause = BUSY_RETRY_FIRST
        while True:
            self._calls.mark_running(call)
            try:
                output = await self.model(call.inputs)
            except ModelBusy:
                # The call keeps its worker: that preserves FIFO order and the replica limit.
                self._calls.mark_queued(call)
                log.debug("Model %s busy; call %s retries in %.1fs", self.model_key, call.call_id, busy_pause)
                await asyncio.sleep(busy_pause)
                busy_pause = min(busy_pause * 2, BUSY_RETRY_MAX)
                continue
            except ModelError as e:
                self._calls.fail(call, e.message)
            except Exception as e:
                # A bug in a model must fail its call, not kill the worker and shrink the pool.
                log.exception("Model %s crashed on call %s", self.model_key, call.call_id)
                self._calls.fail(call, f"error: model crashed: {type(e).__name__}")
            else:
                self._calls.succeed(call, output)
            return
