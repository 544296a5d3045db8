"""
Large outputs (1-50 MB) through a deferrable task against a blocking one, on real Airflow components.

Issue 19, item 1: a trigger event carries outputs only up to 64 KiB; past that it carries their
size and sha256, and the worker fetches them with one Check. Each row runs one DAG on Airflow's
real api-server, scheduler (LocalExecutor), dag-processor and triggerer on a fresh SQLite home
(:mod:`benchmarks.components`), against the local Banana server with Banana's own holds (a Start held
60 s, a Check 50 s). Every DAG is ``infer >> digest``: ``infer`` calls the server's ``bytes`` model
(a string of the size asked for, after ``--seconds`` of "inference"), and ``digest`` checks the
sha256 of what ``infer`` returned against the one expected; a row whose digest differs fails.

The rows, per size: ``deferrable`` (``deferrable=True, defer_after=0``: the worker starts the call
and defers, the triggerer waits) and ``blocking`` (``deferrable=False``: the worker waits); the
blocking row is the baseline of the same run.

Per row:

- **infer**: from the DAG run's start to the ``infer`` task's end (scheduling included), and the
  ratio to the blocking row of the same size;
- **triggerer peak**: the highest PSS sum of the triggerer's process tree during the row, less its
  level just before; **task peak RSS**: the highest peak RSS (``VmHWM``) of any task process;
- **DB growth**: the SQLite file's growth over the row (XCom holds the outputs either way);
- **trigger log**: the bytes of the trigger's log file; **next_kwargs**: the largest
  ``task_instance.next_kwargs`` seen while the run went on (Airflow clears it at the end);
- **warnings**: the triggerer's "blocked for" and "appears deadlocked" lines during the row.

Usage::

    python -m benchmarks.large_outputs [--sizes 1 5 20 50] [--seconds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.components import AirflowComponents, ProcessSampler, started_with_server
from benchmarks.harness import fmt_ratio, iso_seconds, load_average, log_result, print_machine, print_table

MB = 1024 * 1024
MODES = ("deferrable", "blocking")
#: Seconds a row may run before the benchmark gives up on it.
RUN_TIMEOUT = 900.0
#: The triggerer's warnings of a stalled event loop (Airflow's own texts).
STALL_TEXTS = ("blocked for", "appears deadlocked")
STALL_SECONDS = re.compile(r"blocked for ([0-9.]+) seconds")

DAG_FILE = """
import hashlib
import json
from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_banana.operators.banana import BananaInferenceOperator

SIZES = {sizes!r}
SECONDS = {seconds!r}
#: Per size, the sha256 the outputs must have (computed by the benchmark).
WANTS = {wants!r}


@task
def digest(outputs, want):
    data = json.dumps(outputs, ensure_ascii=False, separators=(",", ":")).encode()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ValueError(f"the outputs' sha256 is {{got}}, not {{want}}")
    return {{"bytes": len(data), "sha256": got}}


