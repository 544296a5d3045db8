"""
The batch operator from and to JSONL files: worker memory and metadata-database state against the number of inputs.

For each N (``--n``) and each mode (``--modes``), on a fresh local server (``sleep`` model, calls of
0 s, Banana's holds, more replicas than ``max_in_flight`` so that no call queues): one
:class:`~airflow_provider_banana.operators.banana.BananaBatchInferenceOperator` task runs N inputs
``{"seconds": 0, "result": i, "pad": "x" * --pad-bytes}`` at ``max_in_flight=--max-in-flight``,
``deferrable=False``. The DAG runs for real, with ``dag.test()`` in a child process (which runs the
task in-process: the child is the worker), on a fresh SQLite Airflow home (a copy of one ``airflow
db migrate``, in the environment of :func:`benchmarks.components.airflow_env`), as
:mod:`benchmarks.batch_latency` does.

Modes:

- ``file``: ``input_path`` and ``output_path``, JSONL files in a temporary directory; the task
  returns ``{"output_path", "succeeded", "failed"}``.
- ``list``: the same inputs as ``model_inputs``, a list the DAG file loads from the same JSONL file
  when it is parsed (so the DAG file stays small); the outputs come back through XCom. This is the
  baseline the file mode is compared against, in the same run.

Every 0.2 s this process reads the child's RSS (the child and its descendants, through psutil),
the server's counters, and the bytes in the metadata database's ``task_state_store`` table
(``SUM(LENGTH(CAST(value AS BLOB)))``, the SQLite file opened read-only; a sample that finds the
database locked is skipped). After the child exits it reads the XCom bytes and checks the result:
in ``file`` mode the output file has N lines, line i is input i with ``status`` ``success`` and
its ``result``, the parts folder is gone and the task returned ``succeeded == N``; in ``list`` mode
the XCom ``return_value`` has N entries, entry i the outputs of input i; in both the task
succeeded and the server's ``starts_taken`` is N. A row that fails a check says which, and the run
exits with status 1.

Columns:

- **task s**: the ``infer`` task instance's duration (it counts ``dag.test()`` rendering the
  templated fields and, in ``list`` mode, pushing the outputs to XCom); **calls/s**: N / that;
  **calls s**: the first Start to the last call's end, as the server's counters saw them (within
  0.1 s).
- **RSS parsed**: the child's own ``VmRSS`` once Airflow is imported and the DAG file has run,
  just before ``dag.test()`` (``list`` mode has loaded its inputs by then).
- **RSS at 1st Start**: the last sample before the server took the first Start: Airflow started,
  the DAG run created, the task's fields rendered, the inputs read (or scanned).
- **peak RSS**: the largest sample; **ru_maxrss**: the child's own ``ru_maxrss`` at the end (the
  kernel's peak, which no sampling interval misses); **growth**: peak RSS minus RSS at 1st Start.
- **task_state_store peak**: the largest total of the table's values at any sample (the batch's
  plan, and in ``list`` mode its outputs in chunks until the end); **XCom**: the ``xcom`` table's
  values at the end; **output**: the output file's size.

A second table gives the figures per input, for each mode, between the smallest and the largest N
of the run: (figure at the largest - figure at the smallest) / (difference of N), in bytes.

Usage::

    python -m benchmarks.batch_files [--n 10000,100000] [--modes file,list] [--max-in-flight 64]
        [--pad-bytes 100] [--json results.json]

Every request goes to 127.0.0.1, and every child has a watchdog: it is killed after
``SET_UP_ALLOWANCE + 60 s + N x SECONDS_PER_INPUT`` (over 80 minutes at N = 100,000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sqlite3
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
    crossing,
    dag_test_file,
    free_port,
    imported_from,
    load_average,
    log_result,
    print_machine,
    print_table,
    raise_fd_limit,
    read_answer,
    sample_until_exit,
    start_dag_test,
)

MODES = ("file", "list")
#: Seconds between two samples.
SAMPLE_INTERVAL = 0.2
#: The operator's timeout is 60 s plus this much per input (a floor of 20 calls/s); the watchdog
#: adds SET_UP_ALLOWANCE to it.
SECONDS_PER_INPUT = 0.05
MIB = 1024 * 1024

TASK_STATE_BYTES = "SELECT COALESCE(SUM(LENGTH(CAST(value AS BLOB))), 0) FROM task_state_store"
XCOM_BYTES = "SELECT COALESCE(SUM(LENGTH(CAST(value AS BLOB))), 0) FROM xcom"
RETURN_VALUE = "SELECT value FROM xcom WHERE task_id = 'infer' AND key = 'return_value'"

#: The benchmark's DAG. Its settings come from the JSON file beside it; run as a script it runs
#: itself with dag.test() and writes what the parent needs to the path given as its argument.
DAG_FILE = (
    '''
"""The batch of benchmarks/batch_files.py: N sleep calls through one batch task, files or list and XCom."""

import json
import resource
import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator

CONFIG = json.loads(Path(__file__).with_suffix(".json").read_text())


def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


if CONFIG["mode"] == "file":
    where = {"input_path": "file://" + CONFIG["input"], "output_path": "file://" + CONFIG["output"]}
else:
    with open(CONFIG["input"], "rb") as lines:
        where = {"model_inputs": [json.loads(line) for line in lines]}

with DAG(dag_id="batch_files", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    BananaBatchInferenceOperator(
        task_id="infer",
        model_key="sleep",
        max_in_flight=CONFIG["max_in_flight"],
        deferrable=False,
        timeout=CONFIG["timeout"],
        **where,
    )
'''
    + DAG_TEST_SOURCE
    + """

