"""Run one model's calls on a fixed pool of asyncio workers fed by a FIFO queue."""

from __future__ import annotations

import asyncio
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

    :param model_key: the model's key, for logs.
    :param model: the model to run.
    :param replicas: number of workers, i.e. calls running at once.
    :param calls: the registry every state change goes through.
    """

    def __init__(self, model_key: str, model: Model, replicas: int, calls: CallRegistry) -> None:
        self.model_key = model_key
        self.model = model
        self.replicas = replicas
        self._calls = calls
        self._queue: asyncio.Queue[Call] | None = None
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Create the queue and the workers; call from inside the running loop."""
        queue: asyncio.Queue[Call] = asyncio.Queue()
        self._queue = queue
        self._workers = [
            asyncio.create_task(self._work(queue), name=f"banana-devserver-{self.model_key}-{n}")
            for n in range(self.replicas)
        ]

    async def stop(self) -> None:
        """Cancel the workers and the calls they run.

        The queue stays until :meth:`start` replaces it, so a Start that arrives
        meanwhile still has somewhere to go; the caller forgets those calls.
        """
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers)

    def submit(self, call: Call) -> None:
        """Append a queued call to the model's queue.

        :param call: a call in the queued state.
        :raises RuntimeError: if the pool was never started.
        """
        if self._queue is None:
            raise RuntimeError(f"model pool {self.model_key!r} is not running")
        self._queue.put_nowait(call)

    async def _work(self, queue: asyncio.Queue[Call]) -> None:
        while True:
            call = await queue.get()
            if call.forgotten:
                continue
            await self._run(call)

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
