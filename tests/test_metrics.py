"""
Metrics and lineage, as a deployment receives them: StatsD datagrams and OpenLineage events.

Airflow reads ``[metrics]`` and ``[openlineage]`` once, when first imported, and this session's
Airflow was imported without them; so the DAGs of ``tests/dags/metrics_dags.py`` run with
``dag.test()`` in one subprocess whose environment turns on StatsD (to a UDP listener here, on
127.0.0.1, with InfluxDB-style tags in the names so that the tags can be read) and, where the
OpenLineage provider is installed, its file transport. The tests read what arrived.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.metrics import METRICS
from tests.helpers import AIRFLOW_VERSION, API_KEY, ROOT, connection_json, private_database

pytestmark = pytest.mark.usefixtures("airflow_db", "banana_conn")

RESULT_MARK = "METRICS-SCENARIOS-RESULT "
#: ``airflow.banana.start.sent,conn_id=banana_default,model_key=wordcount:1|c``
LINE = re.compile(r"^(?P<name>[^,:]+)(?P<tags>(?:,[^,=:]+=[^,:]*)*):(?P<value>[-0-9.e]+)\|(?P<kind>c|ms|g)(?:\|@.*)?$")


def _faults(url: str, spec: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{url}_admin/faults", data=json.dumps(spec).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with opener.open(request, timeout=30) as response:
        response.read()


def run_scenarios(url: str, folder: str, only: str = "", linger: float = 0.0) -> None:
    """
    Run the scenario DAGs once each and print their states (this runs in the subprocess).

    :param url: the local server's URL, for arming its faults.
    :param folder: where the input file is and the output files go.
    :param only: comma-separated DAG ids to run (default: all).
    :param linger: seconds to stay at the end (for a periodic metrics export).
    """
    from tests.dags import metrics_dags as dags

    work = Path(folder)
    rows = [{"seconds": 0.1, "result": i} for i in range(5)] + [{"seconds": -1}]  # the last input fails
    (work / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    states: dict[str, str] = {}

    def run(dag: Any, **conf: str) -> None:
        if not only or dag.dag_id in only.split(","):
            states[dag.dag_id] = str(dag.test(run_conf=conf or None).state)

    # A refused Start (429), sent again: the call then runs.
    _faults(url, {"fail_next": {"count": 1, "status": 429, "endpoints": ["start"]}})
    run(dags.one_call)
    run(dags.deferred)
    run(dags.to_file, output=f"file://{work}/one.json")
    run(dags.failed)
    run(dags.timed_out)
    run(dags.batch, input=f"file://{work}/in.jsonl", output=f"file://{work}/out.jsonl")
    # The Start's connection is dropped: it may have been taken, so it is not sent again.
    _faults(url, {"drop_next": {"count": 1, "endpoints": ["start"]}})
    run(dags.lost)
    # The first try's Check is dropped: the task's retry takes up the call.
    _faults(url, {"drop_next": {"count": 1, "endpoints": ["check"]}})
    run(dags.reattach)
    time.sleep(linger)
    print(RESULT_MARK + json.dumps(states), flush=True)


@dataclass(frozen=True)
class Sample:
    name: str
    tags: dict[str, str]
    value: float
    kind: str


@dataclass
class Received:
    states: dict[str, str]
    samples: list[Sample]
    raw: bytes
    lineage_file: Path | None

    def banana(self, name: str, **tags: str) -> list[Sample]:
        return [
            s for s in self.samples if s.name == f"airflow.{name}" and all(s.tags.get(k) == v for k, v in tags.items())
        ]

    def total(self, name: str, **tags: str) -> float:
        samples = self.banana(name, **tags)
        assert all(s.kind == "c" for s in samples), samples
        return sum(s.value for s in samples)


def _parse(datagrams: list[bytes]) -> list[Sample]:
    samples = []
    for datagram in datagrams:
        for line in datagram.decode().splitlines():
            match = LINE.match(line)
            assert match, f"not a StatsD line: {line!r}"
            tags = dict(pair.split("=", 1) for pair in match["tags"].split(",")[1:])
            samples.append(Sample(match["name"], tags, float(match["value"]), match["kind"]))
    return samples


def _openlineage_installed() -> bool:
    try:
        import airflow.providers.openlineage  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def received(devserver: DevServer, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Received:
    """Run the scenarios in a subprocess with StatsD (and OpenLineage) on; collect what it sent."""
    devserver.reset()
    work = tmp_path_factory.mktemp("metrics")
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    datagrams: list[bytes] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                datagrams.append(listener.recv(65536))
            except TimeoutError:
                continue

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    env = {
        **os.environ,
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(listener.getsockname()[1]),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        # Plain StatsD has no tags: Airflow's InfluxDB style puts them in the name, where they can be read.
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }
    lineage_file = None
    if _openlineage_installed():
        lineage_file = work / "openlineage.jsonl"
        env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
            {"type": "file", "log_file_path": str(lineage_file), "append": True}
        )
        env["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "banana-tests"
    try:
        states = _run_scenarios(devserver, work, env)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    return Received(states, _parse(datagrams), b"".join(datagrams), lineage_file)


def _run_scenarios(
    devserver: DevServer, work: Path, env: dict[str, str], only: str = "", linger: float = 0.0
) -> dict[str, str]:
    code = (
        "from tests.test_metrics import run_scenarios; "
        f"run_scenarios({devserver.url!r}, {str(work)!r}, {only!r}, {linger!r})"
    )
    env = {
        **env,
        "AIRFLOW_CONN_BANANA_DEFAULT": connection_json(devserver.url, model_key="wordcount"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": private_database(work),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    (work / "subprocess.log").write_text(result.stdout + result.stderr)  # for a failure's reader
    marked = [line for line in result.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert marked, result.stdout[-5000:]
    states: dict[str, str] = json.loads(marked[0][len(RESULT_MARK) :])
    return states


CONN = "banana_default"


def test_the_scenarios_ended_as_designed(received: Received) -> None:
    assert received.states == {
        "m_one_call": "success",
        "m_deferred": "success",
        "m_to_file": "success",
        "m_failed": "failed",
        "m_timeout": "failed",
        "m_batch": "success",
        "m_lost": "failed",
        "m_reattach": "success",
    }


def test_starts_are_counted_with_their_retries_and_lost_answers(received: Received) -> None:
    # wordcount: m_one_call's refused Start and its re-send, m_to_file's, m_lost's (its answer lost).
    assert received.total("banana.start.sent", conn_id=CONN, model_key="wordcount") == 4
    assert received.total("banana.start.retried", conn_id=CONN, model_key="wordcount") == 1
    assert received.total("banana.start.unanswered", conn_id=CONN, model_key="wordcount") == 1
    # sleep: m_deferred's, m_timeout's and the batch's six; fail: m_failed's.
    assert received.total("banana.start.sent", conn_id=CONN, model_key="sleep") == 8
    assert received.total("banana.start.sent", conn_id=CONN, model_key="fail") == 1
    assert received.total("banana.start.retried", model_key="sleep") == 0
    assert received.total("banana.start.unanswered", model_key="sleep") == 0


def test_checks_failures_timeouts_and_batch_inputs_are_counted(received: Received) -> None:
    # The trigger's Checks of m_deferred, the worker's of m_timeout and of the batch.
    assert received.total("banana.check.sent", conn_id=CONN) >= 3
    # m_failed's call and the batch's failing input.
    assert received.total("banana.call.failed", conn_id=CONN) == 2
    assert received.total("banana.call.timeout", conn_id=CONN, model_key="sleep") == 1
    assert received.total("banana.batch.input.finished", conn_id=CONN, model_key="sleep") == 5
    assert received.total("banana.batch.input.failed", conn_id=CONN, model_key="sleep") == 1


def test_timers_are_sent_in_milliseconds(received: Received) -> None:
    starts = received.banana("banana.start.duration", conn_id=CONN)
    # Every Start taken and answered: 13 sent (and m_reattach's), less the refused one and m_lost's.
    assert len(starts) == 11 + len(received.banana("banana.start.sent", model_key="flaky"))
    assert {s.kind for s in starts} == {"ms"}
    calls = received.banana("banana.call.duration", conn_id=CONN)
    # m_one_call and m_to_file within their Start, m_deferred through the trigger's Checks; and
    # m_reattach's if its retry still had to wait (one that finds the call over knows no Start time).
    assert 3 <= len(calls) <= 4
    assert {s.kind for s in calls} == {"ms"}
    # m_deferred's call sleeps 3 s: its time counts from its Start, in milliseconds.
    assert max(s.value for s in calls) >= 3000


def test_every_metric_is_in_the_table_and_no_secret_is_sent(received: Received) -> None:
    sent = {s.name.removeprefix("airflow.") for s in received.samples if s.name.startswith("airflow.banana.")}
    table = {m.name: m for m in METRICS}
    assert sent <= set(table), sent - set(table)
    # Every metric was sent here (the reattachment only where task_state_store keeps the call).
    assert set(table) - sent == (set() if AIRFLOW_VERSION >= (3, 3) else {"banana.call.reattached"})
    for sample in received.samples:
        if sample.name.startswith("airflow.banana."):
            metric = table[sample.name.removeprefix("airflow.")]
            assert set(sample.tags) == set(metric.tags), sample
            assert sample.kind == {"counter": "c", "timer": "ms"}[metric.kind]
    assert API_KEY.encode() not in received.raw
    assert b"one call" not in received.raw  # nor an input


def _lineage(received: Received) -> tuple[Path, str]:
    # The scenarios' folder, and the events the OpenLineage file transport wrote there.
    if received.lineage_file is None:
        pytest.skip("apache-airflow-providers-openlineage is not installed")
    assert received.lineage_file.exists(), "the OpenLineage file transport wrote nothing"
    return received.lineage_file.parent, received.lineage_file.read_text()


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _datasets(events: list[dict[str, Any]], job: str, kind: str) -> set[tuple[str, str]]:
    return {
        (d["namespace"], d["name"])
        for e in events
        if e["eventType"] == "COMPLETE" and e["job"]["name"] == job
        for d in e.get(kind, [])
    }


def test_a_batch_reports_its_files_as_openlineage_datasets(received: Received) -> None:
    work, text = _lineage(received)
    events = _events(text)
    assert _datasets(events, "m_batch.call", "inputs") == {("file", f"{work}/in.jsonl")}
    # The output file only: not the part files it was put together from.
    assert _datasets(events, "m_batch.call", "outputs") == {("file", f"{work}/out.jsonl")}


def test_a_call_reports_its_output_file_as_an_openlineage_dataset(received: Received) -> None:
    work, text = _lineage(received)
    events = _events(text)
    assert _datasets(events, "m_to_file.call", "outputs") == {("file", f"{work}/one.json")}
    assert _datasets(events, "m_to_file.call", "inputs") == set()
    assert API_KEY not in text


def test_counter_names_are_unique() -> None:
    names = Counter(m.name for m in METRICS)
    assert all(n == 1 for n in names.values()), names


def test_the_docs_table_lists_every_metric_with_its_type_and_tags() -> None:
    rows = {
        cells[0].strip("` "): cells
        for line in (ROOT / "docs" / "metrics.md").read_text().splitlines()
        if line.startswith("| `banana.")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert set(rows) == {m.name for m in METRICS}
    for metric in METRICS:
        _, kind, tags, _ = rows[metric.name]
        assert kind.startswith(metric.kind), metric
        assert tags == ", ".join(f"`{tag}`" for tag in metric.tags), metric


def test_a_retried_task_that_takes_up_its_call_is_counted(received: Received) -> None:
    reattached = received.total("banana.call.reattached", conn_id=CONN, model_key="flaky")
    starts = received.total("banana.start.sent", conn_id=CONN, model_key="flaky")
    if AIRFLOW_VERSION >= (3, 3):  # task_state_store keeps the call id across tries
        assert (reattached, starts) == (1, 1)
    else:
        assert (reattached, starts) == (0, 2)


@dataclass
class OtelReceived:
    states: dict[str, str]
    #: (name, attributes) to the last cumulative sum of a counter, the count of a timer's histogram
    #: (Airflow 3.3), or a timer's last value (a gauge before).
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]
    #: (name, attributes) to the kind of OTLP data: sum, histogram, exponential_histogram, gauge.
    kinds: dict[tuple[str, frozenset[tuple[str, str]]], str]
    raw: bytes


@pytest.fixture(scope="module")
def otel_received(devserver: DevServer, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> OtelReceived:
    """Run a few scenarios with Airflow's OpenTelemetry metrics sent to an OTLP/HTTP receiver here."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    bodies: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    devserver.reset()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        **os.environ,
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "AIRFLOW__METRICS__OTEL_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__OTEL_PORT": str(server.server_address[1]),
        "AIRFLOW__METRICS__OTEL_SSL_ACTIVE": "False",
        "AIRFLOW__METRICS__OTEL_PREFIX": "airflow",
        # Exported every half second; the subprocess stays 3 s at the end for the last export.
        "AIRFLOW__METRICS__OTEL_INTERVAL_MILLISECONDS": "500",
    }
    try:
        states = _run_scenarios(
            devserver, tmp_path_factory.mktemp("otel"), env, only="m_one_call,m_deferred,m_batch", linger=3.0
        )
    finally:
        server.shutdown()
        server.server_close()
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    kinds: dict[tuple[str, frozenset[tuple[str, str]]], str] = {}
    for body in bodies:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    points = getattr(metric, kind).data_points
                    for point in points:
                        attributes = frozenset((a.key, a.value.string_value) for a in point.attributes)
                        if kind == "sum":
                            value = float(point.as_int)
                        elif kind == "gauge":
                            value = point.as_double or float(point.as_int)
                        else:
                            value = float(point.count)
                        key = (metric.name, attributes)
                        values[key], kinds[key] = value, kind  # cumulative: the last one holds
    return OtelReceived(states, values, kinds, b"".join(bodies))


