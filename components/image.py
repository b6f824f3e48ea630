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
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", "~")


def _context_files(root: Path) -> Iterator[Path]:
    for entry in CONTEXT_PATHS:
        path = root / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                for filename in filenames:
                    if not filename.endswith(_SKIP_SUFFIXES):
                        yield Path(dirpath) / filename


def context_hash(root: Path = REPO_ROOT) -> str:
    """SHA-256 over the build context's file names, executable bits and contents."""
    digest = hashlib.sha256()
    for path in sorted(_context_files(root), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        executable = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{rel}\0{executable}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


DOCKERFILE = "Dockerfile"


def build_args(spec: ImageSpec) -> dict[str, str]:
    """The build arguments of the runtime image."""
    return {"BASE_IMAGE": spec.base_image}


def image_tag(
    root: Path = REPO_ROOT, args: Optional[dict[str, str]] = None, dockerfile: str = DOCKERFILE
) -> str:
    """The tag of the image built from ``root``: a hash of every build input.

    Inputs: the context's files, the Dockerfile's path, the build arguments (default: those of
    the default ``ImageSpec``, whose base image is the local ``cvmfs-ephemeral-base:bookworm``).
    """
    if args is None:
        args = build_args(ImageSpec())
    digest = hashlib.sha256(context_hash(root).encode())
    digest.update(f"\0dockerfile={dockerfile}".encode())
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
    """The runtime image reference: a docker.Image build, or the configured prebuilt image."""

    #: The tagged reference (``repository:tag``).
    name: pulumi.Output[str]
    #: What workloads should run: the pushed image's ``repository@sha256:…`` digest, else ``name``.
    ref: pulumi.Output[str]

    def __init__(
        self, name: str, args: RuntimeImageArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        spec = args.spec
        if spec.name is not None:
            self.name = pulumi.Output.from_input(spec.name)
            self.ref = self.name
        else:
            # A path relative to the working directory (the project directory under the Pulumi
            # CLI) keeps machine-specific absolute paths out of the resource inputs.
            context = os.path.relpath(args.context, Path.cwd())
            dockerfile = os.path.normpath(os.path.join(context, DOCKERFILE))
            arguments = build_args(spec)
            image = docker.Image(
                name,
                image_name=f"{spec.repository}:{image_tag(args.context, arguments, dockerfile)}",
                build=docker.DockerBuildArgs(
                    context=context, dockerfile=dockerfile, args=arguments
                ),
                skip_push=not spec.push,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.name = image.image_name
            if spec.push:
                self.ref = pulumi.Output.all(image.repo_digest, image.image_name).apply(
                    lambda values: values[0] or values[1]
                )
            else:
                self.ref = image.image_name
        self.register_outputs({"name": self.name, "ref": self.ref})
