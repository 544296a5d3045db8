"""
Shared fixtures: a throwaway Airflow home on SQLite, the local Banana server, and connections.

Everything here is real: the server is a subprocess on 127.0.0.1 spoken to over HTTP,
connections come from ``AIRFLOW_CONN_*`` variables, DAGs run with ``dag.test()`` against a
SQLite metadata database made by ``airflow db migrate``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="banana-tests-airflow-home-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"

# dag.test() runs only DAGs found in a DAG bundle: the examples and the test scenarios go there.
DAGS_FOLDER.mkdir()
for source in [*(ROOT / "example_dags").glob("*.py"), *(ROOT / "tests" / "dags").glob("*.py")]:
    shutil.copy(source, DAGS_FOLDER / source.name)

# Set before anything imports Airflow, which reads its configuration once.
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "False",
    }
)

import pytest  # noqa: E402

from airflow_provider_banana.devserver.testing import DevServer  # noqa: E402


def _airflow_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version("apache-airflow-core").split(".")[:2])


#: The installed Airflow's (major, minor).
AIRFLOW_VERSION = _airflow_version()
#: Durable calls and batches reattach across tries through task_state_store, new in Airflow 3.3;
#: before it a retried task starts afresh by design (README, Compatibility).
requires_task_state_store = pytest.mark.skipif(
    AIRFLOW_VERSION < (3, 3), reason="task_state_store (durable calls) arrived in Airflow 3.3"
)

#: A fresh random API key per test session; tests scan outputs for it.
API_KEY = "sk-test-" + uuid.uuid4().hex
#: Server holds used by the shared test server: short, so that a held request costs little.
HOLD = 2.0


def connection_json(url: str, api_key: str | None = API_KEY, **extra: Any) -> str:
    """Return an ``AIRFLOW_CONN_*`` value (JSON form) for a Banana connection."""
    conn: dict[str, Any] = {"conn_type": "banana", "host": url}
    if api_key is not None:
        conn["password"] = api_key
    # The client is told the test server's holds, as a self-hosted deployment would be.
    conn["extra"] = {"start_hold": HOLD, "check_hold": HOLD, "read_margin": 3, **extra}
    return json.dumps(conn)


@pytest.fixture(scope="session")
def devserver() -> Iterator[DevServer]:
    """One Banana server for the session, requiring the session's API key."""
    with DevServer(start_hold=HOLD, check_hold=HOLD, api_key=API_KEY, replicas=64) as server:
        yield server


@pytest.fixture
def server(devserver: DevServer) -> DevServer:
    """The session's server with counters, faults and switches reset."""
    devserver.reset()
    return devserver


@pytest.fixture
def banana_conn(server: DevServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``banana_default`` at the test server (default model ``wordcount``); return its id."""
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(server.url, model_key="wordcount"))
    return "banana_default"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the SQLite metadata database once per session (``airflow db migrate``)."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return AIRFLOW_HOME
