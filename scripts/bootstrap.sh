#!/usr/bin/env bash
# Create or update .venv with the provider, Airflow and the dev tools. Sourced by demo.sh and test.sh.
#
#   AIRFLOW_VERSION=3.3.2   the Airflow to install (default 3.3.2); constraints/airflow-X.Y.txt pins
#                           an older release's dependencies when it exists
#   VENV=.venv              where to put the virtual environment
#   PYTHON=python3          the interpreter to build it from (3.10 or newer)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: $PYTHON is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
    exit 1
fi

# Set UV to a uv binary: the one on PATH, else one installed inside the venv. uv resolves and
# installs Airflow in seconds where pip takes minutes. Also used by bench.sh.
find_uv() {
    if command -v uv > /dev/null; then
        UV="$(command -v uv)"
        return
    fi
    UV="$VENV/bin/uv"
    if [ ! -x "$UV" ]; then
        "$VENV/bin/python" -m pip --version > /dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --upgrade > /dev/null
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv
    fi
}

stamp="$VENV/.banana-installed"
want="$AIRFLOW_VERSION $( { cat "$ROOT/pyproject.toml"; cat "$ROOT"/constraints/*.txt 2>/dev/null || true; } | cksum)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0 2>/dev/null || exit 0
fi

echo "Setting up $VENV (Airflow $AIRFLOW_VERSION) ..." >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
find_uv
constraints=()
series="${AIRFLOW_VERSION%.*}"
if [ -f "$ROOT/constraints/airflow-$series.txt" ]; then
    constraints=(--constraint "$ROOT/constraints/airflow-$series.txt")
fi
"$UV" pip install --quiet --python "$VENV/bin/python" "${constraints[@]}" \
    "apache-airflow==$AIRFLOW_VERSION" -e "$ROOT[dev]"
echo "$want" > "$stamp"
