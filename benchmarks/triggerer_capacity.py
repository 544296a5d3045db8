"""Measure how many Banana calls one triggerer event loop holds, how fast it notices each finish, and the cost.

Usage::

    python -m benchmarks.triggerer_capacity [--n 100,1000] [--kinds banana,naive-5,naive-60] [--window 60]

For each kind of trigger and each N, on a fresh local server (a subprocess on 127.0.0.1, the
``sleep`` model, the server's real 50 s check hold and N replicas so no call queues):

1. a child process, standing in for the triggerer, imports Airflow and the provider and runs
   one warm-up trigger to the end (so lazy imports are paid before anything is measured),
   then says it is ready;
2. this process starts N calls (``startOnly``) whose ``until`` inputs finish them at staggered
   instants: spread evenly over ``--window`` seconds, the first one ``lead`` seconds after the
   triggers are handed over (time enough to build them all and open their first Checks);
3. the child builds N triggers, one per call, the way Airflow's triggerer does (one task each,
   yielding to the loop between two), iterates each ``run()`` on its one event loop until the
   first event, and reports:

   - how many events said ``success``;
   - memory per trigger: the child's peak RSS (``VmHWM``, reset just before the triggers are
     built) minus its RSS at that moment, divided by N; kernel socket buffers are not in it;
   - CPU per call: the child's ``time.process_time()`` over the run, and the server's user+system
     time from ``/proc/<pid>/stat``, each divided by N;
   - Check requests per call: the server's ``check_requests`` counter over the run, divided by N;
   - detection delay: the time the event was yielded minus the call's ``until`` (the instant the
     server's model finished it), at p50, p99 and max.

Kinds: ``banana`` is :class:`~airflow_provider_banana.triggers.banana.BananaCallTrigger` of this
checkout; ``banana@REF`` is the same trigger as it was at git revision ``REF`` (the provider's
package is extracted from git into a temporary directory and the child imports it from there), so
that a change can be measured side by side with what it replaces, in one run and on one server;
``naive-5`` and ``naive-60`` are :class:`benchmarks.naive_trigger.NaivePollTrigger` at a 5 s and a
60 s poll interval (a new client per Check, no long poll), the baselines; ``aiohttp`` is
:class:`benchmarks.naive_trigger.BareLongPollTrigger`, bare aiohttp long polls on one shared
session and nothing else, the floor that a trigger's CPU per call is compared with.

With ``--wave``, the finishes are placed to meet the first re-poll wave on purpose: the child
builds its triggers at an instant the parent chose, so the first long polls end around
``CHECK_HOLD`` seconds later; a share of the calls (``--wave-share``) finishes in a band there,
the rest after it. The parent samples the server's Check counter ten times a second around that
wave and reports how the first round of re-sent Checks spread (the time from 5 % to 95 % of them,
and the most sent in any one second), the child reports its event loop's longest stall (a 50 ms
heartbeat's lateness), and the detection delay of the calls that finished in the band is shown
apart. Run the kinds side by side (``--kinds banana,banana@HEAD``) to compare with the code a
change replaces.

Every request goes to 127.0.0.1; every loop is bounded and the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    child_env,
    cpu_seconds,
    fmt_ratio,
    fmt_seconds,
    imported_from,
    print_table,
    proc_status_kib,
    provider_paths,
    raise_fd_limit,
    reset_peak_rss,
    start_answering,
    start_sleep_calls,
    summarize,
    watchdog,
)

#: The server's long-poll hold: the devserver's default and Banana's own, on both sides.
CHECK_HOLD = 50.0
#: Trigger kinds, in table order; ``banana@REF`` (see the module docstring) may be added.
KINDS = ("banana", "aiohttp", "naive-5", "naive-60")
#: The last revision whose async hook spoke httpx (one client per 16 hooks): the transport baseline.
HTTPX_BASELINE = "banana@48c0240"
_POLL_INTERVALS = {"naive-5": 5.0, "naive-60": 60.0}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def lead_seconds(n: int) -> float:
    """Return the seconds from handing N calls to the child to the first call's finish.

    Long enough for the child to build N triggers and open their first Checks on a shared 2-core
    machine (a trigger's set-up costs 3-5 ms of CPU; 10,000 took 50 s under load), with margin,
    so that the finishes measure detection rather than set-up.

    :param n: the number of triggers.
    """
    return 5.0 + n * 0.01


# ---------------------------------------------------------------------------------------------------------
# The child: one event loop holding N triggers, as a triggerer does.


def _admin_stats(url: str) -> dict[str, Any]:
    with _OPENER.open(url + "_admin/stats", timeout=30) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def _make_trigger(kind: str, call_id: str, now: float) -> Any:
    if kind.startswith("banana"):
        from airflow_provider_banana.triggers.banana import BananaCallTrigger

        return BananaCallTrigger(call_id, "banana_default", deadline=now + 3600, started_at=now)
    if kind == "aiohttp":
        from benchmarks.naive_trigger import BareLongPollTrigger

        return BareLongPollTrigger(call_id, "banana_default")
    from benchmarks.naive_trigger import NaivePollTrigger

    return NaivePollTrigger(call_id, "banana_default", deadline=now + 3600, poll_interval=_POLL_INTERVALS[kind])


async def _first_event(trigger: Any) -> tuple[float, str, str]:
    # The triggerer stops iterating a trigger after its first event; so does this.
    events = trigger.run()
    try:
        event = await events.__anext__()
    finally:
        await events.aclose()
    return time.time(), str(event.payload.get("status")), str(event.payload.get("message"))


async def _heartbeat(stalls: list[float]) -> None:
    # The loop's longest stall: how late a 50 ms sleep wakes, the time a ready callback waits.
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(0.05)
        stalls[0] = max(stalls[0], loop.time() - began - 0.05)


async def _hold_all(
    kind: str, calls: Sequence[tuple[str, float]], url: str, server_pid: int, build_at: float | None = None
) -> dict[str, Any]:
    if build_at is not None:
        await asyncio.sleep(max(0.0, build_at - time.time()))
    n = len(calls)
    first_finish = min(until for _, until in calls)
    gc.collect()
    rss_before = proc_status_kib("self", "VmRSS")
    peak_reset = reset_peak_rss()
    gc_seconds = [0.0, 0.0]  # all collections, and full (generation 2) ones
    gc_began = [0.0]

    def time_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_began[0] = time.process_time()
            return
        spent = time.process_time() - gc_began[0]
        gc_seconds[0] += spent
        if info["generation"] == 2:
            gc_seconds[1] += spent

    gc.callbacks.append(time_gc)
    stats_before = _admin_stats(url)
    server_cpu_before = cpu_seconds(server_pid)
    cpu_before = time.process_time()
    began = time.time()
    loop = asyncio.get_running_loop()
    rss_all_held: list[int] = []
    # Every trigger is built and running by now, and none has finished: the loop holds all N.
    loop.call_at(
        loop.time() + (first_finish - 0.2 - time.time()), lambda: rss_all_held.append(proc_status_kib("self", "VmRSS"))
    )

    stalls = [0.0]
    heartbeat = asyncio.create_task(_heartbeat(stalls))
    tasks = []
    build_began = time.time()
    for call_id, _ in calls:
        tasks.append(asyncio.create_task(_first_event(_make_trigger(kind, call_id, time.time()))))
        await asyncio.sleep(0)  # Airflow's triggerer yields to the loop between two new triggers
    built = time.time()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    heartbeat.cancel()
    cpu = time.process_time() - cpu_before
    gc.callbacks.remove(time_gc)
    server_cpu = cpu_seconds(server_pid) - server_cpu_before
    rss_peak = proc_status_kib("self", "VmHWM")
    stats_after = _admin_stats(url)
    delays = []
    delays_by_call: dict[str, float] = {}
    problems: list[str] = []
    statuses: dict[str, int] = {}
    for outcome, (call_id, until) in zip(outcomes, calls, strict=True):
        if isinstance(outcome, BaseException):
            statuses[type(outcome).__name__] = statuses.get(type(outcome).__name__, 0) + 1
            continue
        at, status, message = outcome
        statuses[status] = statuses.get(status, 0) + 1
        if status == "success":
            delays.append(at - until)
            delays_by_call[call_id] = at - until
        elif len(problems) < 5:
            problems.append(message[:300])
    return {
        "kind": kind,
        "n": n,
        "completed": statuses.get("success", 0),
        "statuses": statuses,
        "problems": problems,
        "build_seconds": built - began,
        "wall_seconds": time.time() - began,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak if peak_reset else None,
        "rss_all_held_kib": rss_all_held[0] if rss_all_held else None,
        "cpu_seconds": cpu,
        "gc_cpu_seconds": gc_seconds[0],
        "gc_full_cpu_seconds": gc_seconds[1],
        "server_cpu_seconds": server_cpu,
        "check_requests": stats_after["check_requests"] - stats_before["check_requests"],
        "delays": summarize(delays),
        "delays_by_call": delays_by_call,
        "build_began": build_began,
        "loop_stall_max_seconds": stalls[0],
    }


def child_main(answer_fd: int) -> int:
    """Run one measurement as the triggerer: read the plan from stdin, answer on ``answer_fd``.

    :param answer_fd: the pipe to write ``READY`` and then the result (JSON) to.
    """
    answers = os.fdopen(answer_fd, "w")
    raise_fd_limit()
    config = json.loads(sys.stdin.readline())
    # The trigger logs status changes at INFO, as in a triggerer; Airflow sends them to stdout, a file.
    # Import everything up front and run one trigger to the end: lazy imports and one-time set-up
    # (the shared SSL context, the secrets backends) are paid before the baseline is taken.
    if config["kind"].startswith("banana"):
        from airflow_provider_banana.triggers.banana import BananaCallTrigger  # noqa: F401
    else:
        from benchmarks.naive_trigger import NaivePollTrigger  # noqa: F401

    async def warm_up() -> None:
        await _first_event(_make_trigger(config["kind"], config["warm_up_call"], time.time()))

    asyncio.run(warm_up())
    import airflow_provider_banana

    # The parent checks where the provider came from: a baseline that imported the checkout
    # instead would compare the code with itself.
    print("READY", airflow_provider_banana.__file__, file=answers, flush=True)
    plan = json.loads(sys.stdin.readline())
    calls = [(call_id, until) for call_id, until in plan["calls"]]
    result = asyncio.run(_hold_all(config["kind"], calls, config["url"], config["server_pid"], plan.get("build_at")))
    print(json.dumps(result), file=answers, flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# The parent: a server, the calls, and a child per measurement.


def wave_band_seconds(n: int) -> float:
    """Return the width of the band of finishes placed on the first re-poll wave (``--wave``).

    The first long polls go out while the child builds its triggers, so the wave is about as wide
    as that: a few seconds at thousands of triggers.

    :param n: the number of triggers.
    """
    return 2.0 + n / 1000


def _sample_checks(srv: Any, child: subprocess.Popen[bytes], since: float, until: float) -> list[tuple[float, int]]:
    """Sample the server's Check counter ten times a second between two instants (``--wave``).

    :param srv: the DevServer.
    :param child: the child process (sampling stops when it ends).
    :param since: when to begin.
    :param until: when to stop.
    """
    samples: list[tuple[float, int]] = []
    time.sleep(max(0.0, since - time.time()))
    while time.time() < until and child.poll() is None:
        with contextlib.suppress(Exception):  # the server is busy; the next sample will do
            samples.append((time.time(), int(srv.stats()["check_requests"])))
        time.sleep(0.1)
    return samples


def wave_figures(samples: Sequence[tuple[float, int]], base: int, n: int) -> dict[str, float | None]:
    """Return how the first round of re-sent Checks spread, from the server's counter.

    :param samples: ``(time.time(), check_requests)`` ten times a second around the first wave.
    :param base: the counter before the child built its triggers.
    :param n: the number of triggers (each sends one first Check before any re-send).
    """
    resent = [(at, count - base - n) for at, count in samples]
    total = resent[-1][1] if resent else 0
    if total <= 0:
        return {"resent": total, "span": None, "peak_per_second": None}

    def when(share: float) -> float:
        return next(at for at, count in resent if count >= share * total)

    peak = 0
    for i, (at, count) in enumerate(resent):
        later = [c for t, c in resent[i:] if t <= at + 1.0]
        peak = max(peak, later[-1] - count)
    return {"resent": total, "span": when(0.95) - when(0.05), "peak_per_second": peak}


def measure(
    kind: str, n: int, window: float, *, seed: int = 1, wave: bool = False, wave_share: float = 0.2
) -> dict[str, Any]:
    """Run one measurement: N triggers of one kind against a fresh server.

    :param kind: one of :data:`KINDS`.
    :param n: concurrent triggers (and calls).
    :param window: seconds over which the calls' finishes are spread.
    :param seed: shuffles which trigger gets which finish time.
    :param wave: place ``wave_share`` of the finishes on the first re-poll wave (see the module docstring).
    :param wave_share: the share of calls that finish in the wave's band.
    :return: the child's figures, plus the server's view (long polls held).
    """
    from airflow_provider_banana.devserver.testing import DevServer

    lead = lead_seconds(n)
    interval = _POLL_INTERVALS.get(kind, 0.0)
    band = wave_band_seconds(n)
    limit = 120 + lead + window + interval + CHECK_HOLD + (CHECK_HOLD + band if wave else 0)
    with (
        DevServer(start_hold=2, check_hold=CHECK_HOLD, replicas=n + 8, log_level="warning", startup_timeout=60) as srv,
        tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp,
    ):
        warm_up_call = asyncio.run(start_sleep_calls("127.0.0.1", srv.port, [time.time()]))[0]
        conn = {"conn_type": "banana", "host": srv.url, "password": "bench-api-key", "extra": {"model_key": "sleep"}}
        # banana@REF: the provider as it was at REF comes first on the child's path.
        paths = provider_paths(kind, Path(tmp))
        log_path = Path(tmp) / "child.log"
        child, answers = start_answering(
            "benchmarks.triggerer_capacity",
            [],
            log_path,
            env=child_env(Path(tmp) / "airflow-home", paths, conn),
            cwd=tmp,
            stdin=subprocess.PIPE,
        )
        # Bounded: whatever happens, the child is gone after `limit` seconds.
        with watchdog(child, limit):
            try:
                assert child.stdin is not None
                config = {"kind": kind, "url": srv.url, "server_pid": srv.pid, "warm_up_call": warm_up_call}
                child.stdin.write((json.dumps(config) + "\n").encode())
                child.stdin.flush()
                ready = answers.readline().split()
                if not ready or ready[0] != b"READY":
                    raise RuntimeError(f"the child did not start ({ready!r}):\n{log_path.read_text()[-3000:]}")
                if not imported_from(paths[0], ready[1].decode()):
                    raise RuntimeError(
                        f"{kind}: the child imported the provider from {ready[1].decode()}, not {paths[0]}"
                    )
                # The Starts below take about 1 ms each on this machine; the lead counts from their end.
                first_finish = time.time() + 2.0 + n / 1000 + lead
                untils = [first_finish + window * i / max(n - 1, 1) for i in range(n)]
                plan: dict[str, Any] = {}
                in_band = 0
                if wave:
                    # The child builds its triggers at build_at; their first holds end about CHECK_HOLD
                    # later: a share of the calls finishes in a band there, the rest after it.
                    build_at = time.time() + 3.0 + n / 1000
                    band_from = build_at + CHECK_HOLD
                    in_band = round(n * wave_share)
                    untils = [band_from + band * i / max(in_band - 1, 1) for i in range(in_band)] + [
                        band_from + band + 5 + window * i / max(n - in_band - 1, 1) for i in range(n - in_band)
                    ]
                    first_finish = band_from
                    plan["build_at"] = build_at
                random.Random(seed).shuffle(untils)
                call_ids = asyncio.run(start_sleep_calls("127.0.0.1", srv.port, untils))
                if time.time() > (plan["build_at"] - 0.5 if wave else first_finish - lead / 2):
                    raise RuntimeError("starting the calls took longer than planned; raise the start allowance")
                plan["calls"] = list(zip(call_ids, untils, strict=True))
                checks_before = int(srv.stats()["check_requests"])
                child.stdin.write((json.dumps(plan) + "\n").encode())
                child.stdin.flush()
                handed_over = time.time()
                sampled: list[list[tuple[float, int]]] = []
                sampler = None
                if wave:
                    # From 30 % of the hold (every first Check sent) to well past the band.
                    sample_args = (srv, child, plan["build_at"] + 0.3 * CHECK_HOLD, first_finish + band + 20)
                    sampler = threading.Thread(target=lambda: sampled.append(_sample_checks(*sample_args)), daemon=True)
                    sampler.start()
                held = _watch_server(srv, child, first_finish)
                line = answers.readline()
                child.wait()
                if sampler is not None:
                    sampler.join()
            finally:
                answers.close()
                if child.poll() is None:
                    child.kill()
                    child.wait()
        if not line:
            raise RuntimeError(f"the child died:\n{log_path.read_text()[-3000:]}")
        result: dict[str, Any] = json.loads(line)
        result.update(held)
        by_call = result.pop("delays_by_call")
        if wave:
            band_calls = {call_id for call_id, until in plan["calls"] if until < first_finish + band + 1}
            result["wave"] = {
                "in_band": in_band,
                "band_seconds": band,
                "delays_in_band": summarize([d for c, d in by_call.items() if c in band_calls]),
                **wave_figures(sampled[0] if sampled else [], checks_before, n),
            }
        result["lead_seconds"] = first_finish - handed_over
        result["window_seconds"] = window
        result["server_peak_rss_kib"] = None
        result["log_errors"] = sum("Traceback" in line for line in log_path.read_text(errors="replace").splitlines())
        return result


def _watch_server(srv: Any, child: subprocess.Popen[bytes], first_finish: float) -> dict[str, Any]:
    """Poll the server's stats until the first call finishes: long polls held, and when all were.

    Once a second, and not after the first finish, so that the server's CPU per call counts the
    triggers' requests rather than these.

    :param srv: the DevServer.
    :param child: the child process.
    :param first_finish: when the first call finishes.
    """
    began = time.time()
    peak = 0
    at_first_finish: int | None = None
    all_held_after: float | None = None
    target = None
    while child.poll() is None and at_first_finish is None:
        try:
            stats = srv.stats()
        except Exception:  # the server is busy; the next poll will do
            stats = None
        if stats is not None:
            open_now = stats["long_polls_open"]
            peak = max(peak, open_now)
            if target is None:
                target = stats.get("calls_kept", 0)
            if all_held_after is None and target and open_now >= target - 1:
                all_held_after = time.time() - began
            if time.time() >= first_finish - 0.5:
                at_first_finish = open_now
        time.sleep(max(0.0, min(1.0, first_finish - 0.5 - time.time())))
    return {
        "long_polls_peak": peak,
        "long_polls_at_first_finish": at_first_finish,
        "all_held_after_seconds": all_held_after,
    }


def report(results: Sequence[dict[str, Any]]) -> None:
    """Print the results, one row per measurement, with ratios to the baselines of the same N.

    The triggerer's CPU is compared with the ``aiohttp`` kind's (the floor), the Checks with ``naive-5``'s.

    :param results: what :func:`measure` returned.
    """
    baseline = {r["n"]: r for r in results if r["kind"] == "naive-5"}
    floor = {r["n"]: r["cpu_seconds"] for r in results if r["kind"] == "aiohttp"}
    rows = []
    for r in results:
        n = r["n"]
        d = r["delays"]
        mem = (r["rss_peak_kib"] - r["rss_before_kib"]) / n if r["rss_peak_kib"] else float("nan")
        base = baseline.get(n)
        req = r["check_requests"] / n
        rows.append(
            [
                r["kind"],
                f"{n:,}",
                f"{r['completed']:,}",
                f"{mem:.1f} KiB",
                f"{r['cpu_seconds'] / n * 1e3:.2f} ms ({r['gc_cpu_seconds'] / max(r['cpu_seconds'], 1e-9):.0%} GC)",
                f"{r['cpu_seconds'] / floor[n]:.2f}x" if n in floor else "-",
                f"{r['server_cpu_seconds'] / n * 1e3:.2f} ms",
                f"{req:.2f}",
                fmt_ratio(base["check_requests"] / n, req) if base else "-",
                f"{fmt_seconds(d['p50'])} / {fmt_seconds(d['p99'])} / {fmt_seconds(d['max'])}",
                f"{r['long_polls_at_first_finish'] if r['long_polls_at_first_finish'] is not None else '-'}",
                f"{r['lead_seconds']:.0f}-{r['lead_seconds'] + r['window_seconds']:.0f} s",
                f"{r['wall_seconds']:.0f} s",
            ]
        )
    print_table(
        "Triggerer capacity: N triggers on one event loop",
        [
            "trigger",
            "N",
            "completed",
            "peak mem / trigger",
            "CPU / call (triggerer)",
            "CPU vs bare aiohttp",
            "CPU / call (server)",
            "Checks / call",
            "fewer Checks than naive-5",
            "detection p50 / p99 / max",
            "long polls held at 1st finish",
            "calls ran",
            "wall",
        ],
        rows,
    )


def report_wave(results: Sequence[dict[str, Any]]) -> None:
    """Print the re-poll wave figures of the ``--wave`` measurements, one row per measurement.

    :param results: what :func:`measure` returned.
    """
    rows = []
    for r in results:
        w = r.get("wave")
        if not w:
            continue
        d = w["delays_in_band"]
        rows.append(
            [
                r["kind"],
                f"{r['n']:,}",
                f"{w['in_band']:,} in {w['band_seconds']:.0f} s",
                f"{fmt_seconds(d['p50'])} / {fmt_seconds(d['p99'])} / {fmt_seconds(d['max'])}",
                f"{w['resent']:,}",
                fmt_seconds(w["span"]) if w["span"] is not None else "-",
                f"{w['peak_per_second']:,}" if w["peak_per_second"] is not None else "-",
                fmt_seconds(r["loop_stall_max_seconds"]),
            ]
        )
    if rows:
        print_table(
            "Re-poll wave: the first round of re-sent Checks, and calls finishing in it",
            [
                "trigger",
                "N",
                "finishes placed in the wave",
                "their detection p50 / p99 / max",
                "Checks re-sent in the round",
                "5-95 % of them within",
                "most re-sent in 1 s",
                "longest loop stall",
            ],
            rows,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurements named on the command line and print the table.

    :param argv: command-line arguments.
    :return: 0 when every call completed in every measurement, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--answer-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", default="100,1000", help="comma-separated trigger counts (default: %(default)s)")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds (default: %(default)s; {HTTPX_BASELINE} is the httpx transport baseline)",
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds the finishes are spread over")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--wave", action="store_true", help="place finishes on the first re-poll wave and measure it")
    parser.add_argument("--wave-share", type=float, default=0.2, help="share of calls finishing in the wave's band")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.answer_fd)
    raise_fd_limit()
    results = []
    for kind in args.kinds.split(","):
        for n in (int(x) for x in args.n.split(",")):
            print(f"measuring {kind} with N={n:,} ...", file=sys.stderr, flush=True)
            results.append(measure(kind, n, args.window, wave=args.wave, wave_share=args.wave_share))
    report(results)
    report_wave(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["completed"] == r["n"] for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
