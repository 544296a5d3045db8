#!/usr/bin/env bash
# Check the package a user installs: build the wheel and the sdist, check their metadata, install
# the wheel (not editable) into a clean venv with Airflow, then run `airflow providers list` and the
# example DAG against the local server of the installed package. Run by .ci/run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
find_uv  # from bootstrap.sh

work="$(mktemp -d)"
server_pid=""
cleanup() {
    # `|| true`: under `set -e` a failing kill or wait (a killed server's status is 143) would
    # become this script's exit status.
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== build" >&2
"$UV" build --quiet --out-dir "$work/dist" "$ROOT"
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)
echo "built $(basename "$wheel") and $(basename "$sdist")"

echo "== metadata" >&2
"$VENV/bin/python" - "$wheel" "$sdist" <<'PYEOF'
import sys, tarfile, zipfile
from email.parser import Parser

wheel, sdist = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zf.read(meta_name).decode())
    entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
problems = []
if meta["Name"] != "airflow-provider-banana":
    problems.append(f"Name is {meta['Name']!r}")
requires_dist = meta.get_all("Requires-Dist") or []
requires = " ".join(requires_dist)
# What every install gets: the entries without an `extra ==` marker, by distribution name.
core = {entry.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        for entry in requires_dist if "extra ==" not in entry}
if core != {"apache-airflow", "requests", "tenacity", "aiohttp"}:
    problems.append(f"the install dependencies are {sorted(core)}")
if meta["Requires-Python"] != ">=3.10":
    problems.append(f"Requires-Python is {meta['Requires-Python']!r}")
if meta.get("Description-Content-Type") != "text/markdown" or "# airflow-provider-banana" not in meta.get_payload():
    problems.append("the README is not the long description")
if "apache_airflow_provider" not in entry_points or "get_provider_info" not in entry_points:
    problems.append("no apache_airflow_provider entry point")
for required in ("airflow_provider_banana/py.typed", "airflow_provider_banana/contract/__init__.py",
                 "airflow_provider_banana/devserver/__main__.py"):
    if required not in names:
        problems.append(f"the wheel lacks {required}")
if any(name.startswith(("tests/", "benchmarks/")) for name in names):
    problems.append("the wheel carries tests or benchmarks")
with tarfile.open(sdist) as tf:
    members = tf.getnames()
for part in ("README.md", "pyproject.toml", "example_dags/example_banana_inference.py", "benchmarks/harness.py"):
    if not any(member.endswith("/" + part) for member in members):
        problems.append(f"the sdist lacks {part}")
if problems:
    sys.exit("package metadata problems:\n  " + "\n  ".join(problems))
print(f"metadata ok: {meta['Name']} {meta['Version']}, requires {requires}")
PYEOF

echo "== install the wheel into a clean venv" >&2
"$UV" venv --quiet --python "$VENV/bin/python" "$work/venv"
constraints=()
if [ -f "$ROOT/constraints/airflow-${AIRFLOW_VERSION%.*}.txt" ]; then
    constraints=(--constraint "$ROOT/constraints/airflow-${AIRFLOW_VERSION%.*}.txt")
fi
"$UV" pip install --quiet --python "$work/venv/bin/python" "${constraints[@]}" "apache-airflow==$AIRFLOW_VERSION" "$wheel"
PY="$work/venv/bin/python"
# The installed package, not this checkout.
location=$(cd "$work" && "$PY" -c 'import airflow_provider_banana as p; print(p.__file__)')
case "$location" in
    "$work"/venv/*) echo "imported from $location" ;;
    *) echo "the package was imported from $location, not the clean venv" >&2; exit 1 ;;
esac

export AIRFLOW_HOME="$work/airflow-home"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$work/dags"
mkdir -p "$AIRFLOW__CORE__DAGS_FOLDER"
cp "$ROOT/example_dags/example_banana_inference.py" "$AIRFLOW__CORE__DAGS_FOLDER/"

echo "== airflow providers list" >&2
(cd "$work" && "$work/venv/bin/airflow" providers list 2> "$work/providers.err") | tee "$work/providers.txt" | grep -i banana \
    || { echo "the provider is not listed:" >&2; cat "$work/providers.txt" "$work/providers.err" >&2; exit 1; }

echo "== the example DAG against the installed package's local server" >&2
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$work" && exec "$PY" -m airflow_provider_banana.devserver --host 127.0.0.1 --port "$port") > "$work/devserver.log" 2>&1 &
server_pid=$!
"$PY" - "$port" <<'PYEOF'
import sys, time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthcheck", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the installed package's local server did not start")
PYEOF
export AIRFLOW_CONN_BANANA_DEFAULT="{\"conn_type\": \"banana\", \"host\": \"http://127.0.0.1:$port/\", \"password\": \"package-check-key\", \"extra\": {\"model_key\": \"wordcount\"}}"
(cd "$work" && "$work/venv/bin/airflow" db migrate > "$work/migrate.log" 2>&1) || { tail -20 "$work/migrate.log"; exit 1; }
(cd "$work" && "$work/venv/bin/airflow" dags test example_banana_inference > "$work/dags-test.log" 2>&1) || true
if ! grep -q "DagRun Finished: .*state=success" "$work/dags-test.log" \
    || ! grep -q "Model outputs reached the downstream task" "$work/dags-test.log"; then
    echo "the example DAG did not succeed on the installed wheel:" >&2
    tail -40 "$work/dags-test.log" >&2
    exit 1
fi
grep -o "Model outputs reached the downstream task: .*" "$work/dags-test.log" | head -1
echo "package check passed: wheel and sdist built, metadata checked, the installed wheel is listed by Airflow and runs the example DAG"
