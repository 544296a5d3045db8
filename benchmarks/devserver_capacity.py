"""Measure how many concurrent long polls the Banana devserver holds, and how fast it answers.

Usage::

    python benchmarks/devserver_capacity.py [--n 1000] [--clients httpx,httpx-no-keepalive,raw] [--burst 2000]

(``bash scripts/bench.sh`` runs it with the raw client, as part of the suite.)

Starts a devserver subprocess on 127.0.0.1 and, from this process, once per client:

1. fires a burst of ``startOnly`` Starts and then of plain Checks, and reports
   requests/s end to end plus the server's CPU time per request (the client
   shares the machine's two cores, so the latter is the fairer server figure);
2. starts N ``sleep`` calls that all finish at one known instant, opens N
   long-poll Checks on them at once, and reports how many the server held at
   once, how many answered success, and the wake-up delay from the calls'
   finish to each answer;

then, as a baseline, polls a small sample of calls the short-poll way (a plain
Check every second) and reports their delay after the finish, and the server's
peak RSS.

Clients (``--clients``): ``httpx`` is one ``httpx.AsyncClient`` with unbounded
connection limits; ``httpx-no-keepalive`` the same with
``max_keepalive_connections=0``; ``raw`` a minimal asyncio HTTP/1.1 client.
httpcore's pool rescans every connection on each request and response, and each
idle one costs a socket poll and a pass over the whole pool (encode/httpx#3215,
encode/httpcore#1035), so with a thousand open connections the ``httpx`` column
measures the client; ``raw`` measures the server.

Every request goes to 127.0.0.1, is bounded in number, and the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.harness import RawPoster, cpu_seconds, percentile, print_table, proc_status_kib, raise_fd_limit


def ms(seconds: float) -> str:
    """Format seconds as milliseconds.

    :param seconds: a duration.
    """
    return f"{seconds * 1000:.0f} ms"


async def bounded(n: int, concurrency: int, make: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Run ``make(i)`` for i in range(n) with at most ``concurrency`` in flight.

    :param n: how many.
    :param concurrency: in flight at once.
    :param make: builds the i-th awaitable.
    """
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with semaphore:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


#: Client kinds, in column order: one httpx.AsyncClient with unbounded limits, the same
#: without keep-alive, and a minimal asyncio HTTP/1.1 client.
CLIENTS = ("httpx", "httpx-no-keepalive", "raw")


def setup_time(client: str, n: int) -> float:
    """Return the seconds to allow for starting n calls and opening n long polls.

    Measured on a 2-core machine with margin; httpx needs far longer because its
    pool's bookkeeping grows with every open connection.

    :param client: ``httpx`` or ``raw``.
    :param n: calls and long polls.
    """
    return 4.0 + n / (400 if client == "raw" else 80)


