"""
The helpers every test module shares: constants, connections, polling, DAG-run and log readers.

Test modules import from here and never from one another. ``tests/conftest.py`` keeps the
fixtures and the session's environment (the Airflow home); ``tests/hostile.py`` and
``tests/leaks.py`` are the scripted hostile servers and the key-leak scanners.

Importing this module imports neither Airflow nor the provider, only the standard library and
pytest: ``conftest.py`` imports it before it sets the environment Airflow reads once. The helpers
that need Airflow import it when called; :data:`FAST` is built on first use (:func:`__getattr__`).
A free port comes from :func:`benchmarks.harness.free_port`, which the benchmarks share.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.triggers.base import BaseTrigger, TriggerEvent

    from airflow_provider_banana.contract import BananaRetryPolicy

T = TypeVar("T")

#: The repository's root.
ROOT = Path(__file__).resolve().parents[1]

#: A fresh random API key per test session; tests scan outputs for it.
API_KEY = "sk-test-" + uuid.uuid4().hex
#: Server holds used by the shared test server: short, so that a held request costs little.
HOLD = 2.0

#: The installed Airflow's (major, minor).
AIRFLOW_VERSION = tuple(int(part) for part in version("apache-airflow-core").split(".")[:2])
#: Durable calls and batches reattach across tries through task_state_store, new in Airflow 3.3;
#: before it a retried task starts afresh by design (README, Compatibility).
requires_task_state_store = pytest.mark.skipif(
    AIRFLOW_VERSION < (3, 3), reason="task_state_store (durable calls) arrived in Airflow 3.3"
)


def __getattr__(name: str) -> Any:
    """Build :data:`FAST` on first use, so that importing this module does not import Airflow."""
    if name == "FAST":
        return _fast_policy()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _fast_policy() -> BananaRetryPolicy:
    from airflow_provider_banana.contract import BananaRetryPolicy

    return BananaRetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=2.0, jitter=0.01)


#: Fast backoff so retry tests take milliseconds; the rules are the production ones.
FAST: BananaRetryPolicy  # built by __getattr__ on first use


def connection_json(url: str, api_key: str | None = API_KEY, **extra: Any) -> str:
    """Return an ``AIRFLOW_CONN_*`` value (JSON form) for a Banana connection."""
    conn: dict[str, Any] = {"conn_type": "banana", "host": url}
    if api_key is not None:
        conn["password"] = api_key
    # The client is told the test server's holds, as a self-hosted deployment would be.
    conn["extra"] = {"start_hold": HOLD, "check_hold": HOLD, "read_margin": 3, **extra}
    return json.dumps(conn)


def wait_until(what: str, probe: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy and return that, or fail after ``timeout`` seconds.

    :param what: what is awaited, for the failure message.
    :param probe: returns the awaited value, or something falsy while it is not there yet.
    :raises AssertionError: with the last value, if it never came.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s; last: {value!r}")
        time.sleep(interval)


async def collect(trigger: BaseTrigger) -> list[TriggerEvent]:
    """Run a trigger to its end and return every event it fired."""
    return [event async for event in trigger.run()]


# --------------------------------------------------------------------------- DAG runs


def states(run: DagRun) -> dict[str, str]:
    """Return each task instance's state, mapped ones as ``task_id[map_index]``."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
            for ti in run.get_task_instances(session=session)
        }


def try_numbers(run: DagRun) -> dict[str, int]:
    """Return each task instance's try number."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.try_number for ti in run.get_task_instances(session=session)}


def xcom(run: DagRun, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """Return the deserialized XCom ``key`` of a task instance of ``run``; fail if there is none."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
                XComModel.map_index == map_index,
            )
        ).first()
        assert row is not None, f"no XCom {key!r} for {task_id}"
        return XComModel.deserialize_value(row)


#: The last line of a traceback: the exception's (dotted) class name, a colon, its message.
#: Log lines start with a timestamp and traceback frames with spaces, so neither matches.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*): (?P<message>.*)$", re.MULTILINE)


def raised(logs: str) -> list[tuple[str, str]]:
    """Return the (class name, message) of every exception whose traceback ``logs`` hold, in order.

    ``dag.test()`` runs tasks in-process and prints a failed task's traceback to the captured
    output (``capfd``), ending with ``package.module.ClassName: message``.
    """
    return [(match["name"], match["message"]) for match in _EXCEPTION_LINE.finditer(logs)]


def assert_raised(logs: str, name: str, *fragments: str) -> str:
    """Assert that ``logs`` hold a traceback of a ``name`` exception whose message has every fragment.

    :return: that exception's message, for further checks.
    """
    messages = [message for found, message in raised(logs) if found == name]
    for message in messages:
        if all(fragment in message for fragment in fragments):
            return message
    raise AssertionError(f"no {name} with {fragments!r} in the logs; the exceptions there: {raised(logs)!r}")


def private_database(folder: Path) -> str:
    """
    Copy the session's SQLite metadata database into ``folder``; return the copy's SQLAlchemy URL.

    A subprocess that runs DAGs (``airflow dags test``, ``dag.test()`` with other settings) gets a
    copy of its own: on Airflow 3.1, ``airflow dags test`` run beside this process on the same file
    left it "malformed" for every test after it.

    :param folder: where to put the copy.
    """
    import os
    import sqlite3

    source = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    target = folder / "airflow.db"
    reader, writer = sqlite3.connect(source), sqlite3.connect(target)
    try:
        reader.backup(writer)
    finally:
        reader.close()
        writer.close()
    return f"sqlite:///{target}"
