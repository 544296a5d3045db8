"""
The documentation cannot drift from the code: every Python example on a page is a file run here.

Pages include their examples with ``--8<-- "path"`` (pymdownx.snippets) from ``docs/examples/`` or
``example_dags/``; a fenced ``python`` block that includes nothing fails the first test. The
example DAGs run with ``dag.test()`` against the local server, the scripts' ``main()`` against a
connection to it, the Potassium app behind it; the example DAGs' docstring recipes run as written
in a shell of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_banana.devserver.testing import DevServer
from benchmarks.harness import free_port
from tests.helpers import ROOT, connection_json, states, xcom

DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
#: Files a page may include: each is run by a test here or in tests/test_dags.py (the example DAGs).
TESTED = {*EXAMPLES.glob("*.py"), *(ROOT / "example_dags").glob("*.py")}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::[\w-]+)?"$')


def python_blocks(page: Path) -> list[str]:
    return [
        textwrap.dedent(match["body"]).strip()
        for match in FENCE.finditer(page.read_text())
        if match["lang"] in ("python", "py", "pycon")
    ]


def test_every_python_block_on_a_page_includes_a_tested_file() -> None:
    pages = sorted(DOCS.rglob("*.md"))
    assert pages, "no pages under docs/"
    seen = 0
    for page in pages:
        for block in python_blocks(page):
            seen += 1
            lines = block.splitlines()
            assert all(SNIPPET.match(line) for line in lines), (
                f"{page.relative_to(ROOT)}: a python block that includes no tested file "
                f'(keep the example in docs/examples/ and include it with --8<-- "docs/examples/NAME.py"):\n{block}'
            )
            for line in lines:
                match = SNIPPET.match(line)
                assert match is not None
                assert (ROOT / match["path"]).resolve() in {path.resolve() for path in TESTED}, (
                    f"{page.relative_to(ROOT)} includes {match['path']}, which no test runs"
                )
    assert seen >= 8


def test_the_readme_example_is_the_tested_quickstart() -> None:
    # GitHub does not expand snippets: the README holds a copy, kept equal to the file here.
    blocks = python_blocks(ROOT / "README.md")
    assert blocks == [(EXAMPLES / "quickstart.py").read_text().strip()]


def test_the_readme_links_into_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 15_000  # a front page; the rest is in docs/
    links = re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).exists(), link


#: The example DAGs of the pages, with a task whose result proves the run did the work.
DOC_DAGS = {
    # "A banana on the moon, <ds>": six words.
    "docs_quickstart": ("use", 6),
    "docs_inference_operator": ("use", {"words": 6, "upper": None}),
    "docs_batch_operator": ("store", sum(2 + n for n in range(1, 21))),
    # The outputs are in the file, and XCom says where, how big and their sha256.
    "docs_large_outputs": ("render", "a file"),
}
#: The non-DAG examples and the test that runs each.
DOC_SCRIPTS = {"hook_usage.py", "handling_failures.py", "potassium_model.py"}


def doc_bag() -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(EXAMPLES))


def test_every_example_file_is_run_here() -> None:
    dag_files = {path.name for path in EXAMPLES.glob("*.py") if "with DAG(" in path.read_text()}
    assert {path.name for path in EXAMPLES.glob("*.py")} == dag_files | DOC_SCRIPTS
    assert len(dag_files) == len(DOC_DAGS)


@pytest.mark.usefixtures("airflow_db", "banana_conn")
class TestExampleDags:
    def test_they_import_without_network_or_connections(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_BANANA_DEFAULT")
        bag = doc_bag()
        assert bag.import_errors == {}
        assert set(bag.dag_ids) == set(DOC_DAGS)

    @pytest.mark.parametrize("dag_id", sorted(DOC_DAGS))
    def test_it_runs_end_to_end(
        self, dag_id: str, server: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BANANA_RENDERS", f"file://{tmp_path}")  # where docs_large_outputs writes
        task_id, expected = DOC_DAGS[dag_id]
        run = doc_bag().dags[dag_id].test()
        assert str(run.state) == "success", states(run)
        value = xcom(run, task_id)
        if expected == "a file":
            from airflow.sdk import ObjectStoragePath

            written = ObjectStoragePath(value["output_path"]).read_bytes()
            assert value["output_path"].startswith(f"file://{tmp_path}/")
            assert value["bytes"] == len(written)
            assert value["sha256"] == hashlib.sha256(written).hexdigest()
            assert len(json.loads(written)[0]["data"]) == 2_000_000
        elif isinstance(expected, dict):
            assert value["words"] == expected["words"]
            assert value["upper"].startswith("A BANANA ON THE MOON, ")
        else:
            assert value == expected
        assert server.stats()["starts_taken"] >= 1


@pytest.mark.usefixtures("banana_conn")
class TestExampleScripts:
    def test_hook_usage(self, server: DevServer) -> None:
        result = runpy.run_path(str(EXAMPLES / "hook_usage.py"))["main"]()
        assert result["ok"] is True
        assert result["outputs"][0]["upper"] == "HELLO"
        assert result["state"] in ("running", "finished")
        assert result["waited"][0]["upper"] == "HELLO AGAIN"
        assert server.stats()["starts_taken"] == 2  # the connection test started nothing

    def test_handling_failures(self, server: DevServer) -> None:
        seen = runpy.run_path(str(EXAMPLES / "handling_failures.py"))["main"]()
        assert len(seen) == 3, seen
        assert seen[0].startswith("failed: call call_")
        assert "bad weights" in seen[0]
        assert seen[1].startswith("timed out: call call_")
        assert seen[1].endswith("after 1 s")
        assert seen[2].startswith("bad input: ")
        assert "model_inputs" in seen[2]
        assert server.stats()["starts_taken"] == 2  # the bad input was refused before any request


@pytest.fixture
def potassium_model(tmp_path: Path) -> Iterator[str]:
    """docs/examples/potassium_model.py on a free port, in a process group of its own (see the page)."""
    pytest.importorskip("potassium", reason="potassium comes with the dev extra")
    port = free_port()
    with open(tmp_path / "potassium.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "potassium_model.py"), str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "potassium.log").read_text(errors="replace")
            try:
                if requests.get(f"{url}/__status__", timeout=2, proxies={"http": "", "https": ""}).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the Potassium example did not start within 60 s"
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_the_potassium_example_answers_behind_the_local_server(
    potassium_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_banana.hooks.banana import BananaHook

    with DevServer(models={"my-model": potassium_model}) as server:
        monkeypatch.setenv("AIRFLOW_CONN_BANANA_POTASSIUM", connection_json(server.url, model_key="my-model"))
        with BananaHook("banana_potassium") as hook:
            assert hook.run({"prompt": "ripe"}, timeout=60) == [{"output": "RIPE"}]


# --------------------------------------------------------------------------- the docstring recipes

RECIPE = re.compile(r"::\n\n(?P<body>(?:(?: {4}.*)?\n)+)")


def recipes() -> dict[str, str]:
    found = {}
    for path in sorted((ROOT / "example_dags").glob("*.py")):
        docstring = path.read_text().split('"""')[1]
        match = RECIPE.search(docstring)
        if match:
            found[path.stem] = textwrap.dedent(match["body"])
    return found


