"""
One batch task against dynamic task mapping over the same inputs, on real Airflow components.

The same N inputs run through Airflow's real api-server, scheduler (LocalExecutor),
dag-processor and triggerer on a fresh SQLite home (:mod:`benchmarks.components`), against the local
Banana server with Banana's own holds (a Start held 60 s, a Check 50 s). Each input is one call of
the ``sleep`` model lasting 0.5 to 1.5 s (1 s on average), whose output echoes the input's index.
Every DAG is ``make_inputs >> infer >> verify``, and ``verify`` fails unless there is one output
per input, in input order. The scenarios (``infer`` is the only difference):

- ``batch``: one :class:`BananaBatchInferenceOperator`, ``deferrable=True``, ``max_in_flight`` calls
  at once, the default ``defer_after`` (5 s): calls this short end before it, so the worker starts
  and watches them itself and never defers.
- ``batch-via-triggerer``: the same with ``defer_after=0``, the path of calls that outlast
  ``defer_after``: the worker starts calls and defers, the triggerer watches them and hands back a
  wave, the worker resumes, starts the next calls and defers again.
- ``batch-in-worker``: ``deferrable=False``: the worker starts and watches.
- ``mapped``: ``BananaInferenceOperator.partial(deferrable=True).expand(model_inputs=...)``, one
  task instance per input, each starting its call and deferring to its own trigger.

Mapping runs only where Airflow allows it: above ``[core] max_map_length`` (1,024 by default)
``make_inputs`` fails when it pushes the list, and the row says so.

Per scenario (the server's counters are reset, and the processes' CPU and memory read, before the
DAG is triggered):

- **wall**: the DAG run's start to end, from the REST API; **infer**: the first start of an
  ``infer`` task instance to the last end.
- **task instances**: the run's task instances, as the scheduler and the UI list them.
- **task starts / deferrals**: the audit log's ``running`` and ``deferred`` entries for ``infer``;
  each ``running`` is a task process that parsed the DAG file and reported to the api-server.
- **requests / input**: the server's Start and Check requests, divided by N; **calls at once**:
  the server's peak of calls running.
- **peak memory**: PSS (shared pages divided among the processes sharing them, so forked workers
  are not counted twice) summed over the scheduler's process tree (LocalExecutor workers and the
  task processes they fork) and over the triggerer's, sampled every 0.25 s, with the idle level
  measured before the run in brackets; **largest task**: the highest peak RSS of any one task
  process.
- **CPU**: user plus system seconds of every Airflow process (the four components and everything
  they start) over the run, sampled every 0.25 s: a short-lived process's last quarter second may
  be missed, which favours mapping, whose task processes are many and short.

Usage::

    python -m benchmarks.batch_vs_mapping [--n 1000 10000] [--scenarios ...]
        [--max-in-flight 64] [--parallelism 8] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.components import AirflowComponents, ProcessSampler, log_records, started_with_server
from benchmarks.harness import (
    fmt_ratio,
    iso_seconds,
    load_average,
    log_result,
    print_machine,
    print_table,
    raise_fd_limit,
)

SCENARIOS = ("batch", "batch-via-triggerer", "batch-in-worker", "mapped")
#: Airflow's default ``[core] max_map_length``: mapping over more inputs fails.
MAX_MAP_LENGTH = 1024
#: Seconds a scenario may run before the benchmark gives up on it.
RUN_TIMEOUT = 3600.0

#: One DAG per scenario and N, all in one file, parsed once. ``seconds`` spreads the calls'
#: lengths over 0.5-1.5 s so they do not all finish together; ``result`` is the input's index.
DAG_FILE = """
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator

SCENARIOS = {scenarios!r}
SIZES = {sizes!r}
MAX_IN_FLIGHT = {max_in_flight}


@task
def make_inputs(n):
    return [{{"seconds": 0.5 + (i % 5) * 0.25, "result": i}} for i in range(n)]


@task
def verify(all_outputs, n):
    results = [outputs[0]["result"] for outputs in all_outputs]
    if results != list(range(n)):
        raise ValueError(f"{{len(results)}} outputs for {{n}} inputs, or not in input order")
    return len(results)


