"""
Large outputs (1-50 MB) through a deferrable task against a blocking one, on real Airflow components.

Issue 19, item 1: a trigger event carries outputs only up to 64 KiB; past that it carries their
size and sha256, and the worker fetches them with one Check. Each row runs one DAG on Airflow's
real api-server, scheduler (LocalExecutor), dag-processor and triggerer on a fresh home
(:mod:`benchmarks.components`), its metadata database SQLite or (``--database postgresql``) a
throwaway PostgreSQL cluster of its own (Debian's binaries, on 127.0.0.1), against the local
Banana server with Banana's own holds (a Start held 60 s, a Check 50 s). Every DAG is
``infer >> digest``: ``infer`` calls the server's ``bytes`` model (a string of the size asked for,
after ``--seconds`` of "inference"), and ``digest`` checks the sha256 of what ``infer`` returned
against the one expected; a row whose digest differs fails.

The rows, per size: ``deferrable`` (``deferrable=True, defer_after=0``: the worker starts the call
and defers, the triggerer waits) and ``blocking`` (``deferrable=False``: the worker waits); the
blocking row is the baseline of the same run. Size ``0`` stands for a tiny output (100 bytes,
carried in the event itself): its deferrable row shows what deferring costs whatever the size
(Airflow's resume), so the larger rows show what the size adds (the trigger's parse and digest, the
worker's fetch and verify).

Per row:

- **infer**: from the DAG run's start to the ``infer`` task's end (scheduling included), and the
  ratio to the blocking row of the same size;
- **triggerer peak**: the highest PSS sum of the triggerer's process tree during the row, less its
  level just before; **task peak RSS**: the highest peak RSS (``VmHWM``) of any task process;
- **DB growth**: the SQLite file's growth, or PostgreSQL's ``pg_database_size``, over the row (XCom
  holds the outputs either way; PostgreSQL compresses them in TOAST, and the ``bytes`` model's
  string, one sha256 hex digest repeated, compresses to almost nothing);
- **trigger log**: the bytes of the trigger's log file; **next_kwargs**: the largest
  ``task_instance.next_kwargs`` seen while the run went on (Airflow clears it at the end);
- **warnings**: the triggerer's "blocked for" and "appears deadlocked" lines during the row;
- **phases** (from the timestamps of the task's and the trigger's log lines): the run's start to the
  task's defer (deferrable) or the call's end (blocking); the defer to Airflow's "Trigger fired
  event" (the call's ``--seconds``, the Checks, the trigger's parse and digest); the event to the
  resumed task's first line (Airflow: the triggerer's flush, the scheduler, a new task process
  parsing the DAG); that line to "Banana call ... finished" (the fetch and verify); and that to the
  task's end (the XCom push of the outputs, the task's exit).

Usage::

    python -m benchmarks.large_outputs [--sizes 0 1 5 20 50] [--seconds 3] [--database sqlite|postgresql]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.components import (
    AirflowComponents,
    PostgresCluster,
    ProcessSampler,
    log_records,
    postgres_cluster,
    started_with_server,
)
from benchmarks.harness import fmt_ratio, iso_seconds, load_average, log_result, print_machine, print_table

MB = 1024 * 1024
#: The bytes of the tiny output size ``0`` stands for: carried in the event itself.
TINY_BYTES = 100
DATABASES = ("sqlite", "postgresql")
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

#: Per size in MiB, the bytes of the output (0 stands for a tiny one).
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


for mb, size in SIZES.items():
    for mode in ("deferrable", "blocking"):
        with DAG(dag_id=f"bench_large_{{mode}}_{{mb}}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
            infer = BananaInferenceOperator(
                task_id="infer",
                model_key="bytes",
                model_inputs={{"size": size, "seed": str(mb), "seconds": SECONDS}},
                deferrable=mode == "deferrable",
                defer_after=0,
                timeout=1800,
            )
            digest(infer.output, WANTS[mb])
"""


def output_bytes(mb: int) -> int:
    """The bytes of the output of size ``mb`` MiB (0: a tiny one)."""
    return mb * MB if mb else TINY_BYTES


def size_label(mb: int) -> str:
    return f"{mb} MB" if mb else f"{TINY_BYTES} B"