def test_the_main_examples_carry_a_recipe() -> None:
    assert {"example_banana_inference", "example_banana_decorators"} <= set(recipes())
    for name, recipe in recipes().items():
        # The steps a newcomer misses: the database, the DAGs folder, the connection, the run.
        for step in ("airflow db migrate", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW_CONN_BANANA_DEFAULT"):
            assert step in recipe, (name, step)
        assert f"airflow dags test {name}" in recipe


def _own_loopback() -> list[str] | None:
    """A command prefix giving the recipe a network namespace of its own, where port 8000 is free."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30, check=False
    )
    return ["unshare", "-n"] if probe.returncode == 0 else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(recipes()))
def test_the_recipe_runs_as_written(name: str, tmp_path: Path) -> None:
    prefix = _own_loopback()
    if prefix is None and not _port_free(8000):
        pytest.skip("port 8000 is taken and no network namespace of its own can be had (unshare -n)")
    script = tmp_path / "recipe.sh"
    script.write_text(recipes()[name])
    # A newcomer's shell: the venv active, none of this session's Airflow settings.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "TMPDIR": str(tmp_path)})
    inner = f"ip link set lo up && exec bash -eu {script}" if prefix else f"exec bash -eu {script}"
    log = tmp_path / "recipe.log"
    with open(log, "wb") as out:
        # A file, not a pipe: the local server the recipe leaves running keeps its stdout open.
        process = subprocess.Popen(
            [*(prefix or []), "bash", "-c", inner],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the recipe's local server is stopped with the group below
        )
    try:
        process.wait(timeout=540)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, text[-5000:]
    assert re.search(rf"DagRun Finished: dag_id={name},.*state=success", text), text[-5000:]
    assert "Database migration required" not in text
