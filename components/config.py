"""The stack configuration: one typed model for every key under ``cvmfs-ephemeral:`` in a stack file.

Why a model rather than scattered ``pulumi.Config().get`` calls: a typo or a bad value must stop
``pulumi preview`` before any resource is planned, with one message that names the key the user
has to fix (``cvmfs-ephemeral:repositories[0].ttlS``), instead of a half-deployed stack or a
container that crash-loops on a setting the runtime rejects.

Keys are camelCase, as is usual in Pulumi stack files. Structured values (lists, objects) are
written as YAML in the stack file; Pulumi hands them to the program as JSON text.

Secrets (upload tokens, the maintenance token, imported keys) must be set with
``pulumi config set --secret``: the loader refuses them in plain text so that they are never
committed readable in a stack file.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Optional

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .schedule import parse_cron

#: The project name in Pulumi.yaml, hence the config namespace.
NAMESPACE = "cvmfs-ephemeral"

#: Same rule as the runtime (docs/cvmfs-format.md, "Conventions"): at least two dot-separated DNS-like
#: labels. Duplicated on purpose: components deploy the runtime, they never import it.
FQRN_RE = re.compile(r"^(?=.{3,253}$)[a-z0-9]([a-z0-9_-]{0,62})(\.[a-z0-9]([a-z0-9_-]{0,62}))+$")
#: Kubernetes object names and Docker resource prefixes: a DNS-1123 label, short enough that
#: suffixes such as ``-maintenance-files`` still fit in 63 characters.
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*[a-z0-9]$", re.IGNORECASE)

#: Keys whose values are credentials: rejected unless set as Pulumi secrets.
SECRET_KEYS = ("tokens", "maintenanceToken", "importedKeys")


class ConfigError(pulumi.RunError):
    """Bad stack configuration. A ``RunError`` so Pulumi prints the message without a traceback."""


class _Model(BaseModel):
    """Base of every config section: camelCase keys, unknown keys rejected, values frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _url(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not URL_RE.match(value):
        raise ValueError(f"{value!r} is not an http(s) URL such as 'http://cvmfs.example.org:8000'")
    return value.rstrip("/")


class RepositorySpec(_Model):
    """One CVMFS repository; the fields the runtime reads from ``CVMFS_EPHEMERAL_REPOSITORIES``."""

    fqrn: str
    ttl_s: int = Field(60, gt=0, description="catalog TTL: how often clients re-check")
    compression: Literal["none", "zlib"] = "none"
    #: Deflate level (1 fastest .. 9 smallest) of file content with ``compression: zlib``; unset
    #: means the runtime's default (4). Left out of the runtime JSON when unset, so a stack that
    #: does not set it keeps the same container environment (no restart on upgrade).
    compression_level: Optional[int] = Field(None, ge=1, le=9)
    chunk_size: int = Field(8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    volatile: bool = True
    garbage_collectable: bool = True
    #: gc grace of this repository (seconds); default ``signing.gcGraceS``, else the runtime's.
    gc_grace_s: Optional[int] = Field(None, ge=0)
    # -- retention -- (the runtime's RepositoryConfig block of the same name; unset: the
    # upload service's limits.defaultTtlS / limits.maxTtlS, never not allowed, no quota)
    #: lifetime of an upload that names none (seconds)
    default_lifetime_s: Optional[int] = Field(None, gt=0)
    #: longest lifetime an upload may ask for (seconds); longer asks are refused (422)
    max_lifetime_s: Optional[int] = Field(None, gt=0)
    #: whether uploads may ask for ``expire_in: never``
    allow_never: Optional[bool] = None
    #: bytes each top-level namespace may hold (an upload beyond is refused with 413)
    quota_bytes: Optional[int] = Field(None, gt=0)

    @field_validator("fqrn")
    @classmethod
    def _fqrn(cls, value: str) -> str:
        if not FQRN_RE.match(value):
            raise ValueError(
                f"invalid repository name {value!r}: expected a lowercase dotted name such as "
                "'ci.example.org' (at least one dot)"
            )
        return value

    @model_validator(mode="after")
    def _lifetimes(self) -> "RepositorySpec":
        if (self.default_lifetime_s is not None and self.max_lifetime_s is not None
                and self.default_lifetime_s > self.max_lifetime_s):
            raise ValueError("defaultLifetimeS must not exceed maxLifetimeS")
        return self

    def runtime_json(self) -> dict[str, Any]:
        """The object the runtime expects in ``CVMFS_EPHEMERAL_REPOSITORIES`` (snake_case keys)."""
        return self.model_dump(by_alias=False, exclude_none=True)

    def effective_gc_grace_s(self, global_grace_s: Optional[int]) -> int:
        """The grace gc applies to this repository (mirrors the runtime: 2 × TTL + 300 s)."""
        if self.gc_grace_s is not None:
            return self.gc_grace_s
        if global_grace_s is not None:
            return global_grace_s
        return 2 * self.ttl_s + 300


class ImageSpec(_Model):
    """Which runtime image the containers run: built from the repo's Dockerfile, or prebuilt."""

    #: Full reference of a prebuilt image (``registry.example.org/cvmfs-ephemeral:1.2``). When set,
    #: nothing is built.
    name: Optional[str] = None
    #: Repository part of the built image's reference; the tag is the build context's content hash.
    repository: str = "cvmfs-ephemeral"
    #: Base image (build argument ``BASE_IMAGE``); ``scripts/make-base-image.sh`` makes the default.
    base_image: str = "cvmfs-ephemeral-base:bookworm"
    #: Push the built image to ``repository``'s registry (needed when the cluster's nodes do not
    #: share the Docker engine that builds it). Credentials come from the engine's docker login.
    push: bool = False
    #: Release label of the runtime image (build argument ``REVISION``, the OCI revision label),
    #: e.g. the commit it was built from; part of the tag, like every build input.
    revision: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"

    @field_validator("name", "repository", "base_image")
    @classmethod
    def _ref(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not IMAGE_RE.match(value):
            raise ValueError(f"{value!r} is not an image reference")
        return value


class PortsSpec(_Model):
    """Published (Docker) or Service (Kubernetes) ports; container ports are fixed by the image."""

    stratum0: int = Field(8000, ge=1, le=65535)
    upload: int = Field(8080, ge=1, le=65535)
    gateway: int = Field(4929, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct(self) -> "PortsSpec":
        if len({self.stratum0, self.upload, self.gateway}) != 3:
            raise ValueError("stratum0, upload and gateway ports must differ")
        return self


class ResourceSpec(_Model):
    """Compute requests and limits for one container, as Kubernetes quantities."""

    cpu_request: str = "50m"
    cpu_limit: Optional[str] = None
    memory_request: str = "64Mi"
    memory_limit: str = "512Mi"

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit")
    @classmethod
    def _quantity(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not QUANTITY_RE.match(value):
            raise ValueError(f"{value!r} is not a quantity such as '250m', '512Mi' or '2'")
        return value

    def memory_limit_bytes(self) -> int:
        """The memory limit in bytes (Docker takes a number, not a quantity)."""
        return quantity_bytes(self.memory_limit)


def quantity_bytes(quantity: str) -> int:
    """Bytes in a Kubernetes memory quantity (``512Mi`` → 536870912)."""
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$", quantity)
    if not match:
        raise ValueError(f"bad quantity {quantity!r}")
    factors = {
        "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }
    return int(float(match.group(1)) * factors[match.group(2)])


class ResourcesSpec(_Model):
    """Per-role compute resources."""

    upload: ResourceSpec = ResourceSpec(cpu_request="100m", memory_limit="1Gi")
    stratum0: ResourceSpec = ResourceSpec(memory_limit="128Mi")
    gateway: ResourceSpec = ResourceSpec(memory_limit="256Mi")
    maintenance: ResourceSpec = ResourceSpec(memory_limit="256Mi")


class SchedulesSpec(_Model):
    """When maintenance runs (cron). Defaults: clean every minute, gc hourly, resign daily."""

    clean: str = "* * * * *"
    gc: str = "17 * * * *"
    resign: str = "43 3 * * *"

    @field_validator("clean", "gc", "resign")
    @classmethod
    def _cron(cls, value: str) -> str:
        parse_cron(value)
        return value

    def interval_s(self, job: Literal["clean", "gc", "resign"]) -> int:
        """Seconds between runs of ``job`` for the Docker scheduler (average of the cron)."""
        return parse_cron(getattr(self, job)).average_interval_s()


class StorageSpec(_Model):
    """Where the repository data lives.

    ``persistent``: a Docker named volume / a PersistentVolumeClaim. ``ephemeral``: a tmpfs volume /
    an emptyDir, lost with the container or pod; fine for CI artifacts, since the runtime's
    revision rule never goes backwards on an empty data directory.
    """

    kind: Literal["persistent", "ephemeral"] = "persistent"
    size: str = "10Gi"
    storage_class: Optional[str] = None
    #: Kubernetes: ``ReadWriteOnce`` (stratum-0 pods run on the writer's node, by pod affinity)
    #: or ``ReadWriteMany`` (stratum-0 pods spread over nodes).
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = "ReadWriteOnce"
    #: A persistent data store is protected and retained on delete: a change of one of its
    #: identity inputs (name, namespace, kind, storage class, access mode; Docker: driver
    #: options) would replace it, which fails ``pulumi preview``. ``true`` allows that replace,
    #: and with it the loss of the data. Set it for one ``pulumi up``, then remove it.
    allow_replace: bool = False

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not QUANTITY_RE.match(value):
            raise ValueError(f"{value!r} is not a size such as '10Gi'")
        return value


class TokenSpec(_Model):
    """One static token; ``repository`` restricts it to one repository, ``prefix`` to artifact
    names starting with it. ``role: admin`` also reaches the maintenance routes."""

    token: str = Field(min_length=16)
    repository: Optional[str] = None
    #: Names the token in logs, provenance and the ``tokenScopes`` output; default ``upload-<n>``.
    label: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}$")
    role: Literal["upload", "admin"] = "upload"
    prefix: Optional[str] = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _admin_prefix(self) -> "TokenSpec":
        if self.role == "admin" and self.prefix is not None:
            raise ValueError("an admin token cannot have a prefix")
        return self

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if any(c.isspace() for c in value):
            raise ValueError("a token must not contain whitespace")
        return value


class OidcPolicySpec(_Model):
    """A trust policy: claim matchers -> repository and namespace prefix (runtime/auth/policy.py)."""

    name: str = ""
    claims: dict[str, Any] = Field(min_length=1)
    repository: str
    prefix: Optional[str] = None
    role: Literal["upload"] = "upload"
    max_ttl_s: Optional[int] = Field(None, gt=0)
    quota_bytes: Optional[int] = Field(None, gt=0)


class OidcIssuerSpec(_Model):
    """A trusted CI identity issuer (GitHub.com/GHES, GitLab.com/self-managed)."""

    issuer: str
    audience: str = Field(min_length=1)
    name: str = ""
    jwks_uri: Optional[str] = None
    web_url: Optional[str] = None
    policies: list[OidcPolicySpec] = Field(min_length=1)

    @field_validator("issuer", "jwks_uri", "web_url")
    @classmethod
    def _https(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"{value!r} must be an https URL")
        return value


class OidcSpec(_Model):
    """Trusted publishing: CI jobs authenticate with their identity token, no stored secret."""

    issuers: list[OidcIssuerSpec] = Field(default_factory=list)

    def runtime_json(self) -> str:
        """``CVMFS_EPHEMERAL_OIDC``: snake_case keys, compact and key-sorted (stable)."""
        data = {"issuers": [i.model_dump(by_alias=False, exclude_none=True) for i in self.issuers]}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


class ImportedKeySpec(_Model):
    """Keys of an existing repository (PEM), instead of generating new ones."""

    master_key: str
    repository_key: str
    certificate: str

    @field_validator("master_key", "repository_key")
    @classmethod
    def _private(cls, value: str) -> str:
        if "PRIVATE KEY-----" not in value:
            raise ValueError("expected a PEM private key ('-----BEGIN ... PRIVATE KEY-----')")
        return value

    @field_validator("certificate")
    @classmethod
    def _cert(cls, value: str) -> str:
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("expected a PEM certificate ('-----BEGIN CERTIFICATE-----')")
        return value


class KeysSpec(_Model):
    """How the generated repository keys are held in the stack."""

    #: ``protect`` the generated keys (and so the repository identity clients trust): deleting or
    #: replacing them, ``pulumi destroy`` included, then needs ``pulumi state unprotect``.
    protect: bool = True


class LimitsSpec(_Model):
    """Upload limits enforced by the upload service."""

    max_artifact_bytes: int = Field(4 * 1024**3, gt=0)
    default_ttl_s: int = Field(7200, gt=0)
    max_ttl_s: int = Field(30 * 24 * 3600, gt=0)
    #: Segments an artifact name may have (``team-a/app/pr-123`` is 3). Unset: the runtime's
    #: default (4), and the upload container's environment stays as it was.
    max_name_depth: Optional[int] = Field(None, ge=1, le=32)

    @model_validator(mode="after")
    def _order(self) -> "LimitsSpec":
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("defaultTtlS must not exceed maxTtlS")
        return self


class SigningSpec(_Model):
    """Whitelist lifetime and garbage-collection grace."""

    whitelist_validity_days: int = Field(30, ge=1, le=365)
    resign_below_days: int = Field(20, ge=0)
    gc_grace_s: Optional[int] = Field(None, ge=0)

    @model_validator(mode="after")
    def _order(self) -> "SigningSpec":
        if self.resign_below_days >= self.whitelist_validity_days:
            raise ValueError("resignBelowDays must be less than whitelistValidityDays")
        return self


class DockerSpec(_Model):
    """Docker target options."""

    #: Host address the published ports bind to; ``0.0.0.0`` to serve other machines.
    bind_address: str = "127.0.0.1"
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "unless-stopped"
    #: json-file log rotation of every container: size of one file, files kept.
    log_max_size: str = Field("10m", pattern=r"^[0-9]+[kmg]$")
    log_max_files: int = Field(3, ge=1, le=100)


class IngressSpec(_Model):
    """An optional Ingress in front of stratum 0, the gateway and the upload API.

    Two Ingress objects, because ingress-nginx annotations apply per object: one for stratum 0
    and the upload API (request buffering off, no body size limit: uploads stream through), one
    for the notification subscriptions (long read timeout, no response buffering).
    """

    host: str
    class_name: Optional[str] = None
    tls_secret_name: Optional[str] = None
    #: Extra annotations of both objects (they override the defaults above).
    annotations: dict[str, str] = Field(default_factory=dict)
    #: How long a notification stream may stay idle at the ingress (the gateway's keep-alives
    #: come much more often).
    notifications_timeout_s: int = Field(3600, ge=60, le=86400)
    #: Also route the admin routes (``/clean``, ``/gc``, ``/resign``, ``/housekeeping``) and
    #: ``/metrics`` to the public host. Off: they stay reachable inside the cluster only.
    expose_admin: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not HOST_RE.match(value):
            raise ValueError(f"{value!r} is not a DNS host name")
        return value


class ParentRefSpec(_Model):
    """A Gateway API parent (the Gateway the HTTPRoute attaches to)."""

    name: str
    namespace: Optional[str] = None
    section_name: Optional[str] = None


class HTTPRouteSpec(_Model):
    """A Gateway API ``HTTPRoute`` (gateway.networking.k8s.io/v1), beside or instead of Ingress."""

    parent_refs: list[ParentRefSpec] = Field(min_length=1)
    hostnames: list[str] = Field(default_factory=list)
    #: Route the admin routes and ``/metrics`` too (see ``IngressSpec.exposeAdmin``).
    expose_admin: bool = False

    @field_validator("hostnames")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not HOST_RE.match(host):
                raise ValueError(f"{host!r} is not a DNS host name")
        return value


class NetworkPolicySpec(_Model):
    """NetworkPolicies: only the ingress controller and the maintenance jobs reach the upload
    API; only the upload service (and the ingress controller, for subscriptions) reach the
    gateway, whose publish route the Ingress does not expose. Stratum 0 stays open."""

    enabled: bool = True
    #: Namespace of the ingress controller (or Gateway implementation) pods.
    ingress_namespace: str = "ingress-nginx"


class KubernetesSpec(_Model):
    """Kubernetes target options."""

    namespace: Optional[str] = None
    create_namespace: bool = True
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    #: Annotations per Service (``stratum0``, ``upload``, ``gateway``): load balancer settings...
    service_annotations: dict[Literal["stratum0", "upload", "gateway"], dict[str, str]] = Field(
        default_factory=dict
    )
    ingress: Optional[IngressSpec] = None
    http_route: Optional[HTTPRouteSpec] = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    #: The cluster's DNS domain (internal URLs are ``<service>.<namespace>.svc.<domain>``).
    cluster_domain: str = "cluster.local"
    #: Replicas of the read path (nginx serving the data volume read-only); persistent storage.
    stratum0_replicas: int = Field(2, ge=2, le=50)
    network_policy: NetworkPolicySpec = NetworkPolicySpec()
    #: Name of a local kind cluster: the built image is loaded into it (``kind load
    #: docker-image``) before the workloads are created, so nothing is pushed.
    kind_cluster: Optional[str] = None

    @field_validator("cluster_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not HOST_RE.match(value):
            raise ValueError(f"{value!r} is not a DNS domain such as 'cluster.local'")
        return value

    @field_validator("namespace")
    @classmethod
    def _ns(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", value):
            raise ValueError(f"{value!r} is not a namespace name (DNS-1123 label)")
        return value


class VerifySpec(_Model):
    """The post-deploy check: fetch and verify each repository's signed files after ``pulumi up``."""

    enabled: bool = True
    #: Base of the stratum-0 URLs as seen from the machine running ``pulumi up`` (``…/cvmfs``).
    #: Default: the Docker target's published port on 127.0.0.1, or ``publicUrl`` + ``/cvmfs``.
    url: Optional[str] = None
    timeout_s: int = Field(120, ge=1, le=3600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: Optional[str]) -> Optional[str]:
        return _url(value)


# -- site cache and stratum-1 replication (site cache / replicas area) ------------------------

#: Networks the site cache serves by default: RFC 1918, RFC 4193 and loopback.
DEFAULT_CACHE_CLIENT_NETWORKS = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7", "::1",
)
CIDR_RE = re.compile(r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$")
#: Squid's own memory beyond ``cache_mem`` (index, buffers, connections): kept free in the limit.
SQUID_OVERHEAD_MIB = 128


class SiteCacheSpec(_Model):
    """A squid site cache in front of stratum 0; client configs point at it when enabled."""

    enabled: bool = False
    #: ``Deployment`` (``replicas`` pods behind one Service) or ``DaemonSet`` (one per node).
    kind: Literal["Deployment", "DaemonSet"] = "Deployment"
    replicas: int = Field(2, ge=1, le=100)
    #: Published (Docker) or Service (Kubernetes) port; the CVMFS convention is 3128.
    port: int = Field(3128, ge=1, le=65535)
    resources: ResourceSpec = ResourceSpec(
        cpu_request="100m", memory_request="512Mi", memory_limit="1Gi"
    )
    memory_cache_mb: int = Field(256, ge=8)
    #: 0: memory only (no disk cache).
    disk_cache_mb: int = Field(10_000, ge=0, le=10_000_000)
    client_networks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CACHE_CLIENT_NETWORKS), min_length=1
    )
    #: Let clients go straight to stratum 0 when every cache is down (``;DIRECT``).
    allow_direct_fallback: bool = False
    #: Base URL clients use for the cache (``http://squid.example.org:3128``); default per target.
    public_url: Optional[str] = None
    #: Image with Debian's squid; default: the runtime image (its base carries squid).
    image: Optional[str] = None

    @field_validator("client_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            if not CIDR_RE.match(cidr):
                raise ValueError(f"{cidr!r} is not an IP network such as '10.0.0.0/8'")
        return value

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: Optional[str]) -> Optional[str]:
        value = _url(value)
        if value is not None and not value.startswith("http://"):
            raise ValueError("a proxy URL is plain http ('http://squid.example.org:3128')")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not IMAGE_RE.match(value):
            raise ValueError(f"{value!r} is not an image reference")
        return value

    @model_validator(mode="after")
    def _fits(self) -> "SiteCacheSpec":
        needed = (self.memory_cache_mb + SQUID_OVERHEAD_MIB) * 2**20
        if needed > self.resources.memory_limit_bytes():
            raise ValueError(
                f"memoryCacheMb ({self.memory_cache_mb}) plus squid's own "
                f"~{SQUID_OVERHEAD_MIB} MiB must fit in resources.memoryLimit "
                f"({self.resources.memory_limit})"
            )
        return self


class Stratum1Spec(_Model):
    """How stratum 1s replicate this stack (they are run by their operators, not deployed here)."""

    #: How often the stratum 1s run ``cvmfs_server snapshot``; every repository's gc grace must
    #: exceed it, or gc could delete objects a snapshot in progress still has to fetch.
    snapshot_interval_s: Optional[int] = Field(None, ge=60, le=7 * 86400)


class StackConfig(_Model):
    """Everything one stack deploys."""

    target: Literal["docker", "kubernetes"]
    name: str = "cvmfs-ephemeral"
    repositories: list[RepositorySpec] = Field(min_length=1)
    #: Base URL clients use for stratum 0 (``http://cvmfs.example.org:8000``); default per target.
    public_url: Optional[str] = None
    #: Base URL of the notification gateway for clients (``http://cvmfs.example.org:4929``).
    notification_url: Optional[str] = None
    #: Base URL of the upload API for CI (``https://cvmfs.example.org``).
    upload_url: Optional[str] = None
    image: ImageSpec = ImageSpec()
    ports: PortsSpec = PortsSpec()
    resources: ResourcesSpec = ResourcesSpec()
    schedules: SchedulesSpec = SchedulesSpec()
    storage: StorageSpec = StorageSpec()
    tokens: list[TokenSpec] = Field(default_factory=list)
    maintenance_token: Optional[str] = Field(None, min_length=16)
    oidc: OidcSpec = OidcSpec()
    imported_keys: dict[str, ImportedKeySpec] = Field(default_factory=dict)
    keys: KeysSpec = KeysSpec()
    limits: LimitsSpec = LimitsSpec()
    signing: SigningSpec = SigningSpec()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    docker: DockerSpec = DockerSpec()
    kubernetes: KubernetesSpec = KubernetesSpec()
    verify: VerifySpec = VerifySpec()
    site_cache: SiteCacheSpec = SiteCacheSpec()
    stratum1: Stratum1Spec = Stratum1Spec()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid name: lowercase letters, digits and '-', "
                "starting with a letter, at most 40 characters"
            )
        return value

    @field_validator("public_url", "notification_url", "upload_url")
    @classmethod
    def _urls(cls, value: Optional[str]) -> Optional[str]:
        return _url(value)

    @model_validator(mode="after")
    def _cross(self) -> "StackConfig":
        names = [r.fqrn for r in self.repositories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"repository configured twice: {', '.join(dupes)}")
        for fqrn in self.imported_keys:
            if fqrn not in names:
                raise ValueError(f"importedKeys names {fqrn!r}, which is not in repositories")
        if self.kubernetes.kind_cluster is not None and self.image.push:
            raise ValueError(
                "kubernetes.kindCluster loads the locally built image into the cluster: "
                "set image.push to false"
            )
        for i, token in enumerate(self.tokens):
            if token.repository is not None and token.repository not in names:
                raise ValueError(
                    f"tokens[{i}].repository {token.repository!r} is not in repositories"
                )
        labels = [t.label for t in self.tokens if t.label is not None]
        if len(labels) != len(set(labels)) or "maintenance" in labels:
            raise ValueError("token labels must be unique and not 'maintenance'")
        for i, issuer in enumerate(self.oidc.issuers):
            for j, policy in enumerate(issuer.policies):
                if policy.repository not in names:
                    raise ValueError(f"oidc.issuers[{i}].policies[{j}].repository "
                                     f"{policy.repository!r} is not in repositories")
        self._check_replication()
        self._check_lifetimes()
        if self.site_cache.enabled and self.site_cache.port in (
            self.ports.stratum0, self.ports.upload, self.ports.gateway
        ):
            raise ValueError("siteCache.port must differ from the stratum0, upload and gateway ports")
        return self

    def _check_lifetimes(self) -> None:
        """-- retention: each repository's default lifetime within its maximum, the upload
        limits filling in what it leaves unset (the runtime refuses to start otherwise)."""
        for i, repo in enumerate(self.repositories):
            default = (repo.default_lifetime_s if repo.default_lifetime_s is not None
                       else self.limits.default_ttl_s)
            maximum = (repo.max_lifetime_s if repo.max_lifetime_s is not None
                       else self.limits.max_ttl_s)
            if default > maximum:
                raise ValueError(
                    f"repositories[{i}] ({repo.fqrn}): default lifetime {default} s exceeds "
                    f"the maximum lifetime {maximum} s; set repositories[].defaultLifetimeS "
                    "or repositories[].maxLifetimeS")

    def _check_replication(self) -> None:
        """A stratum 1 snapshotting every N s needs superseded objects for longer than N s."""
        interval = self.stratum1.snapshot_interval_s
        if interval is None:
            return
        for i, repo in enumerate(self.repositories):
            grace = repo.effective_gc_grace_s(self.signing.gc_grace_s)
            if grace <= interval:
                raise ValueError(
                    f"repositories[{i}] ({repo.fqrn}): gc grace {grace} s must exceed "
                    f"stratum1.snapshotIntervalS ({interval} s), or gc may delete objects a "
                    "stratum-1 snapshot still fetches; raise repositories[].gcGraceS or "
                    "signing.gcGraceS"
                )

    def recommended_snapshot_interval_s(self) -> int:
        """The configured snapshot interval, else the shortest TTL rounded up to whole minutes
        (cron's granularity), capped below every repository's gc grace."""
        if self.stratum1.snapshot_interval_s is not None:
            return self.stratum1.snapshot_interval_s
        ttl = min(r.ttl_s for r in self.repositories)
        interval = max(60, -(-ttl // 60) * 60)
        grace = min(r.effective_gc_grace_s(self.signing.gc_grace_s) for r in self.repositories)
        while interval >= grace and interval > 60:
            interval -= 60
        return interval

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace (defaults to the deployment name)."""
        return self.kubernetes.namespace or self.name


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(
            ("function-", "literal[", "nullable")
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = _loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{NAMESPACE}:{key}: {msg}" if key else f"{NAMESPACE}: {msg}")
    return "invalid stack configuration: " + "; ".join(lines)


def _decode(raw: Any) -> Any:
    """Pulumi passes structured config as JSON text and scalars as plain text."""
    if isinstance(raw, str) and raw.strip()[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def parse_stack_config(raw: dict[str, Any], secret_keys: set[str] = frozenset()) -> StackConfig:
    """Validate ``raw`` (top-level key → raw value, without the namespace) into a StackConfig.

    ``secret_keys`` names the top-level keys that were set as secrets; credentials outside it are
    refused. Raises ``ConfigError`` with every problem, each naming its full key.
    """
    known = {field.alias or name for name, field in StackConfig.model_fields.items()}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            "invalid stack configuration: "
            + "; ".join(f"{NAMESPACE}:{k}: unknown key" for k in unknown)
            + f" (known keys: {', '.join(sorted(known))})"
        )
    plain = [k for k in SECRET_KEYS if k in raw and k not in secret_keys]
    if plain:
        raise ConfigError(
            "invalid stack configuration: "
            + "; ".join(
                f"{NAMESPACE}:{k}: holds credentials, so it must be set as a secret "
                "(pulumi config set --secret ...); plain-text values are refused"
                for k in plain
            )
        )
    try:
        return StackConfig.model_validate({k: _decode(v) for k, v in raw.items()})
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None


def load_stack_config() -> StackConfig:
    """Read and validate this stack's ``cvmfs-ephemeral:*`` configuration."""
    from pulumi.runtime import config as rc

    prefix = NAMESPACE + ":"
    names = set(rc.CONFIG.get()) | set(rc.get_config_env())
    secret_full = set(rc.get_config_secret_keys_env())
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    for full in sorted(n for n in names if n.startswith(prefix)):
        key = full[len(prefix):]
        raw[key] = rc.get_config(full)
        if rc.is_config_secret(full) or full in secret_full:
            secret.add(key)
    return parse_stack_config(raw, secret)