class HttpxPoster:
    """Send requests through one shared ``httpx.AsyncClient``.

    :param client: the client.
    :param name: the column title.
    """

    def __init__(self, client: httpx.AsyncClient, name: str) -> None:
        self._client = client
        self.name = name

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body and return the JSON reply, failing on a non-200.

        :param path: ``start/v4/`` or ``check/v4/``.
        :param body: the request body.
        """
        response = await self._client.post(path, json=body)
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        return reply


Poster = HttpxPoster | RawPoster


async def throughput(srv: DevServer, poster: Poster, burst: int, concurrency: int) -> dict[str, Any]:
    """Time a burst of startOnly Starts, then one plain Check per started call.

    :param srv: the server.
    :param poster: the client.
    :param burst: requests per burst.
    :param concurrency: requests in flight at once.
    """
    cpu0, t0 = cpu_seconds(srv.pid), time.perf_counter()
    starts = await bounded(
        burst,
        concurrency,
        lambda i: poster.post(
            "start/v4/", {"modelKey": "wordcount", "startOnly": True, "modelInputs": {"prompt": f"burst {i}"}}
        ),
    )
    cpu1, t1 = cpu_seconds(srv.pid), time.perf_counter()
    call_ids = [reply["callID"] for reply in starts]
    checks = await bounded(
        burst, concurrency, lambda i: poster.post("check/v4/", {"callID": call_ids[i], "longPoll": False})
    )
    cpu2, t2 = cpu_seconds(srv.pid), time.perf_counter()
    assert all(reply["callID"].startswith("call_") for reply in starts)
    assert all(reply["message"] in ("success", "queued", "running") for reply in checks)
    return {
        "start_rps": burst / (t1 - t0),
        "check_rps": burst / (t2 - t1),
        "start_cpu_us": (cpu1 - cpu0) / burst * 1e6,
        "check_cpu_us": (cpu2 - cpu1) / burst * 1e6,
    }


async def long_polls(srv: DevServer, poster: Poster, n: int, setup: float) -> dict[str, Any]:
    """Start n calls that finish together, hold n long polls on them, and time the answers.

    :param srv: the server.
    :param poster: the client.
    :param n: calls and long polls.
    :param setup: seconds allowed to start the calls and open the long polls.
    """
    await asyncio.to_thread(srv.reset, True)
    finish_at = time.time() + setup
    began = time.time()
    starts = await bounded(
        n,
        100,
        lambda i: poster.post(
            "start/v4/", {"modelKey": "sleep", "startOnly": True, "modelInputs": {"until": finish_at}}
        ),
    )
    answered: list[float] = []
    outcomes: dict[str, int] = {}
    repolls = 0

    async def hold(call_id: str) -> None:
        nonlocal repolls
        while True:
            reply = await poster.post("check/v4/", {"callID": call_id, "longPoll": True})
            if reply["message"] in ("running", "queued"):
                repolls += 1  # the hold ran out before the call finished
                continue
            answered.append(time.time())
            outcomes[reply["message"]] = outcomes.get(reply["message"], 0) + 1
            return

    cpu0 = cpu_seconds(srv.pid)
    tasks = [asyncio.create_task(hold(reply["callID"])) for reply in starts]
    # Wait until the server holds them all (or the finish comes), to time the setup.
    open_at = None
    while time.time() < finish_at - 0.3:
        if (await asyncio.to_thread(srv.stats))["long_polls_open"] >= n:
            open_at = time.time()
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(max(0.0, finish_at - time.time() - 0.2))
    open_before_finish = (await asyncio.to_thread(srv.stats))["long_polls_open"]
    await asyncio.gather(*tasks)
    cpu1 = cpu_seconds(srv.pid)
    stats = await asyncio.to_thread(srv.stats)
    return {
        "n": n,
        "setup_used": None if open_at is None else open_at - began,
        "open_before_finish": open_before_finish,
        "open_max": stats["long_polls_open_max"],
        "success": outcomes.get("success", 0),
        "outcomes": outcomes,
        "repolls": repolls,
        "delays": [t - finish_at for t in answered],
        "cpu": cpu1 - cpu0,
    }


async def short_polls(poster: Poster, sample: int, interval: float) -> list[float]:
    """Poll a sample of calls with plain Checks every ``interval`` and return each answer's delay.

    :param poster: the client.
    :param sample: how many calls.
    :param interval: seconds between Checks.
    """
    finish_at = time.time() + 2.0
    starts = await asyncio.gather(
        *(
            poster.post("start/v4/", {"modelKey": "sleep", "startOnly": True, "modelInputs": {"until": finish_at}})
            for _ in range(sample)
        )
    )

    async def poll(call_id: str, offset: float) -> float:
        await asyncio.sleep(offset)  # clients do not poll in lockstep
        while True:
            reply = await poster.post("check/v4/", {"callID": call_id})
            if reply["message"] == "success":
                return time.time() - finish_at
            await asyncio.sleep(interval)

    return await asyncio.gather(*(poll(r["callID"], i * interval / sample) for i, r in enumerate(starts)))


async def run(srv: DevServer, args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement against one server, once per client kind.

    :param srv: the server.
    :param args: the command line.
    """
    results: dict[str, Any] = {}
    timeout = httpx.Timeout(args.hold + 30, connect=60)
    unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    # No keep-alive: every request opens a connection, and the pool never holds idle ones.
    no_keepalive = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=srv.url, limits=unbounded, timeout=timeout, trust_env=False) as client,
        httpx.AsyncClient(base_url=srv.url, limits=no_keepalive, timeout=timeout, trust_env=False) as fresh,
    ):
        raw = RawPoster("127.0.0.1", srv.port)
        try:
            posters: list[Poster] = [HttpxPoster(client, "httpx"), HttpxPoster(fresh, "httpx-no-keepalive"), raw]
            for poster in posters:
                if poster.name not in args.clients:
                    continue
                print(f"measuring with the {poster.name} client ...", flush=True)
                await asyncio.to_thread(srv.reset, True)
                setup = args.setup or setup_time(poster.name, args.n)
                results[poster.name] = {
                    "throughput": await throughput(srv, poster, args.burst, args.concurrency),
                    "long": await long_polls(srv, poster, args.n, setup),
                }
            results["short"] = await short_polls(raw, args.sample, 1.0)
        finally:
            await raw.aclose()
    return results