for scenario in SCENARIOS:
    for n in SIZES:
        with DAG(
            dag_id=f"bench_{{scenario.replace('-', '_')}}_{{n}}",
            schedule=None,
            start_date=datetime(2026, 1, 1),
            catchup=False,
            max_active_runs=1,
            # As in production: a task instance that fails (Airflow 3.3.2's deferral race,
            # apache/airflow#72716, fails some fast-resuming ones) is retried; the table counts them.
            default_args={{"retries": 2, "retry_delay": timedelta(seconds=5)}},
        ):
            inputs = make_inputs(n)
            if scenario == "mapped":
                infer = BananaInferenceOperator.partial(
                    task_id="infer", model_key="sleep", deferrable=True, timeout=3600
                ).expand(model_inputs=inputs)
            else:
                infer = BananaBatchInferenceOperator(
                    task_id="infer",
                    model_key="sleep",
                    model_inputs=inputs,
                    max_in_flight=MAX_IN_FLIGHT,
                    deferrable=scenario != "batch-in-worker",
                    defer_after=0 if scenario == "batch-via-triggerer" else 5.0,
                    timeout=3600,
                )
            verify(infer.output, n)
"""


def mapping_allowed(result: dict[str, Any]) -> bool:
    """Return whether Airflow lets a scenario's run succeed: mapping over more than max_map_length fails."""
    return not (result["scenario"] == "mapped" and result["n"] > MAX_MAP_LENGTH)


def dag_id(scenario: str, n: int) -> str:
    """Return the DAG id of one scenario and size."""
    return f"bench_{scenario.replace('-', '_')}_{n}"


def _all(stack: AirflowComponents, path: str, key: str, **query: Any) -> tuple[int, list[dict[str, Any]]]:
    """Return the total and every entry of a paginated REST list (100 per page, the API's cap)."""
    entries: list[dict[str, Any]] = []
    while True:
        params = urllib.parse.urlencode({**query, "limit": 100, "offset": len(entries)})
        page = stack.api("GET", f"{path}?{params}")
        entries += page[key]
        if not page[key] or len(entries) >= page["total_entries"]:
            return page["total_entries"], entries


def measure(stack: AirflowComponents, server: DevServer, scenario: str, n: int) -> dict[str, Any]:
    """Run one scenario's DAG to its end and return its figures.

    :param stack: the running components.
    :param server: the local Banana server they call.
    :param scenario: one of :data:`SCENARIOS`.
    :param n: the number of inputs.
    """
    the_dag = dag_id(scenario, n)
    server.reset(forget_calls=True)
    sampler = ProcessSampler(stack)
    idle = sampler.sample()
    sampler.baseline = dict(sampler.cpu)
    cpu_before = sum(_tree_cpu(stack).values())
    load_before = load_average()
    began = time.time()
    with sampler:
        run_id, run_path = stack.trigger(the_dag)
        state = stack.wait_for_run_end(run_path, timeout=RUN_TIMEOUT)
    took = time.time() - began
    cpu_after = _tree_cpu(stack)
    stats = server.stats()
    run = stack.api("GET", run_path)
    instances_total, instances = _all(stack, f"{run_path}/taskInstances", "task_instances")
    infer = [ti for ti in instances if ti["task_id"] == "infer"]
    events = {
        event: _all(
            stack, "api/v2/eventLogs", "event_logs", dag_id=the_dag, run_id=run_id, task_id="infer", event=event
        )[0]
        for event in ("running", "deferred")
    }
    failure = None
    if state != "success":
        failure = "; ".join(f"{ti['task_id']}[{ti['map_index']}] {ti['state']}" for ti in instances[:5])
        make_inputs_log = stack.task_log(the_dag, run_id, "make_inputs")
        if make_inputs_log.exists():
            # Above max_map_length the api-server refuses the list's XCom push (HTTP 400, reason
            # "unmappable_return_value_length").
            text = make_inputs_log.read_text(errors="replace")
            refusal = "too large to map"
            if refusal in text:
                failure = f"make_inputs failed: its XCom push was refused, pushed value is {refusal} (max_map_length)"
    starts = [iso_seconds(ti["start_date"]) for ti in infer if ti["start_date"]]
    ends = [iso_seconds(ti["end_date"]) for ti in infer if ti["end_date"]]
    return {
        "scenario": scenario,
        "n": n,
        "state": state,
        "failure": failure,
        "wall": iso_seconds(run["end_date"]) - iso_seconds(run["start_date"]) if run["end_date"] else took,
        "infer": (max(ends) - min(starts)) if starts and ends else None,
        "task_instances": instances_total,
        "infer_instances": len(infer),
        # Tries beyond the first, over the run's task instances: each one a task that failed and ran again.
        "retried_tries": sum(max(0, int(ti["try_number"]) - 1) for ti in instances),
        "retried_reason": _retried_reason(stack, the_dag, run_id, instances),
        "task_starts": events["running"],
        "deferrals": events["deferred"],
        "start_requests": stats["start_requests"],
        "starts_taken": stats["starts_taken"],
        "check_requests": stats["check_requests"],
        "calls_at_once": stats["running_max"],
        "long_polls_max": stats["long_polls_open_max"],
        # The sampler's sum misses processes that came and went between two samples; the trees'
        # totals at the end miss the task processes that exited. Take the larger, per process kind.
        "cpu_seconds": max(sampler.cpu_seconds(), sum(cpu_after.values()) - cpu_before),
        "peak_pss_kib": sampler.peak_pss,
        "idle_pss_kib": idle,
        "largest_task_kib": sampler.largest_task_kib,
        "load_average": f"{load_before} -> {load_average()}",
    }


