"""The docs an operator follows: every alert's runbook exists, every relative link resolves, and
the README stays a front page (the two commands, under 300 lines)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.core.catalog import load as load_catalog
from rules import generate as rulegen

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(text: str, keep_code: bool = False) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed (links in code are examples)
    unless ``keep_code`` (a heading's anchor keeps its inline code's text, as GitHub makes it)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(line if keep_code else re.sub(r"`[^`]*`", "", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _prose(page.read_text(), keep_code=True):
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
        out.update(re.findall(r'<a (?:id|name)="([^"]+)"', line))
    return out


def links(page: Path) -> list[str]:
    found: list[str] = []
    for line in _prose(page.read_text()):
        found += re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", line)
    return found


def test_slug_matches_the_catalog_anchor() -> None:
    for p in load_catalog():
        assert slug(f"{p.id}") == p.anchor, p.id
    assert slug("Reload, logs, TLS and basic auth") == "reload-logs-tls-and-basic-auth"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, broken


def _alerts() -> list[dict[str, object]]:
    return [r for g in rulegen.rule_groups()["groups"] for r in g["rules"] if "alert" in r]


def _resolve_runbook(url: str) -> list[tuple[Path, str]]:
    """The docs file and anchor(s) a runbook URL names; a templated anchor stands for every point."""
    base = rulegen.DOCS_BASE_URL + "/"
    assert url.startswith(base), f"{url} is not under this repository's docs ({base})"
    rel, _, anchor = url[len(base):].partition("#")
    assert anchor, url
    if "{{" in anchor:
        return [(DOCS / rel, p.anchor) for p in load_catalog()]
    return [(DOCS / rel, anchor)]


def test_every_alert_has_a_runbook_in_docs() -> None:
    rules = _alerts()
    names = {str(r["alert"]) for r in rules}
    assert names >= {"TradingBlocked", "TradingDegraded", "TradingFailurePoint", "TradingReadinessExporterDown",
                     "TradingFailurePointStale", "TradingHealerGaveUp", "Watchdog"}
    missing = []
    for rule in rules:
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        for key in ("runbook_url", "fp_runbook_url"):
            if key not in annotations:
                assert key != "runbook_url", rule["alert"]
                continue
            for path, anchor in _resolve_runbook(str(annotations[key])):
                if not path.is_file() or anchor not in anchors(path):
                    missing.append(f"{rule['alert']} {key}: {path.relative_to(REPO)}#{anchor}")
    assert not missing, sorted(set(missing))
    # every alert other than the per-point one has a section of its own in runbooks.md
    own = anchors(DOCS / "runbooks.md")
    assert {n.lower() for n in names} <= own, {n.lower() for n in names} - own


def test_the_committed_rules_carry_the_same_runbook_urls() -> None:
    committed = (REPO / rulegen.RULES_PATH).read_text()
    assert "README.md" not in committed
    for rule in _alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        url = str(annotations["runbook_url"])
        assert f"runbook_url: {url}" in committed or "{{" in url, url


def test_readme_is_a_front_page() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 300
    assert "make demo" in text and "make test" in text
    for page in DOCS.glob("*.md"):
        # every doc is reachable from the README
        assert f"(docs/{page.name})" in text, page.name
