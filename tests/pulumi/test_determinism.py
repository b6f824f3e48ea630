"""The graph is deterministic, and the image tag follows the build context's content."""

from __future__ import annotations

import json
import shutil

from components.image import CONTEXT_PATHS, context_hash, image_tag
from conftest import docker_config, kubernetes_config
from harness import REPO_ROOT, run_program


def snapshot(program) -> list[tuple[str, str, str, str]]:
    return sorted(
        (r.type, r.name, r.parent, json.dumps(r.raw, sort_keys=True)) for r in program
    )


def test_two_runs_are_identical_docker():
    a, b = run_program(docker_config()), run_program(docker_config())
    assert snapshot(a) == snapshot(b)
    assert json.dumps(a.outputs_raw, sort_keys=True) == json.dumps(b.outputs_raw, sort_keys=True)


def test_two_runs_are_identical_kubernetes():
    a, b = run_program(kubernetes_config()), run_program(kubernetes_config())
    assert snapshot(a) == snapshot(b)


def test_a_config_change_changes_the_graph():
    """The comparison above can fail: a one-field change shows up."""
    a = run_program(docker_config())
    b = run_program(docker_config(logLevel="debug"))
    assert snapshot(a) != snapshot(b)


def _copy_context(dst):
    for entry in CONTEXT_PATHS:
        src = REPO_ROOT / entry
        if src.is_dir():
            shutil.copytree(src, dst / entry, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            (dst / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / entry)


def test_image_tag_follows_content(tmp_path):
    _copy_context(tmp_path)
    base = context_hash(tmp_path)
    assert base == context_hash(REPO_ROOT)  # same bytes, other place: same tag
    # Bytecode and caches are not part of the image's content.
    (tmp_path / "runtime" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "runtime" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert context_hash(tmp_path) == base
    # Files outside the build context (tests, docs, the Pulumi program) do not change it.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("x")
    assert context_hash(tmp_path) == base
    # A runtime code change does.
    (tmp_path / "runtime" / "__init__.py").write_text(
        (tmp_path / "runtime" / "__init__.py").read_text() + "\n# change\n"
    )
    changed = context_hash(tmp_path)
    assert changed != base
    # So does the nginx configuration.
    conf = tmp_path / "deploy" / "nginx" / "stratum0.conf"
    conf.write_text(conf.read_text() + "\n")
    assert context_hash(tmp_path) not in (base, changed)
    assert len(image_tag(tmp_path)) == 20


def test_dockerignore_matches_hashed_paths():
    """The tag hashes exactly what .dockerignore lets into the build context."""
    lines = [
        line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    allowed = sorted(line[1:].rstrip("/") for line in lines if line.startswith("!"))
    assert lines[0] == "*"
    assert allowed == sorted(CONTEXT_PATHS)
