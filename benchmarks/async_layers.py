"""Measure what each layer of the async side costs per call: bare aiohttp, the hook, the trigger.

Usage::

    python -m benchmarks.async_layers [--n 1000] [--repeat 3] [--repoll-span 30]

Two tables, each against a bare ``aiohttp`` baseline in the same run. Every request goes to 127.0.0.1.

*One Check per call.* For each layer, N calls of the local server's ``sleep`` model are started
(``startOnly``) to finish 4-6 s later, and N concurrent long polls follow them on one event loop in
this process; the figure is this process's CPU time (``time.process_time()``) per call, from the
first request to the last answer. A call is thus one Check and everything a layer does once per
call (a trigger's construction, its hook's lease, its event). The baseline is the first row: bare
``aiohttp`` requests through one session, each on a connection of its own (concurrent long polls
cannot share one).

*Re-polls.* The happy path of a running call: the server holds each Check 5 s (the hooks' least
interval between two Checks, so none pauses) and answers "running" until the call ends, ``--repoll-span``
seconds later (about six Checks each; the count comes from the server's own counter). The figure
is the CPU per Check. The baseline re-polls with bare ``aiohttp`` as simply as a client can: post,
read, ``json.loads``, and again until the message says ``success``. The connection still says
the server holds 50 s, so the trigger's first-hold cut (at 25-50 s) never comes: every Check here
is answered.

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
#: Seconds the server holds each Check of the re-poll table: the hooks' least interval between two
#: Checks (``DEFAULT_POLL_INTERVAL``), so that no layer pauses between them.
REPOLL_HOLD = 5.0


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


def _repoll_layers(url: str) -> list[tuple[str, Callable[[list[str]], Awaitable[Any]]]]:
    import aiohttp

    async def bare_loop(ids: list[str]) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(call_id: str) -> Any:
                body = {"id": "x", "created": 1, "apiKey": API_KEY, "longPoll": True, "callID": call_id}
                while True:
                    async with session.post(url + "check/v4/", data=json.dumps(body).encode()) as response:
                        reply = json.loads(await response.read())
                    if reply.get("message") == "success":
                        return reply["modelOutputs"]

            await asyncio.gather(*(one(c) for c in ids))

    by_name = dict(_layers(url))
    return [
        ("bare aiohttp, re-polling loop", bare_loop),
        ("a hook per call, hook.wait", by_name["a hook per call, hook.wait"]),
        ("a BananaCallTrigger per call", by_name["a BananaCallTrigger per call"]),
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


class _Figures:
    """Each layer's rounds: CPU, the collector's share, and Checks, all per call."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.in_gc: dict[str, list[float]] = {}
        self.checks: dict[str, list[float]] = {}

    def measure(self, name: str, run: Callable[[list[str]], Awaitable[Any]], ids: list[str], server: Any) -> None:
        """Run one layer over ``ids`` and keep its figures.

        :param name: the layer.
        :param run: the layer.
        :param ids: the calls to follow.
        :param server: the ``DevServer``, whose counter says how many Checks arrived.
        """
        n = len(ids)
        sent_before = server.stats()["check_requests"]
        gc.collect()
        with _CollectorTime() as collector:
            began = time.process_time()
            asyncio.run(run(ids))
            cpu = time.process_time() - began
        self.cpu.setdefault(name, []).append(cpu / n)
        self.in_gc.setdefault(name, []).append(collector.seconds / n)
        self.checks.setdefault(name, []).append((server.stats()["check_requests"] - sent_before) / n)

    def rows(self, *, per_check: bool) -> list[list[str]]:
        """Return the table's rows: medians of the rounds, the first layer the baseline.

        :param per_check: give the CPU per Check (each round's CPU over its own Checks), not per call.
        """
        rows, baseline = [], None
        for name, figures in self.cpu.items():
            scale = [1.0 / c if per_check else 1.0 for c in self.checks[name]]
            values = [f * k for f, k in zip(figures, scale, strict=True)]
            value = statistics.median(values)
            baseline = baseline or value
            rows.append(
                [
                    name,
                    f"{statistics.median(self.checks[name]):.2f}",
                    f"{value * 1e3:.3f} ms",
                    f"{statistics.median(g * k for g, k in zip(self.in_gc[name], scale, strict=True)) * 1e3:.3f} ms",
                    f"{min(values) * 1e3:.3f}-{max(values) * 1e3:.3f} ms",
                    f"{value / baseline:.2f}x",
                ]
            )
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run every layer `--repeat` times; print the median CPU per call and per re-poll, against bare aiohttp.

    :param argv: command-line arguments.
    :return: 0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="concurrent calls per layer (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all layers; medians (default: %(default)s)")
    parser.add_argument(
        "--repoll-span",
        type=float,
        default=30.0,
        help="seconds the calls of the re-poll table run, Checks held 5 s each; 0 skips it (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    from airflow_provider_banana.devserver.testing import DevServer

    n = args.n
    with DevServer(start_hold=2, check_hold=50, replicas=n + 8, log_level="warning", startup_timeout=60) as srv:
        conn = {"conn_type": "banana", "host": srv.url, "password": API_KEY, "extra": {"model_key": "sleep"}}
        os.environ["AIRFLOW_CONN_BANANA_DEFAULT"] = json.dumps(conn)
        os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="banana-bench-"))

        def calls(count: int, after: float = 4.0) -> list[str]:
            untils = [time.time() + after + 2 * i / max(count, 1) for i in range(count)]
            return asyncio.run(start_sleep_calls("127.0.0.1", srv.port, untils))

        layers, repoll_layers = _layers(srv.url), _repoll_layers(srv.url)
        for _, run in [*layers, *repoll_layers]:  # warm up every layer: imports and one-time set-up are not measured
            asyncio.run(run(calls(2)))
        one, repolls = _Figures(), _Figures()
        for _ in range(max(args.repeat, 1)):
            srv.settings(check_hold=50)
            for name, run in layers:
                one.measure(name, run, calls(n), srv)
            if args.repoll_span > 0:
                srv.settings(check_hold=REPOLL_HOLD)
                for name, run in repoll_layers:
                    repolls.measure(name, run, calls(n, args.repoll_span), srv)
    header = ["layer", "Checks / call", "CPU / {}", "of it, GC", "spread", "vs bare"]
    rounds = max(args.repeat, 1)
    print_table(
        f"Async layers, one Check per call: CPU per call, {n:,} concurrent long polls (median of {rounds} rounds)",
        [h.format("call") for h in header],
        one.rows(per_check=False),
    )
    if args.repoll_span > 0:
        print_table(
            f"Async layers, re-polls: CPU per Check, {n:,} calls of {args.repoll_span:g}-{args.repoll_span + 2:g} s, "
            f"each Check held {REPOLL_HOLD:g} s (median of {rounds} rounds)",
            [h.format("Check") for h in header],
            repolls.rows(per_check=True),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
