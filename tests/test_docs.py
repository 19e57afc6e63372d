"""The documentation holds together: the configuration reference matches the settings model,
every relative link of README.md and docs/*.md points at a file (and heading) that exists, and
README.md links every page of docs/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.settings_doc import BEGIN, DOC, END, rows, section

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose(text: str) -> Iterator[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match is not None:
            mark = match.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
                continue
            if mark.startswith(fence):
                fence = None
                continue
        if fence is None:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text lower-cased, punctuation dropped (but
    ``-`` and ``_``), spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; repeated headings get ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(path.read_text("utf-8")):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code blocks and inline code."""
    return [t for line in prose(text) for t in LINK.findall(re.sub(r"`[^`]*`", "", line))]


def relative_links(path: Path) -> list[str]:
    """The link targets of a page that are not URLs (no scheme)."""
    return [t for t in links(path.read_text("utf-8")) if not SCHEME.match(t)]


def resolve(page: Path, target: str) -> tuple[Path, str]:
    """The file and the anchor (may be empty) a link of ``page`` points at."""
    name, _, anchor = target.partition("#")
    return ((page.parent / name).resolve() if name else page), anchor


# ------------------------------------------------------------------ the configuration reference


def test_configuration_reference_is_current() -> None:
    text = DOC.read_text("utf-8")
    assert BEGIN in text
    assert END in text
    assert section() in text, "run: python -m tools.settings_doc --write"


def test_every_setting_has_a_meaning() -> None:
    missing = [env for env, _, meaning in rows() if not meaning]
    assert missing == []


# ------------------------------------------------------------------------------------- links


def test_the_slug_follows_github() -> None:
    assert slug("Reading lag and the alerts") == "reading-lag-and-the-alerts"
    assert slug("`kyc-sync lag` — how far behind the table is") == (
        "kyc-sync-lag--how-far-behind-the-table-is"
    )
    assert slug("The seed's common issues, and what kyc-sync does about them") == (
        "the-seeds-common-issues-and-what-kyc-sync-does-about-them"
    )
    assert slug("`--full-refresh` — rebuild `kyc_profile_current` from the topic") == (
        "--full-refresh--rebuild-kyc_profile_current-from-the-topic"
    )


def test_link_targets_are_found() -> None:
    text = "[a](docs/x.md) `[b](no.md)` [c](https://e.org) [d](#here)\n```\n[e](no.md)\n```\n"
    page = ROOT / "page.md"
    assert links(text) == ["docs/x.md", "https://e.org", "#here"]
    assert resolve(page, "#here") == (page, "here")
    assert resolve(page, "docs/x.md#y") == (ROOT / "docs" / "x.md", "y")


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, anchor = resolve(page, target)
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert broken == []


def test_readme_links_every_docs_page() -> None:
    assert PAGES, "docs/ has no pages"
    linked = {resolve(README, target)[0] for target in relative_links(README)}
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


def test_every_docs_page_has_a_title() -> None:
    for page in PAGES:
        first = page.read_text("utf-8").splitlines()[0]
        assert first.startswith("# "), page.name
