#!/usr/bin/env bash
# Start a local Prefect server and a process worker for mucode, idempotently, and print the
# UI URL. Running `start` twice starts nothing new. Tests and CI use it too.
#
# Usage: scripts/prefect-server.sh [start|stop|status]      (default: start)
# Env:   PREFECT_HOME          state, database, results and logs (default ~/.prefect)
#        MUCODE_PREFECT_HOST   address to bind (default 127.0.0.1)
#        MUCODE_PREFECT_PORT   port (default 4200)
#        MUCODE_WORK_POOL      process work pool the worker serves (default mucode-process)
#        MUCODE_DOCKER_POOL    also create this docker-type pool, so `prefect deploy --all`
#                              can register the docker deployments (default mucode-docker;
#                              set it empty to skip). No docker worker is started: that
#                              needs `pip install prefect-docker` (see docs/orchestration.md).
#        PREFECT               the prefect CLI (default .venv/bin/prefect, else on PATH)
#
# Logs and pid files: $PREFECT_HOME/mucode/{server,worker}.{log,pid}. `stop` ends only the
# processes this script started (their process groups, by the recorded ids).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PREFECT:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/prefect" ]]; then PREFECT="$REPO/.venv/bin/prefect"; else PREFECT=prefect; fi
fi
export PREFECT_HOME="${PREFECT_HOME:-$HOME/.prefect}"
HOST="${MUCODE_PREFECT_HOST:-127.0.0.1}"
PORT="${MUCODE_PREFECT_PORT:-4200}"
POOL="${MUCODE_WORK_POOL:-mucode-process}"
DOCKER_POOL="${MUCODE_DOCKER_POOL-mucode-docker}"
STATE="$PREFECT_HOME/mucode"
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$STATE"

launch() {  # launch NAME COMMAND...: run COMMAND in its own session, logging to NAME.log
    local name="$1"
    shift
    rm -f "$STATE/$name.pid"
    # The session leader writes its own pid: that id is also its process group, which `stop`
    # ends as a whole (the server's and the worker's children included).
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$STATE/$name.pid" "$@" \
        >"$STATE/$name.log" 2>&1 </dev/null &
}

healthy() { curl -fsS --max-time 2 "$PREFECT_API_URL/health" >/dev/null 2>&1; }

alive() {  # alive NAME: the process recorded in NAME.pid is running
    local pid_file="$STATE/$1.pid"
    [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_server() {
    if healthy; then
        echo "prefect-server.sh: server already answering at $PREFECT_API_URL"
        return
    fi
    echo "prefect-server.sh: starting server on $HOST:$PORT (log: $STATE/server.log)"
    launch server "$PREFECT" server start --host "$HOST" --port "$PORT"
    for _ in $(seq 1 120); do
        healthy && return
        [[ -f "$STATE/server.pid" ]] && ! alive server && break  # it exited: no point waiting
        sleep 0.5
    done
    echo "prefect-server.sh: the server did not answer within 60 s; last lines of $STATE/server.log:" >&2
    tail -n 20 "$STATE/server.log" >&2 || true
    exit 1
}

ensure_pool() {  # ensure_pool NAME TYPE
    if ! "$PREFECT" work-pool inspect "$1" >/dev/null 2>&1; then
        "$PREFECT" work-pool create "$1" --type "$2" >/dev/null
        echo "prefect-server.sh: created work pool $1 ($2)"
    fi
}

start_worker() {
    ensure_pool "$POOL" process
    if [[ -n "$DOCKER_POOL" ]]; then
        ensure_pool "$DOCKER_POOL" docker || echo "prefect-server.sh: could not create docker pool $DOCKER_POOL (skipped)" >&2
    fi
    if alive worker; then
        echo "prefect-server.sh: worker already running (pid $(cat "$STATE/worker.pid"))"
        return
    fi
    echo "prefect-server.sh: starting a process worker on pool $POOL (log: $STATE/worker.log)"
    (cd "$REPO" && launch worker "$PREFECT" worker start --pool "$POOL" --type process)
    for _ in $(seq 1 20); do alive worker && return; sleep 0.25; done
    echo "prefect-server.sh: the worker did not start; last lines of $STATE/worker.log:" >&2
    tail -n 20 "$STATE/worker.log" >&2 || true
    exit 1
}

stop_one() {  # stop_one NAME: end the process group recorded in NAME.pid
    if alive "$1"; then
        local pid
        pid="$(cat "$STATE/$1.pid")"
        # SIGINT: a worker shuts down on it (it may sit through SIGTERM while the server is gone).
        kill -INT -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        echo "prefect-server.sh: stopped $1 (pid $pid)"
    fi
    rm -f "$STATE/$1.pid"
}

print_urls() {
    echo "Prefect UI:  http://$HOST:$PORT"
    echo "API for clients and \`prefect deploy\`:  export PREFECT_API_URL=$PREFECT_API_URL"
}

case "${1:-start}" in
    start)
        start_server
        start_worker
        print_urls
        ;;
    stop)
        stop_one worker
        stop_one server
        ;;
    status)
        if healthy; then echo "server: up at $PREFECT_API_URL"; else echo "server: down"; fi
        if alive worker; then echo "worker: running (pid $(cat "$STATE/worker.pid"))"; else echo "worker: not running"; fi
        ;;
    *)
        echo "prefect-server.sh: unknown command '$1': use start, stop or status" >&2
        exit 2
        ;;
esac
