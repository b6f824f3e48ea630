"""RuntimeImage: the one image every role runs, built from the repository's Dockerfile or prebuilt.

Why a content-hash tag: ``pulumi preview`` must show a code change as a new image (and so as
replaced containers or a rolled Deployment), and must show nothing when nothing changed. A tag
derived from the bytes of the build context does both without timestamps or a registry lookup.
The hashed file set is the one ``.dockerignore`` lets into the build context; the Dockerfile's
path and every build argument (``BASE_IMAGE`` included) are hashed with it, so a new base image
is a new tag too (pin ``image.baseImage`` by digest to follow a base image rebuilt under the same
tag).

Why ``ref`` is a digest where one exists: a tag can be overwritten, and nodes with
``IfNotPresent`` keep whatever they pulled first. A pushed image is deployed by its
``repo_digest``; a local one is pinned by the Docker target to its image id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pulumi
import pulumi_docker as docker

from .config import ImageSpec

TYPE = "cvmfs-ephemeral:index:RuntimeImage"
REPO_ROOT = Path(__file__).resolve().parent.parent
#: What the Dockerfile copies; mirrors the allow-list in ``.dockerignore``.
CONTEXT_PATHS = ("Dockerfile", ".dockerignore", "runtime", "deploy/nginx", "deploy/image")
#: What the ``stratum0`` stage copies: a runtime change leaves its tag (and the read path) alone.
STRATUM0_PATHS = ("Dockerfile", ".dockerignore", "deploy/nginx", "deploy/image/healthcheck.py")
RUNTIME_TARGET = "runtime"
STRATUM0_TARGET = "stratum0"
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", "~")


def _context_files(root: Path, paths: tuple[str, ...]) -> Iterator[Path]:
    for entry in paths:
        path = root / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                for filename in filenames:
                    if not filename.endswith(_SKIP_SUFFIXES):
                        yield Path(dirpath) / filename


def context_hash(root: Path = REPO_ROOT, paths: tuple[str, ...] = CONTEXT_PATHS) -> str:
    """SHA-256 over the build context's file names, executable bits and contents."""
    digest = hashlib.sha256()
    for path in sorted(_context_files(root, paths), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        executable = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{rel}\0{executable}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


DOCKERFILE = "Dockerfile"


def build_args(spec: ImageSpec, target: str = RUNTIME_TARGET) -> dict[str, str]:
    """The build arguments of a stage (the revision label is the runtime stage's only)."""
    args = {"BASE_IMAGE": spec.base_image}
    if target == RUNTIME_TARGET and spec.revision:
        args["REVISION"] = spec.revision
    return args


def image_tag(
    root: Path = REPO_ROOT,
    args: Optional[dict[str, str]] = None,
    dockerfile: str = DOCKERFILE,
    target: str = RUNTIME_TARGET,
) -> str:
    """The tag of a stage built from ``root``: a hash of every build input of that stage.

    Inputs: the stage's context files, the Dockerfile's path, the stage, the build arguments
    (default: those of the default ``ImageSpec``, whose base image is the local
    ``cvmfs-ephemeral-base:bookworm``).
    """
    if args is None:
        args = build_args(ImageSpec(), target)
    paths = STRATUM0_PATHS if target == STRATUM0_TARGET else CONTEXT_PATHS
    digest = hashlib.sha256(context_hash(root, paths).encode())
    digest.update(f"\0dockerfile={dockerfile}\0target={target}".encode())
    for key in sorted(args):
        digest.update(f"\0arg:{key}={args[key]}".encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class RuntimeImageArgs:
    """Inputs of RuntimeImage."""

    spec: ImageSpec
    #: Build context; the repository root by default.
    context: Path = REPO_ROOT


class RuntimeImage(pulumi.ComponentResource):
    """The image references: docker.Image builds of both stages, or the configured prebuilt image."""

    #: The runtime stage's tagged reference (``repository:tag``).
    name: pulumi.Output[str]
    #: What workloads should run: the pushed image's ``repository@sha256:…`` digest, else ``name``.
    ref: pulumi.Output[str]
    #: The same for the stratum0 stage (the read path); the prebuilt image when ``image.name``.
    stratum0_ref: pulumi.Output[str]

    def __init__(
        self, name: str, args: RuntimeImageArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        spec = args.spec
        if spec.name is not None:
            self.name = pulumi.Output.from_input(spec.name)
            self.ref = self.name
            self.stratum0_ref = self.name
        else:
            self.name, self.ref = self._build(name, args, RUNTIME_TARGET, spec.repository)
            _, self.stratum0_ref = self._build(
                f"{name}-stratum0", args, STRATUM0_TARGET, f"{spec.repository}-stratum0"
            )
        self.register_outputs(
            {"name": self.name, "ref": self.ref, "stratum0Ref": self.stratum0_ref}
        )

    def _build(
        self, name: str, args: RuntimeImageArgs, target: str, repository: str
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """One stage's docker.Image: (tagged name, reference to deploy)."""
        spec = args.spec
        # A path relative to the working directory (the project directory under the Pulumi
        # CLI) keeps machine-specific absolute paths out of the resource inputs.
        context = os.path.relpath(args.context, Path.cwd())
        dockerfile = os.path.normpath(os.path.join(context, DOCKERFILE))
        arguments = build_args(spec, target)
        tag = image_tag(args.context, arguments, dockerfile, target)
        image = docker.Image(
            name,
            image_name=f"{repository}:{tag}",
            build=docker.DockerBuildArgs(
                context=context, dockerfile=dockerfile, args=arguments, target=target
            ),
            skip_push=not spec.push,
            opts=pulumi.ResourceOptions(parent=self),
        )
        if not spec.push:
            return image.image_name, image.image_name
        ref = pulumi.Output.all(image.repo_digest, image.image_name).apply(
            lambda values: values[0] or values[1]
        )
        return image.image_name, ref
