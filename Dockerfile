# The cvmfs-ephemeral images, two stages of one file:
# - `stratum0`: nginx serving the data volume read-only (config, health check, runtime user);
# - `runtime` (the default, last stage), built on it: every role (stratum-0 nginx, upload
#   service, notification gateway, maintenance). Roles differ only by command; see
#   components/contract.py.
# The Pulumi program deploys the stratum0 stage for the read path, so a runtime code change
# never replaces or rolls the read path (components/image.py hashes each stage's inputs).
#
# The base must already provide python3, python3-venv, nginx-light, squid (the site cache) and
# ca-certificates, so that
# this build needs no apt and no registry: scripts/make-base-image.sh makes one from debootstrap.
# Only PyPI is reached, for the hashed runtime lock (runtime/requirements.lock).
ARG BASE_IMAGE=cvmfs-ephemeral-base:bookworm
FROM ${BASE_IMAGE} AS stratum0

ENV LANG=C.UTF-8

# The unprivileged user of every container, and the directories it owns. The config directory
# is where keys and token files are mounted (Kubernetes) or uploaded (Docker volumes take the
# ownership of these directories when first mounted).
RUN groupadd --gid 10001 cvmfs \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/cvmfs-ephemeral \
        --no-create-home --shell /usr/sbin/nologin cvmfs \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/cvmfs-ephemeral \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/squid-cvmfs \
 && install -d -o 10001 -g 10001 -m 0700 /etc/cvmfs-ephemeral \
        /etc/cvmfs-ephemeral/keys /etc/cvmfs-ephemeral/secrets

COPY deploy/nginx/stratum0.conf /etc/nginx/stratum0.conf
COPY deploy/image/healthcheck.py /usr/local/bin/cvmfs-ephemeral-healthcheck
RUN chmod 0755 /usr/local/bin/cvmfs-ephemeral-healthcheck \
 && nginx -t -q -c /etc/nginx/stratum0.conf \
 && rm -rf /tmp/nginx*

USER 10001:10001
WORKDIR /var/lib/cvmfs-ephemeral
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["cvmfs-ephemeral-healthcheck", "8000"]
CMD ["nginx", "-c", "/etc/nginx/stratum0.conf"]


FROM stratum0 AS runtime
USER root

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/cvmfs-ephemeral/venv \
    PYTHONPATH=/opt/cvmfs-ephemeral/app \
    PATH=/opt/cvmfs-ephemeral/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CVMFS_EPHEMERAL_DATA_DIR=/var/lib/cvmfs-ephemeral \
    CVMFS_EPHEMERAL_KEYS_DIR=/etc/cvmfs-ephemeral/keys

# Dependencies first: this layer is reused until the lock changes. The lock pins every
# transitive dependency with its hashes (scripts/lock.sh), so the image tag, a hash of this
# build context, means the same installed bytes on any day.
COPY runtime/requirements.lock /opt/cvmfs-ephemeral/requirements.lock
RUN python3 -m venv /opt/cvmfs-ephemeral/venv \
 && /opt/cvmfs-ephemeral/venv/bin/pip install --no-cache-dir --require-hashes \
        -r /opt/cvmfs-ephemeral/requirements.lock \
 && find /opt/cvmfs-ephemeral/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/cvmfs-ephemeral/venv/bin/python -m compileall -q /opt/cvmfs-ephemeral/venv

COPY deploy/image/cvmfs-ephemeral /usr/local/bin/cvmfs-ephemeral
COPY runtime /opt/cvmfs-ephemeral/app/runtime
# Byte-compile at build time: the root filesystem is read-only at run time.
RUN chmod 0755 /usr/local/bin/cvmfs-ephemeral \
 && python -m compileall -q /opt/cvmfs-ephemeral/app
# The release this image was built from (image.revision; the OCI revision label).
ARG REVISION=""
LABEL org.opencontainers.image.revision="${REVISION}"

USER 10001:10001
WORKDIR /var/lib/cvmfs-ephemeral
EXPOSE 8000 8080 4929
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["cvmfs-ephemeral-healthcheck", "8080"]
# The embedded default: every role in one process.
CMD ["python", "-m", "runtime", "serve", "--role", "all", "--host", "0.0.0.0", "--port", "8080"]
