"""
The batch operator at real network latency: how many calls it keeps running when the server is far away.

For each kind and each round trip (``--rtt-ms``), on a fresh local server whose ``sleep`` model
takes ``--call-seconds`` per call (Banana's holds: a Start held 60 s, a Check 50 s; enough
replicas that no call queues), behind a :class:`benchmarks.latency_proxy.LatencyProxy` that delays
every byte by half the round trip each way (a new connection costs one more round trip, as TCP's
handshake does): one :class:`~airflow_provider_banana.operators.banana.BananaBatchInferenceOperator`
task runs ``--n`` inputs at ``max_in_flight=--max-in-flight``, ``deferrable=False``, then a
``verify`` task fails unless there is one output per input, in input order. The DAG runs for
real, with ``dag.test()`` in a child process, on a fresh SQLite Airflow home (a copy of one
``airflow db migrate``, in the environment of :func:`benchmarks.components.airflow_env`). This process
samples the server's ``/_admin/stats`` every 0.1 s meanwhile.

Kinds: ``banana`` is the operator of this checkout; ``banana@REF`` is the operator as it was at git
revision ``REF`` (the provider's package extracted from git into a temporary directory, first on
the child's ``PYTHONPATH``; the child reports where it imported the provider from and the run
fails if that is not there), so a change is measured beside what it replaces, in one run.

Columns:

- **wall**: the first Start to the last call's end, as the server's counters saw them (each end
  taken midway between the two samples around it, so within 0.05 s). The JSON's ``task_seconds``
  is the ``infer`` task instance's duration, which also counts ``dag.test()`` starting the task
  in-process (4-6 s on the 2-core machine) and the operator's set-up.
- **limit**: Little's law, ``N / max_in_flight x (call seconds + rtt)``: the wall time of a client
  that keeps ``max_in_flight`` calls running all along and learns of each end one round trip late.
- **wall/limit**: 1.0 is the limit; the gap is the time calls were not running.
- **peak running**: the server's own peak of calls running; **median running**: the median of the
  samples of the steady part, from one call (plus a round trip) after the first Start until
  every input was started (the ramp and the tail are left out).
- **calls/s**: N / wall.
- **client CPU**: the ``dag.test()`` process's user + system seconds over the wall time (from
  the samples around it), and in brackets over its whole life (Airflow's start-up, the DAG parse
  and the run's database writes included); **server CPU**: the devserver's, over the wall time.
- **goal**: at 100 ms, 300 one-second calls at ``max_in_flight=64`` must keep at least 48 running
  (the median; 75 % of ``max_in_flight`` in general) and finish within 1.5 x the limit; each row
  says whether it meets that.

Usage::

    python -m benchmarks.batch_latency [--kinds banana,banana@840b878] [--rtt-ms 0,20,100,200]
        [--n 300] [--max-in-flight 64] [--call-seconds 1.0] [--json results.json]

Every request goes to 127.0.0.1, and every child has a watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.components import airflow_env, migrated_database, tail
from benchmarks.harness import (
    DAG_TEST_SOURCE,
    ROOT,
    SET_UP_ALLOWANCE,
    cell,
    children_cpu,
    cpu_seconds,
    crossing,
    dag_test_file,
    free_port,
    imported_from,
    load_average,
    log_result,
    print_machine,
    print_table,
    provider_at,
    raise_fd_limit,
    read_answer,
    sample_until_exit,
    start_dag_test,
)
from benchmarks.latency_proxy import LatencyProxy

#: Kinds, in table order: this checkout's operator, and the one it replaces.
KINDS = ("banana", "banana@840b878")
#: Seconds between two samples of the server's stats.
SAMPLE_INTERVAL = 0.1
#: The goal: the median of calls running at least this share of max_in_flight (48 of 64) ...
GOAL_RUNNING_SHARE = 0.75
#: ... and a wall time within this many times the limit.
GOAL_WALL_RATIO = 1.5

#: The benchmark's DAG. Its settings come from the JSON file beside it; run as a script it runs
#: itself with dag.test() and writes what the parent needs to the path given as its argument.
DAG_FILE = (
    '''
"""The batch of benchmarks/batch_latency.py: N sleep calls through one batch task, then a check of the outputs."""

import json
import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator

CONFIG = json.loads(Path(__file__).with_suffix(".json").read_text())
N = CONFIG["n"]


@task
def verify(all_outputs):
    results = [outputs[0]["result"] for outputs in all_outputs]
    if results != list(range(N)):
        raise ValueError(f"{len(results)} outputs for {N} inputs, or not in input order")
    return len(results)


with DAG(dag_id="batch_latency", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    infer = BananaBatchInferenceOperator(
        task_id="infer",
        model_key="sleep",
        model_inputs=[{"seconds": CONFIG["call_seconds"], "result": i} for i in range(N)],
        max_in_flight=CONFIG["max_in_flight"],
        deferrable=False,
        timeout=CONFIG["timeout"],
    )
    verify(infer.output)
'''
    + DAG_TEST_SOURCE
    + """

