"""Compare ``BananaHook.run`` with the official ``banana-dev`` 4.0.2 SDK's ``run`` on the same server and calls.

Usage::

    python -m benchmarks.hook_vs_sdk [--quick 300] [--long 20]

Each client runs in a child process of its own (so its CPU time is its own, and the SDK reads
``BANANA_URL`` when it is imported), against one local server on 127.0.0.1 with short holds
(Start and long-poll Check held 5 s at most, told to the hook through the connection extra; the
SDK has no setting for them and needs none). Two workloads:

- ``quick``: ``--quick`` ``wordcount`` calls one after the other; each finishes within its Start,
  so this measures what one request costs: latency, client CPU, server CPU.
- ``long``: ``--long`` ``sleep`` calls at once, one thread each, each finishing 12 s after it
  was started: a waiting Start held 5 s, a long-poll Check held 5 s, a Check answered at the
  finish. This measures requests per call and how late the finish is noticed.

Clients: ``hook`` is one :class:`~airflow_provider_banana.hooks.banana.BananaHook` per thread for
all its calls (keep-alive: its ``requests.Session`` reuses the connection); ``hook-new-conn`` is a
new hook, so a new connection, per call; ``sdk`` is ``banana_dev.run``, which calls
``requests.post`` and so opens a new connection for every request.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import ROOT, child_env, cpu_seconds, fmt_ratio, fmt_seconds, print_table, run_logged, summarize

#: The server's Start and Check holds in this benchmark, on both sides.
HOLD = 5.0
#: How long a ``long`` call runs: longer than a Start hold plus a Check hold.
LONG_CALL = 12.0
CLIENTS = ("hook", "hook-new-conn", "sdk")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _requests_so_far(url: str) -> int:
    with _OPENER.open(url + "_admin/stats", timeout=30) as response:
        stats = json.loads(response.read())
    return int(stats["start_requests"] + stats["check_requests"])


def _runner(client: str) -> Callable[[], Callable[[dict[str, Any], str], Any]]:
    """Return a factory of per-thread ``run(model_inputs, model_key)`` callables for a client.

    :param client: one of :data:`CLIENTS`.
    """
    if client == "sdk":
        import banana_dev

        def sdk_factory() -> Callable[[dict[str, Any], str], Any]:
            return lambda inputs, model: banana_dev.run("bench-api-key", model, inputs)["modelOutputs"]

        return sdk_factory

    from airflow_provider_banana.hooks.banana import BananaHook

    if client == "hook":

        def hook_factory() -> Callable[[dict[str, Any], str], Any]:
            hook = BananaHook()
            return lambda inputs, model: hook.run(inputs, model)

        return hook_factory

    def new_conn_factory() -> Callable[[dict[str, Any], str], Any]:
        def run(inputs: dict[str, Any], model: str) -> Any:
            with BananaHook() as hook:
                return hook.run(inputs, model)

        return run

    return new_conn_factory


def worker(client: str, workload: str, count: int, url: str, server_pid: int, out: Path) -> None:
    """Run one client through one workload and write the figures to ``out`` as JSON.

    :param client: one of :data:`CLIENTS`.
    :param workload: ``quick`` or ``long``.
    :param count: calls.
    :param url: the server.
    :param server_pid: the server process, for its CPU time.
    :param out: where to write the result.
    """
    factory = _runner(client)
    factory()({"prompt": "warm up"}, "wordcount")  # imports and first connection, not measured
    requests_before = _requests_so_far(url)
    server_cpu_before = cpu_seconds(server_pid)
    cpu_before = time.process_time()
    latencies: list[float] = []
    delays: list[float] = []
    errors: list[str] = []
    began = time.time()
    if workload == "quick":
        run = factory()
        for i in range(count):
            t = time.perf_counter()
            outputs = run({"prompt": f"a few words for call {i}"}, "wordcount")
            latencies.append(time.perf_counter() - t)
            if outputs[0]["words"] != 6:
                errors.append(repr(outputs))
    else:
        lock = threading.Lock()

        def one(i: int) -> None:
            run = factory()
            until = time.time() + LONG_CALL + i * 0.05
            t = time.perf_counter()
            try:
                outputs = run({"until": until}, "sleep")
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                return
            done = time.time()
            with lock:
                latencies.append(time.perf_counter() - t)
                delays.append(done - until)
                if "slept" not in outputs[0]:
                    errors.append(repr(outputs))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LONG_CALL + 4 * HOLD + 60)
    result = {
        "client": client,
        "workload": workload,
        "count": count,
        "completed": len(latencies) - len(errors),
        "errors": errors[:5],
        "wall_seconds": time.time() - began,
        "cpu_seconds": time.process_time() - cpu_before,
        "server_cpu_seconds": cpu_seconds(server_pid) - server_cpu_before,
        "requests": _requests_so_far(url) - requests_before,
        "latency": summarize(latencies),
        "delay": summarize(delays),
    }
    out.write_text(json.dumps(result))


def measure(clients: Sequence[str], quick: int, long: int) -> list[dict[str, Any]]:
    """Run every client through both workloads against one server, one child process each.

    :param clients: which clients.
    :param quick: calls in the quick workload.
    :param long: calls in the long workload.
    """
    from airflow_provider_banana.devserver.testing import DevServer

    results = []
    with (
        DevServer(start_hold=HOLD, check_hold=HOLD, replicas=max(64, long + 8), log_level="warning") as srv,
        tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp,
    ):
        extra = {"start_hold": HOLD, "check_hold": HOLD}
        conn = {"conn_type": "banana", "host": srv.url, "password": "bench-api-key", "extra": extra}
        env = child_env(Path(tmp) / "airflow-home", [str(ROOT)], conn, BANANA_URL=srv.url)
        for workload, count in (("quick", quick), ("long", long)):
            for client in clients:
                if workload == "long" and client == "hook-new-conn":
                    continue  # three requests per call either way; the quick workload shows the difference
                print(f"measuring {client} on {count} {workload} calls ...", file=sys.stderr, flush=True)
                out = Path(tmp) / f"{client}-{workload}.json"
                log = Path(tmp) / f"{client}-{workload}.log"
                status = run_logged(
                    [
                        *(sys.executable, "-m", "benchmarks.hook_vs_sdk", "--worker", client),
                        *("--workload", workload, "--count", str(count), "--url", srv.url),
                        *("--server-pid", str(srv.pid), "--out", str(out)),
                    ],
                    log,
                    env=env,
                    cwd=ROOT,
                    timeout=600,
                )
                if status != 0 or not out.exists():
                    raise RuntimeError(f"{client} on {workload} failed:\n{log.read_text()[-3000:]}")
                results.append(json.loads(out.read_text()))
    return results


def report(results: Sequence[dict[str, Any]]) -> None:
    """Print one table per workload, with ratios to the SDK.

    :param results: what :func:`measure` returned.
    """
    for workload, title in (
        ("quick", "Hook against the banana-dev 4.0.2 SDK: calls that finish within their Start"),
        ("long", f"Hook against the SDK: {LONG_CALL:.0f} s calls, Start and Check held {HOLD:.0f} s"),
    ):
        rows = []
        sdk = next((r for r in results if r["client"] == "sdk" and r["workload"] == workload), None)
        for r in (r for r in results if r["workload"] == workload):
            n = r["count"]
            cpu = r["cpu_seconds"] / n
            lat = r["latency"]
            row = [
                r["client"],
                f"{r['completed']}/{n}",
                f"{r['requests'] / n:.2f}",
                f"{fmt_seconds(lat['p50'])} / {fmt_seconds(lat['p99'])}",
                f"{cpu * 1e3:.2f} ms",
                fmt_ratio(cpu, sdk["cpu_seconds"] / n) if sdk else "-",
                f"{r['server_cpu_seconds'] / n * 1e3:.2f} ms",
            ]
            if workload == "long":
                d = r["delay"]
                row.append(f"{fmt_seconds(d['p50'])} / {fmt_seconds(d['max'])}")
            rows.append(row)
        header = [
            "client",
            "completed",
            "requests / call",
            "latency p50 / p99",
            "client CPU / call",
            "vs SDK",
            "server CPU / call",
        ]
        if workload == "long":
            header.append("finish noticed after p50 / max")
        print_table(title, header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison, or one worker of it.

    :param argv: command-line arguments.
    :return: 0 when every call completed, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", type=int, default=300, help="calls in the quick workload (default: %(default)s)")
    parser.add_argument("--long", type=int, default=20, help="calls in the long workload (default: %(default)s)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated clients")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=("quick", "long"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.workload, args.count, args.url, args.server_pid, args.out)
        return 0
    results = measure([c for c in args.clients.split(",") if c], args.quick, args.long)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["completed"] == r["count"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