def _retried_reason(stack: AirflowComponents, the_dag: str, run_id: str, instances: list[dict[str, Any]]) -> str | None:
    """Return the last error a retried task instance's first try logged, if any was retried."""
    for ti in instances:
        if int(ti["try_number"]) > 1:
            path = stack.task_log(the_dag, run_id, ti["task_id"])
            if ti["map_index"] >= 0:
                path = path.parent / f"map_index={ti['map_index']}" / path.name
            if not path.exists():
                return f"{ti['task_id']}[{ti['map_index']}]: no log at {path}"
            errors = [r for r in log_records(path.read_text(errors="replace")) if r.get("level") == "error"]
            if not errors:
                return f"{ti['task_id']}[{ti['map_index']}]: no error in the first try's own log"
            last = errors[-1]
            details = [f"{d.get('exc_type')}: {d.get('exc_value')}" for d in last.get("error_detail") or []]
            return f"{ti['task_id']}[{ti['map_index']}]: {last.get('event')} {'; '.join(details)}"[:300]
    return None


def _tree_cpu(stack: AirflowComponents) -> dict[int, float]:
    """Return the CPU seconds of each live component process, counting its reaped children."""
    seconds: dict[int, float] = {}
    for process in stack.processes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(process.pid)
            for member in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = member.cpu_times()
                    seconds[member.pid] = times.user + times.system + times.children_user + times.children_system
    return seconds


@contextlib.contextmanager
def components(
    sizes: Sequence[int], scenarios: Sequence[str], max_in_flight: int, parallelism: int
) -> Iterator[tuple[AirflowComponents, DevServer]]:
    """Start the Banana server and the Airflow components with every benchmark DAG; stop all after.

    :param sizes: the input counts.
    :param scenarios: the scenarios.
    :param max_in_flight: the batch operators' ``max_in_flight``.
    :param parallelism: ``[core] parallelism``: LocalExecutor's worker processes.
    """
    with started_with_server(
        "bench_batch_vs_mapping.py",
        DAG_FILE.format(scenarios=tuple(scenarios), sizes=tuple(sizes), max_in_flight=max_in_flight),
        [dag_id(scenario, n) for scenario in scenarios for n in sizes],
        # Enough that no call waits in the server's queue, whatever runs at once.
        replicas=max(sizes) + 64,
        prefix="banana-bench-airflow-",
        AIRFLOW__CORE__PARALLELISM=str(parallelism),
        # Airflow's default, set here so that the table names what ran.
        AIRFLOW__CORE__MAX_MAP_LENGTH=str(MAX_MAP_LENGTH),
    ) as (stack, server):
        yield stack, server


