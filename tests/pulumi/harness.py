"""Run the Pulumi program under Pulumi's own mocks and record what it declares.

No Pulumi CLI or provider plugin exists on the test machines, so ``pulumi.runtime.set_mocks``
replaces the engine: every resource registration reaches ``RecordingMonitor``, which keeps the
inputs exactly as the engine would receive them, secret markers included (that is how the tests
tell a secret input from a plain one). Provider behaviour is mocked, never our own code: the TLS
mock returns real RSA keys and certificates so that the end-to-end test can sign with them.

Pulumi's runtime state is global, so programs run one at a time; each run starts a fresh monitor
and root stack.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import runpy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import settings as psettings
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

REPO_ROOT = Path(__file__).resolve().parents[2]
MAIN = REPO_ROOT / "__main__.py"
PROJECT = "cvmfs-ephemeral"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


@lru_cache(maxsize=None)
def rsa_key_pems(seed: str) -> tuple[str, str]:
    """A real RSA-2048 key pair (PKCS#1 private PEM, SubjectPublicKeyInfo PEM), cached per name.

    Caching keeps repeated runs identical (the determinism test compares them) and fast.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


@lru_cache(maxsize=None)
def self_signed_pem(private_pem: str, common_name: str, hours: int) -> str:
    """A real self-signed certificate, as the TLS provider would make it (fixed dates)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int(hashlib.sha256(common_name.encode()).hexdigest()[:15], 16))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=hours))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class ProviderMocks(pulumi.runtime.Mocks):
    """Stand-ins for the providers (tls, random, docker, kubernetes, command).

    ``image_ids``: what the Docker engine holds (reference → image id), for tests that run the
    declared containers on a real engine; other references get a made-up id, as a registry would.
    """

    def __init__(self, image_ids: Optional[dict[str, str]] = None) -> None:
        super().__init__()
        self.image_ids = dict(image_ids or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[Optional[str], dict]:
        inputs = plain(args.inputs)
        outputs = dict(inputs)
        if args.typ == "tls:index/privateKey:PrivateKey":
            private, public = rsa_key_pems(args.name)
            outputs.update(privateKeyPem=private, publicKeyPem=public)
        elif args.typ == "tls:index/selfSignedCert:SelfSignedCert":
            cn = inputs["subject"]["commonName"]
            outputs["certPem"] = self_signed_pem(
                inputs["privateKeyPem"], cn, int(inputs["validityPeriodHours"])
            )
        elif args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = hashlib.sha256(args.name.encode()).hexdigest()[:48]
        elif args.typ == "docker:index/image:Image":
            # As the provider: a pushed image has a repository digest, a local one has none.
            if not inputs.get("skipPush"):
                repository = inputs["imageName"].rsplit(":", 1)[0]
                outputs["repoDigest"] = f"{repository}@{fake_digest(inputs['imageName'])}"
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = self.image_ids.get(inputs["name"]) or fake_digest(inputs["name"])
        elif args.typ == "command:local:Command":
            outputs.update(stdout="revision 1", stderr="")
        elif args.typ.startswith("kubernetes:"):
            meta = dict(outputs.get("metadata") or {})
            meta.setdefault("name", args.name)
            outputs["metadata"] = meta
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, Optional[list]]:
        return {}, None


def _clean(value: Any) -> Any:
    """Struct numbers arrive as floats; make integral ones ints again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class RecordingMonitor(pmocks.MockMonitor):
    """The mock engine, also keeping raw inputs (with secret markers) and registered outputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Resource] = []
        self.outputs: dict[str, Any] = {}

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        raw = _clean(json_format.MessageToDict(request.object))
        self.registrations.append(
            Resource(
                type=request.type,
                name=request.name,
                custom=bool(request.custom),
                parent=request.parent,
                raw=raw,
                depends_on=list(request.dependencies),
                additional_secret_outputs=list(request.additionalSecretOutputs),
                alias_specs=[
                    _clean(json_format.MessageToDict(a, preserving_proto_field_name=True))
                    for a in request.aliases
                ],
            )
        )
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request):  # noqa: N802
        if request.urn.split("::")[-2] == "pulumi:pulumi:Stack":
            self.outputs = _clean(json_format.MessageToDict(request.outputs))
        return super().RegisterResourceOutputs(request)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def plain(value: Any) -> Any:
    """The value with every secret wrapper removed."""
    if is_secret(value):
        return plain(value.get("value"))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def redacted(value: Any) -> Any:
    """The value with every secret replaced by a marker: what a reader of plain state would see."""
    if is_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


@dataclass
class Resource:
    type: str
    name: str
    custom: bool
    parent: str
    raw: dict
    depends_on: list[str] = field(default_factory=list)
    additional_secret_outputs: list[str] = field(default_factory=list)
    #: The aliases as sent to the engine (``Alias.Spec``: name, type, parent...).
    alias_specs: list[dict] = field(default_factory=list)
    #: The ``pulumi.ResourceOptions`` the program passed (recorded by wrapping
    #: ``pulumi.Resource.__init__``): protect, retain_on_delete, aliases, delete_before_replace...
    opts: pulumi.ResourceOptions = field(default_factory=pulumi.ResourceOptions)

    @property
    def inputs(self) -> dict:
        return plain(self.raw)


@dataclass
class Program:
    resources: list[Resource]
    outputs_raw: dict

    @property
    def outputs(self) -> dict:
        return plain(self.outputs_raw)

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == typ]

    def get(self, typ: str, name: str) -> Resource:
        found = [r for r in self.resources if r.type == typ and r.name == name]
        assert len(found) == 1, f"{typ} {name}: {len(found)} found; have {self.names(typ)}"
        return found[0]

    def names(self, typ: str) -> list[str]:
        return sorted(r.name for r in self.resources if r.type == typ)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources)


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_program(
    config: dict[str, Any],
    secret: Optional[set[str]] = None,
    stack: str = "test",
    image_ids: Optional[dict[str, str]] = None,
) -> Program:
    """Run ``__main__.py`` with ``config`` (keys without namespace) and return what it declared.

    ``secret``: the keys set as secrets; by default every key the program requires to be secret.
    ``image_ids``: images the mocked Docker engine holds (see ``ProviderMocks``).
    """
    if secret is None:
        secret = {k for k in ("tokens", "maintenanceToken", "importedKeys") if k in config}
    mocks = ProviderMocks(image_ids)
    monitor = RecordingMonitor(mocks)
    psettings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    psettings.set_root_resource(None)
    pulumi.runtime.set_all_config(
        {f"{PROJECT}:{k}": _config_value(v) for k, v in config.items()},
        [f"{PROJECT}:{k}" for k in secret],
    )
    recorded: dict[tuple[str, str], pulumi.ResourceOptions] = {}
    original_init = pulumi.Resource.__init__

    def recording_init(self, t, name, custom, props=None, opts=None, *args, **kwargs):
        recorded[(t, name)] = opts or pulumi.ResourceOptions()
        original_init(self, t, name, custom, props, opts, *args, **kwargs)

    pulumi.Resource.__init__ = recording_init
    try:
        _sync_await(run_in_stack(lambda: runpy.run_path(str(MAIN), run_name="__main__")))
    finally:
        pulumi.Resource.__init__ = original_init
        psettings.set_root_resource(None)
    for resource in monitor.registrations:
        resource.opts = recorded.get((resource.type, resource.name), pulumi.ResourceOptions())
    return Program(resources=monitor.registrations, outputs_raw=monitor.outputs)