if __name__ == "__main__":
    parsed_kib = status_kib("VmRSS")
    result = run_dag_test(dag, "infer")
    result["rss_parsed_kib"] = parsed_kib
    result["vmhwm_kib"] = status_kib("VmHWM")
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["ru_maxrss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    Path(sys.argv[1]).write_text(json.dumps(result))
"""
)


@dataclass
class Sample:
    """One reading: the child's RSS, the server's counters, the bytes in ``task_state_store``."""

    at: float
    rss: int | None
    starts_taken: int | None
    ended: int | None
    task_state_bytes: int | None


def write_inputs(path: Path, n: int, pad_bytes: int) -> None:
    """Write the batch's JSONL inputs: line i is ``{"seconds": 0, "result": i, "pad": "x" * pad_bytes}``.

    :param path: the file.
    :param n: inputs.
    :param pad_bytes: length of each input's ``pad`` string.
    """
    pad = "x" * pad_bytes
    with open(path, "w") as out:
        for i in range(n):
            out.write(json.dumps({"seconds": 0, "result": i, "pad": pad}, separators=(",", ":")) + "\n")


def tree_rss(process: psutil.Process) -> int | None:
    """Return the RSS of a process and all its descendants, in bytes (None once it has exited)."""
    try:
        processes = [process, *process.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in processes:
        with contextlib.suppress(psutil.Error):  # a descendant that just exited
            total += p.memory_info().rss
    return total


class ReadOnlyDatabase:
    """The SQLite metadata database, opened read-only; a query that cannot run now returns None.

    :param path: the database file.
    """

    def __init__(self, path: Path) -> None:
        self._uri = f"file:{path}?mode=ro"
        self._conn: sqlite3.Connection | None = None
        #: Queries that found the database locked (or not yet readable).
        self.misses = 0

    def scalar(self, query: str) -> Any:
        """Return the first column of the first row of ``query``, or None if the database is busy."""
        try:
            if self._conn is None:
                # No wait: a locked database skips this sample rather than delaying the next.
                self._conn = sqlite3.connect(self._uri, uri=True, timeout=0, check_same_thread=False)
            row = self._conn.execute(query).fetchone()
        except sqlite3.Error:
            self.misses += 1
            self.close()
            return None
        return None if row is None else row[0]

    def close(self) -> None:
        """Close the connection (the next query opens a new one)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


def sampler(server: DevServer, child: subprocess.Popen[bytes], database: ReadOnlyDatabase) -> Callable[[], Sample]:
    """Return what reads the child's RSS, the server and ``task_state_store``, for :func:`sample_until_exit`.

    :param server: the devserver.
    :param child: the ``dag.test()`` process.
    :param database: the child's metadata database.
    """
    process = psutil.Process(child.pid)

    def take() -> Sample:
        rss = tree_rss(process)
        try:
            stats: dict[str, Any] | None = server.stats()
        except Exception:  # a busy server: the next sample will do
            stats = None
        return Sample(
            at=time.time(),
            rss=rss,
            starts_taken=None if stats is None else stats["starts_taken"],
            ended=None if stats is None else stats["finished"] + stats["failed"],
            task_state_bytes=database.scalar(TASK_STATE_BYTES),
        )

    return take


def analyse(samples: Sequence[Sample], n: int) -> dict[str, Any]:
    """Return the memory and ``task_state_store`` figures, and the calls' wall time, from the samples.

    :param samples: what :func:`sampler` read.
    :param n: inputs of the batch.
    """
    rss = [s.rss for s in samples if s.rss is not None]
    state = [s.task_state_bytes for s in samples if s.task_state_bytes is not None]
    counted = [s for s in samples if s.starts_taken is not None]
    first = crossing(counted, lambda s: s.starts_taken > 0)
    end = crossing(counted, lambda s: s.ended >= n)
    before_first = None
    if first is not None:
        first_at = counted[first[0]].at
        before = [s.rss for s in samples if s.at < first_at and s.rss is not None]
        before_first = before[-1] if before else None
    wall = end[1] - first[1] if first is not None and end is not None else None
    return {
        "samples": len(samples),
        "rss_samples": len(rss),
        "task_state_samples": len(state),
        "peak_rss": max(rss) if rss else None,
        "rss_at_first_start": before_first,
        "peak_task_state_bytes": max(state) if state else None,
        # The first Start to the last call's end, as the server's counters saw them.
        "calls_wall": wall,
    }


def verify_file(output: Path, n: int, returned: Any) -> list[str]:
    """Return what is wrong with a ``file`` run's output file and return value (nothing: it is right).

    :param output: the output file.
    :param n: inputs of the batch.
    :param returned: the task's ``return_value``.
    """
    problems = []
    if not output.exists():
        return [f"no output file {output}"]
    count = 0
    with open(output, "rb") as lines:
        for count, raw in enumerate(lines, start=1):
            index = count - 1
            line = json.loads(raw)
            outputs = line.get("model_outputs")
            if (
                line.get("index") != index
                or line.get("status") != "success"
                or not isinstance(outputs, list)
                or not outputs
                or outputs[0].get("result") != index
            ):
                problems.append(f"line {count} is not input {index}'s success: {raw[:200]!r}")
                break
    if count != n:
        problems.append(f"{count} output lines for {n} inputs")
    parts = output.with_name(output.name + ".parts")
    if parts.exists():
        problems.append(f"the parts folder {parts} is still there")
    if not isinstance(returned, dict) or returned.get("succeeded") != n or returned.get("failed") != 0:
        problems.append(f"the task returned {str(returned)[:200]}, not succeeded={n}, failed=0")
    return problems


def verify_list(returned: Any, n: int) -> list[str]:
    """Return what is wrong with a ``list`` run's XCom return value (nothing: it is right).

    :param returned: the task's ``return_value``.
    :param n: inputs of the batch.
    """
    if not isinstance(returned, list):
        return [f"the XCom return_value is a {type(returned).__name__}, not a list"]
    problems = []
    if len(returned) != n:
        problems.append(f"{len(returned)} XCom entries for {n} inputs")
    for index, outputs in enumerate(returned):
        if not isinstance(outputs, list) or not outputs or outputs[0].get("result") != index:
            problems.append(f"XCom entry {index} is not input {index}'s outputs: {str(outputs)[:200]}")
            break
    return problems


def read_return_value(database: Path) -> Any:
    """Return the ``infer`` task's XCom ``return_value``, decoded, or None if there is none."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as conn:
        row = conn.execute(RETURN_VALUE).fetchone()
    if row is None or row[0] is None:
        return None
    value = json.loads(row[0])
    # Airflow keeps the serialized JSON in a JSON column: a text that is itself JSON, on some paths.
    return json.loads(value) if isinstance(value, str) else value


def measure(mode: str, n: int, *, max_in_flight: int, pad_bytes: int, database: Path, tmp: Path) -> dict[str, Any]:
    """Run the batch once in ``mode`` and return its figures.

    :param mode: ``file`` or ``list``.
    :param n: inputs of the batch.
    :param max_in_flight: the operator's ``max_in_flight``.
    :param pad_bytes: length of each input's ``pad``.
    :param database: a migrated metadata database to copy.
    :param tmp: a scratch directory of this measurement.
    """
    timeout = 60 + n * SECONDS_PER_INPUT
    limit = timeout + SET_UP_ALLOWANCE
    inputs = tmp / "in.jsonl"
    output = tmp / "out.jsonl"
    write_inputs(inputs, n, pad_bytes)
    config = {
        "mode": mode,
        "input": str(inputs),
        "output": str(output),
        "max_in_flight": max_in_flight,
        "timeout": timeout,
    }
    dag_file = dag_test_file(tmp, database, "batch_files", DAG_FILE, config)
    home = dag_file.parents[1]
    db_file = home / "airflow.db"
    api_key = "bench-" + secrets.token_hex(8)
    result: dict[str, Any] = {"mode": mode, "n": n, "max_in_flight": max_in_flight, "pad_bytes": pad_bytes}
    result["input_bytes"] = inputs.stat().st_size
    reader = ReadOnlyDatabase(db_file)
    with DevServer(
        start_hold=60, check_hold=50, replicas=4 * max_in_flight, api_key=api_key, log_level="warning"
    ) as server:
        conn = {"conn_type": "banana", "host": server.url, "password": api_key, "extra": {"model_key": "sleep"}}
        env = airflow_env(home, free_port(), json.dumps(conn), PYTHONPATH=str(ROOT))
        answer = tmp / "answer.json"
        log = tmp / "dag-test.log"
        server.reset(forget_calls=True)
        result["load_before"] = load_average()
        children_before = children_cpu()
        started = time.monotonic()
        child = start_dag_test(dag_file, answer, log, env)
        try:
            samples, killed = sample_until_exit(child, sampler(server, child, reader), SAMPLE_INTERVAL, limit)
        finally:
            reader.close()
        result["child_seconds"] = time.monotonic() - started
        result["client_cpu_process"] = children_cpu() - children_before
        stats = server.stats()
        result["load_after"] = load_average()
    result.update(analyse(samples, n))
    result["db_misses"] = reader.misses
    result["starts_taken"] = stats["starts_taken"]
    result["failed_calls"] = stats["failed"]
    result["peak_running"] = stats["running_max"]
    answered = read_answer(answer)
    result.update(answered)
    if answered.get("task_seconds"):
        result["calls_per_second"] = n / answered["task_seconds"]
    result["output_bytes"] = output.stat().st_size if output.exists() else None
    final = ReadOnlyDatabase(db_file)
    result["xcom_bytes"] = final.scalar(XCOM_BYTES)
    result["task_state_bytes_end"] = final.scalar(TASK_STATE_BYTES)
    final.close()

    problems: list[str] = []
    if killed:
        problems.append(f"killed after {limit:.0f} s")
    elif not answered:
        problems.append(f"no answer (exit status {child.returncode})")
    else:
        if answered.get("state") != "success":
            problems.append(f"run {answered.get('state')}, tasks {answered.get('task_states')}")
        imported = answered.get("provider_file")
        if not imported_from(ROOT, imported):
            problems.append(f"imported the provider from {imported}, not {ROOT}")
        returned = read_return_value(db_file)
        problems += verify_file(output, n, returned) if mode == "file" else verify_list(returned, n)
    if stats["starts_taken"] != n:
        problems.append(f"the server took {stats['starts_taken']} Starts for {n} inputs")
    result["problems"] = problems
    result["verified"] = not problems
    if problems:
        result["log_tail"] = tail(log, 40)
    return result


def _mib(value: float | None) -> str:
    return cell(None if value is None else value / MIB, ".1f")


def _kib(value: float | None) -> str:
    return cell(None if value is None else value / 1024, ".1f")


def _rss_kib_to_bytes(value: int | None) -> int | None:
    return None if value is None else value * 1024


def per_input(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Return, per mode, each figure's growth per input between the smallest and the largest N verified.

    :param results: what :func:`measure` returned.
    """
    figures = {
        "peak RSS": lambda r: r.get("peak_rss"),
        "ru_maxrss": lambda r: _rss_kib_to_bytes(r.get("ru_maxrss_kib")),
        "task_state_store peak": lambda r: r.get("peak_task_state_bytes"),
        "XCom": lambda r: r.get("xcom_bytes"),
    }
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in results):
        runs = sorted((r for r in results if r["mode"] == mode and r["verified"]), key=lambda r: r["n"])
        if len(runs) < 2 or runs[0]["n"] == runs[-1]["n"]:
            continue
        low, high = runs[0], runs[-1]
        row = [mode, f"{low['n']:,} -> {high['n']:,}"]
        for figure in figures.values():
            a, b = figure(low), figure(high)
            row.append("-" if a is None or b is None else f"{(b - a) / (high['n'] - low['n']):.1f}")
        rows.append(row)
    return rows


