#!/usr/bin/env bash
# Make this machine ready for the Docker sandbox tests, idempotently (CI calls it before
# the test suite; running it twice does nothing new):
#   1. install docker.io and debootstrap if missing (apt);
#   2. start dockerd in the background if no engine answers, and wait until it does;
#   3. build the base image (debootstrap + docker import) if it is absent;
#   4. build the sandbox image from containers/sandbox.Dockerfile (cached layers make a
#      rebuild cheap, and it picks up any change to the worker). The docker CLI builds it,
#      as `mucode sandbox build` (mucode.sandbox.docker.build_image) would, because CI
#      runs this before the project's virtualenv exists.
# Env: BASE_TAG (mucode-base:bookworm), SANDBOX_TAG (mucode-sandbox:latest).
# Needs root (apt, dockerd). Does not run any test.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_TAG="${BASE_TAG:-mucode-base:bookworm}"
SANDBOX_TAG="${SANDBOX_TAG:-mucode-sandbox:latest}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/mucode-dockerd.log}"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    echo "setup-docker.sh: installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    echo "setup-docker.sh: starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: the engine must outlive this script and the CI step that runs it.
    setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup-docker.sh: dockerd did not come up within 60 s; last lines of $DOCKERD_LOG:" >&2
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
fi

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    bash "$REPO/containers/build-base.sh" "$BASE_TAG"
fi

echo "setup-docker.sh: building $SANDBOX_TAG from $BASE_TAG"
docker build --quiet --network none --build-arg "BASE_IMAGE=$BASE_TAG" -t "$SANDBOX_TAG" \
    -f "$REPO/containers/sandbox.Dockerfile" "$REPO/mucode/sandbox/worker"
# Earlier builds of the sandbox image, now untagged, only take disk space.
docker image prune --force --filter "label=mucode.sandbox.image=worker" >/dev/null
echo "setup-docker.sh: ready"
