#!/usr/bin/env bash
# The production topology as a test: PostgreSQL, Redis, CeleryExecutor with one worker, two
# triggerers, api-server, scheduler and dag-processor, all on 127.0.0.1, running every example DAG
# and the kill scenarios of tests/production.py, which prints a table of what it measured.
#
# Installs the `production` extra into .venv, and PostgreSQL and Redis from the Debian packages
# when they are missing (apt-get, as root or through sudo; package scripts start no service). Runs
# its own PostgreSQL cluster and Redis server in a temporary directory, never the system's, and
# stops everything it started on exit, failure or interrupt. Bounded: the driver gets
# BANANA_PRODUCTION_TIMEOUT seconds (default 900), every wait inside it has its own deadline.
#
#   KEEP=1   keep the temporary directory (logs, pg_dump, Redis dumps) even when the test passes;
#            it is always kept when the test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
SECONDS=0
TIME_LIMIT="${BANANA_PRODUCTION_TIMEOUT:-900}"
PY="$VENV/bin/python"

say() { echo "== $*" >&2; }

# -- Python packages: the production extra (Celery provider, Celery, Redis client, PostgreSQL drivers)
# Always asked for (uv does nothing when all is in place), so that its pins hold: an import check
# would pass with a Celery the provider cannot load.
find_uv
constraints=()
if [ -f "$ROOT/constraints/airflow-${AIRFLOW_VERSION%.*}.txt" ]; then
    constraints=(--constraint "$ROOT/constraints/airflow-${AIRFLOW_VERSION%.*}.txt")
fi
"$UV" pip install --quiet --python "$PY" ${constraints[@]+"${constraints[@]}"} \
    "apache-airflow==$AIRFLOW_VERSION" -e "$ROOT[dev,production]"

# -- Debian packages: PostgreSQL and Redis -----------------------------------------------------------
pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/pg_dump" ]; then
            echo "$dir"
            return
        fi
    done
}
PG_BIN="${PG_BIN:-$(pg_bin)}"
missing=()
[ -n "$PG_BIN" ] || missing+=(postgresql)
command -v redis-server > /dev/null && command -v redis-cli > /dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages)"
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    # A package's scripts must not start the system's PostgreSQL or Redis: policy-rc.d refuses
    # (Docker images ship one that does; if there is none, one is put there for the install only).
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | ${sudo[@]+"${sudo[@]}"} tee /usr/sbin/policy-rc.d > /dev/null
        ${sudo[@]+"${sudo[@]}"} chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    status=0
    ${sudo[@]+"${sudo[@]}"} apt-get update -qq && ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" > /dev/null || status=$?
    [ -z "$added_policy" ] || ${sudo[@]+"${sudo[@]}"} rm -f /usr/sbin/policy-rc.d
    [ "$status" = 0 ] || { echo "error: apt-get install ${missing[*]} failed ($status)" >&2; exit 1; }
    PG_BIN="${PG_BIN:-$(pg_bin)}"
fi

# -- our own PostgreSQL and Redis, in a temporary directory ------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/banana-production.XXXXXX")"
chmod 755 "$WORK"
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PG_PORT="$(free_port)"
REDIS_PORT="$(free_port)"
API_PORT="$(free_port)"
PG_DATA="$WORK/pg/data"
REDIS_PID=""
DRIVER_PID=""
PG_STARTED=""
as_pg=()
mkdir -p "$WORK/pg" "$WORK/redis"
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user the package made.
    id postgres > /dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$WORK/pg"
    as_pg=(runuser -u postgres --)
fi

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2> /dev/null; then
        # The driver (under `timeout`, the leader of its process group) stops its components on SIGTERM.
        kill -TERM -- "-$DRIVER_PID" 2> /dev/null || true
        for _ in $(seq 60); do kill -0 "$DRIVER_PID" 2> /dev/null || break; sleep 1; done
        kill -KILL -- "-$DRIVER_PID" 2> /dev/null || true
    fi
    # Anything still running with our Airflow home (a component the driver could not stop).
    "$PY" -m tests.production --sweep "$WORK/airflow-home" || true
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2> /dev/null || true
        wait "$REDIS_PID" 2> /dev/null || true
    fi
    if [ -n "$PG_STARTED" ]; then
        ${as_pg[@]+"${as_pg[@]}"} "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop > /dev/null 2>&1 \
            || ${as_pg[@]+"${as_pg[@]}"} "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop > /dev/null 2>&1 || true
    fi
    if [ "$rc" = 0 ] && [ -z "${KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "test-production: logs, pg_dump and Redis dumps kept in $WORK" >&2
    fi
    echo "test-production: $([ "$rc" = 0 ] && echo passed || echo "FAILED ($rc)") in ${SECONDS} s" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT, in $WORK/pg"
${as_pg[@]+"${as_pg[@]}"} "$PG_BIN/initdb" -D "$PG_DATA" -U airflow --auth=trust -E UTF8 --no-locale > "$WORK/pg/initdb.log"
PG_STARTED=1
${as_pg[@]+"${as_pg[@]}"} "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$WORK/pg -c max_connections=300" \
    > /dev/null
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U airflow airflow

say "Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$REDIS_PORT"
# No persistence, no compression: `redis-cli --rdb` then dumps every value as plain bytes to search.
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --rdbcompression no \
    --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" --daemonize no &
REDIS_PID=$!
for _ in $(seq 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2> /dev/null)" = PONG ] && break
    sleep 0.1
done
[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping)" = PONG ]

say "the scenarios (tests/production.py, at most $TIME_LIMIT s)"
# `timeout` leads a process group of its own: the trap can signal the driver and its devserver at once.
timeout -k 60 "$TIME_LIMIT" "$PY" -m tests.production --workdir "$WORK" --pg-port "$PG_PORT" --pg-bin "$PG_BIN" \
    --redis-port "$REDIS_PORT" --api-port "$API_PORT" &
DRIVER_PID=$!
status=0
wait "$DRIVER_PID" || status=$?
DRIVER_PID=""
[ "$status" != 124 ] || echo "error: the scenarios did not finish within $TIME_LIMIT s" >&2
exit "$status"