if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(run_dag_test(dag, "infer")))
"""
)


@dataclass
class Sample:
    """One reading of the server's counters and both processes' CPU seconds."""

    at: float
    running: int
    starts_taken: int
    ended: int
    client_cpu: float
    server_cpu: float


def parse_kind(kind: str) -> str | None:
    """Return the git revision of a ``banana@REF`` kind, or None for ``banana``.

    :param kind: ``banana`` or ``banana@REF``.
    :raises ValueError: for anything else.
    """
    name, at, ref = kind.partition("@")
    if name != "banana" or (at and not ref):
        raise ValueError(f"unknown kind {kind!r}: use banana or banana@REF")
    return ref or None


def _client_cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None  # it has exited; the last sample stands
    return times.user + times.system + times.children_user + times.children_system


def stats_reader(server: DevServer, child: subprocess.Popen[bytes]) -> Callable[[], Sample | None]:
    """Return what reads the server's stats and the CPU of both processes, for :func:`sample_until_exit`.

    :param server: the devserver.
    :param child: the ``dag.test()`` process.
    """
    process = psutil.Process(child.pid)
    client_cpu = 0.0

    def take() -> Sample | None:
        nonlocal client_cpu
        try:
            stats = server.stats()
            client_cpu = _client_cpu(process) or client_cpu
            return Sample(
                at=time.time(),
                running=stats["running"],
                starts_taken=stats["starts_taken"],
                ended=stats["finished"] + stats["failed"],
                client_cpu=client_cpu,
                server_cpu=cpu_seconds(server.pid),
            )
        except Exception:  # a busy server: the next sample will do
            return None

    return take


def analyse(samples: Sequence[Sample], n: int, rtt: float, call_seconds: float, max_in_flight: int) -> dict[str, Any]:
    """Return the wall time, the running figures and the CPU over the batch from the samples.

    :param samples: what :func:`stats_reader` read.
    :param n: inputs of the batch.
    :param rtt: the round trip in seconds.
    :param call_seconds: seconds each call runs.
    :param max_in_flight: the operator's ``max_in_flight``.
    """
    limit = n / max_in_flight * (call_seconds + rtt)
    first = crossing(samples, lambda s: s.starts_taken > 0)
    end = crossing(samples, lambda s: s.ended >= n)
    if first is None:
        return {"limit": limit, "wall": None}
    last_index, last_at = end if end is not None else (len(samples) - 1, samples[-1].at)
    first_index, first_at = first
    all_started = crossing(samples, lambda s: s.starts_taken >= n)
    steady_until = all_started[1] if all_started is not None else last_at
    steady = [s.running for s in samples if first_at + call_seconds + rtt <= s.at <= steady_until]
    if not steady:  # the batch never got past its ramp: take it all
        steady = [s.running for s in samples[first_index : last_index + 1]]
    before = samples[max(0, first_index - 1)]
    wall = last_at - first_at
    return {
        "limit": limit,
        "wall": wall,
        "ended_all": end is not None,
        "wall_over_limit": wall / limit if limit else None,
        "median_running": statistics.median(steady),
        "steady_samples": len(steady),
        "calls_per_second": n / wall if wall > 0 else None,
        "client_cpu": samples[last_index].client_cpu - before.client_cpu,
        "server_cpu": samples[last_index].server_cpu - before.server_cpu,
    }


def measure(
    kind: str,
    provider_dir: Path,
    rtt: float,
    *,
    n: int,
    call_seconds: float,
    max_in_flight: int,
    database: Path,
    tmp: Path,
) -> dict[str, Any]:
    """Run the batch once, through a proxy ``rtt`` seconds away, and return its figures.

    :param kind: ``banana`` or ``banana@REF``, for the row.
    :param provider_dir: the directory the child imports ``airflow_provider_banana`` from.
    :param rtt: the round trip in seconds.
    :param n: inputs of the batch.
    :param call_seconds: seconds each call runs.
    :param max_in_flight: the operator's ``max_in_flight``.
    :param database: a migrated metadata database to copy.
    :param tmp: a scratch directory of this measurement.
    """
    timeout = SET_UP_ALLOWANCE + n * (call_seconds + rtt)  # even one call at a time would end within it
    config = {"n": n, "call_seconds": call_seconds, "max_in_flight": max_in_flight, "timeout": timeout}
    dag_file = dag_test_file(tmp, database, "batch_latency", DAG_FILE, config)
    api_key = "bench-" + secrets.token_hex(8)
    result: dict[str, Any] = {"kind": kind, "rtt_ms": round(rtt * 1000), "n": n, "max_in_flight": max_in_flight}
    result["call_seconds"] = call_seconds
    with (
        DevServer(
            start_hold=60, check_hold=50, replicas=n + max_in_flight, api_key=api_key, log_level="warning"
        ) as server,
        LatencyProxy(server.port, rtt=rtt) as proxy,
    ):
        conn = {"conn_type": "banana", "host": proxy.url, "password": api_key, "extra": {"model_key": "sleep"}}
        env = airflow_env(dag_file.parents[1], free_port(), json.dumps(conn), PYTHONPATH=str(provider_dir))
        answer = tmp / "answer.json"
        log = tmp / "dag-test.log"
        server.reset(forget_calls=True)
        result["load_before"] = load_average()
        children_before = children_cpu()
        child = start_dag_test(dag_file, answer, log, env)
        take = stats_reader(server, child)
        samples, killed = sample_until_exit(child, take, SAMPLE_INTERVAL, timeout + SET_UP_ALLOWANCE)
        result["client_cpu_process"] = children_cpu() - children_before
        stats = server.stats()
        result["load_after"] = load_average()
    result.update(analyse(samples, n, rtt, call_seconds, max_in_flight))
    result["peak_running"] = stats["running_max"]
    result["start_requests"] = stats["start_requests"]
    result["check_requests"] = stats["check_requests"]
    result["failed_calls"] = stats["failed"]
    answered = read_answer(answer)
    result.update(answered)
    imported = answered.get("provider_file")
    if killed:
        result["state"] = f"killed after {timeout + SET_UP_ALLOWANCE:.0f} s"
    elif not answered:
        result["state"] = f"no answer (exit status {child.returncode})"
    elif not imported_from(provider_dir, imported):
        result["state"] = f"imported the provider from {imported}, not {provider_dir}"
    if result.get("state") != "success":
        result["log_tail"] = tail(log, 40)
    result["meets_goal"] = meets_goal(result)
    return result


def meets_goal(r: dict[str, Any]) -> bool:
    """Return whether a row kept enough calls running and finished close enough to the limit.

    :param r: one result of :func:`measure`.
    """
    return (
        r.get("state") == "success"
        and r.get("wall") is not None
        and r["median_running"] >= GOAL_RUNNING_SHARE * r["max_in_flight"]
        and r["wall"] <= GOAL_WALL_RATIO * r["limit"]
    )


def report(results: Sequence[dict[str, Any]]) -> None:
    """Print one row per kind and round trip.

    :param results: what :func:`measure` returned.
    """
    rows = []
    notes = []
    for r in results:
        ok = r.get("state") == "success"
        goal = "yes" if r["meets_goal"] else "no"
        if not ok:
            goal = f"no: {r.get('state')}"
            notes.append(f"{r['kind']} at {r['rtt_ms']} ms: {r.get('state')}\n\n```\n{r.get('log_tail', '')}\n```")
        rows.append(
            [
                r["kind"],
                f"{r['rtt_ms']} ms",
                cell(r.get("wall"), ".2f"),
                cell(r["limit"], ".2f"),
                cell(r.get("wall_over_limit"), ".2f") + ("x" if r.get("wall_over_limit") else ""),
                str(r["peak_running"]),
                cell(r.get("median_running"), ".0f"),
                cell(r.get("calls_per_second"), ".1f"),
                f"{cell(r.get('client_cpu'), '.1f')} ({r['client_cpu_process']:.1f})",
                cell(r.get("server_cpu"), ".1f"),
                goal,
            ]
        )
    first = results[0] if results else {"n": 0, "max_in_flight": 0, "call_seconds": 0}
    print_table(
        f"Batch at network latency: N = {first['n']} calls of {first['call_seconds']:g} s, "
        f"max_in_flight = {first['max_in_flight']}, deferrable=False",
        [
            "kind",
            "RTT",
            "wall s",
            "limit s",
            "wall/limit",
            "peak running",
            "median running",
            "calls/s",
            "client CPU s (process)",
            "server CPU s",
            f"goal (median >= {GOAL_RUNNING_SHARE:.0%} of max_in_flight, wall <= {GOAL_WALL_RATIO}x limit)",
        ],
        rows,
        notes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every kind at every round trip and print the table.

    :param argv: command-line arguments.
    :return: 0 when every run succeeded (whether or not it met the goal), else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_latency", description=__doc__.splitlines()[1])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--rtt-ms", default="0,20,100,200", help="comma-separated round trips (default: %(default)s)")
    parser.add_argument("--n", type=int, default=300, help="inputs of the batch (default: %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the operator's max_in_flight (default: 64)")
    parser.add_argument("--call-seconds", type=float, default=1.0, help="seconds each call runs (default: 1.0)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    try:
        refs = {kind: parse_kind(kind) for kind in kinds}
    except ValueError as e:
        parser.error(str(e))
    rtts = [int(ms) / 1000 for ms in args.rtt_ms.split(",") if ms]
    raise_fd_limit()
    info = print_machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="banana-bench-latency-") as scratch:
        tmp = Path(scratch)
        providers = {
            kind: ROOT if ref is None else provider_at(ref, Path(tempfile.mkdtemp(prefix="provider-", dir=tmp)))
            for kind, ref in refs.items()
        }
        database = migrated_database(tmp)
        for kind in kinds:
            for rtt in rtts:
                print(f"running {kind} at {rtt * 1000:.0f} ms ...", file=sys.stderr, flush=True)
                result = measure(
                    kind,
                    providers[kind],
                    rtt,
                    n=args.n,
                    call_seconds=args.call_seconds,
                    max_in_flight=args.max_in_flight,
                    database=database,
                    tmp=Path(tempfile.mkdtemp(prefix="run-", dir=tmp)),
                )
                log_result(result)
                results.append(result)
    report(results)
    print(f"Load average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0 if all(r.get("state") == "success" for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
