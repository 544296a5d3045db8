"""
Real Airflow on a throwaway home, for the benchmarks and the tests: its four components and their processes.

The api-server, scheduler, dag-processor and triggerer (:func:`started`), or one migrated
database for ``dag.test()`` children to copy (:func:`migrated_database`); the environment they
share (:func:`airflow_env`), their logs and REST API (:class:`AirflowComponents`), and the memory
and CPU of their process trees (:class:`ProcessSampler`). Used by the real-component benchmarks
and, through ``tests/components.py``, by the tests: it imports neither pytest nor the test
configuration, nor Airflow (everything Airflow runs in a subprocess).

Each component is a subprocess in a session of its own, writing its own log file, so the logs show
which process did what and what each said last when something goes wrong. They are started one
by one rather than under ``airflow standalone``, which merges their output into one stream.
Callers pick the api-server's port with :func:`benchmarks.harness.free_port`. A failure raises
:class:`ComponentError` (an ``AssertionError``, which pytest reports as a test failure) carrying
the end of every log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.harness import free_port, proc_status_kib, run_logged

T = TypeVar("T")

#: Seconds the components may take to serve the API and to parse the DAGs.
STARTUP_TIMEOUT = 180.0
#: Seconds a DAG run may take once triggered, unless told otherwise.
RUN_TIMEOUT = 240.0
#: Seconds a component may take to write an awaited line to a task or trigger log.
LOG_TIMEOUT = 30.0
TERMINAL_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
#: The simple auth manager's token endpoint: with all users admins, a GET hands out a token.
TOKEN_PATH = "auth/token"
# Our own api-server is on loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ComponentError(AssertionError):
    """A component exited, or something awaited did not happen in time; the text ends with the logs."""


def airflow_env(home: Path, api_port: int, banana_conn: str, **overrides: str) -> dict[str, str]:
    """Return the whole environment of the Airflow processes of one home.

    :param home: the AIRFLOW_HOME, holding the dags folder and the SQLite database.
    :param api_port: the api-server's port; it also serves the Execution API to task workers.
    :param banana_conn: the ``banana_default`` connection, as an ``AIRFLOW_CONN_*`` value.
    :param overrides: further variables, e.g. ``AIRFLOW__CORE__PARALLELISM``, set last.
    """
    # This process carries conftest's session home in AIRFLOW_* variables: none may leak in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Airflow 3 allows LocalExecutor on SQLite (SequentialExecutor is gone).
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor forks `parallelism` workers up front, 32 by default; the tests run one
            # task at a time and each idle worker costs memory (the benchmark sets its own).
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            # Every user is an admin: a REST token comes from GET auth/token, with no password file.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            # Task workers find the Execution API here; the default is localhost:8080, not ours.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            # The scheduler signs task tokens that the api-server verifies: all must share one
            # secret, not each rely on whichever airflow.cfg got written first. 64 bytes or more,
            # or PyJWT warns on every token it signs or checks.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            # One file, parsed once: re-parsing it every 30 s would only compete for the CPUs.
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            # A task's supervisor can miss its child's exit and sleep in select() for this long
            # (default 5 s) before reporting it: a slower run, and a stale "success" event that
            # arrives after the trigger has already resumed the task (apache/airflow#72716).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW_CONN_BANANA_DEFAULT": banana_conn,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def log_records(text: str) -> list[dict[str, Any]]:
    """Return the JSON records of a task or trigger log's complete lines (a last one may be half written)."""
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class AirflowComponents:
    """Airflow processes sharing one home, each writing its own log file.

    :param home: the AIRFLOW_HOME.
    :param env: the environment every Airflow process gets.
    :param api_url: the api-server's base URL, with a trailing slash.
    """

    home: Path
    env: dict[str, str]
    api_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: The bearer token of the REST calls, from the all-admins token endpoint on first use.
    token: str | None = None
    #: Every process ever seen in the components' trees, for the sweep at the end.
    seen: set[psutil.Process] = field(default_factory=set)
    stopped: bool = False

    @property
    def log_dir(self) -> Path:
        """The folder holding one ``NAME.log`` per component."""
        return self.home / "component-logs"

    def log_path(self, name: str) -> Path:
        """Return the log file of component ``name``."""
        return self.log_dir / f"{name}.log"

    def run(self, *args: str, timeout: float = 120.0) -> None:
        """Run one ``airflow`` CLI command to completion, its output going to a log file.

        :param args: the arguments after ``airflow``.
        :param timeout: seconds it may take.
        :raises AssertionError: with the end of its output, if it fails.
        """
        log_path = self.log_path("-".join(args))
        status = run_logged(
            [sys.executable, "-m", "airflow", *args], log_path, env=self.env, cwd=self.home, timeout=timeout
        )
        assert status == 0, f"airflow {' '.join(args)} failed:\n{tail(log_path)}"

    def start(self, name: str, *args: str) -> None:
        """Start ``airflow NAME ARGS`` in a session of its own, its output going to its log file.

        :param name: the component's command, e.g. ``scheduler``.
        :param args: further arguments.
        """
        # A file, not a pipe: nobody reads a pipe during the test, and a full one blocks the writer.
        with open(self.log_path(name), "ab") as log_file:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name, *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.home,
                # A process group of its own: one killpg reaches the component and its helpers.
                start_new_session=True,
            )

    def track(self) -> None:
        """Remember every process now in the components' trees.

        Task runners move into process groups of their own, so a signal to a component's group
        misses them, and a process whose parent died is no longer anyone's child: the sweep in
        :meth:`stop` signals everything remembered here as well.
        """
        for process in self.processes.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(process.pid)
                self.seen.update([root, *root.children(recursive=True)])

    def check_alive(self) -> None:
        """Fail at once, with the logs, if a component has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ComponentError(f"{name} exited with status {process.returncode}\n{self.logs_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        """Stop every component and everything it started: SIGTERM, then SIGKILL after ``grace``.

        Only the first call acts: a later one must not signal a process group id that may
        since have been reused.

        :param grace: seconds the processes get to exit after SIGTERM.
        :raises AssertionError: if a process survives SIGKILL.
        """
        if self.stopped:
            return
        self.stopped = True
        self.track()
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        for member in self.seen:
            _signal(member, signal.SIGTERM)
        _, alive = psutil.wait_procs(self.seen, timeout=grace)
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)
        for member in alive:
            _signal(member, signal.SIGKILL)
        _, survivors = psutil.wait_procs(alive, timeout=10)
        for process in self.processes.values():
            process.wait(timeout=10)  # reap our own children: no zombies either
        assert not survivors, f"processes survived SIGKILL: {survivors}"

    def logs_tail(self, lines: int = 30) -> str:
        """Return the end of every component log and of every task and trigger log."""
        paths = sorted(self.log_dir.glob("*.log")) + sorted((self.home / "logs").glob("dag_id=*/**/*.log"))
        return "\n".join(f"===== {path.relative_to(self.home)}\n{tail(path, lines)}" for path in paths)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Call the api-server and return the decoded JSON reply.

        :param method: the HTTP method.
        :param path: the path after the base URL, e.g. ``api/v2/version``.
        :param body: the JSON body, if any.
        :param timeout: seconds to wait for the reply.
        :raises OSError: if the call fails or the reply is an HTTP error.
        """
        headers = {"Content-Type": "application/json"}
        if path != TOKEN_PATH and not path.startswith("execution/"):
            # Airflow 3.1 wants a token even when every user is an admin; 3.3 takes one too.
            if self.token is None:
                self.token = self.api("GET", TOKEN_PATH, timeout=timeout)["access_token"]
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.api_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=headers,
        )
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
        """Call ``probe`` until it returns something truthy; fail with the logs on timeout.

        :param what: what is awaited, for the failure message.
        :param probe: returns the awaited thing, or None for "not yet"; an ``OSError`` (e.g. the
            api-server not listening yet, or a 404) also means "not yet".
        :param timeout: seconds to wait at most.
        :param interval: seconds between calls.
        :return: the first truthy result.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            self.track()
            try:
                result = probe()
            except OSError as e:
                result = None
                last: object = e
            else:
                last = result
            if result:
                return result
            if time.monotonic() >= deadline:
                raise ComponentError(f"{what}: not within {timeout:.0f} s; last: {last!r}\n{self.logs_tail()}")
            time.sleep(interval)

    def wait_for_log(self, path: Path, text: str, timeout: float = LOG_TIMEOUT) -> list[dict[str, Any]]:
        """Wait until a complete line of a task or trigger log contains ``text``; return its JSON records.

        The components write these logs line by line while they run, so the test reads them
        without stopping anything.

        :param path: the log file.
        :param text: what a line must contain.
        :param timeout: seconds to wait at most.
        """

        def probe() -> list[dict[str, Any]] | None:
            text_now = path.read_bytes().decode(errors="replace")  # FileNotFoundError: "not yet"
            return log_records(text_now) if text in text_now[: text_now.rfind("\n") + 1] else None

        return self.wait_for(f"{text!r} in {path.name}", probe, timeout)

    def trigger(self, dag_id: str) -> tuple[str, str]:
        """Unpause and trigger a DAG; return the run id and the run's REST path."""
        dag_path = f"api/v2/dags/{dag_id}"
        self.api("PATCH", dag_path, {"is_paused": False})
        run_id: str = self.api("POST", f"{dag_path}/dagRuns", {"logical_date": None})["dag_run_id"]
        return run_id, f"{dag_path}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def wait_for_run_end(self, run_path: str, timeout: float = RUN_TIMEOUT) -> str:
        """Wait until a DAG run succeeded or failed; return which."""

        def finished_state() -> str | None:
            state: str = self.api("GET", run_path)["state"]
            return state if state in ("success", "failed") else None

        return self.wait_for(f"{run_path} finished", finished_state, timeout)

    def wait_for_task_state(self, ti_path: str, state: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """Wait until a task instance is in ``state``; fail at once if it ends in another one.

        :param ti_path: the task instance's REST path.
        :param state: the awaited state, e.g. ``deferred``.
        :param timeout: seconds to wait at most.
        :return: the task instance.
        """

        def probe() -> dict[str, Any] | None:
            ti: dict[str, Any] = self.api("GET", ti_path)
            if ti["state"] != state and ti["state"] in TERMINAL_TASK_STATES:
                raise ComponentError(f"{ti_path} ended {ti['state']} while waiting for {state}\n{self.logs_tail()}")
            return ti if ti["state"] == state else None

        return self.wait_for(f"{ti_path} {state}", probe, timeout)

    def triggerer_job_id(self) -> int:
        """Return the id of the one triggerer job, which names the trigger log files."""
        triggerers = self.api("GET", "api/v2/jobs?job_type=TriggererJob")["jobs"]
        assert len(triggerers) == 1
        job_id: int = triggerers[0]["id"]
        return job_id

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> Path:
        """Return the log file of a task's first try."""
        return self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}" / "attempt=1.log"

    def trigger_log(self, dag_id: str, run_id: str, task_id: str) -> Path:
        """Return the log file of the trigger a task's first try deferred to."""
        # The triggerer writes it beside the task's log, named for the triggerer's job id.
        return self.task_log(dag_id, run_id, task_id).with_name(f"attempt=1.log.trigger.{self.triggerer_job_id()}.log")


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _signal(process: psutil.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(signum)  # psutil refuses if the pid now names another process


def processes_using(home: Path) -> list[psutil.Process]:
    """Return the running processes whose environment names ``home`` as AIRFLOW_HOME, or that run in it."""
    found = []
    for process in psutil.process_iter():
        try:
            # A long setproctitle() title overwrites the memory /proc/PID/environ reads, so a
            # LocalExecutor worker or task runner shows no AIRFLOW_HOME; its working directory
            # is still the home every component starts in.
            if process.environ().get("AIRFLOW_HOME") == str(home) or process.cwd() == str(home):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def wait_until_served(stack: AirflowComponents, dag_ids: list[str]) -> None:
    """Wait until every DAG is parsed and served by the REST API, and the Execution API answers.

    :param stack: the running components.
    :param dag_ids: the DAGs the test will run.
    """
    for dag_id in dag_ids:
        stack.wait_for(
            f"{dag_id} parsed and served by the REST API",
            functools.partial(stack.api, "GET", f"api/v2/dags/{dag_id}"),
            STARTUP_TIMEOUT,
        )
    # The Execution API builds its versioned routes on its first request, which holds the
    # api-server's event loop for 5-15 s here; a task's first call would time out (5 s) and
    # retry behind it. (The all-admins token this request gets makes the api-server log one
    # harmless "JWT reissue middleware failed" warning.)
    assert stack.api("GET", "execution/health", timeout=120)["status"] == "healthy"


def stop_and_reap(stack: AirflowComponents) -> list[psutil.Process]:
    """Stop every component, then SIGKILL whatever escaped their process trees; return those.

    :param stack: the components to stop.
    """
    try:
        stack.stop()
    finally:
        # Whatever escaped the process trees still carries our AIRFLOW_HOME in its environment.
        stragglers = processes_using(stack.home)
        for process in stragglers:
            _signal(process, signal.SIGKILL)
    return stragglers


@contextlib.contextmanager
def started(home: Path, env: Mapping[str, str], api_url: str, dag_ids: list[str]) -> Iterator[AirflowComponents]:
    """Migrate the home's database, start the four components, wait until they serve ``dag_ids``; stop all after.

    :param home: the AIRFLOW_HOME, whose ``dags`` folder holds the DAG files.
    :param env: the environment of every component (:func:`airflow_env`).
    :param api_url: the api-server's base URL, with a trailing slash.
    :param dag_ids: DAGs that must be parsed and served before the block runs.
    :raises ComponentError: if something does not start, or a process outlives the stop.
    """
    stack = AirflowComponents(home, dict(env), api_url)
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    # The components wait for a migrated database but never create one.
    stack.run("db", "migrate", timeout=600)  # PostgreSQL on a loaded machine: minutes
    try:
        stack.start("api-server")
        # Task and trigger logs are read from disk here: the log servers would only take two ports.
        stack.start("scheduler", "--skip-serve-logs")
        stack.start("dag-processor")
        stack.start("triggerer", "--skip-serve-logs")
        wait_until_served(stack, dag_ids)
        yield stack
    finally:
        stragglers = stop_and_reap(stack)
        if stragglers:
            raise ComponentError(f"left running after stop: {stragglers}")


@contextlib.contextmanager
def started_with_server(
    dag_file: str, dag_source: str, dag_ids: Sequence[str], *, replicas: int, prefix: str, **overrides: str
) -> Iterator[tuple[AirflowComponents, DevServer]]:
    """Start the local Banana server and the four components on a fresh home with one DAG file; stop all after.

    The server has Banana's own holds (a Start held 60 s, a Check 50 s); the ``banana_default``
    connection points at it.

    :param dag_file: the DAG file's name in the home's ``dags`` folder.
    :param dag_source: its source.
    :param dag_ids: the DAGs that must be parsed and served before the block runs.
    :param replicas: the server's replicas (it starts their workers on demand): enough that no
        call waits in its queue.
    :param prefix: the prefix of the temporary directory holding the home.
    :param overrides: further variables of the components' environment (:func:`airflow_env`).
    """
    api_key = "bench-" + str(time.time_ns())
    with (
        DevServer(start_hold=60, check_hold=50, replicas=replicas, api_key=api_key, log_level="warning") as server,
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
    ):
        home = Path(tmp) / "airflow-home"
        (home / "dags").mkdir(parents=True)
        (home / "dags" / dag_file).write_text(dag_source)
        conn = json.dumps({"conn_type": "banana", "host": server.url, "password": api_key})
        api_port = free_port()
        env = airflow_env(home, api_port, conn, **overrides)
        with started(home, env, f"http://127.0.0.1:{api_port}/", list(dag_ids)) as stack:
            yield stack, server


def migrated_database(tmp: Path) -> Path:
    """Make one migrated SQLite metadata database, for every ``dag.test()`` child of a benchmark to copy.

    :param tmp: a scratch directory.
    :return: the database file.
    :raises RuntimeError: with the end of its output, if ``airflow db migrate`` fails.
    """
    home = tmp / "template-home"
    (home / "dags").mkdir(parents=True)
    env = airflow_env(home, free_port(), "{}")
    log = tmp / "db-migrate.log"
    if run_logged([sys.executable, "-m", "airflow", "db", "migrate"], log, env=env, cwd=home, timeout=600) != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{tail(log)}")
    return home / "airflow.db"


@dataclass
class ProcessSampler:
    """Sample the PSS and CPU time of the components' process trees in a thread.

    :param stack: the running components.
    :param interval: seconds between two samples.
    """

    stack: AirflowComponents
    interval: float = 0.25
    #: Per group (``worker``: the scheduler's tree; ``triggerer``), the highest PSS sum in KiB.
    peak_pss: dict[str, int] = field(default_factory=dict)
    #: The highest peak RSS (``VmHWM``) of any one task process, in KiB.
    largest_task_kib: int = 0
    #: Per process, the last CPU seconds seen (its own, not its reaped children's).
    cpu: dict[tuple[int, float], float] = field(default_factory=dict)
    #: Per process, its CPU seconds when the run began (absent: it began later).
    baseline: dict[tuple[int, float], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[str, int]:
        """Take one sample; return each group's PSS sum in KiB."""
        sums: dict[str, int] = {}
        for name, process in self.stack.processes.items():
            group = {"scheduler": "worker", "triggerer": "triggerer"}.get(name, "other")
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(process.pid)
                for member in [root, *root.children(recursive=True)]:
                    # The process ended meanwhile (a zombie's status has no VmHWM: KeyError).
                    with contextlib.suppress(psutil.Error, OSError, KeyError):
                        sums[group] = sums.get(group, 0) + _pss_kib(member.pid)
                        times = member.cpu_times()
                        self.cpu[(member.pid, member.create_time())] = times.user + times.system
                        # A task process's title is "airflow worker -- <ti id>"; its supervisor's,
                        # a LocalExecutor worker, has "LocalExecutor: " before the id.
                        title = " ".join(member.cmdline())
                        if "airflow worker -- " in title and "LocalExecutor" not in title:
                            self.largest_task_kib = max(self.largest_task_kib, proc_status_kib(member.pid, "VmHWM"))
        return sums

    def cpu_seconds(self) -> float:
        """Return the CPU seconds every process seen used since the baseline."""
        return sum(seconds - self.baseline.get(key, 0.0) for key, seconds in self.cpu.items())

    def __enter__(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._record(self.sample())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record(self.sample())

    def _record(self, sums: dict[str, int]) -> None:
        for group, kib in sums.items():
            self.peak_pss[group] = max(self.peak_pss.get(group, 0), kib)


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


# -- a throwaway PostgreSQL cluster --------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """Return the newest Debian PostgreSQL ``bin`` folder holding ``initdb`` and ``pg_ctl``, or None."""
    found = [
        d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").exists() and (d / "pg_ctl").exists()
    ]
    # The folder names are major versions: sort 9 before 15 as numbers, not as text.
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of our own on 127.0.0.1, with one database its trusted user owns.

    :param bin_dir: the folder of PostgreSQL's programs.
    :param data: the cluster's data folder.
    :param port: the TCP port it listens on (127.0.0.1 only).
    """

    bin_dir: Path
    data: Path
    port: int
    user: str = "airflow"
    dbname: str = "airflow"

    @property
    def sqlalchemy_url(self) -> str:
        """The URL for ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (psycopg2; Airflow derives its asyncpg one)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def connect(self) -> Any:
        """Return a new autocommit psycopg2 connection to the database (psycopg2 is imported here, when needed)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, dbname=self.dbname, user=self.user)
        conn.autocommit = True
        return conn


@contextlib.contextmanager
def postgres_cluster(workdir: Path, bin_dir: Path | None = None) -> Iterator[PostgresCluster]:
    """Create and start a throwaway PostgreSQL cluster in ``workdir/pg``; stop it after (the files stay).

    As root, the cluster belongs to the ``postgres`` user (made if missing): PostgreSQL refuses to
    run as root. Trust authentication, on 127.0.0.1 only, as ``scripts/test-production.sh`` does.

    :param workdir: a scratch directory.
    :param bin_dir: PostgreSQL's programs; by default the newest of Debian's (:func:`postgres_bin`).
    :raises RuntimeError: if no PostgreSQL is installed, or the cluster does not start.
    """
    bin_dir = bin_dir or postgres_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql/*/bin: apt-get install postgresql")
    pg_dir = workdir / "pg"
    pg_dir.mkdir(parents=True)
    as_pg: list[str] = []
    if os.geteuid() == 0:
        if subprocess.run(["id", "postgres"], capture_output=True, check=False).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        os.chmod(workdir, 0o755)
        subprocess.run(["chown", "postgres", str(pg_dir)], check=True)
        as_pg = ["runuser", "-u", "postgres", "--"]
    cluster = PostgresCluster(bin_dir, pg_dir / "data", free_port())

    def pg(program: str, *args: str, timeout: float = 120.0) -> None:
        log = workdir / f"pg-{program}.log"
        if run_logged([*as_pg, str(bin_dir / program), *args], log, env=os.environ, cwd=workdir, timeout=timeout) != 0:
            raise RuntimeError(f"{program} failed:\n{tail(log)}\n{tail(pg_dir / 'postgres.log')}")

    pg("initdb", "-D", str(cluster.data), "-U", cluster.user, "--auth=trust", "-E", "UTF8", "--no-locale")
    opts = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -c unix_socket_directories={pg_dir}"
    try:
        pg("pg_ctl", "-D", str(cluster.data), "-l", str(pg_dir / "postgres.log"), "-w", "-t", "60", "start", "-o", opts)
        pg("createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user, cluster.dbname)
        yield cluster
    finally:
        try:
            pg("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "-t", "60", "stop")
        except RuntimeError:
            pg("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "-t", "30", "stop")
