#!/usr/bin/env bash
# Run the example DAG end to end on this machine: start the local Banana server, run
# example_banana_inference with `airflow dags test` on a throwaway SQLite database, print the
# model outputs that reached the downstream task, and stop the server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
PY="$VENV/bin/python"
began=$(date +%s)

work="$ROOT/.demo"
rm -rf "$work"
mkdir -p "$work"
export AIRFLOW_HOME="$work/airflow-home"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/example_dags"

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m airflow_provider_banana.devserver --host 127.0.0.1 --port "$port" > "$work/devserver.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
"$PY" - "$port" <<'PYEOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/healthcheck"
for _ in range(200):
    try:
        urllib.request.urlopen(url, timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"the local Banana server did not start; see .demo/devserver.log")
PYEOF
echo "Local Banana server on http://127.0.0.1:$port/ (log: .demo/devserver.log)"

# The connection, as a deployment would give it: an AIRFLOW_CONN_* variable in JSON form.
export AIRFLOW_CONN_BANANA_DEFAULT="{\"conn_type\": \"banana\", \"host\": \"http://127.0.0.1:$port/\", \"password\": \"demo-api-key\", \"extra\": {\"model_key\": \"wordcount\"}}"

echo "Creating the Airflow metadata database (SQLite) ..."
"$VENV/bin/airflow" db migrate > "$work/db-migrate.log" 2>&1 || { tail -20 "$work/db-migrate.log"; exit 1; }
echo "Running: airflow dags test example_banana_inference"
status=0
"$VENV/bin/airflow" dags test example_banana_inference > "$work/dags-test.log" 2>&1 || status=$?

echo
grep -E "Banana (Start|call)|Started Banana call" "$work/dags-test.log" | sed -E 's/^[^ ]+ +\[[a-z ]+\] +//; s/ +\[airflow[^]]*\].*$//' || true
outputs=$(grep -o "Model outputs reached the downstream task: .*" "$work/dags-test.log" | head -1 || true)
if [ "$status" -ne 0 ] || [ -z "$outputs" ] || ! grep -q "DagRun Finished: .*state=success" "$work/dags-test.log"; then
    echo "The demo DAG did not succeed; the last lines of .demo/dags-test.log:" >&2
    tail -40 "$work/dags-test.log" >&2
    exit 1
fi
echo
echo "$outputs"
echo
echo "Demo finished in $(( $(date +%s) - began )) s. Full log: .demo/dags-test.log"
