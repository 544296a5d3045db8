"""The harness every benchmark in this folder shares: measure processes, start children, print tables.

Whatever more than one benchmark uses lives here, except what runs Airflow itself on a throwaway
home (:mod:`benchmarks.components`, which needs psutil). Standard library only (plus
:class:`RawPoster`, a bare asyncio HTTP/1.1 client), because the benchmarks' child processes
(``--child``, ``--worker``, ``--serve``) import it too: they pay for nothing they do not measure.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: The repository root, so that a benchmark run as a script can import the provider from the checkout.
ROOT = Path(__file__).resolve().parents[1]
#: Seconds a ``dag.test()`` child may take beyond its batch: Airflow's start-up, the DAG parse, the writes.
SET_UP_ALLOWANCE = 180.0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit and return it.

    Every held long poll is a socket on each side, so N triggers need N descriptors here.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proc_status_kib(pid: int | str, field: str) -> int:
    """Return a ``kB`` field of /proc/<pid>/status, such as ``VmRSS`` or ``VmHWM``, in KiB.

    :param pid: the process, or ``"self"``.
    :param field: the field name.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS (``VmHWM``) tracking from the current RSS.

    Writing 5 to ``/proc/self/clear_refs`` does that on Linux 4.0 and later.

    :return: whether the kernel accepted it (if not, ``VmHWM`` counts from process start).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int | str) -> float:
    """Return the user plus system CPU time a process has used, from /proc/<pid>/stat.

    :param pid: the process, or ``"self"``.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """Return the user + system CPU seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages as text."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> dict[str, Any]:
    """Describe this machine: CPU model and count, memory, kernel, Python, load average."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = meminfo_kib("MemTotal") / 1024 / 1024
    except (OSError, KeyError):
        mem_gib = 0.0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def print_machine() -> dict[str, Any]:
    """Print one line describing this machine (:func:`machine`) and return the description."""
    info = machine()
    print(
        f"Machine: {info['cpus']} x {info['cpu_model']}, {info['memory_gib']} GiB, Linux {info['kernel']}, "
        f"Python {info['python']}, open-file limit {info['fd_limit']}; load average {info['load_average']}",
        flush=True,
    )
    return info


def meminfo_kib(field: str) -> int:
    """Return a field of /proc/meminfo in KiB.

    :param field: e.g. ``MemTotal``.
    """
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0..100) by nearest rank.

    :param values: the sample, not empty.
    :param q: the percentile.
    """
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Return p50, p99 and max of a sample (zeros when it is empty).

    :param values: the sample.
    """
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"p50": statistics.median(values), "p99": percentile(values, 99), "max": max(values)}


def fmt_seconds(seconds: float) -> str:
    """Format a duration with a unit that keeps it short: µs, ms or s.

    :param seconds: the duration.
    """
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_ratio(value: float, base: float) -> str:
    """Format ``value / base`` as ``Nx`` (or ``-`` when the base is zero).

    :param value: the measured figure.
    :param base: the baseline figure.
    """
    if not base:
        return "-"
    ratio = value / base
    return f"{ratio:.3g}x"


def cell(value: float | None, spec: str) -> str:
    """Return ``value`` formatted with ``spec``, or ``-`` for a missing one."""
    return "-" if value is None else format(value, spec)


def iso_seconds(value: str | None) -> float:
    """Return the Unix time of an ISO 8601 timestamp from Airflow's REST API (0 for none).

    :param value: e.g. ``2026-12-05T01:02:03.456Z``.
    """
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else 0.0


def crossing(samples: Sequence[Any], reached: Callable[[Any], Any]) -> tuple[int, float] | None:
    """Return the index of the first sample for which ``reached`` holds, and the instant midway since the one before.

    :param samples: readings in time order, each with its Unix time in ``at``.
    :param reached: whether a reading shows what is looked for.
    """
    for index, sample in enumerate(samples):
        if reached(sample):
            before = samples[index - 1].at if index else sample.at
            return index, (before + sample.at) / 2
    return None


def log_result(result: dict[str, Any]) -> None:
    """Print one measurement's figures as a JSON line on stderr, as it comes (without its log's tail).

    :param result: the figures.
    """
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}), file=sys.stderr, flush=True)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> None:
    """Print a GitHub-flavoured Markdown table, so the output pastes into a README as it is.

    :param title: printed above the table.
    :param header: column titles.
    :param rows: cells, already formatted.
    :param notes: lines printed under the table.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n### {title}\n", flush=True)
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    for note in notes:
        print(f"\n{note}")
    print(flush=True)


