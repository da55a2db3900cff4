#!/usr/bin/env bash
# Start a local Prefect server, a process worker and (when a Docker engine answers and
# prefect-docker is installed) a docker worker for mucode, idempotently, and print the UI URL.
# Running `start` twice starts nothing new. Tests and CI use it too.
#
# Usage: scripts/prefect-server.sh [start|stop|status]      (default: start)
# Env:   PREFECT_HOME          state, database, results and logs (default ~/.prefect)
#        MUCODE_PREFECT_HOST   address to bind (default 127.0.0.1)
#        MUCODE_PREFECT_PORT   port (default 4200)
#        MUCODE_WORK_POOL      process work pool the worker serves (default mucode-process)
#        MUCODE_DOCKER_POOL    docker-type pool for the `*/docker` deployments (default
#                              mucode-docker; set it empty to skip). Created when prefect-docker
#                              is installed (pip install -e '.[docker]'), and served by a docker
#                              worker when `docker info` answers too; its containers (image
#                              mucode-trainer:latest, containers/build-trainer.sh) use the
#                              host network, the volume mucode-runs at /opt/mucode/runs (also
#                              their Prefect results), MUCODE_DATA_DIR at /data and the model
#                              cache (MUCODE_CACHE, default ~/.cache/mucode) at /cache/mucode.
#        PYTHON                Python with prefect installed (default .venv/bin/python, else python3)
#
# Logs and pid files: $PREFECT_HOME/mucode/{server,worker,docker-worker}.{log,pid}. `stop`
# ends only the processes this script started (their process groups, by the recorded ids).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
# `python -m prefect`, not the console script: a copied venv's scripts can name another interpreter.
PREFECT=("$PYTHON" -m prefect)
export PREFECT_HOME="${PREFECT_HOME:-$HOME/.prefect}"
HOST="${MUCODE_PREFECT_HOST:-127.0.0.1}"
PORT="${MUCODE_PREFECT_PORT:-4200}"
POOL="${MUCODE_WORK_POOL:-mucode-process}"
DOCKER_POOL="${MUCODE_DOCKER_POOL-mucode-docker}"
STATE="$PREFECT_HOME/mucode"
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# SQLite waits this long for a lock (Prefect's default, 10 s, answers 503 on a busy machine).
export PREFECT_SERVER_DATABASE_TIMEOUT="${PREFECT_SERVER_DATABASE_TIMEOUT:-60}"
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
    launch server "${PREFECT[@]}" server start --host "$HOST" --port "$PORT"
    for _ in $(seq 1 360); do  # 180 s: a cold start takes over a minute on a busy 2-core machine
        healthy && return
        [[ -f "$STATE/server.pid" ]] && ! alive server && break  # it exited: no point waiting
        sleep 0.5
    done
    echo "prefect-server.sh: the server did not answer within 180 s; last lines of $STATE/server.log:" >&2
    tail -n 20 "$STATE/server.log" >&2 || true
    stop_one server  # not left running half-started: the next `start` begins afresh
    exit 1
}

ensure_pool() {  # ensure_pool NAME TYPE [ARGS...]
    if ! "${PREFECT[@]}" work-pool inspect "$1" >/dev/null 2>&1; then
        "${PREFECT[@]}" work-pool create "$1" --type "$2" "${@:3}" >/dev/null
        echo "prefect-server.sh: created work pool $1 ($2)"
    fi
}

docker_job_template() {  # the docker worker's default job template with this machine's mounts as defaults
    "$PYTHON" - "$1" <<'PY'
import json, os, sys
from prefect_docker.worker import DockerWorker

template = DockerWorker.get_default_base_job_template()
defaults = {
    "network_mode": "host",  # the flow reports to the server at 127.0.0.1
    "volumes": ["mucode-runs:/opt/mucode/runs",
                f"{os.environ.get('MUCODE_CACHE') or os.path.expanduser('~/.cache/mucode')}:/cache/mucode"],
    # Cache records outlive the container; the worker's own PREFECT_HOME is a host path.
    "env": {"PREFECT_LOCAL_STORAGE_PATH": "/opt/mucode/runs/.prefect-results", "PREFECT_HOME": "/root/.prefect",
            "OMP_WAIT_POLICY": "PASSIVE"},  # torch threads yield the CPU: generation collapses under contention otherwise
    "image": "mucode-trainer:latest",
    "image_pull_policy": "Never",  # built here by containers/build-trainer.sh, never pulled
}
if os.environ.get("MUCODE_DATA_DIR"):
    defaults["volumes"].append(f"{os.environ['MUCODE_DATA_DIR']}:/data:ro")
    defaults["env"]["MUCODE_DATA_DIR"] = "/data"
for name, value in defaults.items():
    template["variables"]["properties"][name]["default"] = value
with open(sys.argv[1], "w") as out:
    json.dump(template, out)
PY
}

start_docker_worker() {
    if ! "$PYTHON" -c "import prefect_docker" 2>/dev/null; then
        echo "prefect-server.sh: no docker pool or worker (needs prefect-docker: pip install -e '.[docker]')"
        return
    fi
    # The pool exists even without an engine, so the `*/docker` deployments register (their runs wait for a worker).
    docker_job_template "$STATE/docker-job-template.json"
    if "${PREFECT[@]}" work-pool inspect "$DOCKER_POOL" >/dev/null 2>&1; then  # keep its mounts current
        "${PREFECT[@]}" work-pool update "$DOCKER_POOL" --base-job-template "$STATE/docker-job-template.json" >/dev/null
    else
        ensure_pool "$DOCKER_POOL" docker --base-job-template "$STATE/docker-job-template.json"
    fi
    if ! docker info >/dev/null 2>&1; then
        echo "prefect-server.sh: pool $DOCKER_POOL has no worker: no Docker engine answers (bash containers/setup-docker.sh)"
        return
    fi
    docker image inspect mucode-trainer:latest >/dev/null 2>&1 \
        || echo "prefect-server.sh: image mucode-trainer:latest is missing: bash containers/build-trainer.sh" >&2
    if alive docker-worker; then
        echo "prefect-server.sh: docker worker already running (pid $(cat "$STATE/docker-worker.pid"))"
        return
    fi
    echo "prefect-server.sh: starting a docker worker on pool $DOCKER_POOL (log: $STATE/docker-worker.log)"
    launch docker-worker "${PREFECT[@]}" worker start --pool "$DOCKER_POOL" --type docker
}

start_worker() {
    ensure_pool "$POOL" process
    if alive worker; then
        echo "prefect-server.sh: worker already running (pid $(cat "$STATE/worker.pid"))"
        return
    fi
    echo "prefect-server.sh: starting a process worker on pool $POOL (log: $STATE/worker.log)"
    (cd "$REPO" && launch worker "${PREFECT[@]}" worker start --pool "$POOL" --type process)
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
        if [[ -n "$DOCKER_POOL" ]]; then start_docker_worker; fi
        print_urls
        ;;
    stop)
        stop_one docker-worker
        stop_one worker
        stop_one server
        ;;
    status)
        if healthy; then echo "server: up at $PREFECT_API_URL"; else echo "server: down"; fi
        if alive worker; then echo "worker: running (pid $(cat "$STATE/worker.pid"))"; else echo "worker: not running"; fi
        if alive docker-worker; then echo "docker worker: running (pid $(cat "$STATE/docker-worker.pid"))"; else echo "docker worker: not running"; fi
        ;;
    *)
        echo "prefect-server.sh: unknown command '$1': use start, stop or status" >&2
        exit 2
        ;;
esac
