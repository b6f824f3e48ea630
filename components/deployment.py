"""Deployment: the whole cvmfs-ephemeral service of one stack, on the configured target.

It wires the concept components in dependency order (image, keys, tokens, shared storage,
stratum 0, gateway, upload service, maintenance, post-deploy checks) and gathers the stack
outputs. It holds no platform logic: that is in ``targets/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_random as random

from . import contract
from .client_config import client_config
from .config import StackConfig
from .gateway import Gateway, GatewayArgs
from .image import RuntimeImage, RuntimeImageArgs
from .keys import RepositoryKeys, RepositoryKeysArgs, logical_name
from .maintenance import MaintenanceJobs, MaintenanceJobsArgs
from .site_cache import SiteCache, SiteCacheArgs
from .stratum1 import stratum1_outputs
from .stratum0 import Stratum0, Stratum0Args
from .targets import Target, make_target
from .upload_service import UploadService, UploadServiceArgs
from .verify import PostDeployCheck, PostDeployCheckArgs

TYPE = "cvmfs-ephemeral:index:Deployment"


@dataclass(frozen=True)
class DeploymentArgs:
    """Inputs of Deployment."""

    config: StackConfig
    #: Override the target (tests); default: the one ``config.target`` names.
    target: Optional[Target] = None


@dataclass(frozen=True)
class TokenGrant:
    """What a static token may do; its secret travels separately, as a secret Output."""

    label: str
    role: str = "upload"
    repository: Optional[str] = None
    prefix: Optional[str] = None

    def scope(self) -> dict[str, str]:
        """The plain ``tokenScopes`` entry (no secret, no hash)."""
        out = {"label": self.label, "role": self.role}
        if self.repository is not None:
            out["repository"] = self.repository
        if self.prefix is not None:
            out["prefix"] = self.prefix
        return out


def tokens_file(grants: list[tuple[str, TokenGrant]]) -> str:
    """The runtime's tokens file: one JSON object per line holding the secret's SHA-256 only,
    so the file (a Docker volume, a Kubernetes Secret) discloses no credential."""
    lines = [
        json.dumps({**grant.scope(), "sha256": hashlib.sha256(secret.encode()).hexdigest()},
                   sort_keys=True)
        for secret, grant in grants
    ]
    return "\n".join(lines) + "\n"


class Deployment(pulumi.ComponentResource):
    """Stratum 0, gateway, upload service, maintenance and keys of one stack."""

    outputs: dict[str, Any]

    def __init__(
        self, name: str, args: DeploymentArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self)
        target = args.target or make_target(config)

        image = RuntimeImage(f"{name}-image", RuntimeImageArgs(spec=config.image), opts=child)

        keys = {
            repo.fqrn: RepositoryKeys(
                logical_name(repo.fqrn),
                RepositoryKeysArgs(
                    fqrn=repo.fqrn,
                    imported=config.imported_keys.get(repo.fqrn),
                    protect=config.keys.protect,
                    legacy_prefix=name,
                ),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # The component's own old name (``<name>-<fqrn>``), so its URN carries over.
                    aliases=[pulumi.Alias(name=f"{name}-{repo.fqrn}")],
                ),
            )
            for repo in config.repositories
        }
        key_files: dict[str, pulumi.Output[str]] = {}
        public_files: dict[str, pulumi.Output[str]] = {}
        for repo_keys in keys.values():
            key_files.update(repo_keys.key_files())
            public_files.update(repo_keys.public_files())

        admin_token = self._token(
            f"{name}-maintenance-token", config.maintenance_token, child
        )
        if config.tokens:
            upload_tokens = [
                (pulumi.Output.secret(t.token),
                 TokenGrant(t.label or f"upload-{i + 1}", t.role, t.repository, t.prefix))
                for i, t in enumerate(config.tokens)
            ]
        else:
            # No token configured: generate one upload token per repository, scoped to it (the
            # first keeps the resource name of the former single token: its value survives).
            upload_tokens = [
                (self._token(f"{name}-upload-token" + (f"-{repo.fqrn}" if i else ""), None, child),
                 TokenGrant(f"upload-{repo.fqrn}", "upload", repo.fqrn))
                for i, repo in enumerate(config.repositories)
            ]
        grants = [TokenGrant("maintenance", "admin")] + [g for _, g in upload_tokens]
        tokens = pulumi.Output.secret(
            pulumi.Output.all(admin_token, *(t for t, _ in upload_tokens)).apply(
                lambda values: tokens_file(list(zip(values, grants)))
            )
        )

        repositories_json = contract.repositories_json(
            r.runtime_json() for r in config.repositories
        )

        target.prepare(self)
        # Every workload runs the immutable reference; `image.ref` may be a tag.
        runtime_image = target.deployable_image("runtime", image.ref, self)
        # The read path runs the stratum0 stage: a runtime change does not replace it.
        stratum0_image = target.deployable_image("stratum0", image.stratum0_ref, self)
        stratum0 = Stratum0(
            f"{name}-stratum0",
            Stratum0Args(target=target, image=stratum0_image, resources=config.resources.stratum0),
            opts=child,
        )
        gateway = Gateway(
            f"{name}-gateway",
            GatewayArgs(
                target=target,
                image=runtime_image,
                resources=config.resources.gateway,
                repositories_json=repositories_json,
                stratum0_url=f"{stratum0.internal_url}/cvmfs",
                public_files=public_files,
                log_level=config.log_level,
            ),
            opts=child,
        )
        stratum0_public = stratum0.public_url
        site_cache: Optional[SiteCache] = None
        if config.site_cache.enabled:
            site_cache = SiteCache(
                f"{name}-site-cache",
                SiteCacheArgs(
                    target=target,
                    # squid comes with the base image; the stratum0 stage rolls only with it
                    image=stratum0_image,
                    spec=config.site_cache,
                    stratum0_internal_url=stratum0.internal_url,
                    stratum0_public_url=stratum0_public,
                    max_chunk_size=max(r.chunk_size for r in config.repositories),
                ),
                opts=child,
            )
        upload = UploadService(
            f"{name}-upload",
            UploadServiceArgs(
                target=target,
                config=config,
                image=runtime_image,
                repositories_json=repositories_json,
                gateway_api_url=f"{gateway.internal_url}/api/v1",
                public_url=stratum0_public,
                key_files=key_files,
                tokens_file=tokens,
            ),
            opts=child,
        )
        MaintenanceJobs(
            f"{name}-maintenance",
            MaintenanceJobsArgs(
                target=target,
                image=runtime_image,
                upload_url=upload.internal_url,
                schedules=config.schedules,
                token=admin_token,
                resources=config.resources.maintenance,
                log_level=config.log_level,
            ),
            opts=child,
        )

        check_url = target.check_url()
        if config.verify.enabled and check_url is None:
            pulumi.log.warn(
                "post-deploy check skipped: stratum 0 is not reachable from here by a known URL; "
                "set publicUrl, kubernetes.ingress or verify.url",
                resource=self,
            )
        if config.verify.enabled and check_url is not None:
            ready = list(target.ready())
            triggers: list[pulumi.Input[object]] = [runtime_image, stratum0_image]
            triggers.extend(r.id for r in ready if isinstance(r, pulumi.CustomResource))
            for fqrn, repo_keys in keys.items():
                PostDeployCheck(
                    f"{name}-verify-{fqrn}",
                    args=PostDeployCheckArgs(
                        fqrn=fqrn,
                        url=f"{check_url}/{fqrn}",
                        public_key_pem=repo_keys.public_key_pem,
                        timeout_s=config.verify.timeout_s,
                        depends_on=ready,
                        triggers=triggers,
                    ),
                    opts=child,
                )

        gateway_api = gateway.api_url
        # Clients behind the site cache name stratum 0 as squid accepts it (see site_cache.py).
        client_server = site_cache.server_base if site_cache else stratum0_public
        proxy_url = site_cache.proxy_url if site_cache else None
        endpoints: dict[str, Any] = {
            "stratum0": stratum0.url,
            "notifications": gateway_api,
            "upload": upload.url,
        }
        if site_cache is not None:
            endpoints["siteCache"] = site_cache.proxy_url
        self.outputs = {
            "target": config.target,
            "image": runtime_image,
            "endpoints": endpoints,
            "repositories": {
                fqrn: {
                    "serverUrl": f"{stratum0_public}/cvmfs/{fqrn}",
                    "certificateFingerprint": k.certificate_fingerprint,
                }
                for fqrn, k in keys.items()
            },
            "clientConfigs": {
                fqrn: gateway_api.apply(
                    lambda api, fqrn=fqrn: client_config(
                        fqrn, client_server, api, proxy_url,
                        config.site_cache.allow_direct_fallback,
                    )
                )
                for fqrn in keys
            },
            "publicKeys": {fqrn: k.public_key_pem for fqrn, k in keys.items()},
            "stratum1": stratum1_outputs(
                config, stratum0_public, {f: k.public_key_pem for f, k in keys.items()}
            ),
            # The private keys, for escrow only (components/escrow.py): a secret output in the
            # shape of `importedKeys`, so a backup restores into a new stack as is.
            "keyEscrow": pulumi.Output.secret(
                {
                    fqrn: {
                        "masterKey": k.master_key_pem,
                        "repositoryKey": k.repository_key_pem,
                        "certificate": k.certificate_pem,
                    }
                    for fqrn, k in keys.items()
                }
            ),
            "uploadTokens": pulumi.Output.secret(
                pulumi.Output.all(*(t for t, _ in upload_tokens))
            ),
            # labels and scopes of the tokens, in the order of uploadTokens (plain: no secrets)
            "tokenScopes": [g.scope() for _, g in upload_tokens],
            "maintenanceTokenScope": grants[0].scope(),
            "oidcIssuers": [
                {"issuer": i.issuer, "audience": i.audience,
                 "policies": [{"name": p.name, "repository": p.repository, "prefix": p.prefix}
                              for p in i.policies]}
                for i in config.oidc.issuers
            ],
        }
        self.register_outputs(self.outputs)

    def _token(
        self, name: str, configured: Optional[str], opts: pulumi.ResourceOptions
    ) -> pulumi.Output[str]:
        """A configured token, or a generated one kept in the stack's state (always secret)."""
        if configured is not None:
            return pulumi.Output.secret(configured)
        generated = random.RandomPassword(name, length=48, special=False, opts=opts)
        return pulumi.Output.secret(generated.result)