def report(results: Sequence[dict[str, Any]]) -> None:
    """Print one row per mode and N, then the figures per input.

    :param results: what :func:`measure` returned.
    """
    rows = []
    notes = []
    for r in results:
        verified = "yes" if r["verified"] else "FAILED: " + "; ".join(r["problems"])
        if not r["verified"]:
            notes.append(f"{r['mode']} at N = {r['n']}: {verified}\n\n```\n{r.get('log_tail', '')}\n```")
        rows.append(
            [
                r["mode"],
                f"{r['n']:,}",
                verified,
                cell(r.get("task_seconds"), ".1f"),
                cell(r.get("calls_per_second"), ".0f"),
                cell(r.get("calls_wall"), ".1f"),
                _mib(_rss_kib_to_bytes(r.get("rss_parsed_kib"))),
                _mib(r.get("rss_at_first_start")),
                _mib(r.get("peak_rss")),
                _mib(_rss_kib_to_bytes(r.get("ru_maxrss_kib"))),
                _mib(
                    r["peak_rss"] - r["rss_at_first_start"]
                    if r.get("peak_rss") is not None and r.get("rss_at_first_start") is not None
                    else None
                ),
                _kib(r.get("peak_task_state_bytes")),
                _kib(r.get("xcom_bytes")),
                _mib(r.get("output_bytes")),
                r["load_before"].split()[0],
            ]
        )
    first = results[0] if results else {"max_in_flight": 0, "pad_bytes": 0}
    print_table(
        f"Batch from and to files against a list and XCom: sleep calls of 0 s, "
        f"max_in_flight = {first['max_in_flight']}, pad = {first['pad_bytes']} bytes, deferrable=False",
        [
            "mode",
            "N",
            "verified",
            "task s",
            "calls/s",
            "calls s",
            "RSS parsed MiB",
            "RSS at 1st Start MiB",
            "peak RSS MiB",
            "ru_maxrss MiB",
            "growth MiB",
            "task_state_store peak KiB",
            "XCom KiB",
            "output MiB",
            "load",
        ],
        rows,
        notes,
    )
    growth = per_input(results)
    if growth:
        print_table(
            "Per input: (figure at the largest N - figure at the smallest) / (difference of N), bytes",
            ["mode", "N", "peak RSS", "ru_maxrss", "task_state_store peak", "XCom"],
            growth,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every mode at every N and print the tables.

    :param argv: command-line arguments.
    :return: 0 when every row was verified, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_files", description=__doc__.splitlines()[1])
    parser.add_argument("--n", default="10000,100000", help="comma-separated input counts (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: file, list (default: %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the operator's max_in_flight (default: 64)")
    parser.add_argument("--pad-bytes", type=int, default=100, help="length of each input's pad (default: 100)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}: use {', '.join(MODES)}")
    sizes = [int(n) for n in args.n.split(",") if n]
    raise_fd_limit()
    info = print_machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="banana-bench-files-") as scratch:
        tmp = Path(scratch)
        database = migrated_database(tmp)
        for n in sizes:
            for mode in modes:
                print(f"running {mode} at N = {n} ...", file=sys.stderr, flush=True)
                result = measure(
                    mode,
                    n,
                    max_in_flight=args.max_in_flight,
                    pad_bytes=args.pad_bytes,
                    database=database,
                    tmp=Path(tempfile.mkdtemp(prefix="run-", dir=tmp)),
                )
                log_result(result)
                results.append(result)
    report(results)
    print(f"Load average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0 if all(r["verified"] for r in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
