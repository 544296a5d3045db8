"""
Shared fixtures: a throwaway Airflow home on SQLite, the local Banana server, and connections.

The helpers and constants the test modules share (the session's API key, ``connection_json``,
the DAG-run readers...) live in ``tests/helpers.py`` (a free port: ``benchmarks.harness.free_port``);
this module keeps the fixtures and the environment Airflow must see before it is first imported.

Everything here is real: the server is a subprocess on 127.0.0.1 spoken to over HTTP,
connections come from ``AIRFLOW_CONN_*`` variables, DAGs run with ``dag.test()`` against a
SQLite metadata database made by ``airflow db migrate``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Standard library and pytest only: importing it does not import Airflow.
from tests.helpers import API_KEY, HOLD, ROOT, connection_json

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="banana-tests-airflow-home-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"

# dag.test() runs only DAGs found in a DAG bundle: the examples and the test scenarios go there.
DAGS_FOLDER.mkdir()
# The documentation's example DAGs (docs/examples, run by tests/test_docs.py) go there too.
for source in [
    *(ROOT / "example_dags").glob("*.py"),
    *(ROOT / "tests" / "dags").glob("*.py"),
    *(ROOT / "docs" / "examples").glob("*.py"),
]:
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
import requests  # noqa: E402

from airflow_provider_banana.devserver.testing import DevServer  # noqa: E402

#: Tests using any of these fixtures are marked ``slow``: they need the Airflow metadata database
#: (``dag.test()``, ``airflow dags test``) or real Airflow components. ``bash scripts/test.sh --fast``
#: (``pytest -m "not slow"``) leaves them out; marking by fixture keeps a new such test out of it too.
SLOW_FIXTURES = frozenset({"airflow_db", "components"})
#: Module-scoped fixtures that start whole Airflow deployments: ``--shard`` keeps their modules whole.
WHOLE_MODULE_FIXTURES = frozenset({"components", "api_server"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard",
        metavar="I/N",
        help="run only the I-th of N shards of the selected tests (every N-th one from the I-th); "
        "bash scripts/test.sh --fast runs three at once (FAST_SHARDS), its tests being mostly waits",
    )


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    result = yield  # pytest's -m and -k deselect here: the marks above are in place, the shards split the rest
    shard = config.getoption("shard")
    if shard:
        index, count = (int(part) for part in shard.split("/"))
        if not 1 <= index <= count:
            raise pytest.UsageError(f"--shard {shard}: want I/N with 1 <= I <= N")
        # Round robin keeps each module's cases (often a sync and an async twin) spread over the
        # shards, except a module whose tests share a costly module-scoped fixture (a whole Airflow
        # deployment): it stays in one shard, so that it starts once.
        whole = sorted({item.module.__name__ for item in items if WHOLE_MODULE_FIXTURES & set(item.fixturenames)})
        kept = [item for item in items if item.module.__name__ not in whole][index - 1 :: count]
        kept += [item for item in items if item.module.__name__ in whole[index - 1 :: count]]
        kept_ids = {id(item) for item in kept}
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept_ids])
        items[:] = kept
    return result


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


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """A ``requests`` session for talking to local servers directly (the devserver, a Potassium app)."""
    with requests.Session() as s:
        s.trust_env = False  # never route loopback traffic through an environment proxy
        yield s