def report(args: argparse.Namespace, srv: DevServer, results: dict[str, Any], fd_limit: int) -> None:
    """Print the results as a Markdown table, one column per client.

    :param args: the command line.
    :param srv: the server.
    :param results: what :func:`run` measured.
    :param fd_limit: the open-file limit.
    """
    clients = [name for name in CLIENTS if name in results]

    def cells(render: Callable[[dict[str, Any], dict[str, Any]], str]) -> list[str]:
        return [render(results[name]["long"], results[name]["throughput"]) for name in clients]

    def delays(long: dict[str, Any]) -> str:
        d = long["delays"]
        return f"{ms(statistics.median(d))} / {ms(percentile(d, 99))} / {ms(max(d))}" if d else "-"

    rows: list[tuple[str, list[str]]] = [
        ("long polls opened (N)", cells(lambda lp, tp: str(lp["n"]))),
        ("held at once, just before the finish", cells(lambda lp, tp: str(lp["open_before_finish"]))),
        ("held at once, long_polls_open_max", cells(lambda lp, tp: str(lp["open_max"]))),
        ("answered success", cells(lambda lp, tp: str(lp["success"]))),
        ("re-polls (hold ran out first)", cells(lambda lp, tp: str(lp["repolls"]))),
        (
            "N starts + N polls held after",
            cells(lambda lp, tp: "not in time" if lp["setup_used"] is None else f"{lp['setup_used']:.1f} s"),
        ),
        ("wake-up delay p50 / p99 / max", cells(lambda lp, tp: delays(lp))),
        ("server CPU, holds + N wake-ups", cells(lambda lp, tp: f"{lp['cpu']:.2f} s")),
        (
            f"Start burst req/s ({args.burst}, {args.concurrency} in flight)",
            cells(lambda lp, tp: f"{tp['start_rps']:.0f}"),
        ),
        ("  server CPU per Start", cells(lambda lp, tp: f"{tp['start_cpu_us']:.0f} µs")),
        ("Check burst req/s (no long poll)", cells(lambda lp, tp: f"{tp['check_rps']:.0f}")),
        ("  server CPU per Check", cells(lambda lp, tp: f"{tp['check_cpu_us']:.0f} µs")),
    ]
    short = results["short"]
    rows.append(
        (
            "baseline: 1 s short poll, delay p50 / max",
            [f"{ms(statistics.median(short))} / {ms(max(short))} ({len(short)} calls)"] + [""] * (len(clients) - 1),
        )
    )
    rows.append(
        ("server peak RSS (VmHWM)", [f"{proc_status_kib(srv.pid, 'VmHWM') / 1024:.0f} MiB"] + [""] * (len(clients) - 1))
    )
    print_table(
        f"Local server capacity: N={args.n:,} long polls, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"open-file limit {fd_limit}, httpx {httpx.__version__}",
        ["", *(f"{name} client" for name in clients)],
        [[name, *row] for name, row in rows],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark.

    :param argv: command-line arguments.
    :return: 0 when every long poll answered success, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="concurrent long polls (default: %(default)s)")
    parser.add_argument("--burst", type=int, default=2000, help="requests per throughput burst")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight during a burst")
    parser.add_argument("--sample", type=int, default=20, help="calls in the short-poll baseline")
    parser.add_argument(
        "--setup",
        type=float,
        default=None,
        help="seconds from the first Start to the calls' finish (default: scales with N and the client)",
    )
    parser.add_argument("--http", default="auto", choices=("auto", "httptools", "h11"), help="server HTTP stack")
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help=f"comma-separated clients to measure with, of {', '.join(CLIENTS)} (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    args.clients = {name.strip() for name in args.clients.split(",") if name.strip()}
    if not args.clients or not args.clients <= set(CLIENTS):
        parser.error(f"--clients takes some of {', '.join(CLIENTS)}")
    args.hold = max(50.0, (args.setup or max(setup_time(name, args.n) for name in args.clients)) + 20)
    fd_limit = raise_fd_limit()
    if fd_limit < args.n + 100:
        parser.error(f"--n {args.n} needs an open-file limit above {args.n + 100}; it is {fd_limit}")
    with DevServer(
        start_hold=2,
        check_hold=args.hold,
        replicas=max(32, args.n),
        log_level="warning",
        extra_args=["--http", args.http],
    ) as srv:
        results = asyncio.run(run(srv, args))
        report(args, srv, results, fd_limit)
        if args.json:
            results["server_peak_rss_kib"] = proc_status_kib(srv.pid, "VmHWM")
            args.json.write_text(json.dumps(results, indent=1))
        if "error" in srv.log_text().lower():
            print("\nserver log has errors:\n" + srv.log_text()[-3000:])
    ok = all(results[name]["long"]["success"] == args.n for name in args.clients)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
