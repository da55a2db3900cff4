#!/usr/bin/env bash
# Build the sandbox's base image without an image registry: a minimal Debian root file
# system with python3, made by debootstrap from the machine's own Debian mirror and loaded
# with `docker import`.
#
# Usage: bash containers/build-base.sh [TAG]        (default TAG: mucode-base:bookworm)
# Env:   MIRROR  Debian mirror URL (default: the first non-security Debian URI found in
#                /etc/apt/sources.list and /etc/apt/sources.list.d/*)
#        SUITE   Debian suite (default: bookworm)
#
# Does not start dockerd or build the sandbox image: containers/setup-docker.sh does that.
set -euo pipefail

TAG="${1:-mucode-base:bookworm}"
SUITE="${SUITE:-bookworm}"

find_debian_mirror() {
    # deb822 files ("URIs: http://...") and one-line files ("deb http://... suite ...").
    local files=()
    [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    grep -h -E '^[[:space:]]*(URIs:|deb[[:space:]])' "${files[@]}" \
        | grep -o -E 'https?://[^[:space:]]+' \
        | grep -E '/debian/?$' | grep -v -- '-security' | sed -n 1p  # sed reads on: no SIGPIPE under pipefail
}

MIRROR="${MIRROR:-$(find_debian_mirror)}"
if [[ -z "$MIRROR" ]]; then
    echo "build-base.sh: no Debian mirror found in /etc/apt/sources.list*; set MIRROR=http://deb.debian.org/debian" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { echo "build-base.sh: debootstrap is missing; run: apt-get install -y debootstrap" >&2; exit 2; }
command -v docker >/dev/null || { echo "build-base.sh: docker CLI is missing; run containers/setup-docker.sh" >&2; exit 2; }

ROOTFS="$(mktemp -d /var/tmp/mucode-rootfs.XXXXXX)"
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT

echo "build-base.sh: debootstrap $SUITE (minbase + python3) from $MIRROR"
debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOTFS" "$MIRROR"

# The image never runs apt: drop the package caches and lists to keep it small.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

echo "build-base.sh: docker import -> $TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$TAG"
echo "build-base.sh: built $TAG"