def test_opentelemetry_receives_the_same_metrics_with_their_attributes(otel_received: OtelReceived) -> None:
    assert otel_received.states == {"m_one_call": "success", "m_deferred": "success", "m_batch": "success"}

    def value(name: str, **tags: str) -> float:
        return otel_received.values.get((f"airflow.{name}", frozenset(tags.items())), 0.0)

    wordcount = {"conn_id": CONN, "model_key": "wordcount"}
    sleep = {"conn_id": CONN, "model_key": "sleep"}
    assert value("banana.start.sent", **wordcount) == 2  # m_one_call's refused Start and its re-send
    assert value("banana.start.retried", **wordcount) == 1
    assert value("banana.start.sent", **sleep) == 7  # m_deferred's and the batch's six
    assert value("banana.batch.input.finished", **sleep) == 5
    assert value("banana.batch.input.failed", **sleep) == 1
    assert value("banana.check.sent", conn_id=CONN) >= 2
    start, call = (f"airflow.{name}" for name in ("banana.start.duration", "banana.call.duration"))
    if AIRFLOW_VERSION >= (3, 3):  # timers are histograms: how many values each holds
        assert otel_received.kinds[(start, frozenset(wordcount.items()))] == "exponential_histogram"
        assert value("banana.start.duration", **wordcount) == 1
        assert value("banana.call.duration", conn_id=CONN) == 2  # m_one_call's and m_deferred's
    else:  # Airflow 3.1 and 3.2 send a timer as a gauge of its last value, in milliseconds
        assert otel_received.kinds[(start, frozenset(wordcount.items()))] == "gauge"
        assert value("banana.start.duration", **wordcount) > 0
        assert otel_received.kinds[(call, frozenset({("conn_id", CONN)}))] == "gauge"
    assert API_KEY.encode() not in otel_received.raw
