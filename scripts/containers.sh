# Sourced by image.sh and image_test: buildah and podman where no Docker engine runs.
# Installs them if missing (Debian), configures them for an unprivileged sandbox (chroot
# isolation, cgroupfs, file events, explicit ulimits), and makes the base image with
# debootstrap, since no registry can be reached to pull one. Exports BASE_IMAGE.

BASE_IMAGE=${BASE_IMAGE:-localhost/objdetect-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CONFIG_DIR=$PWD/build/containers

if ! command -v buildah >/dev/null || ! command -v podman >/dev/null; then
  echo "image: installing buildah and podman" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah podman debootstrap \
    runc uidmap netavark aardvark-dns containernetworking-plugins >/dev/null
fi

mkdir -p "$CONFIG_DIR"
cat >"$CONFIG_DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$CONFIG_DIR/storage.conf" <<EOF
[storage]
driver = "${STORAGE_DRIVER:-overlay}"
runroot = "/var/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
export CONTAINERS_CONF=$CONFIG_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$CONFIG_DIR/storage.conf
export BUILDAH_ISOLATION=chroot

if ! podman image exists "$BASE_IMAGE"; then
  echo "image: making $BASE_IMAGE with debootstrap (about a minute)" >&2
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
  # A slim base: no package caches, docs, man pages or locales (as the python:*-slim images).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
  tar --numeric-owner -C "$rootfs" -cf - . | podman import --quiet - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi
export BASE_IMAGE
