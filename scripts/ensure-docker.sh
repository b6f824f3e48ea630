#!/usr/bin/env bash
# Make a Docker engine available for the end-to-end tests (CI runs as root on a fresh Debian 12):
# install Debian's docker.io, debootstrap, nginx-light and squid (site-cache tests) if missing, start dockerd if it is not
# answering, and make the local base image. Idempotent; safe to run at every CI start.
set -euo pipefail

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)  # the GitLab CI template's script runs in tests
command -v squid >/dev/null || [ -x /usr/sbin/squid ] || missing+=(squid)
if (( ${#missing[@]} )); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi

bash "$(dirname "$0")/make-base-image.sh"
