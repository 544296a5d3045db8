"""Measure how long the triggerer's event loop stands still while the async hook reads a large reply.

Usage::

    python -m benchmarks.loop_stall [--kinds banana@80d95c4,banana] [--shapes records,string,embedding]
                                    [--repeat 3] [--json results.json]

A reply server (a child process on 127.0.0.1, standard library only) answers every Start with a
finished reply whose ``modelOutputs`` has the shape the ``modelKey`` names, built once at start-up:

- ``records``: a million small records (``{"id", "score", "label"}``), what a tabular or
  embedding-per-row model returns; about 55 MB;
- ``string``: one 50 MB string (base64 of random bytes), an image-sized output;
- ``embedding``: 2,500 lists of 1,000 floats, a batch of embeddings; about 50 MB;
- ``idle``: no read at all, the ticker alone for 2 s: the machine's own noise, for scale;

and bodies the hook must refuse, each about 64 MB, which it classifies ("not JSON", "too deeply
nested") rather than parses:

- ``malformed``: the million records with one byte broken near the end (a ``,`` become ``;``);
- ``notjson``: the million records as Python writes them (``repr``: quotes ``'``), brackets
  everywhere, JSON nowhere;
- ``badutf8``: the million records with one byte near the end that is not UTF-8;
- ``deep``: valid, the million records spread over 500 levels of nesting (under the 512 limit);
- ``toodeep``: the same over 600 levels, past the limit.

For each kind, a child process standing in for the triggerer runs a ticker on its event loop (an
``asyncio.sleep(0.01)`` in a loop, noting how late each wake-up is) while ``BananaAsyncHook.start``
reads each reply ``--repeat`` times, and reports, per shape:

- **read**: the time ``start`` took, from sending to the parsed result (median of the repeats);
- **stall max / p99**: how late the ticker woke, past its 10 ms, while the read ran (and 0.2 s
  after it), over all repeats; a loop that is never held gives about 0-2 ms;
- **exact**: whether every read's ``model_outputs`` equal the outputs the server encoded;
- **free**: the time dropping the parsed outputs takes on the loop (a million dicts are freed
  one by one, in one call), for whoever holds them last.

Kinds: ``banana`` is the async hook of this checkout; ``banana@REF`` the hook as it was at git
revision ``REF`` (the provider's package extracted from git into a temporary directory and imported
from there, as :mod:`benchmarks.triggerer_capacity` does). :data:`BASELINE` is the revision before
the hook parsed large replies in steps.

Every request goes to 127.0.0.1; every child has a watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    ROOT,
    child_env,
    fmt_seconds,
    imported_from,
    percentile,
    print_table,
    provider_paths,
    start_answering,
    watchdog,
)

#: The last revision whose async hook parsed a large reply with one json.loads in a thread.
BASELINE = "banana@80d95c4"
KINDS = (BASELINE, "banana")
SHAPES = ("idle", "records", "string", "embedding", "malformed", "notjson", "badutf8", "deep", "toodeep")
#: The shapes whose body the hook refuses, with what its error must say.
REFUSED = {
    "malformed": "is not JSON",
    "notjson": "is not JSON",
    "badutf8": "is not JSON",
    "toodeep": "too deeply nested",
}
#: The ticker's period: a wake-up later than this by more than a few ms means the loop was held.
TICK = 0.01
_SERVE = (sys.executable, "-m", "benchmarks.loop_stall", "--serve", "--answer-fd")
#: Seconds a child may run before its watchdog kills it.
CHILD_LIMIT = 900.0


def outputs_for(shape: str) -> Any:
    """Return the model outputs of one shape (deterministic: the server and the child agree).

    :param shape: one of :data:`SHAPES`, or ``small`` (the warm-up).
    """
    if shape == "records":
        return [{"id": i, "score": i / 7, "label": f"item-{i % 1000}"} for i in range(1_000_000)]
    if shape == "string":
        return {"image": base64.b64encode(random.Random(1).randbytes(37_500_000)).decode()}
    if shape == "embedding":
        rng = random.Random(2)
        return {"embeddings": [[rng.random() for _ in range(1000)] for _ in range(2500)]}
    if shape in ("deep", "toodeep"):
        return nested_records(500 if shape == "deep" else 600)
    if shape in ("small", "idle", *REFUSED):
        return {"ok": True}
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def nested_records(levels: int) -> Any:
    """Return the million records spread over ``levels`` nested arrays, each level with its share.

    Every level is larger than a parsing step, so that a parser in steps has to descend into each.

    :param levels: how deep the arrays nest.
    """
    per_level = 1_000_000 // levels
    inner: list[Any] = []
    for level in range(levels):
        ids = range(level * per_level, (level + 1) * per_level)
        inner = [*({"id": i, "score": i / 7, "label": f"item-{i % 1000}"} for i in ids), inner]
    return inner


def reply_body(shape: str) -> bytes:
    """Return the finished Start reply carrying the outputs of ``shape`` (a broken one for :data:`REFUSED`).

    :param shape: one of :data:`SHAPES` or ``small``.
    """
    if shape in ("malformed", "badutf8"):
        body = reply_body("records")
        at = body.rindex(b", {", 0, len(body) - 1000)
        return body[:at] + (b";" if shape == "malformed" else b"\xff") + body[at + 1 :]
    if shape == "notjson":
        return repr({"message": "success", "finished": True, "modelOutputs": [outputs_for("records")]}).encode()
    reply = {
        "id": "bench",
        "message": "success",
        "created": int(time.time()),
        "apiVersion": "loop-stall benchmark",
        "callID": f"call_{shape}",
        "finished": True,
        "modelOutputs": [outputs_for(shape)],
    }
    return json.dumps(reply).encode()


def serve(shapes: Sequence[str], answer_fd: int) -> None:
    """Answer every Start with the reply of its ``modelKey``; say ``READY <port>`` on ``answer_fd``.

    :param shapes: the shapes to build (``small`` is always built).
    :param answer_fd: where to write the port once listening.
    """
    bodies = {shape: reply_body(shape) for shape in ("small", *shapes) if shape != "idle"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            body = bodies.get(request.get("modelKey"), bodies["small"])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with os.fdopen(answer_fd, "w") as answer:
        answer.write(f"READY {server.server_address[1]} {json.dumps({s: len(b) for s, b in bodies.items()})}\n")
    server.serve_forever()


async def _measure_in_child(shapes: Sequence[str], repeat: int) -> dict[str, Any]:
    import airflow_provider_banana
    from airflow_provider_banana.exceptions import BananaProtocolError
    from airflow_provider_banana.hooks.banana import BananaAsyncHook

    samples: list[tuple[float, float]] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            samples.append((now, now - last - TICK))
            last = now

    tick_task = asyncio.create_task(ticker())
    rows = []
    async with BananaAsyncHook("banana_default") as hook:
        await hook.start({}, model_key="small")  # lazy imports and the session, before measuring
        for shape in shapes:
            expected = [outputs_for(shape)]
            reads, stalls, frees, exact = [], [], [], True
            for _ in range(repeat):
                gc.collect()
                await asyncio.sleep(0.1)
                began = time.perf_counter()
                outputs: Any = None
                if shape == "idle":
                    await asyncio.sleep(2.0)
                    result = await hook.start({}, model_key="small")
                    outputs = expected = result.model_outputs
                elif shape in REFUSED:
                    try:
                        await hook.start({}, model_key=shape)
                    except BananaProtocolError as error:
                        outputs = str(error)
                else:
                    outputs = (await hook.start({}, model_key=shape)).model_outputs
                reads.append(time.perf_counter() - began)
                await asyncio.sleep(0.2)
                stalls += [max(stall, 0.0) for at, stall in samples if at >= began]
                # Outside the measured window: comparing and freeing hold the loop themselves.
                if shape in REFUSED:
                    exact &= isinstance(outputs, str) and REFUSED[shape] in outputs
                else:
                    exact &= outputs == expected
                freeing = time.perf_counter()
                del outputs
                frees.append(time.perf_counter() - freeing)
                samples.clear()
            rows.append(
                {
                    "shape": shape,
                    "read": statistics.median(reads),
                    "stall_max": max(stalls),
                    "stall_p99": percentile(stalls, 99),
                    "ticks": len(stalls),
                    "exact": exact,
                    "free": statistics.median(frees),
                }
            )
    running = False
    await tick_task
    return {"module": airflow_provider_banana.__file__, "rows": rows}


def measure(kind: str, url: str, shapes: Sequence[str], repeat: int, tmp: Path) -> dict[str, Any]:
    """Run one kind's child against the reply server; return its rows.

    :param kind: ``banana`` or ``banana@REF``.
    :param url: the reply server's base URL.
    :param shapes: the shapes to read.
    :param repeat: reads of each shape.
    :param tmp: a scratch directory.
    """
    home = tmp / kind.replace("@", "-")
    home.mkdir()
    paths = provider_paths(kind, home)
    conn = {"conn_type": "banana", "host": url, "password": "bench-api-key", "extra": {"model_key": "small"}}
    log_path = home / "child.log"
    child, answers = start_answering(
        "benchmarks.loop_stall",
        ["--shapes", ",".join(shapes), "--repeat", str(repeat)],
        log_path,
        env=child_env(home / "airflow-home", paths, conn),
        cwd=home,
    )
    with watchdog(child, CHILD_LIMIT):
        with answers:
            line = answers.readline()
        child.wait()
    if not line:
        raise RuntimeError(f"{kind}: the child gave no answer:\n{log_path.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(line)
    if not imported_from(paths[0], result["module"]):
        raise RuntimeError(f"{kind}: the child imported the provider from {result['module']}, not {paths[0]}")
    return {"kind": kind, **result}


def run(kinds: Sequence[str], shapes: Sequence[str], repeat: int) -> list[dict[str, Any]]:
    """Start the reply server, measure each kind, and return one row per kind and shape.

    :param kinds: ``banana`` and ``banana@REF`` kinds.
    :param shapes: the shapes to read.
    :param repeat: reads of each shape per kind.
    """
    answer_read, answer_write = os.pipe()
    server = subprocess.Popen(
        [*_SERVE, str(answer_write), "--shapes", ",".join(shapes)],
        cwd=ROOT,
        pass_fds=(answer_write,),
    )
    os.close(answer_write)
    try:
        with watchdog(server, CHILD_LIMIT * (len(kinds) + 1)):
            with os.fdopen(answer_read, "rb") as answers:
                ready = answers.readline().decode().split(" ", 2)
            if len(ready) != 3 or ready[0] != "READY":
                raise RuntimeError(f"the reply server did not start ({ready!r})")
            url, sizes = f"http://127.0.0.1:{ready[1]}/", json.loads(ready[2])
            rows = []
            with tempfile.TemporaryDirectory(prefix="banana-bench-stall-") as tmp:
                for kind in kinds:
                    print(f"measuring {kind} ...", file=sys.stderr, flush=True)
                    for row in measure(kind, url, shapes, repeat, Path(tmp))["rows"]:
                        rows.append({"kind": kind, "bytes": sizes.get(row["shape"], 0), "repeat": repeat, **row})
            return rows
    finally:
        server.kill()
        server.wait()


def report(rows: Sequence[dict[str, Any]]) -> None:
    """Print the table.

    :param rows: from :func:`run`.
    """
    print_table(
        "Event-loop stalls while the async hook reads one large reply (10 ms ticker on the same loop)",
        ["hook", "shape", "reply", "read (median)", "stall max", "stall p99", "ticks", "outputs exact", "free"],
        [
            [
                r["kind"],
                r["shape"],
                f"{r['bytes'] / 1e6:.1f} MB",
                fmt_seconds(r["read"]),
                fmt_seconds(r["stall_max"]),
                fmt_seconds(r["stall_p99"]),
                str(r["ticks"]),
                "yes" if r["exact"] else "NO",
                fmt_seconds(r["free"]),
            ]
            for r in rows
        ],
        notes=[
            f"{rows[0]['repeat'] if rows else 0} reads per row; stalls over all of them; "
            "free: dropping the outputs on the loop, outside the measured window.",
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve`` / ``--child``, one of its processes).

    :param argv: command-line arguments.
    :return: 0 when every read was exact.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_stall", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds (default: %(default)s)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="reads of each shape per kind (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--answer-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    if args.serve:
        serve(shapes, args.answer_fd)
        return 0
    if args.child:
        result = asyncio.run(_measure_in_child(shapes, args.repeat))
        with os.fdopen(args.answer_fd, "w") as answer:
            answer.write(json.dumps(result) + "\n")
        return 0
    rows = run([k for k in args.kinds.split(",") if k], shapes, args.repeat)
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
