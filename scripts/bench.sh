#!/usr/bin/env bash
# Run the benchmark suite (benchmarks/README.md): triggerer capacity against polling baselines, the
# hook against the official banana-dev SDK, the operator's import cost, the local server's capacity.
# About 10 minutes on a 2-core machine; --full adds N=10,000 (about 15 minutes more) and one batch
# task against dynamic task mapping on real Airflow components (about 50 minutes; alone:
# --only batch). Every request goes to a local server on 127.0.0.1. Arguments go to
# `python -m benchmarks` (--help lists them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

# The official SDK to compare the hook with: 4.0.2 is the last release that spoke v4. It needs only
# requests (>=2.26,<3), which Airflow's own pins satisfy, so it goes into the same venv.
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; raise SystemExit(m.version("banana-dev") != "4.0.2")' 2>/dev/null; then
    find_uv  # from bootstrap.sh
    "$UV" pip install --quiet --python "$VENV/bin/python" banana-dev==4.0.2
fi

echo "Load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$VENV/bin/python" -m benchmarks "$@"
