"""Helpers for the browser tests: a served repository with artifacts, and the rows of an HTML
table read back with the standard library's parser (what a person sees, cell by cell)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from tests.uploadkit import FQRN, auth, make_tar

#: A valid artifact name that would be markup if a page forgot to escape it.
HOSTILE = "<svg onload=alert(1)>\"'&x.txt"
#: A member of a directory artifact named the same way.
HOSTILE_MEMBER = "<img src=x onerror=alert(2)>"


def publish_examples(client: httpx.Client) -> None:
    """Three artifacts: a file, a directory tree with a hostile member name, a hostile name."""
    r = client.put(f"/repos/{FQRN}/hello.txt", content=b"hello\n", headers=auth(),
                   params={"ttl_s": 3600})
    assert r.status_code == 200, r.text
    tar = make_tar([("bin", "dir", None), ("bin/app", "file", b"\x7fELF" + b"x" * 5000),
                    ("README.md", "file", b"# build 42\n"), ("latest", "symlink", "bin/app"),
                    (HOSTILE_MEMBER, "file", b"boo")])
    r = client.put(f"/repos/{FQRN}/build-42", content=tar, headers=auth(),
                   params={"unpack": "true", "ttl_s": 7 * 86400})
    assert r.status_code == 200, r.text
    r = client.put(f"/repos/{FQRN}/{HOSTILE}", content=b"<script>alert(3)</script>",
                   headers=auth())
    assert r.status_code == 200, r.text


class Tables(HTMLParser):
    """Every table's caption and body rows, each row a list of cell texts (th and td)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._cell: list[str] | None = None
        self._in_caption = False
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._in_caption = False
        elif tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.tables[-1]["caption"] += data
        elif self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> list[dict]:
    parser = Tables()
    parser.feed(html)
    return parser.tables


def rows_by_name(html: str, caption_start: str) -> dict[str, list[str]]:
    """The rows of the table whose caption starts with ``caption_start``, keyed by first cell."""
    for t in tables(html):
        if t["caption"].strip().startswith(caption_start):
            return {row[0]: row for row in t["rows"]}
    raise AssertionError(f"no table captioned {caption_start!r}")