def run(
    sizes: Sequence[int], scenarios: Sequence[str], max_in_flight: int = 64, parallelism: int = 8
) -> list[dict[str, Any]]:
    """Measure every scenario at every size, one after the other, on one set of components.

    :param sizes: the input counts.
    :param scenarios: the scenarios, in the order to run them.
    :param max_in_flight: the batch operators' ``max_in_flight``.
    :param parallelism: ``[core] parallelism``.
    """
    results = []
    with components(sizes, scenarios, max_in_flight, parallelism) as (stack, server):
        for n in sizes:
            for scenario in scenarios:
                print(f"running {scenario} with N={n:,} ...", file=sys.stderr, flush=True)
                result = measure(stack, server, scenario, n)
                result.update(max_in_flight=max_in_flight, parallelism=parallelism)
                log_result(result)
                results.append(result)
    return results


def report(results: Sequence[dict[str, Any]]) -> None:
    """Print the table of every scenario, with ratios against the batch of the same N."""
    batch_of = {r["n"]: r for r in results if r["scenario"] == "batch" and r["state"] == "success"}
    rows = []
    for r in results:
        n = r["n"]
        base = batch_of.get(n)
        if r["state"] != "success":
            rows.append(
                [r["scenario"], f"{n:,}", f"{r['state']}: {r['failure']}", *["-"] * 10],
            )
            continue
        requests = r["start_requests"] + r["check_requests"]
        pss, idle = r["peak_pss_kib"], r["idle_pss_kib"]
        rows.append(
            [
                r["scenario"],
                f"{n:,}",
                f"{r['wall']:.0f} s" + (f" ({fmt_ratio(r['wall'], base['wall'])})" if base else ""),
                f"{r['infer']:.0f} s" if r["infer"] is not None else "-",
                f"{r['task_instances']:,}",
                f"{r['task_starts']:,} / {r['deferrals']:,} / {r['retried_tries']:,}",
                f"{requests / n:.2f} ({r['start_requests'] / n:.2f} + {r['check_requests'] / n:.2f})",
                f"{r['starts_taken']:,}",
                f"{r['calls_at_once']:,}",
                f"{pss.get('worker', 0) / 1024:.0f} MiB ({idle.get('worker', 0) / 1024:.0f})",
                f"{pss.get('triggerer', 0) / 1024:.0f} MiB ({idle.get('triggerer', 0) / 1024:.0f})",
                f"{r['largest_task_kib'] / 1024:.0f} MiB",
                f"{r['cpu_seconds'] / n * 1000:.0f} ms"
                + (f" ({fmt_ratio(r['cpu_seconds'], base['cpu_seconds'])})" if base else ""),
            ]
        )
    first = results[0] if results else {"max_in_flight": "?", "parallelism": "?"}
    print_table(
        "One batch task against dynamic task mapping, on real Airflow components",
        [
            "scenario",
            "N",
            "wall (vs batch)",
            "infer",
            "task instances",
            "task starts / deferrals / retries",
            "requests / input (Start + Check)",
            "Starts taken",
            "calls at once",
            "peak PSS, scheduler + workers (idle)",
            "peak PSS, triggerer (idle)",
            "largest task process",
            "Airflow CPU / input (vs batch)",
        ],
        rows,
        notes=[
            f"max_in_flight={first['max_in_flight']} for the batches; [core] parallelism={first['parallelism']}; "
            f"[core] max_map_length={MAX_MAP_LENGTH} (Airflow's default); calls of 0.5-1.5 s; retries=2.",
            *(
                f"{r['scenario']} N={r['n']:,}: {r['retried_tries']} tries retried, e.g. {r['retried_reason']}"
                for r in results
                if r.get("retried_tries")
            ),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios asked for and print the table.

    :param argv: command-line arguments.
    :return: 0 when every scenario that mapping allows succeeded, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_vs_mapping", description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="input counts (default: %(default)s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the batches' max_in_flight (default: 64)")
    parser.add_argument("--parallelism", type=int, default=8, help="[core] parallelism (default: 8)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    raise_fd_limit()
    print_machine()
    results = run(args.n, scenarios, args.max_in_flight, args.parallelism)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["state"] == "success" for r in results if mapping_allowed(r)) else 1


if __name__ == "__main__":
    sys.exit(main())