class RawPoster:
    """Send requests over bare asyncio streams: HTTP/1.1 keep-alive, O(1) work per request.

    httpcore's pool rescans every connection on each request and response
    (quadratic in the number of open connections: encode/httpx#3215,
    encode/httpcore#1035), so with thousands of connections a single
    ``httpx.AsyncClient`` measures itself. This client measures the server, and
    sets up benchmarks (starting thousands of calls) cheaply.

    :param host: server address.
    :param port: server port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.name = "raw"
        self._host = host
        self._port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body on an idle or new connection and return the JSON reply.

        :param path: ``start/v4/`` or ``check/v4/``.
        :param body: the request body.
        :raises RuntimeError: on a status other than 200.
        """
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self._host, self._port)
        reader, writer = conn
        try:
            data = json.dumps(body).encode()
            writer.write(
                b"POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (path.encode(), self._host.encode(), len(data))
                + data
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            if status_line.split()[1] != "200":
                raise RuntimeError(f"HTTP error: {status_line}")
            headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
            length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
            reply: dict[str, Any] = json.loads(await reader.readexactly(length))
        except BaseException:
            writer.close()
            raise
        self._idle.append(conn)
        return reply

    async def aclose(self) -> None:
        """Close every idle connection."""
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def start_sleep_calls(host: str, port: int, untils: Sequence[float], concurrency: int = 64) -> list[str]:
    """Start one ``sleep`` call per entry of ``untils`` (``startOnly``) and return their call ids.

    :param host: server address.
    :param port: server port.
    :param untils: for each call, the Unix time at which it finishes.
    :param concurrency: Starts in flight at once.
    """
    poster = RawPoster(host, port)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(until: float) -> str:
        async with semaphore:
            reply = await poster.post(
                "start/v4/",
                {"apiKey": "bench", "modelKey": "sleep", "startOnly": True, "modelInputs": {"until": until}},
            )
        call_id = reply.get("callID")
        if not isinstance(call_id, str) or not call_id.startswith("call_"):
            raise RuntimeError(f"Start failed: {reply}")
        return call_id

    try:
        return await asyncio.gather(*(one(until) for until in untils))
    finally:
        await poster.aclose()


def _ephemeral_ports() -> tuple[int, int]:
    # The range the kernel picks outgoing connections' local ports from (Linux's default otherwise).
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range.

    Not one the kernel would hand out: a port from its ephemeral range can be taken, between this
    call and the server's bind, by any outgoing connection of any process (the suite's shards open
    thousands), and the server then fails with "address already in use".
    """
    low, high = _ephemeral_ports()
    candidates = [port for port in range(10_000, 30_000) if not low <= port <= high]
    # SystemRandom: a test that seeds the random module (Hypothesis does) must not make every shard
    # try the same ports in the same order.
    for port in random.SystemRandom().sample(candidates, min(len(candidates), 200)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # listened on, or lingering after a close: another one
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded machine: any free port
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


# ---------------------------------------------------------------------------------------------------------
# Child processes: the provider of another revision, their environment, their logs, their answers.


def provider_at(ref: str, into: Path) -> Path:
    """Extract the provider's package as it was at git revision ``ref``; return the directory to import it from.

    :param ref: a git revision of this repository.
    :param into: an empty directory.
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "airflow_provider_banana"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def provider_paths(kind: str, into: Path) -> list[str]:
    """Return a child's import path for a ``banana`` or ``banana@REF`` kind: the provider to measure comes first.

    :param kind: ``banana`` (this checkout) or ``banana@REF`` (the provider at git revision REF,
        extracted by :func:`provider_at`, ahead of the checkout).
    :param into: an empty directory for REF's provider.
    """
    return [str(provider_at(kind.split("@", 1)[1], into)), str(ROOT)] if "@" in kind else [str(ROOT)]


def imported_from(directory: Path | str, module_file: str | None) -> bool:
    """Return whether a child imported the provider from ``directory``.

    :param directory: where the provider should come from.
    :param module_file: ``airflow_provider_banana.__file__`` as the child reported it, if it did.
    """
    return module_file is not None and Path(directory).resolve() in Path(module_file).resolve().parents


def child_env(
    airflow_home: Path, paths: Sequence[str], conn: Mapping[str, Any] | None = None, **extra: str
) -> dict[str, str]:
    """Return this process's environment plus what a child that imports Airflow (but runs no components) needs.

    :param airflow_home: a throwaway AIRFLOW_HOME, so that the child touches no real one.
    :param paths: the child's ``PYTHONPATH``, first first.
    :param conn: the ``banana_default`` connection, if the child uses one.
    :param extra: further variables, set last.
    """
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": os.pathsep.join(paths),
    }
    if conn is not None:
        env["AIRFLOW_CONN_BANANA_DEFAULT"] = json.dumps(conn)
    env.update(extra)
    return env


def run_logged(argv: Sequence[str], log_path: Path, *, env: Mapping[str, str], cwd: Path, timeout: float) -> int:
    """Run a command to its end, its output going to ``log_path``; return its exit status.

    :param argv: the command.
    :param log_path: the file its stdout and stderr go to.
    :param env: its environment.
    :param cwd: its working directory.
    :param timeout: seconds it may take.
    """
    with open(log_path, "wb") as log_file:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        ).returncode


