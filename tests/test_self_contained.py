"""The repository stands alone: nothing in it names a path outside the checkout.

A fresh clone in any directory must test, build and read the same. So no file of the code, the
tests, the scripts or the README may point at a handbook or fixture that only exists beside some
checkouts (a sibling ``shared`` folder, a workspace path, the format handbook's file name); the
format notes are ``docs/cvmfs-format.md`` and the reference repositories are in
``tests/fixtures/cvmfs-reference``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("runtime", "tests", "components", "bench", "scripts", "docs", "deploy", ".ci")
SCANNED_FILES = ("README.md", "Dockerfile", "__main__.py", "pyproject.toml", "Pulumi.yaml",
                 "Pulumi.dev.yaml", "Pulumi.k8s-example.yaml", "requirements.txt",
                 "requirements-dev.txt")
# Assembled from pieces so that this file does not match itself.
OUTSIDE = ("../" + "shared", "/" + "work/", "shared/" + "cvmfs", "shared/" + "DESIGN",
           "FORMAT" + ".md")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for top in SCANNED_DIRS:
        files += sorted(p for p in (ROOT / top).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    return files


def test_the_scan_covers_the_code_and_the_docs() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert {"README.md", "runtime/__main__.py", "tests/conftest.py",
            "docs/cvmfs-format.md", "scripts/test.sh"} <= names


@pytest.mark.parametrize("pattern", OUTSIDE)
def test_no_file_names_a_path_outside_the_repository(pattern: str) -> None:
    offenders = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary fixtures (SQLite catalogs, signed files)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "\n".join(offenders)


def test_the_format_notes_cover_what_the_code_relies_on() -> None:
    notes = (ROOT / "docs" / "cvmfs-format.md").read_text()
    sections = {line[3:].strip() for line in notes.splitlines() if line.startswith("## ")}
    assert {"Objects", "Signatures", "Manifest", "Whitelist", "Keys and certificate",
            "File catalogs", "Nested catalogs", "Chunked files", "Revisions",
            "Notifications"} <= sections
    for source in ("cvmfs/catalog_sql.cc", "cvmfs/manifest.cc", "cvmfs/whitelist.cc",
                   "cvmfs/crypto/signature.cc", "cvmfs/notification_client.cc"):
        assert source in notes


def test_every_section_the_code_cites_exists() -> None:
    """A comment citing ``docs/cvmfs-format.md, "Name"`` must name a real section."""
    import re

    notes = (ROOT / "docs" / "cvmfs-format.md").read_text()
    sections = {line[3:].strip() for line in notes.splitlines() if line.startswith("## ")}
    cited = re.compile(r'cvmfs-format\.md[,:]?\s*(?:#\s*)?\(?((?:"[^"\n]+"(?:,\s*)?)+)')
    missing, checked = [], 0
    for path in scanned_files():
        if path.suffix not in (".py", ".md", ".conf", ".sh") or path == Path(__file__).resolve():
            continue
        for match in cited.finditer(path.read_text(encoding="utf-8", errors="replace")):
            for name in re.findall(r'"([^"\n]+)"', match.group(1)):
                checked += 1
                if name not in sections:
                    missing.append(f"{path.relative_to(ROOT)}: {name!r}")
    assert checked >= 20, f"only {checked} citations found: is the pattern still right?"
    assert not missing, missing
