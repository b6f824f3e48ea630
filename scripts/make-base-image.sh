#!/usr/bin/env bash
# Build the runtime image's base locally: debootstrap'd Debian bookworm (minbase) with python3,
# python3-venv, nginx-light, squid (the site cache) and ca-certificates, imported into Docker as a single-layer image.
#
# Why: the machines that build and test this project reach no container registry, so the base
# image cannot be pulled. Doing the apt work here also means the Dockerfile needs no apt at build
# time, only pip.
#
# Idempotent: exits at once when the tag exists (FORCE=1 rebuilds).
#
# Environment:
#   BASE_IMAGE      tag to create (default cvmfs-ephemeral-base:bookworm)
#   DEBIAN_MIRROR   apt mirror (default http://deb.debian.org/debian)
#   EXTRA_CA_DIR    folder of extra *.crt CA certificates to trust inside the image, e.g. those of a
#                   TLS-intercepting proxy between the build host and PyPI (default
#                   /usr/local/share/ca-certificates, the host's own local CAs; empty: none)
#   FORCE=1         rebuild even if the tag exists
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-cvmfs-ephemeral-base:bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
EXTRA_CA_DIR="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"
PACKAGES="python3,python3-venv,nginx-light,squid,ca-certificates"

if [[ "${FORCE:-0}" != "1" ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "base image $BASE_IMAGE already present"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap not installed (apt-get install debootstrap)" >&2; exit 1; }

root="$(mktemp -d /var/tmp/cvmfs-ephemeral-base.XXXXXX)"
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$DEBIAN_MIRROR"

if [[ -n "$EXTRA_CA_DIR" && -d "$EXTRA_CA_DIR" ]]; then
    shopt -s nullglob
    certs=("$EXTRA_CA_DIR"/*.crt)
    if (( ${#certs[@]} )); then
        cp "${certs[@]}" "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null
    fi
fi

# nginx from Debian starts a root master and enables a default site; the image runs nginx as an
# unprivileged user with its own config, so drop what would only confuse.
rm -f "$root/etc/nginx/sites-enabled/default"
# squid likewise runs unprivileged with the configuration the SiteCache component renders.
# Shrink: package caches, lists, docs and logs are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/var/log/*.log "$root"/var/cache/debconf/*-old

tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE"
echo "created base image $BASE_IMAGE"