def expected_sha256(mb: int) -> str:
    """The sha256 of the ``bytes`` model's outputs for ``mb`` MiB (seed ``str(mb)``), as canonical JSON."""
    unit = hashlib.sha256(str(mb).encode()).hexdigest()
    size = output_bytes(mb)
    outputs = [{"data": (unit * (size // len(unit) + 1))[:size]}]
    return hashlib.sha256(json.dumps(outputs, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def dag_id(mode: str, mb: int) -> str:
    return f"bench_large_{mode}_{mb}"


class SqliteMetadata:
    """The SQLite metadata database of a home, read directly.

    :param database: the SQLite file.
    """

    def __init__(self, database: Path) -> None:
        self.database = database

    def size(self) -> int:
        """Return the file's bytes."""
        return self.database.stat().st_size

    def next_kwargs_sizes(self, the_dag: str) -> list[int]:
        """Return the bytes of each ``next_kwargs`` of a DAG's task instances (none if the file is busy)."""
        query = (
            "SELECT length(CAST(next_kwargs AS BLOB)) FROM task_instance WHERE dag_id = ? AND next_kwargs IS NOT NULL"
        )
        uri = f"file:{self.database}?mode=ro"
        # A writer may hold the file for a moment: the next poll reads it.
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as db,
        ):
            return [int(size or 0) for (size,) in db.execute(query, (the_dag,))]
        return []

    def close(self) -> None:
        pass


class PostgresMetadata:
    """The PostgreSQL metadata database, read with psycopg2 (one connection; psycopg2's are thread-safe).

    :param cluster: the running cluster.
    """

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.conn = cluster.connect()

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def size(self) -> int:
        """Return ``pg_database_size`` of the metadata database."""
        return int(self._rows("SELECT pg_database_size(current_database())")[0][0])

    def next_kwargs_sizes(self, the_dag: str) -> list[int]:
        """Return the bytes of each ``next_kwargs`` of a DAG's task instances, as text."""
        query = (
            "SELECT octet_length(next_kwargs::text) FROM task_instance WHERE dag_id = %s AND next_kwargs IS NOT NULL"
        )
        return [int(size or 0) for (size,) in self._rows(query, the_dag)]

    def close(self) -> None:
        self.conn.close()


class NextKwargsWatch:
    """Poll the metadata database for the largest ``next_kwargs`` of a DAG's task instances.

    :param sizes: returns the bytes of each ``next_kwargs`` of the DAG's task instances.
    """

    def __init__(self, sizes: Callable[[], list[int]]) -> None:
        self.sizes = sizes
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
        while not self._stop.wait(0.05):
            self.largest = max([self.largest, *self.sizes()])


Metadata = SqliteMetadata | PostgresMetadata


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        return log_records(path.read_bytes().decode(errors="replace"))
    except (OSError, ValueError):
        return []


def _at(record: dict[str, Any]) -> float:
    return iso_seconds(record.get("timestamp"))


def _first(records: Sequence[dict[str, Any]], *texts: str, after: float = 0.0) -> float | None:
    """Return the time of the first record after ``after`` whose event holds every text, or None."""
    for record in records:
        event = str(record.get("event", ""))
        if _at(record) > after and all(text in event for text in texts):
            return _at(record)
    return None


def phases(
    mode: str, task_lines: Sequence[Sequence[Any]], trigger_lines: Sequence[Sequence[Any]], started: float, ended: float
) -> dict[str, Any]:
    """Split the infer task's time into phases, from its and its trigger's log lines (see the module's text).

    :param mode: ``deferrable`` or ``blocking``.
    :param task_lines: the infer task's log lines, each ``[timestamp, text]``.
    :param trigger_lines: its trigger's log lines, likewise.
    :param started: the run's start (Unix time).
    :param ended: the infer task's end (Unix time).
    :return: seconds per phase; a phase whose log line was not found is left out.
    """
    task = [{"timestamp": at, "event": text} for at, text in task_lines]
    trigger = [{"timestamp": at, "event": text} for at, text in trigger_lines]
    found: dict[str, Any] = {}
    if mode == "blocking":
        done = _first(task, "Banana call", "finished")
        if done is not None:
            found = {"to_call_end": done - started, "after_call": ended - done}
        return found
    deferred = _first(task, "Waiting for Banana call")
    fired = _first(trigger, "Trigger fired event")
    if deferred is None or fired is None:
        return found
    found = {"to_defer": deferred - started, "defer_to_event": fired - deferred}
    # The resumed try's first line ("::group::Pre Execute") comes once its process has started; then
    # it parses the DAG file, and execute_complete's first line says how the trigger's watch ended.
    resumed = next((_at(r) for r in task if _at(r) > fired), None)
    completing = _first(task, "The triggerer's watch of the call ended", after=fired)
    fetched = _first(task, "Banana call", "finished", after=fired)
    if resumed is not None:
        found["event_to_resume"] = resumed - fired
        if completing is not None:
            found["resume_to_complete"] = completing - resumed
            if fetched is not None:
                found["fetch_verify"] = fetched - completing
                found["after_fetch"] = ended - fetched
    return found


def _lines(path: Path) -> list[list[Any]]:
    """Return a task or trigger log's lines as ``[timestamp, text]`` (texts cut at 160 characters)."""
    return [[record.get("timestamp"), str(record.get("event", ""))[:160]] for record in _records(path)]


def measure(stack: AirflowComponents, metadata: Metadata, mode: str, mb: int) -> dict[str, Any]:
    """Run one row's DAG to its end and return its figures.

    :param stack: the running components.
    :param metadata: the metadata database.
    :param mode: ``deferrable`` or ``blocking``.
    :param mb: the output's size in MiB (0: a tiny one).
    """
    the_dag = dag_id(mode, mb)
    triggerer_log = stack.log_path("triggerer")
    log_start = triggerer_log.stat().st_size
    db_before = metadata.size()
    sampler = ProcessSampler(stack)
    idle = sampler.sample().get("triggerer", 0)
    with sampler, NextKwargsWatch(lambda: metadata.next_kwargs_sizes(the_dag)) as watch:
        run_id, run_path = stack.trigger(the_dag)
        state = stack.wait_for_run_end(run_path, timeout=RUN_TIMEOUT)
    details = stack.api("GET", run_path)
    infer = stack.api("GET", f"{run_path}/taskInstances/infer")
    trigger_log_bytes = 0
    trigger_lines: list[list[Any]] = []
    if mode == "deferrable":
        with contextlib.suppress(AssertionError, OSError):
            trigger_log = stack.trigger_log(the_dag, run_id, "infer")
            trigger_log_bytes = trigger_log.stat().st_size
            trigger_lines = _lines(trigger_log)
    new_log = triggerer_log.read_bytes()[log_start:].decode(errors="replace")
    started, ended = iso_seconds(details["start_date"]), iso_seconds(infer["end_date"])
    task_lines = _lines(stack.task_log(the_dag, run_id, "infer"))
    return {
        "mode": mode,
        "mb": mb,
        "output_bytes": output_bytes(mb),
        "state": state,
        "infer_state": infer["state"],
        "infer_seconds": ended - started,
        "wall_seconds": iso_seconds(details["end_date"]) - iso_seconds(details["start_date"]),
        "triggerer_peak_kib": max(0, sampler.peak_pss.get("triggerer", 0) - idle),
        "task_peak_rss_kib": sampler.largest_task_kib,
        "db_growth_bytes": metadata.size() - db_before,
        "trigger_log_bytes": trigger_log_bytes,
        "next_kwargs_bytes": watch.largest,
        "stall_warnings": sum(new_log.count(text) for text in STALL_TEXTS),
        # How long each stall was, in seconds: "was blocked for 1.36 seconds".
        "stalls_seconds": [float(match) for match in STALL_SECONDS.findall(new_log)],
        "started_at": started,
        "ended_at": ended,
        "phases": phases(mode, task_lines, trigger_lines, started, ended),
        "load_average": load_average(),
        # The triggerer's stall lines and the task's own log, to read an odd row afterwards.
        "stall_lines": [line[:300] for line in new_log.splitlines() if any(t in line for t in STALL_TEXTS)],
        "task_log": task_lines,
        "trigger_log": trigger_lines,
    }


@contextlib.contextmanager
def components(
    sizes: Sequence[int], seconds: float, database: str = "sqlite"
) -> Iterator[tuple[AirflowComponents, Metadata]]:
    """Start the Banana server and the Airflow components with every row's DAG; stop all after.

    :param sizes: the output sizes, in MiB (0: a tiny one).
    :param seconds: how long each call runs.
    :param database: ``sqlite`` (a file in the home) or ``postgresql`` (a throwaway cluster).
    """
    wants = {mb: expected_sha256(mb) for mb in sizes}
    # Outputs past 64 MiB (the default max_reply_bytes) would be refused: the rows stop at 50.
    dag_source = DAG_FILE.format(sizes={mb: output_bytes(mb) for mb in sizes}, seconds=seconds, wants=wants)
    dag_ids = [dag_id(mode, mb) for mb in sizes for mode in MODES]
    with contextlib.ExitStack() as stop:
        overrides: dict[str, str] = {}
        cluster = None
        if database == "postgresql":
            workdir = Path(stop.enter_context(tempfile.TemporaryDirectory(prefix="banana-bench-large-pg-")))
            cluster = stop.enter_context(postgres_cluster(workdir))
            overrides["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = cluster.sqlalchemy_url
        stack, _ = stop.enter_context(
            started_with_server(
                "bench_large_outputs.py", dag_source, dag_ids, replicas=8, prefix="banana-bench-large-", **overrides
            )
        )
        metadata: Metadata = PostgresMetadata(cluster) if cluster else SqliteMetadata(stack.home / "airflow.db")
        stop.callback(metadata.close)
        yield stack, metadata


def run(sizes: Sequence[int], seconds: float = 3.0, database: str = "sqlite", repeat: int = 1) -> list[dict[str, Any]]:
    """Measure both modes at every size, one after the other, on one set of components.

    :param sizes: the output sizes, in MiB (0: a tiny one).
    :param seconds: how long each call runs.
    :param database: ``sqlite`` or ``postgresql``.
    :param repeat: how many times to run every row: all rows once, then all again (a slow spell of the
        shared machine then spreads over the sizes rather than hitting one).
    """
    results = []
    with components(sizes, seconds, database) as (stack, metadata):
        # A first trigger makes the triggerer import the provider (about a second with its loop
        # held): a warm-up run, not measured, keeps that out of the first row.
        print("warming up (the smallest size, deferrable, not measured) ...", file=sys.stderr, flush=True)
        measure(stack, metadata, "deferrable", min(sizes))
        for attempt in range(1, repeat + 1):
            for mb in sizes:
                for mode in MODES:
                    print(f"running {mode} with {size_label(mb)} ({attempt}/{repeat}) ...", file=sys.stderr, flush=True)
                    result = {**measure(stack, metadata, mode, mb), "attempt": attempt}
                    log_result({k: v for k, v in result.items() if k not in ("task_log", "trigger_log")})
                    results.append(result)
    return results


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def _size(value: float) -> str:
    return f"{value / 1024:.1f} KiB" if value < MB else f"{value / MB:.1f} MiB"


PHASES = (
    ("to_defer", "start to defer"),
    ("defer_to_event", "defer to event"),
    ("event_to_resume", "event to resume"),
    ("resume_to_complete", "DAG parse"),
    ("fetch_verify", "fetch + verify"),
    ("after_fetch", "to task end"),
    ("to_call_end", "start to call end"),
    ("after_call", "call end to task end"),
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def medians(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one row per size and mode: the run of median task time (the lower of two middles), with
    the spread of the task time and the median of every phase over the runs."""
    rows = []
    for key in dict.fromkeys((r["mb"], r["mode"]) for r in results):
        runs = sorted((r for r in results if (r["mb"], r["mode"]) == key), key=lambda r: r["infer_seconds"])
        chosen = dict(runs[(len(runs) - 1) // 2])
        chosen["runs"] = len(runs)
        chosen["infer_range"] = (runs[0]["infer_seconds"], runs[-1]["infer_seconds"])
        chosen["state"] = "success" if all(r["state"] == "success" for r in runs) else "failed"
        chosen["stalls_seconds"] = [s for r in runs for s in r.get("stalls_seconds", [])]
        chosen["stall_warnings"] = sum(r["stall_warnings"] for r in runs)
        for name in ("trigger_log_bytes", "next_kwargs_bytes", "triggerer_peak_kib", "task_peak_rss_kib"):
            chosen[name] = max(r[name] for r in runs)
        keys = {k for r in runs for k, v in r.get("phases", {}).items() if isinstance(v, float)}
        chosen["phases"] = {k: _median([r["phases"][k] for r in runs if k in r.get("phases", {})]) for k in keys}
        rows.append(chosen)
    return rows


def _infer(r: dict[str, Any]) -> str:
    low, high = r.get("infer_range", (r["infer_seconds"],) * 2)
    return f"{r['infer_seconds']:.1f} s" + (f" ({low:.1f}-{high:.1f})" if r.get("runs", 1) > 1 else "")


def report(all_results: Sequence[dict[str, Any]], title: str = "") -> None:
    """Print the tables: one row per size and mode (the median of its runs), the blocking row the baseline;
    then the phases."""
    results = medians(all_results)
    blocking = {r["mb"]: r["infer_seconds"] for r in results if r["mode"] == "blocking"}
    rows = [
        [
            size_label(r["mb"]),
            r["mode"],
            r["state"],
            _infer(r),
            fmt_ratio(r["infer_seconds"], blocking.get(r["mb"], 0.0)) if r["mode"] != "blocking" else "1.00x",
            _mib(r["triggerer_peak_kib"]),
            _mib(r["task_peak_rss_kib"]),
            _size(r["db_growth_bytes"]),
            _size(r["trigger_log_bytes"]) if r["mode"] == "deferrable" else "-",
            _size(r["next_kwargs_bytes"]) if r["mode"] == "deferrable" else "-",
            ", ".join(f"{s:.2f} s" for s in r.get("stalls_seconds", [])) or str(r["stall_warnings"]),
            r.get("load_average", "?").split()[0],
        ]
        for r in results
    ]
    print_table(
        f"Large outputs: a deferrable task against a blocking one (real components{title})",
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
            "load (1 min)",
        ],
        rows,
        notes=[
            "infer: the DAG run's start to the infer task's end (with several runs: the median run, and the"
            " range); memory, trigger log, next_kwargs: the highest of the runs; stall warnings: all of the runs'."
            " triggerer peak: PSS of its tree less its level before the row; task peak RSS: the largest VmHWM of a"
            " task process; next_kwargs: the largest seen while the run went on.",
        ],
    )
    shown = [key for key, _ in PHASES if any(key in r.get("phases", {}) for r in results)]
    print_table(
        "Where the infer task's time goes (from its and its trigger's log lines; each phase the median of the runs)",
        ["output", "mode", "infer", *[dict(PHASES)[key] for key in shown]],
        [
            [
                size_label(r["mb"]),
                r["mode"],
                f"{r['infer_seconds']:.2f} s",
                *[_seconds(r.get("phases", {}).get(key)) for key in shown],
            ]
            for r in results
        ],
        notes=[
            "deferrable: the run's start to the defer; to Airflow's 'Trigger fired event' (the call, the Checks,"
            " the trigger's parse and digest); to the resumed try's first line (Airflow: scheduler, executor, task"
            " process); to execute_complete's first line (DAG file parsed); to 'Banana call ... finished' (fetch +"
            " verify); to the task's end (XCom push). blocking: to the call's end; to the task's end.",
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rows asked for and print the table.

    :param argv: command-line arguments.
    :return: 0 when every run succeeded, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_outputs", description=__doc__.splitlines()[1])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1, 5, 20, 50],
        help=f"output sizes in MiB; 0: a tiny one ({TINY_BYTES} bytes)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds each call runs")
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="the metadata database (postgresql: a throwaway cluster)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of every row (the table shows the median)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a --json file, run nothing")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        for r in saved:  # phases again from the saved log lines, as this version splits them
            if "started_at" in r:
                r["phases"] = phases(r["mode"], r["task_log"], r["trigger_log"], r["started_at"], r["ended_at"])
        report(saved, f", from {args.report.name}")
        return 0
    print_machine()
    print(f"metadata database {args.database}; each call runs {args.seconds:g} s", flush=True)
    results = run(args.sizes, args.seconds, args.database, args.repeat)
    report(results, f", {args.database}, {args.seconds:g} s calls")
    print(f"load average at the end {load_average()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
