#!/usr/bin/env bash
# Run every check the project has: ruff, mypy and the whole pytest suite (which starts its own
# local Banana server and Airflow components). Extra arguments go to pytest.
#
#   --fast   ruff and mypy as always, then only the tests not marked `slow` (pytest -m "not slow"):
#            the pure contract and batch-plan tests, the hooks, the trigger, faults, hostile servers,
#            property tests, bad inputs and the local server, in under two minutes. `slow` marks
#            every test that needs the Airflow metadata DB (dag.test(), `airflow dags test`) or real
#            Airflow components (tests/conftest.py marks them by the fixtures they use).
#
# The tests mostly wait (on servers, holds, deadlines, task starts), so they run as SHARDS (default
# 3) pytest processes at once, `--shard I/N` each, every process with an Airflow home, a metadata
# database and a local server of its own (a module that starts a whole Airflow deployment stays in
# one shard). Extra arguments go to every shard, and each shard's output is printed once all have
# ended. SHARDS=1 runs everything in one process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

fast=false
pytest_args=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then
        fast=true
    else
        pytest_args+=("$arg")
    fi
done

# The project's own paths only: a DAG of one's own dropped into the clone is not ours to lint.
lint_paths=(airflow_provider_banana tests benchmarks example_dags scripts docs)
echo "== ruff" >&2
"$VENV/bin/ruff" check "${lint_paths[@]}"
"$VENV/bin/ruff" format --check "${lint_paths[@]}"
# The types are checked against the primary Airflow (3.3): an older one lacks names that the code
# imports only when they exist (fallbacks for 3.1), which mypy would report.
if [ "${AIRFLOW_VERSION%.*}" = "3.3" ]; then
    echo "== mypy" >&2
    "$VENV/bin/mypy"
else
    echo "== mypy skipped: types are checked against Airflow 3.3, this venv has $AIRFLOW_VERSION" >&2
fi

shards="${SHARDS:-${FAST_SHARDS:-3}}"
tier=()
if $fast; then
    tier=(-m "not slow")
    echo "== pytest, fast tier (-m 'not slow'), $shards shards at once" >&2
else
    echo "== pytest, the whole suite, $shards shards at once" >&2
fi
if [ "$shards" = 1 ]; then
    exec "$VENV/bin/python" -m pytest ${tier[@]+"${tier[@]}"} ${pytest_args[@]+"${pytest_args[@]}"}
fi
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
pids=()
began=$SECONDS
for shard in $(seq "$shards"); do
    "$VENV/bin/python" -m pytest ${tier[@]+"${tier[@]}"} --shard "$shard/$shards" ${pytest_args[@]+"${pytest_args[@]}"} \
        > "$logs/$shard.log" 2>&1 &
    pids+=("$!")
done
status=0
empty=0
for shard in $(seq "$shards"); do
    rc=0
    wait "${pids[$((shard - 1))]}" || rc=$?
    echo "== pytest shard $shard/$shards (exit $rc, all shards done after $((SECONDS - began)) s)" >&2
    cat "$logs/$shard.log"
    # 5 is "no tests collected": a -k that selects nothing in one shard is not a failure...
    if [ "$rc" -eq 5 ]; then
        empty=$((empty + 1))
    elif [ "$rc" -ne 0 ]; then
        status=$rc
    fi
done
# ...but in all of them it is.
if [ "$status" -eq 0 ] && [ "$empty" -eq "$shards" ]; then
    status=5
fi
exit "$status"