for mb in SIZES:
    for mode in ("deferrable", "blocking"):
        with DAG(dag_id=f"bench_large_{{mode}}_{{mb}}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
            infer = BananaInferenceOperator(
                task_id="infer",
                model_key="bytes",
                model_inputs={{"size": mb * 1024 * 1024, "seed": str(mb), "seconds": SECONDS}},
                deferrable=mode == "deferrable",
                defer_after=0,
                timeout=1800,
            )
            digest(infer.output, WANTS[mb])
"""


def expected_sha256(mb: int) -> str:
    """The sha256 of the ``bytes`` model's outputs for ``mb`` MiB (seed ``str(mb)``), as canonical JSON."""
    unit = hashlib.sha256(str(mb).encode()).hexdigest()
    size = mb * MB
    outputs = [{"data": (unit * (size // len(unit) + 1))[:size]}]
    return hashlib.sha256(json.dumps(outputs, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def dag_id(mode: str, mb: int) -> str:
    return f"bench_large_{mode}_{mb}"


class NextKwargsWatch:
    """Poll the metadata database for the largest ``next_kwargs`` of a DAG's task instances.

    :param database: the SQLite file.
    :param the_dag: the DAG id.
    """

    def __init__(self, database: Path, the_dag: str) -> None:
        self.database = database
        self.the_dag = the_dag
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> NextKwargsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        query = (
            "SELECT length(CAST(next_kwargs AS BLOB)) FROM task_instance WHERE dag_id = ? AND next_kwargs IS NOT NULL"
        )
        while not self._stop.wait(0.05):
            uri = f"file:{self.database}?mode=ro"
            # A writer may hold the file for a moment: the next poll reads it.
            with (
                contextlib.suppress(sqlite3.Error),
                contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as db,
            ):
                for (size,) in db.execute(query, (self.the_dag,)):
                    self.largest = max(self.largest, int(size or 0))


def measure(stack: AirflowComponents, mode: str, mb: int) -> dict[str, Any]:
    """Run one row's DAG to its end and return its figures.

    :param stack: the running components.
    :param mode: ``deferrable`` or ``blocking``.
    :param mb: the output's size in MiB.
    """
    the_dag = dag_id(mode, mb)
    database = stack.home / "airflow.db"
    triggerer_log = stack.log_path("triggerer")
    log_start = triggerer_log.stat().st_size
    db_before = database.stat().st_size
    sampler = ProcessSampler(stack)
    idle = sampler.sample().get("triggerer", 0)
    with sampler, NextKwargsWatch(database, the_dag) as watch:
        run_id, run_path = stack.trigger(the_dag)
        state = stack.wait_for_run_end(run_path, timeout=RUN_TIMEOUT)
    details = stack.api("GET", run_path)
    infer = stack.api("GET", f"{run_path}/taskInstances/infer")
    trigger_log_bytes = 0
    if mode == "deferrable":
        with contextlib.suppress(AssertionError, OSError):
            trigger_log_bytes = stack.trigger_log(the_dag, run_id, "infer").stat().st_size
    new_log = triggerer_log.read_bytes()[log_start:].decode(errors="replace")
    return {
        "mode": mode,
        "mb": mb,
        "state": state,
        "infer_state": infer["state"],
        "infer_seconds": iso_seconds(infer["end_date"]) - iso_seconds(details["start_date"]),
        "wall_seconds": iso_seconds(details["end_date"]) - iso_seconds(details["start_date"]),
        "triggerer_peak_kib": max(0, sampler.peak_pss.get("triggerer", 0) - idle),
        "task_peak_rss_kib": sampler.largest_task_kib,
        "db_growth_bytes": database.stat().st_size - db_before,
        "trigger_log_bytes": trigger_log_bytes,
        "next_kwargs_bytes": watch.largest,
        "stall_warnings": sum(new_log.count(text) for text in STALL_TEXTS),
        # How long each stall was, in seconds: "was blocked for 1.36 seconds".
        "stalls_seconds": [float(match) for match in STALL_SECONDS.findall(new_log)],
    }


@contextlib.contextmanager
def components(sizes: Sequence[int], seconds: float) -> Iterator[AirflowComponents]:
    """Start the Banana server and the Airflow components with every row's DAG; stop all after.

    :param sizes: the output sizes, in MiB.
    :param seconds: how long each call runs.
    """
    wants = {mb: expected_sha256(mb) for mb in sizes}
    # Outputs past 64 MiB (the default max_reply_bytes) would be refused: the rows stop at 50.
    with started_with_server(
        "bench_large_outputs.py",
        DAG_FILE.format(sizes=tuple(sizes), seconds=seconds, wants=wants),
        [dag_id(mode, mb) for mb in sizes for mode in MODES],
        replicas=8,
        prefix="banana-bench-large-",
    ) as (stack, _):
        yield stack


def run(sizes: Sequence[int], seconds: float = 3.0) -> list[dict[str, Any]]:
    """Measure both modes at every size, one after the other, on one set of components.

    :param sizes: the output sizes, in MiB.
    :param seconds: how long each call runs.
    """
    results = []
    with components(sizes, seconds) as stack:
        # A first trigger makes the triggerer import the provider (about a second with its loop
        # held): a warm-up run, not measured, keeps that out of the first row.
        print("warming up (the smallest size, deferrable, not measured) ...", file=sys.stderr, flush=True)
        measure(stack, "deferrable", min(sizes))
        for mb in sizes:
            for mode in MODES:
                print(f"running {mode} with {mb} MB ...", file=sys.stderr, flush=True)
                result = measure(stack, mode, mb)
                log_result(result)
                results.append(result)
    return results


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def _size(value: float) -> str:
    return f"{value / 1024:.1f} KiB" if value < MB else f"{value / MB:.1f} MiB"


def report(results: Sequence[dict[str, Any]]) -> None:
    """Print the table: one row per size and mode, the blocking row the baseline."""
    blocking = {r["mb"]: r["infer_seconds"] for r in results if r["mode"] == "blocking"}
    rows = [
        [
            f"{r['mb']} MB",
            r["mode"],
            r["state"],
            f"{r['infer_seconds']:.1f} s",
            fmt_ratio(r["infer_seconds"], blocking.get(r["mb"], 0.0)) if r["mode"] != "blocking" else "1.00x",
            _mib(r["triggerer_peak_kib"]),
            _mib(r["task_peak_rss_kib"]),
            _size(r["db_growth_bytes"]),
            _size(r["trigger_log_bytes"]) if r["mode"] == "deferrable" else "-",
            _size(r["next_kwargs_bytes"]) if r["mode"] == "deferrable" else "-",
            ", ".join(f"{s:.2f} s" for s in r.get("stalls_seconds", [])) or str(r["stall_warnings"]),
        ]
        for r in results
    ]
    print_table(
        "Large outputs: a deferrable task against a blocking one (real components)",
        [
            "output",
            "mode",
            "run",
            "infer",
            "vs blocking",
            "triggerer peak",
            "task peak RSS",
            "DB growth",
            "trigger log",
            "next_kwargs",
            "stall warnings",
        ],
        rows,
        notes=[
            "infer: the DAG run's start to the infer task's end; triggerer peak: PSS of its tree less its level",
            "before the row; task peak RSS: the largest VmHWM of a task process; next_kwargs: the largest seen.",
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rows asked for and print the table.

    :param argv: command-line arguments.
    :return: 0 when every run succeeded, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_outputs", description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20, 50], help="output sizes in MiB")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds each call runs")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    print_machine()
    results = run(args.sizes, args.seconds)
    report(results)
    print(f"load average at the end {load_average()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
