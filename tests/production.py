"""
The production topology, end to end: PostgreSQL, Redis, CeleryExecutor, two triggerers, kills.

Run by ``scripts/test-production.sh``, which installs and starts PostgreSQL and Redis on loopback
and passes their ports here; this driver starts the local Banana server and the Airflow
components (api-server, scheduler, dag-processor, two triggerers, one Celery worker), runs the
scenarios one after the other and prints a markdown table of what it measured:

1. every DAG in ``example_dags/`` runs to success, with the exact number of Starts;
2. ``MAPPED_CALLS`` mapped deferrable calls; once all are deferred the triggerer holding most of
   their triggers is killed (SIGKILL); the other must take them over, every call succeeds, and the
   server took exactly one Start per call;
3. a batch of ``BATCH_INPUTS`` inputs in one Celery worker; the worker is killed mid-batch, a new
   one is started, the task's retry must reattach to the calls in flight ("Resuming Banana batch
   from an earlier try"), one Start per input in all, outputs in input order. The kill lands at
   an instant where the plan the task persisted accounts for every Start the server took (the
   worker is frozen, checked against the database and the server, then killed or thawed and
   probed again): a Start answered but not yet persisted is paid twice by design (README,
   "Retried tasks never pay twice"), and ``BANANA_PRODUCTION_BATCH_KILL`` picks other instants;
4. the scheduler is killed twice during a run (deferred calls and a batch in a worker), a new one
   started each time; the run succeeds with one Start per call;
5. the API key (random, with characters every encoder escapes) is looked for in every log file,
   in a ``pg_dump`` of the Airflow database and in every Redis value (and in a ``redis-cli --rdb``
   dump); it must be in none, and each scan must have looked at something.

A "kill" is SIGKILL to every process of the component's tree, frozen first with SIGSTOP so that
none acts in between: a machine or container dying, not a shutdown. Not named ``test_*``: pytest
does not collect it. ``tests/components.py`` provides the components and the REST calls.

For a quicker try, ``BANANA_PRODUCTION_MAPPED`` and ``BANANA_PRODUCTION_BATCH`` lower the sizes
and ``BANANA_PRODUCTION_SCENARIOS`` (e.g. ``batch``) picks scenarios; the defaults are the test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg2
import redis

from airflow_provider_banana.devserver.testing import DevServer
from tests.components import (
    STARTUP_TIMEOUT,
    AirflowComponents,
    ComponentError,
    airflow_env,
    log_records,
    processes_using,
    stop_and_reap,
    wait_until_served,
)
from tests.leaks import key_forms

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]

#: Scenario sizes; the environment may lower them for a quick try (the defaults are the test).
MAPPED_CALLS = int(os.environ.get("BANANA_PRODUCTION_MAPPED", "200"))
BATCH_INPUTS = int(os.environ.get("BANANA_PRODUCTION_BATCH", "500"))
BATCH_SECONDS = 1.0
SCHEDULER_CALLS = 6
SCHEDULER_CALL_SECONDS = 20.0
CELERY_CONCURRENCY = 4
#: Which scenarios run (a debugging aid: the key scan always runs, and its checks that it saw
#: enough assume all of them ran).
SCENARIOS = os.environ.get("BANANA_PRODUCTION_SCENARIOS", "examples,mapped,batch,scheduler").split(",")
#: When to kill the batch's worker: "consistent" (the test: an instant where the persisted plan
#: accounts for every Start taken), "anywhere" (the first instant probed), or "mid-burst" (an
#: instant where the plan counts inputs of a burst of Starts as started before their Starts were
#: sent: shows what such a kill costs).
BATCH_KILL = os.environ.get("BANANA_PRODUCTION_BATCH_KILL", "consistent")

#: Settings that only make recovery faster than the defaults, so the test stays short. Each is
#: named in the report and in the README's "Tested on" section.
RECOVERY_SETTINGS = {
    # A dead worker's task is failed (then retried) 20 s after its last heartbeat, not 300 s.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    # A dead scheduler's queued tasks are adopted within ~35 s, not after 300 s.
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
    # A task the dead scheduler had marked queued but not yet sent to Celery (the Celery provider's
    # documented window between the two) is requeued after 60 s, not 600 s (checked every 10 s,
    # not 120 s).
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
}
#: [triggerer] triggerer_health_check_threshold is left at its default (30 s): the takeover time
#: measured is the one a deployment gets.
TRIGGERER_HEALTH_CHECK_THRESHOLD = 30.0

EXAMPLE_STARTS = {
    "example_banana_inference": 1,
    "example_banana_mapped": 3,
    "example_banana_sensor": 1,
    "example_banana_batch": 40,
    "example_banana_batch_files": 50,
    "example_banana_decorators": 6,  # one call, two mapped, a batch of three
}
#: Example DAGs scheduled on an Asset an example above produces: unpaused, never triggered by hand,
#: each must run by itself once its producer has succeeded.
EXAMPLE_ASSET_SCHEDULED = ("example_banana_batch_files_report",)
MAPPED_DAG = "production_mapped_deferrable"
BATCH_DAG = "production_batch_worker_kill"
SCHEDULER_DAG = "production_scheduler_kill"
PRODUCTION_DAGS = (MAPPED_DAG, BATCH_DAG, SCHEDULER_DAG)
RESUMED = re.compile(r"Resuming Banana batch from an earlier try: (?P<counts>[^;]*); reattaching to (?P<n>\d+) running")


# -- the key -------------------------------------------------------------------------------------------


def make_key() -> str:
    """A fresh key with characters that JSON, URL and HTML encoders escape (``"`` among them)."""
    return f'sk-prod/{secrets.token_hex(12)}+Q="é&<{secrets.token_hex(12)}>'


# -- the database -------------------------------------------------------------------------------------


@dataclass
class Database:
    """The Airflow metadata database, read directly (the REST API has no trigger table)."""

    port: int
    name: str = "airflow"
    user: str = "airflow"

    @functools.cached_property
    def _conn(self) -> Any:
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, dbname=self.name, user=self.user)
        conn.autocommit = True
        return conn

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def states(self, dag_id: str, run_id: str, task_id: str) -> dict[str, int]:
        """Return how many instances of a (mapped) task are in each state."""
        rows = self.rows(
            "SELECT coalesce(state, 'none'), count(*) FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s AND task_id = %s GROUP BY 1",
            dag_id,
            run_id,
            task_id,
        )
        return dict(rows)  # type: ignore[arg-type]

    def triggerer_jobs(self) -> list[int]:
        return [row[0] for row in self.rows("SELECT id FROM job WHERE job_type = 'TriggererJob' ORDER BY id")]

    def task_state(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        rows = self.rows(
            "SELECT value FROM task_state_store WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = %s",
            dag_id,
            run_id,
            task_id,
            key,
        )
        if not rows:
            return None
        value = json.loads(rows[0][0])
        return json.loads(value) if isinstance(value, str) else value

    def close(self) -> None:
        if "_conn" in self.__dict__:
            self._conn.close()


# -- the components ------------------------------------------------------------------------------------


@dataclass
class Topology:
    """The Airflow components, the database and the local Banana server of one run."""

    stack: AirflowComponents
    db: Database
    server: DevServer
    #: Triggerer label (``triggerer-1``) to its TriggererJob id.
    triggerer_jobs: dict[str, int] = field(default_factory=dict)
    started: int = 0

    def start(self, label: str, *command: str) -> None:
        """Start ``airflow COMMAND`` as component ``label``, in a session of its own, logging to ``label.log``."""
        stack = self.stack
        with open(stack.log_path(label), "ab") as log_file:
            stack.processes[label] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *command],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=stack.env,
                cwd=stack.home,
                start_new_session=True,
            )
        self.started += 1

    def start_triggerer(self, label: str) -> int:
        """Start a triggerer and return its job id (the one new TriggererJob row)."""
        before = set(self.db.triggerer_jobs())
        self.start(label, "triggerer", "--skip-serve-logs")
        job_id: int = self.stack.wait_for(
            f"{label}'s TriggererJob",
            lambda: next(iter(set(self.db.triggerer_jobs()) - before), None),
            STARTUP_TIMEOUT,
        )
        self.triggerer_jobs[label] = job_id
        return job_id

    def start_worker(self, label: str, wait: bool = True) -> None:
        """Start a Celery worker and (unless told not to) wait until it consumes."""
        self.start(
            label,
            "celery",
            "worker",
            "--concurrency",
            str(CELERY_CONCURRENCY),
            "--celery-hostname",
            f"{label}@%h",
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
        )
        if wait:
            self.wait_for_worker(label)

    def wait_for_worker(self, label: str) -> None:
        path = self.stack.log_path(label)
        self.stack.wait_for(f"{label} ready", lambda: b" ready." in path.read_bytes(), STARTUP_TIMEOUT)

    def kill(self, label: str) -> float:
        """SIGKILL every process of a component's tree (frozen first); return ``time.time()`` of the kill."""
        process = self.stack.processes.pop(label)
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.suspend()
        # Frozen, nothing forks any more: the tree is complete now.
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = list({*tree, *root.children(recursive=True)})
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        killed_at = time.time()
        _, alive = psutil.wait_procs(tree, timeout=15)
        process.wait(timeout=15)
        if alive:
            raise ComponentError(f"{label}: processes survived SIGKILL: {alive}")
        return killed_at

    def tree(self, label: str) -> list[psutil.Process]:
        root = psutil.Process(self.stack.processes[label].pid)
        return [root, *root.children(recursive=True)]

    def starts(self) -> int:
        return int(self.server.stats()["starts_taken"])


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, topo: Topology, interval: float = 0.5) -> T:
    """Like :meth:`AirflowComponents.wait_for`, for probes that only read the database."""
    return topo.stack.wait_for(what, probe, timeout, interval)


