"""Run the whole benchmark suite, one part after the other, and print every table.

Usage (``bash scripts/bench.sh`` sets up the environment and runs this)::

    python -m benchmarks [--full] [--only capacity,hook,import,server,stall,batch,large] [--json results.json]

Parts, in order:

1. ``capacity``: :mod:`benchmarks.triggerer_capacity`, N concurrent ``BananaCallTrigger``s on one
   event loop against the naive polling baselines (N = 100 and 1,000; ``--full`` adds 10,000);
2. ``hook``: :mod:`benchmarks.hook_vs_sdk`, ``BananaHook.run`` against the ``banana-dev`` 4.0.2 SDK;
3. ``import``: :mod:`benchmarks.import_cost`, the operator module's import time;
4. ``server``: :mod:`benchmarks.devserver_capacity` with the raw client, the local server's own
   long-poll capacity and Start/Check throughput (N = 1,000; ``--full``: 10,000);
5. ``stall``: :mod:`benchmarks.loop_stall`, how long the event loop stands still while the async hook
   reads a 64 MB reply of a million records, a 50 MB string and 50 MB of embeddings, today's hook
   beside :data:`benchmarks.loop_stall.BASELINE` (about 2 minutes);
6. ``batch``: :mod:`benchmarks.batch_vs_mapping`, one batch task against dynamic task mapping on
   real Airflow components (N = 1,000 and 10,000; about 35 minutes, so only with ``--full`` or
   ``--only batch``);
7. ``large``: :mod:`benchmarks.large_outputs`, outputs of 1, 5, 20 and 50 MB through a deferrable
   task against a blocking one on real Airflow components (minutes per size, so, like ``batch``,
   only with ``--full`` or ``--only large``).

Parts run one at a time, so that none measures the machine while another loads it; the load
average is printed before and after each, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import (
    batch_vs_mapping,
    devserver_capacity,
    hook_vs_sdk,
    import_cost,
    large_outputs,
    loop_stall,
    triggerer_capacity,
)
from benchmarks.harness import load_average, print_machine, raise_fd_limit

PARTS = ("capacity", "hook", "import", "server", "stall", "batch", "large")
#: The parts of a run without --full or --only: the real-component parts take too long.
DEFAULT_PARTS = PARTS[:5]
#: The output sizes of the ``large`` part, in MiB.
LARGE_SIZES = (1, 5, 20, 50)

#: (kind, N) of the default run: each baseline where it is not saturated and at 1,000, and the
#: provider's trigger on aiohttp beside its last httpx revision (HTTPX_BASELINE) at 1,000.
DEFAULT_CAPACITY = (
    ("banana", 100),
    ("banana", 1000),
    (triggerer_capacity.HTTPX_BASELINE, 1000),
    ("naive-5", 100),
    ("naive-5", 1000),
    ("naive-60", 1000),
)
FULL_CAPACITY = (
    *DEFAULT_CAPACITY,
    ("banana", 10000),
    (triggerer_capacity.HTTPX_BASELINE, 10000),
    ("naive-5", 10000),
    ("naive-60", 10000),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts asked for and print their tables.

    :param argv: command-line arguments.
    :return: 0 when every call of every part completed, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="add the N=10,000 measurements and the batch and large parts (about an hour more)",
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated parts of {','.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="seconds the calls' finishes are spread over (default: 40, and 100 for N=10,000)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    only = args.only or ",".join(PARTS if args.full else DEFAULT_PARTS)
    parts = [part for part in only.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    raise_fd_limit()
    began = time.time()
    info = print_machine()
    results: dict[str, Any] = {"machine": info}
    ok = True
    for part in parts:
        load_before = load_average()
        part_began = time.time()
        print(f"\n== {part} (load average {load_before})", file=sys.stderr, flush=True)
        if part == "capacity":
            runs = []
            for kind, n in FULL_CAPACITY if args.full else DEFAULT_CAPACITY:
                print(f"measuring {kind} with N={n:,} ...", file=sys.stderr, flush=True)
                window = args.window or (100.0 if n >= 10000 else 40.0)
                runs.append(triggerer_capacity.measure(kind, n, window))
            triggerer_capacity.report(runs)
            ok &= all(r["completed"] == r["n"] for r in runs)
            results[part] = runs
        elif part == "hook":
            calls = hook_vs_sdk.measure(list(hook_vs_sdk.CLIENTS), quick=300, long=20)
            hook_vs_sdk.report(calls)
            ok &= all(r["completed"] == r["count"] for r in calls)
            results[part] = calls
        elif part == "import":
            imports = import_cost.measure(repeat=5)
            import_cost.report(imports)
            results[part] = imports
        elif part == "stall":
            stalls = loop_stall.run(loop_stall.KINDS, loop_stall.SHAPES, repeat=3)
            loop_stall.report(stalls)
            ok &= all(r["exact"] for r in stalls)
            results[part] = stalls
        elif part == "batch":
            sizes = [1000, 10000]
            batches = batch_vs_mapping.run(sizes, batch_vs_mapping.SCENARIOS)
            batch_vs_mapping.report(batches)
            ok &= all(r["state"] == "success" for r in batches if batch_vs_mapping.mapping_allowed(r))
            results[part] = batches
        elif part == "large":
            outputs = large_outputs.run(LARGE_SIZES)
            large_outputs.report(outputs)
            ok &= all(r["state"] == "success" for r in outputs)
            results[part] = outputs
        else:
            n = 10000 if args.full else 1000
            with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp:
                server_json = Path(tmp) / "server.json"
                code = devserver_capacity.main(["--n", str(n), "--clients", "raw", "--json", str(server_json)])
                ok &= code == 0
                results[part] = json.loads(server_json.read_text()) if server_json.exists() else None
        print(
            f"({part}: {time.time() - part_began:.0f} s; load average before {load_before}, after {load_average()})",
            flush=True,
        )
    print(f"\nWhole run: {(time.time() - began) / 60:.1f} min; load average at the end {load_average()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