def start_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    stdin: int | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a command, its output going to ``log_path`` (a file: nobody reads a pipe meanwhile).

    :param argv: the command.
    :param log_path: the file its stdout and stderr go to.
    :param env: its environment.
    :param cwd: its working directory.
    :param stdin: ``subprocess.PIPE``, ``subprocess.DEVNULL`` or None (this process's).
    :param pass_fds: file descriptors it inherits.
    """
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd, pass_fds=pass_fds
        )


def start_answering(
    module: str,
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    stdin: int | None = None,
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start ``python -m MODULE --child --answer-fd FD ARGS`` and return it with the read end of its answers.

    Airflow's logging writes to stdout, so the child answers on a pipe of its own.

    :param module: the benchmark module.
    :param args: further arguments.
    :param log_path: the file its stdout and stderr go to.
    :param env: its environment.
    :param cwd: its working directory; not the checkout when it measures ``banana@REF``: ``python -m``
        puts the working directory first on sys.path, ahead of PYTHONPATH, and REF's child would
        then import today's code.
    :param stdin: as for :func:`start_logged`.
    """
    answer_read, answer_write = os.pipe()
    try:
        child = start_logged(
            [sys.executable, "-m", module, "--child", "--answer-fd", str(answer_write), *args],
            log_path,
            env=env,
            cwd=cwd,
            stdin=stdin,
            pass_fds=(answer_write,),
        )
    finally:
        os.close(answer_write)
    return child, os.fdopen(answer_read, "rb")


def sample_until_exit(
    child: subprocess.Popen[bytes], take: Callable[[], T | None], interval: float, limit: float
) -> tuple[list[T], bool]:
    """Call ``take`` every ``interval`` seconds until ``child`` exits, and keep what it returns.

    :param child: the process watched; killed after ``limit`` seconds, or if this is interrupted.
    :param take: reads one sample, or returns None to skip this one.
    :param interval: seconds between two samples.
    :param limit: seconds after which the child is killed.
    :return: the samples, and whether the child was killed.
    """
    deadline = time.monotonic() + limit
    samples: list[T] = []
    next_at = time.monotonic()
    try:
        while child.poll() is None:
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                return samples, True
            sample = take()
            if sample is not None:
                samples.append(sample)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        if child.poll() is None:  # interrupted: leave no child behind
            child.kill()
            child.wait()
    return samples, False


@contextmanager
def watchdog(child: subprocess.Popen[bytes], limit: float) -> Iterator[None]:
    """Kill ``child`` if it still runs ``limit`` seconds from now, unless the block has ended by then.

    :param child: the process.
    :param limit: seconds.
    """
    timer = threading.Timer(limit, child.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# ---------------------------------------------------------------------------------------------------------
# A DAG file that runs itself with dag.test() in a child process, on a copy of a migrated home.

#: Appended to such a DAG file's source: ``run_dag_test(dag, task_id)`` runs the DAG with
#: ``dag.test()`` and returns what the parent reads (the run's and each task's state, the measured
#: task's seconds, where the provider was imported from). Its imports run with the DAG file, before
#: anything the file measures in ``__main__``.
DAG_TEST_SOURCE = """

import airflow_provider_banana
from airflow.utils.session import create_session


def run_dag_test(dag, task_id):
    run = dag.test()
    with create_session() as session:
        instances = {ti.task_id: ti for ti in run.get_task_instances(session=session)}
        measured = instances.get(task_id)
        return {
            "state": str(run.state),
            "task_states": {name: str(ti.state) for name, ti in instances.items()},
            "task_seconds": (
                (measured.end_date - measured.start_date).total_seconds()
                if measured is not None and measured.start_date and measured.end_date
                else None
            ),
            "provider_file": airflow_provider_banana.__file__,
        }
"""


def dag_test_file(tmp: Path, database: Path, name: str, source: str, config: Mapping[str, Any]) -> Path:
    """Make a home in ``tmp`` from a copy of ``database`` with one DAG file and its settings; return the file.

    :param tmp: the measurement's scratch directory; the home is its ``airflow-home``.
    :param database: a migrated metadata database (:func:`benchmarks.components.migrated_database`).
    :param name: the DAG file's name, without ``.py``.
    :param source: the DAG file's source; it reads its settings from the JSON file of its name.
    :param config: the settings.
    """
    home = tmp / "airflow-home"
    (home / "dags").mkdir(parents=True)
    shutil.copy(database, home / "airflow.db")
    dag_file = home / "dags" / f"{name}.py"
    dag_file.write_text(source)
    dag_file.with_suffix(".json").write_text(json.dumps(config))
    return dag_file


def start_dag_test(dag_file: Path, answer: Path, log_path: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Run a DAG file made by :func:`dag_test_file` as a script; it writes its answer to ``answer``.

    :param dag_file: the DAG file.
    :param answer: the JSON file the child writes (:func:`read_answer`).
    :param log_path: the file its output goes to.
    :param env: its environment.
    """
    # cwd is the home, not the checkout: nothing puts today's provider ahead of PYTHONPATH.
    home = dag_file.parents[1]
    return start_logged(
        [sys.executable, str(dag_file), str(answer)], log_path, env=env, cwd=home, stdin=subprocess.DEVNULL
    )


def read_answer(answer: Path) -> dict[str, Any]:
    """Return what a ``dag.test()`` child wrote, or an empty dict if it wrote nothing."""
    return json.loads(answer.read_text()) if answer.exists() else {}