@contextlib.contextmanager
def topology(args: argparse.Namespace, key: str) -> Iterator[Topology]:
    """Start the devserver and every component on a fresh home; stop all of them after, whatever happens."""
    work = Path(args.workdir)
    home = work / "airflow-home"
    (home / "dags").mkdir(parents=True)
    for source in [
        *sorted((ROOT / "example_dags").glob("*.py")),
        *sorted((ROOT / "tests" / "dags_production").glob("*.py")),
    ]:
        shutil.copy(source, home / "dags")
    server = DevServer(
        start_hold=60,
        check_hold=50,
        result_ttl=3600,
        replicas=4096,
        api_key=key,
        startup_timeout=60,
    )
    db = Database(args.pg_port)
    server.start()
    try:
        conn = json.dumps({"conn_type": "banana", "host": server.url, "password": key})
        pg = f"airflow@127.0.0.1:{args.pg_port}/airflow"
        env = airflow_env(
            home,
            args.api_port,
            conn,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://{pg}",
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{args.redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql+psycopg2://{pg}",
            AIRFLOW__CELERY__WORKER_CONCURRENCY=str(CELERY_CONCURRENCY),
            # Tasks queued beyond what the worker runs wait in Redis; few enough that none waits
            # anywhere near the task_queued_timeout above.
            AIRFLOW__CORE__PARALLELISM="16",
            AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="256",
            # Two api-server workers: every task process talks to the Execution API.
            AIRFLOW__API__WORKERS="2",
            AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=str(TRIGGERER_HEALTH_CHECK_THRESHOLD),
            **RECOVERY_SETTINGS,
        )
        stack = AirflowComponents(home, env, f"http://127.0.0.1:{args.api_port}/")
        stack.log_dir.mkdir(parents=True, exist_ok=True)
        topo = Topology(stack, db, server)
        try:
            stack.run("db", "migrate", timeout=600)
            topo.start("api-server", "api-server")
            topo.start("scheduler", "scheduler", "--skip-serve-logs")
            topo.start("dag-processor", "dag-processor")
            topo.start_worker("celery-worker-1", wait=False)
            # One after the other, so that each job id is known to belong to its process.
            topo.start_triggerer("triggerer-1")
            topo.start_triggerer("triggerer-2")
            topo.wait_for_worker("celery-worker-1")
            wait_until_served(stack, [*EXAMPLE_STARTS, *EXAMPLE_ASSET_SCHEDULED, *PRODUCTION_DAGS])
            yield topo
        finally:
            stragglers = stop_and_reap(stack)
            if stragglers:
                print(f"killed stragglers after the stop: {stragglers}", file=sys.stderr)
    finally:
        db.close()
        (work / "devserver.log").write_text(server.log_text())  # scanned for the key with the rest
        server.close()


# -- REST helpers ----------------------------------------------------------------------------------------


def trigger(stack: AirflowComponents, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, str]:
    """Unpause and trigger a DAG with ``conf``; return the run id and the run's REST path."""
    dag_path = f"api/v2/dags/{dag_id}"
    stack.api("PATCH", dag_path, {"is_paused": False})
    run_id: str = stack.api("POST", f"{dag_path}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]
    return run_id, f"{dag_path}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def task_states(topo: Topology, dag_id: str, run_id: str) -> dict[str, int]:
    """Return how many task instances of a run are in each task and state (the REST API pages at 100)."""
    rows = topo.db.rows(
        "SELECT task_id || '=' || coalesce(state, 'none'), count(*) FROM task_instance"
        " WHERE dag_id = %s AND run_id = %s GROUP BY 1",
        dag_id,
        run_id,
    )
    return dict(rows)  # type: ignore[arg-type]


def run_seconds(stack: AirflowComponents, run_path: str) -> float:
    run = stack.api("GET", run_path)
    return (_when(run["end_date"]) - _when(run["start_date"])).total_seconds()


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def first_record(path: Path, text: str) -> dict[str, Any] | None:
    """Return the first JSON record of a task or trigger log whose event contains ``text``."""
    try:
        records = log_records(path.read_bytes().decode(errors="replace"))
    except FileNotFoundError:
        return None
    return next((record for record in records if text in str(record.get("event", ""))), None)


# -- scenarios ------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    ok: bool = False
    figures: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def scenario(title: str) -> Callable[[Callable[..., None]], Callable[..., Row]]:
    """Run a scenario into a :class:`Row`: its figures, and whether it passed (an exception fails it)."""

    def wrap(body: Callable[..., None]) -> Callable[..., Row]:
        @functools.wraps(body)
        def run(*args: Any) -> Row:
            row = Row(title)
            began = time.monotonic()
            print(f"\n=== {title}", flush=True)
            try:
                body(row, *args)
                row.ok = True
            except Exception as e:
                row.error = f"{type(e).__name__}: {e}"
                print(f"FAILED: {row.error}", file=sys.stderr, flush=True)
            row.figures["wall"] = f"{time.monotonic() - began:.0f} s"
            print(f"--- {'passed' if row.ok else 'FAILED'}: {row.figures}", flush=True)
            return row

        return run

    return wrap


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


@scenario("Every example DAG")
def examples(row: Row, topo: Topology) -> None:
    stack = topo.stack
    found = sorted(
        re.findall(r'dag_id="([^"]+)"', "".join(p.read_text() for p in (ROOT / "example_dags").glob("*.py")))
    )
    named = sorted([*EXAMPLE_STARTS, *EXAMPLE_ASSET_SCHEDULED])
    check(found == named, f"example_dags/ holds {found}; EXAMPLE_STARTS and EXAMPLE_ASSET_SCHEDULED name {named}")
    for dag_id in EXAMPLE_ASSET_SCHEDULED:
        stack.api("PATCH", f"api/v2/dags/{dag_id}", {"is_paused": False})
    before = topo.starts()
    runs = {dag_id: trigger(stack, dag_id) for dag_id in EXAMPLE_STARTS}
    states = {dag_id: stack.wait_for_run_end(path, timeout=300) for dag_id, (_, path) in runs.items()}
    for dag_id in EXAMPLE_ASSET_SCHEDULED:
        # Scheduled by the asset event of its producer's success: one run, which must succeed.
        asset_runs = stack.wait_for(
            f"{dag_id} run on its asset",
            lambda dag_id=dag_id: stack.api("GET", f"api/v2/dags/{dag_id}/dagRuns")["dag_runs"] or None,
            120,
        )
        path = f"api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(asset_runs[0]['dag_run_id'], safe='')}"
        states[dag_id] = stack.wait_for_run_end(path, timeout=300)
        runs[dag_id] = (asset_runs[0]["dag_run_id"], path)
    starts = topo.starts() - before
    expected = sum(EXAMPLE_STARTS.values())
    row.figures["DAG runs"] = f"{sum(s == 'success' for s in states.values())}/{len(states)} success"
    row.figures["Starts expected/seen"] = f"{expected}/{starts}"
    row.figures["slowest run"] = f"{max(run_seconds(stack, path) for _, path in runs.values()):.0f} s"
    failed = {d: task_states(topo, d, runs[d][0]) for d, s in states.items() if s != "success"}
    check(not failed, f"runs failed: {failed}")
    check(starts == expected, f"the server took {starts} Starts, expected {expected}")


@scenario(f"{MAPPED_CALLS} mapped deferrable calls, one of two triggerers killed mid-wait")
def mapped_triggerer_kill(
    row: Row, topo: Topology, args: argparse.Namespace, key: str, scans: list[dict[str, Any]]
) -> None:
    stack, db, n = topo.stack, topo.db, MAPPED_CALLS
    before = topo.starts()
    # Every call ends at the same instant, late enough for all to defer, the kill and the takeover;
    # the check after the kill proves the survivor took the triggers over while the calls still ran.
    ends_in = 95 + n * 0.6
    until = time.time() + ends_in
    triggered = time.monotonic()
    run_id, run_path = trigger(stack, MAPPED_DAG, {"n": n, "until": until})

    # A Redis snapshot while the Celery queue holds messages: they are base64 in kombu's envelope.
    wait_until("mapped tasks queued", lambda: db.states(MAPPED_DAG, run_id, "infer").get("queued", 0) >= 10, 120, topo)
    scans.append(scan_redis(args.redis_port, key, args.workdir, "during the mapped run"))

    def all_deferred() -> bool:
        states = db.states(MAPPED_DAG, run_id, "infer")
        bad = {s: c for s, c in states.items() if s in ("failed", "upstream_failed", "success", "up_for_retry")}
        check(not bad, f"mapped calls ended before the kill: {states}")
        return states.get("deferred", 0) == n

    # At least 50 s left for the kill and the takeover (20-30 s).
    wait_until(f"all {n} mapped calls deferred", all_deferred, until - time.time() - 50, topo, interval=1)
    row.figures["all deferred after"] = f"{time.monotonic() - triggered:.0f} s"

    # Which triggerer holds which of this run's triggers, once each is assigned.
    def held() -> dict[int, list[int]] | None:
        rows = db.rows(
            "SELECT t.triggerer_id, ti.map_index FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id"
            " WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = 'infer'",
            MAPPED_DAG,
            run_id,
        )
        if len(rows) < n or any(owner is None for owner, _ in rows):
            return None
        owners: dict[int, list[int]] = {}
        for owner, index in rows:
            owners.setdefault(owner, []).append(index)
        return owners

    owners = wait_until("every trigger assigned", held, 60, topo)
    by_job = {job: label for label, job in topo.triggerer_jobs.items()}
    victim_job = max(owners, key=lambda job: len(owners[job]))
    victim = by_job[victim_job]
    survivor_job = next(job for label, job in topo.triggerer_jobs.items() if label != victim)
    moved = sorted(owners[victim_job])
    row.figures["triggers per triggerer"] = " / ".join(f"{by_job[j]}: {len(ix)}" for j, ix in sorted(owners.items()))

    def trigger_log(index: int, job: int) -> Path:
        return (
            stack.home
            / "logs"
            / f"dag_id={MAPPED_DAG}"
            / f"run_id={run_id}"
            / "task_id=infer"
            / f"map_index={index}"
            / f"attempt=1.log.trigger.{job}.log"
        )

    # Mid-wait: the victim's triggers are running (Airflow logged "trigger ... starting"), not just assigned.
    wait_until(
        f"{victim}'s triggers running",
        lambda: all(first_record(trigger_log(i, victim_job), " starting") for i in moved),
        90,
        topo,
        interval=1,
    )
    killed_at = topo.kill(victim)
    print(f"killed {victim} (job {victim_job}) holding {len(moved)} triggers", flush=True)

    # The takeover: every moved trigger logs its start in the survivor's trigger log.
    starts_seen: dict[int, float] = {}

    def taken_over() -> bool:
        for index in moved:
            if index not in starts_seen:
                record = first_record(trigger_log(index, survivor_job), "Watching Banana call")
                if record is not None:
                    starts_seen[index] = _when(record["timestamp"]).timestamp()
        return len(starts_seen) == len(moved)

    wait_until(
        "the survivor running every moved trigger",
        taken_over,
        TRIGGERER_HEALTH_CHECK_THRESHOLD + 90,
        topo,
        interval=1,
    )
    first, last = min(starts_seen.values()) - killed_at, max(starts_seen.values()) - killed_at
    row.figures["takeover (kill to restarted)"] = f"first {first:.1f} s, last {last:.1f} s ({len(moved)} triggers)"
    check(max(starts_seen.values()) < until, "the calls ended before the survivor took their triggers over")
    resumed = sum(
        "resuming a watch" in str(first_record(trigger_log(i, survivor_job), "Watching Banana call")) for i in moved
    )
    row.figures["moved triggers logging the resume"] = f"{resumed}/{len(moved)}"

    state = stack.wait_for_run_end(run_path, timeout=until - time.time() + 120 + n * 1.5)
    states = task_states(topo, MAPPED_DAG, run_id)
    starts = topo.starts() - before
    row.figures["tasks"] = ", ".join(f"{k}: {v}" for k, v in sorted(states.items()))
    row.figures["Starts expected/seen"] = f"{n}/{starts}"
    row.figures["calls end to run end"] = f"{_when(stack.api('GET', run_path)['end_date']).timestamp() - until:.0f} s"
    check(state == "success", f"run {state}: {states}")
    check(states.get("infer=success") == n, f"not every mapped call succeeded: {states}")
    check(starts == n, f"the server took {starts} Starts for {n} calls")
    check(resumed == len(moved), f"only {resumed} of {len(moved)} moved triggers logged resuming a watch")


@scenario(f"Batch of {BATCH_INPUTS} inputs, its Celery worker killed mid-batch")
def batch_worker_kill(row: Row, topo: Topology) -> None:
    stack, db, n = topo.stack, topo.db, BATCH_INPUTS
    before = topo.starts()
    run_id, run_path = trigger(stack, BATCH_DAG, {"n": n, "seconds": BATCH_SECONDS})
    ti_path = f"{run_path}/taskInstances/batch"
    stack.wait_for_task_state(ti_path, "running", timeout=180)
    wait_until("a third of the batch started", lambda: topo.starts() - before >= n // 3, 240, topo)

    # Kill the worker at an instant where the plan the task persisted accounts for every Start
    # the server took: frozen (SIGSTOP), the tree is checked against the server's count and the
    # database, then killed, or thawed and tried again a moment later. A Start answered but not
    # yet persisted is paid again by the retry by design (README, "Retried tasks never pay twice").
    label = "celery-worker-1"
    probes: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while True:
        tree = topo.tree(label)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.suspend()
        time.sleep(0.5)  # requests already sent by the frozen processes land
        plan = db.task_state(BATCH_DAG, run_id, "batch", "banana_batch_state") or {}
        starts = topo.starts() - before
        started = plan.get("next_fresh", -1)
        accounted = plan.get("done", 0) + len(plan.get("running", {})) + len(plan.get("failed", {}))
        # Starts sent, their answers not yet recorded (the plan lists them as "starting").
        half_burst = bool(plan.get("starting")) or started != accounted
        if BATCH_KILL == "anywhere" or (BATCH_KILL == "mid-burst" and half_burst):
            break
        in_flight = len(plan.get("starting", []))
        if BATCH_KILL == "consistent" and starts == started == accounted and not plan.get("retry_queue"):
            break
        reason = "burst of Starts half persisted" if half_burst else "Start not yet persisted"
        probes[reason] = probes.get(reason, 0) + 1
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.resume()
        check(time.monotonic() < deadline, f"no consistent instant to kill at: {probes}")
        time.sleep(0.3 + secrets.randbelow(500) / 1000)
    running_at_kill = len(plan["running"])
    killed_at = topo.kill(label)
    row.figures["killed at"] = f"{plan['done']} done, {running_at_kill} running, {n - started} not started"
    if BATCH_KILL != "consistent":
        row.figures["kill instant"] = (
            f"{BATCH_KILL}: {starts} Starts taken, plan persisted {started} started, {in_flight} Starts in flight"
        )
    if probes:
        row.figures["kill instants refused"] = ", ".join(f"{v} x {k}" for k, v in probes.items())
    print(f"killed {label} mid-batch: {row.figures['killed at']}", flush=True)
    topo.start_worker("celery-worker-2")

    attempt2 = stack.task_log(BATCH_DAG, run_id, "batch").with_name("attempt=2.log")
    records = stack.wait_for_log(attempt2, "Resuming Banana batch from an earlier try", timeout=180)
    line = next(r for r in records if "Resuming Banana batch" in str(r.get("event")))
    match = RESUMED.search(line["event"])
    assert match is not None, line
    resumed_at = _when(line["timestamp"]).timestamp()
    failed_try = db.rows(
        "SELECT end_date FROM task_instance_history WHERE dag_id = %s AND run_id = %s AND task_id = 'batch'"
        " AND try_number = 1",
        BATCH_DAG,
        run_id,
    )
    if failed_try and failed_try[0][0] is not None:
        row.figures["kill to try 1 failed"] = f"{failed_try[0][0].timestamp() - killed_at:.0f} s"
    row.figures["kill to retry resumed"] = f"{resumed_at - killed_at:.0f} s"
    row.figures["retry reattached to"] = f"{match['n']} running calls ({match['counts']})"

    state = stack.wait_for_run_end(run_path, timeout=300 + n * BATCH_SECONDS)
    states = task_states(topo, BATCH_DAG, run_id)
    starts = topo.starts() - before
    row.figures["Starts expected/seen"] = f"{n}/{starts}"
    row.figures["tasks"] = ", ".join(f"{k}: {v}" for k, v in sorted(states.items()))
    check(state == "success", f"run {state}: {states}")
    check(int(match["n"]) == running_at_kill, f"reattached to {match['n']} calls; {running_at_kill} were running")
    if BATCH_KILL == "consistent":
        check(starts == n, f"the server took {starts} Starts for {n} inputs")
    else:
        # A Start in flight at the kill has no recorded id: the retry starts its input again. At
        # most max_starting of them (README, "Starts, and what a dying worker can lose").
        check(n <= starts <= n + in_flight, f"the server took {starts} Starts for {n} inputs, {in_flight} in flight")
    order = stack.task_log(BATCH_DAG, run_id, "check_in_order")
    check(first_record(order, f"All {n} outputs arrived, in input order") is not None, "no order check line")
    row.figures["outputs"] = f"{n}, in input order"


@scenario("Scheduler killed twice during a run")
def scheduler_kill(row: Row, topo: Topology) -> None:
    stack, db, n = topo.stack, topo.db, SCHEDULER_CALLS
    before = topo.starts()
    log_before = stack.log_path("scheduler").read_bytes()
    run_id, run_path = trigger(stack, SCHEDULER_DAG, {"n": n, "seconds": SCHEDULER_CALL_SECONDS})

    def kill_and_restart(number: int, down_for: float) -> None:
        states = db.states(SCHEDULER_DAG, run_id, "infer_deferred")
        killed = topo.kill("scheduler")
        time.sleep(down_for)
        topo.start("scheduler", "scheduler", "--skip-serve-logs")
        row.figures[f"kill {number}"] = f"calls {states}, down {time.time() - killed:.0f} s"

    # First kill: as soon as one call is deferred, the others queued or running in the worker.
    wait_until("a deferred call", lambda: db.states(SCHEDULER_DAG, run_id, "infer_deferred").get("deferred"), 180, topo)
    kill_and_restart(1, 5)

    # Second kill: once a trigger has fired, while the other calls resume or still wait.
    def resumed() -> int:
        return int(
            db.rows(
                "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'infer_deferred'"
                " AND (state = 'success' OR (next_method IS NOT NULL AND state <> 'deferred'))",
                SCHEDULER_DAG,
                run_id,
            )[0][0]
        )

    wait_until("a deferred call resuming", resumed, 180, topo)
    # Down longer than scheduler_health_check_threshold: the new one fails the old job at once
    # and adopts its queued and running tasks.
    kill_and_restart(2, 25)

    state = stack.wait_for_run_end(run_path, timeout=300)
    states = task_states(topo, SCHEDULER_DAG, run_id)
    starts = topo.starts() - before
    # What the new schedulers found: tasks adopted from the dead one, and tasks it had marked
    # queued but never sent to Celery (requeued once task_queued_timeout passed).
    log = stack.log_path("scheduler").read_bytes()[len(log_before) :].decode(errors="replace")
    adopted = sum(int(m) for m in re.findall(r"Adopted the following (\d+) tasks", log))
    requeued = db.rows("SELECT count(*) FROM log WHERE run_id = %s AND event = 'stuck in queued reschedule'", run_id)[
        0
    ][0]
    row.figures["adopted by the new scheduler"] = f"{adopted} tasks"
    row.figures["never sent, requeued by task_queued_timeout"] = f"{requeued} tasks"
    row.figures["Starts expected/seen"] = f"{2 * n}/{starts}"
    row.figures["run"] = f"{run_seconds(stack, run_path):.0f} s"
    check(state == "success", f"run {state}: {states}")
    check(starts == 2 * n, f"the server took {starts} Starts, expected {2 * n}")


# -- the key search -------------------------------------------------------------------------------------


class KeySearch:
    """Look for every form of the key (raw, JSON-escaped, URL, HTML, base64, ...) in bytes."""

    def __init__(self, key: str) -> None:
        self.forms = {name: form.lower().encode() for name, form in key_forms(key).items()}
        self.forms["utf-8 raw"] = key.lower().encode()
        self.hits: list[str] = []

    def search(self, where: str, data: bytes) -> None:
        low = data.lower()
        for name, form in self.forms.items():
            if form in low:
                self.hits.append(f"{where} ({name})")


def scan_files(key: str, paths: list[Path]) -> dict[str, Any]:
    search = KeySearch(key)
    files = 0
    size = 0
    for root in paths:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                files += 1
                size += len(data)
                search.search(str(path), data)
    return {"files": files, "bytes": size, "hits": search.hits}


def scan_pg_dump(key: str, args: argparse.Namespace, expected: str) -> dict[str, Any]:
    out = Path(args.workdir) / "airflow.pg_dump.sql"
    subprocess.run(
        [
            str(Path(args.pg_bin) / "pg_dump"),
            "-h",
            "127.0.0.1",
            "-p",
            str(args.pg_port),
            "-U",
            "airflow",
            "-f",
            str(out),
            "airflow",
        ],
        check=True,
        timeout=300,
    )
    data = out.read_bytes()
    search = KeySearch(key)
    search.search("pg_dump", data)
    # The dump must hold the data the runs wrote, or finding nothing proves nothing.
    rows = sum(
        1
        for line in data.splitlines()
        if line and not line.startswith((b"--", b"COPY", b"\\.", b"SET", b"CREATE", b"ALTER", b"SELECT"))
    )
    return {"bytes": len(data), "rows": rows, "has_run_data": expected.encode() in data, "hits": search.hits}


def _walk_json(value: Any, search: KeySearch, where: str, counts: dict[str, int]) -> None:
    """Search kombu envelopes inside a decoded Redis value: their bodies are base64."""
    if isinstance(value, dict):
        body, props = value.get("body"), value.get("properties")
        if isinstance(body, str) and isinstance(props, dict) and props.get("body_encoding") == "base64":
            decoded = base64.b64decode(body)
            counts["celery messages decoded"] += 1
            search.search(f"{where} (message body)", decoded)
            with contextlib.suppress(ValueError):
                _walk_json(json.loads(decoded), search, where, counts)
        for item in value.values():
            _walk_json(item, search, where, counts)
    elif isinstance(value, list):
        for item in value:
            _walk_json(item, search, where, counts)
    elif isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(ValueError):
            _walk_json(json.loads(value), search, where, counts)


def scan_redis(port: int, key: str, workdir: str, when: str) -> dict[str, Any]:
    """Read every value in Redis, by type, plus an RDB dump; search all of it."""
    client = redis.Redis(host="127.0.0.1", port=port)
    search = KeySearch(key)
    counts = {"keys": 0, "values": 0, "bytes": 0, "celery messages decoded": 0}
    for name in client.scan_iter(count=1000):
        counts["keys"] += 1
        kind = client.type(name).decode()
        values: list[bytes]
        if kind == "string":
            values = [client.get(name) or b""]
        elif kind == "list":
            values = list(client.lrange(name, 0, -1))
        elif kind == "hash":
            values = [part for pair in client.hgetall(name).items() for part in pair]
        elif kind == "set":
            values = list(client.smembers(name))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(name, 0, -1, withscores=True)]
        else:
            values = [client.dump(name) or b""]
        values.append(name)
        for value in values:
            counts["values"] += 1
            counts["bytes"] += len(value)
            where = f"redis {kind} {name!r} ({when})"
            search.search(where, value)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                _walk_json(json.loads(value), search, where, counts)
    client.close()
    # And the whole keyspace as Redis would save it (rdbcompression is off, so strings are plain).
    rdb = Path(workdir) / f"redis-{int(time.time())}.rdb"
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--rdb", str(rdb)],
        check=True,
        timeout=60,
        capture_output=True,
    )
    data = rdb.read_bytes()
    counts["rdb bytes"] = len(data)
    search.search(f"redis rdb ({when})", data)
    return {"when": when, **counts, "hits": search.hits}


@scenario("The API key in no log, no database dump, no Redis value")
def key_scan(row: Row, key: str, args: argparse.Namespace, scans: list[dict[str, Any]], expected_in_db: str) -> None:
    work = Path(args.workdir)
    # The whole work dir: Airflow's home (every task, trigger and component log, airflow.cfg), the
    # devserver's log, PostgreSQL's log, data files and WAL, Redis's log.
    logs = scan_files(key, [work])
    dump = scan_pg_dump(key, args, expected_in_db)
    scans.append(scan_redis(args.redis_port, key, args.workdir, "at the end"))
    row.figures["files"] = f"{logs['files']} files, {logs['bytes'] / 1e6:.1f} MB"
    row.figures["pg_dump"] = f"{dump['bytes'] / 1e6:.1f} MB, {dump['rows']} rows"
    for scan in scans:
        row.figures[f"Redis {scan['when']}"] = (
            f"{scan['keys']} keys, {scan['values']} values, {scan['celery messages decoded']} Celery messages decoded, "
            f"{scan['rdb bytes'] / 1e3:.0f} kB RDB"
        )
    hits = logs["hits"] + dump["hits"] + [hit for scan in scans for hit in scan["hits"]]
    row.figures["key found"] = f"{len(hits)} times"
    check(not hits, f"the API key leaked: {hits[:20]}")
    check(logs["files"] > 100 and logs["bytes"] > 0, f"the log scan saw too little: {logs}")
    check(dump["has_run_data"] and dump["rows"] > 100, f"the pg_dump holds no run data: {dump}")
    check(all(s["keys"] > 0 and s["values"] > 0 for s in scans), f"a Redis scan saw nothing: {scans}")
    check(any(s["celery messages decoded"] > 0 for s in scans), f"no Celery message was seen in Redis: {scans}")


# -- main -----------------------------------------------------------------------------------------------


def table(rows: list[Row], header: dict[str, str]) -> str:
    lines = [
        "| scenario | result | measured |",
        "|---|---|---|",
    ]
    for row in rows:
        measured = "; ".join(f"{k}: {v}" for k, v in row.figures.items())
        result = "passed" if row.ok else f"**FAILED** ({row.error.splitlines()[0][:300]})"
        lines.append(f"| {row.scenario} | {result} | {measured} |")
    top = ", ".join(f"{k} {v}" for k, v in header.items())
    settings = ", ".join(
        f"{k.removeprefix('AIRFLOW__').replace('__', '.', 1).lower()}={v}" for k, v in RECOVERY_SETTINGS.items()
    )
    return f"{top}\n\n" + "\n".join(lines) + f"\n\nRecovery settings changed from their defaults: {settings}."


def sweep(home: str) -> int:
    """Kill whatever still runs with this AIRFLOW_HOME (the shell's trap calls this after a hard stop)."""
    found = processes_using(Path(home))
    for process in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(found, timeout=10)
    if found:
        print(f"swept {len(found)} leftover Airflow processes", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--pg-port", type=int)
    parser.add_argument("--pg-bin")
    parser.add_argument("--redis-port", type=int)
    parser.add_argument("--api-port", type=int)
    parser.add_argument("--sweep", metavar="AIRFLOW_HOME", help="only kill leftover processes of that home")
    args = parser.parse_args()
    if args.sweep:
        return sweep(args.sweep)

    # `timeout` sends SIGTERM: unwind through every finally, so that the components are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    key = make_key()
    rows: list[Row] = []
    scans: list[dict[str, Any]] = []
    header = {
        "Airflow": version("apache-airflow-core"),
        "celery provider": version("apache-airflow-providers-celery"),
        "Celery": version("celery"),
        "cores": str(os.cpu_count()),
    }
    with topology(args, key) as topo:
        print(f"components up after {time.monotonic() - began:.0f} s", flush=True)
        header["PostgreSQL"] = topo.db.rows("SHOW server_version")[0][0].split()[0]
        header["Redis"] = redis.Redis(host="127.0.0.1", port=args.redis_port).info()["redis_version"]
        if "examples" in SCENARIOS:
            rows.append(examples(topo))
        if "mapped" in SCENARIOS:
            rows.append(mapped_triggerer_kill(topo, args, key, scans))
            # Back to two triggerers for what follows.
            topo.start_triggerer("triggerer-3")
        if "batch" in SCENARIOS:
            rows.append(batch_worker_kill(topo))
        if "scheduler" in SCENARIOS:
            rows.append(scheduler_kill(topo))
        # Something the dump must hold if it holds the runs' data: a call id from XCom.
        found = topo.db.rows("SELECT value FROM xcom WHERE key = 'call_id' LIMIT 1")
        expected_in_db = found[0][0] if found else MAPPED_DAG
        if isinstance(expected_in_db, str) and expected_in_db.startswith('"'):
            expected_in_db = json.loads(expected_in_db)
    rows.append(key_scan(key, args, scans, str(expected_in_db)))
    header["components started"] = str(topo.started)
    header["driver wall time"] = f"{time.monotonic() - began:.0f} s"
    report = table(rows, header)
    (Path(args.workdir) / "production-report.md").write_text(report + "\n")
    print("\n" + report, flush=True)
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
