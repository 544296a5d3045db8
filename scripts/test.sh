#!/usr/bin/env bash
# Run every check the project has: ruff, mypy and the whole pytest suite (which starts its own
# local Banana server and Airflow components). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

echo "== ruff" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# The types are checked against the primary Airflow (3.3): an older one lacks names that the code
# imports only when they exist (fallbacks for 3.1), which mypy would report.
if [ "${AIRFLOW_VERSION%.*}" = "3.3" ]; then
    echo "== mypy" >&2
    "$VENV/bin/mypy"
else
    echo "== mypy skipped: types are checked against Airflow 3.3, this venv has $AIRFLOW_VERSION" >&2
fi
echo "== pytest" >&2
exec "$VENV/bin/python" -m pytest "$@"
