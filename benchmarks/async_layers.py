"""Measure what each layer of the async side costs per call: bare aiohttp, the hook, the trigger.

Usage::

    python -m benchmarks.async_layers [--n 1000] [--repeat 3]

For each layer, N calls of the local server's ``sleep`` model are started (``startOnly``) to finish
4-6 s later, and N concurrent long polls follow them on one event loop in this process; the figure
is this process's CPU time (``time.process_time()``) per call, from the first request to the last
answer. The baseline is the first row: bare ``aiohttp`` requests through one session, each on a
connection of its own (concurrent long polls cannot share one). Every request goes to 127.0.0.1.

The layers run in turn, ``--repeat`` rounds of them, and each row gives the median of its rounds:
one full collection of the garbage collector (about 0.15 ms a call here) falls in each run, and
where it falls moves a single run's figure by a fifth. The column "of it, GC" is the collector's
share, measured with ``gc.callbacks``; "spread" is the lowest and highest of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import print_table, start_sleep_calls

API_KEY = "bench-api-key"


async def _first_event(trigger: Any) -> Any:
    events = trigger.run()
    try:
        return await events.__anext__()
    finally:
        await events.aclose()


def _layers(url: str) -> list[tuple[str, Callable[[list[str]], Awaitable[Any]]]]:
    import aiohttp

    from airflow_provider_banana.hooks.banana import BananaAsyncHook
    from airflow_provider_banana.triggers.banana import BananaCallTrigger

    async def bare(ids: list[str]) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(call_id: str) -> bytes:
                body = {"id": "x", "created": 1, "apiKey": API_KEY, "longPoll": True, "callID": call_id}
                async with session.post(url + "check/v4/", data=json.dumps(body).encode()) as response:
                    return await response.read()

            await asyncio.gather(*(one(c) for c in ids))

    async def one_hook_checks(ids: list[str]) -> None:
        async with BananaAsyncHook() as hook:
            await asyncio.gather(*(hook.check(c) for c in ids))

    async def hook_per_call(ids: list[str]) -> None:
        async def one(call_id: str) -> list[Any]:
            async with BananaAsyncHook() as hook:
                return await hook.wait(call_id, quiet=True)

        await asyncio.gather(*(one(c) for c in ids))

    async def triggers(ids: list[str]) -> None:
        tasks = []
        for call_id in ids:
            now = time.time()
            tasks.append(asyncio.create_task(_first_event(BananaCallTrigger(call_id, deadline=now + 600))))
            await asyncio.sleep(0)  # Airflow's triggerer yields to the loop between two new triggers
        await asyncio.gather(*tasks)

    return [
        ("bare aiohttp session", bare),
        ("one hook, hook.check", one_hook_checks),
        ("a hook per call, hook.wait", hook_per_call),
        ("a BananaCallTrigger per call", triggers),
    ]


class _CollectorTime:
    """Add up the CPU time the garbage collector takes while the block runs (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.seconds += time.process_time() - self._began

    def __enter__(self) -> _CollectorTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every layer `--repeat` times and print the median CPU per call, with the ratio to the bare client.

    :param argv: command-line arguments.
    :return: 0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="concurrent calls per layer (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all layers; medians (default: %(default)s)")
    args = parser.parse_args(argv)
    from airflow_provider_banana.devserver.testing import DevServer

    n = args.n
    with DevServer(start_hold=2, check_hold=50, replicas=n + 8, log_level="warning", startup_timeout=60) as srv:
        conn = {"conn_type": "banana", "host": srv.url, "password": API_KEY, "extra": {"model_key": "sleep"}}
        os.environ["AIRFLOW_CONN_BANANA_DEFAULT"] = json.dumps(conn)
        os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="banana-bench-"))

        def calls(count: int) -> list[str]:
            untils = [time.time() + 4 + 2 * i / max(count, 1) for i in range(count)]
            return asyncio.run(start_sleep_calls("127.0.0.1", srv.port, untils))

        layers = _layers(srv.url)
        for _, run in layers:  # warm up every layer: imports and one-time set-up are not measured
            asyncio.run(run(calls(2)))
        cpu: dict[str, list[float]] = {name: [] for name, _ in layers}
        in_gc: dict[str, list[float]] = {name: [] for name, _ in layers}
        for _ in range(max(args.repeat, 1)):
            for name, run in layers:
                ids = calls(n)
                gc.collect()
                with _CollectorTime() as collector:
                    began = time.process_time()
                    asyncio.run(run(ids))
                    cpu[name].append((time.process_time() - began) / n)
                in_gc[name].append(collector.seconds / n)
    rows, baseline = [], None
    for name, figures in cpu.items():
        per_call = statistics.median(figures)
        baseline = baseline or per_call
        rows.append(
            [
                name,
                f"{n:,}",
                f"{per_call * 1e3:.2f} ms",
                f"{statistics.median(in_gc[name]) * 1e3:.2f} ms",
                f"{min(figures) * 1e3:.2f}-{max(figures) * 1e3:.2f} ms",
                f"{per_call / baseline:.2f}x",
            ]
        )
    print_table(
        f"Async layers: CPU per call, N concurrent long polls (median of {len(cpu[layers[0][0]])} rounds)",
        ["layer", "N", "CPU / call", "of it, GC", "spread", "vs bare"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
