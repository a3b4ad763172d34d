#!/usr/bin/env bash
# make image FLAVOR=cuda|cpu [MODEL=...]: build objdetect:$FLAVOR and print its sizes on one line.
# Uses docker buildx where a Docker engine runs; otherwise buildah (what works on the machines this
# project is built on: no Docker engine, no registry), with a Debian base made by debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOR=${FLAVOR:-cuda}
MODEL=${MODEL:-shapes}
TAG=objdetect:$FLAVOR
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BUILD_ARGS=(--build-arg "FLAVOR=$FLAVOR" --build-arg "MODEL=$MODEL"
            --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
SECRET=()
[ -s "$CA_BUNDLE" ] && SECRET=(--secret "id=cacert,src=$CA_BUNDLE")

if docker buildx version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker buildx build --load "${BUILD_ARGS[@]}" "${SECRET[@]}" -t "$TAG" .
  exec python3 scripts/image_size.py docker "$TAG"
fi

source scripts/containers.sh  # buildah/podman installed and configured; BASE_IMAGE made
# pip's local wheel mirrors (file:// indexes and find-links on this machine), mounted read-only.
MIRROR_ARGS=()
for key in extra-index-url find-links; do
  value=$(python3 -m pip config get "global.$key" 2>/dev/null || true)
  [ -n "$value" ] || continue
  for location in $value; do
    dir=${location#file://}
    dir=${dir%/simple}
    [ -d "$dir" ] && MIRROR_ARGS+=(-v "$dir:$dir:ro")
  done
  [ "$key" = extra-index-url ] && MIRROR_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$value")
  [ "$key" = find-links ] && MIRROR_ARGS+=(--build-arg "PIP_FIND_LINKS=$value")
done

# --force-rm: a failed build leaves no multi-GB working container behind. The layer cache of this
# build is kept; images of earlier builds that nothing tags any more are pruned (each is GBs).
buildah build --format docker --layers --force-rm --network host "${BUILD_ARGS[@]}" "${SECRET[@]}" "${MIRROR_ARGS[@]}" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$TAG" .
podman image prune --force >/dev/null
python3 scripts/image_size.py podman "$TAG"
