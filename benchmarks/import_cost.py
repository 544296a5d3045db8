"""Measure what importing the provider's operator module costs a DAG parse, on top of ``import airflow.sdk``.

Usage::

    python -m benchmarks.import_cost [--repeat 7]

Every figure is the median (and the minimum) over ``--repeat`` fresh interpreters: each imports
the modules it stands on first, then times one more import with ``time.perf_counter()``. The
baselines in the same run: ``airflow.sdk`` itself, the standard provider's ``PythonOperator``
module (what a DAG file already pays), and the provider's heaviest dependency, ``requests``,
which Airflow's SDK and DAG processor do not import themselves. The operator measured with
``requests`` already loaded shows what it would cost if the sync hook imported it lazily.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import ROOT, child_env, print_table

OPERATOR = "airflow_provider_banana.operators.banana"
#: (label, modules imported first, module timed).
CASES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("airflow.sdk (from a bare interpreter)", (), "airflow.sdk"),
    ("banana operator module, on top of airflow.sdk", ("airflow.sdk",), OPERATOR),
    ("  the same with requests already imported", ("airflow.sdk", "requests"), OPERATOR),
    ("requests, on top of airflow.sdk", ("airflow.sdk",), "requests"),
    (
        "baseline: standard provider's PythonOperator module, on top of airflow.sdk",
        ("airflow.sdk",),
        "airflow.providers.standard.operators.python",
    ),
)

_PROBE = """
import importlib, sys, time
for name in sys.argv[2:]:
    importlib.import_module(name)
began = time.perf_counter()
importlib.import_module(sys.argv[1])
print(time.perf_counter() - began)
"""


def time_import(module: str, before: Sequence[str], repeat: int, env: dict[str, str]) -> list[float]:
    """Return the seconds one import took, in ``repeat`` fresh interpreters.

    :param module: the module to time.
    :param before: modules imported first, untimed.
    :param repeat: interpreters to start.
    :param env: their environment.
    """
    return [float(_python(["-c", _PROBE, module, *before], env).stdout.strip().splitlines()[-1]) for _ in range(repeat)]


def _python(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter in the checkout and return what it printed; raise if it fails."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=True
    )


def heaviest(module: str, before: Sequence[str], env: dict[str, str], top: int = 6) -> list[tuple[str, float]]:
    """Return the packages ``module`` pulls in that cost most, from ``-X importtime``.

    Each imported module's own time (without its imports) is added to its top-level package.

    :param module: the module.
    :param before: modules imported first, whose imports are not counted.
    :param env: the environment.
    :param top: how many.
    """
    code = "import sys\n" + "".join(f"import {name}\n" for name in before) + "sys.stderr.write('--mark--\\n')\n"
    code += f"import {module}\n"
    result = _python(["-X", "importtime", "-c", code], env)
    per_package: dict[str, float] = {}
    for line in result.stderr.split("--mark--", 1)[1].splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():
            continue  # the header line
        package = name.strip().split(".")[0]
        per_package[package] = per_package.get(package, 0.0) + int(own) / 1e6
    return sorted(per_package.items(), key=lambda row: row[1], reverse=True)[:top]


def measure(repeat: int) -> dict[str, Any]:
    """Time every case and find the operator's heaviest imports.

    :param repeat: interpreters per case.
    """
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp:
        env = child_env(Path(tmp) / "airflow-home", [str(ROOT)])
        cases = []
        for label, before, module in CASES:
            print(f"timing {module} ...", file=sys.stderr, flush=True)
            try:
                samples = time_import(module, before, repeat, env)
            except subprocess.CalledProcessError as e:
                print(f"  skipped: {e.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            cases.append({"label": label, "module": module, "before": list(before), "samples": samples})
        return {"cases": cases, "heaviest": heaviest(OPERATOR, ["airflow.sdk"], env), "repeat": repeat}


def report(result: dict[str, Any]) -> None:
    """Print the import times, with each as a share of ``import airflow.sdk``.

    :param result: what :func:`measure` returned.
    """
    cases = result["cases"]
    sdk = statistics.median(cases[0]["samples"]) if cases else 0.0
    rows = []
    for case in cases:
        median = statistics.median(case["samples"])
        rows.append(
            [case["label"], f"{median * 1e3:.0f} ms", f"{min(case['samples']) * 1e3:.0f} ms", f"{median / sdk:.0%}"]
        )
    heavy = ", ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in result["heaviest"])
    print_table(
        f"Import cost (median and minimum of {result['repeat']} fresh interpreters)",
        ["import", "median", "min", "of airflow.sdk"],
        rows,
        notes=[
            f"Own import time by package, of what the operator module adds to airflow.sdk (-X importtime): {heavy}."
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement and print the table.

    :param argv: command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="fresh interpreters per case (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    result = measure(args.repeat)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
