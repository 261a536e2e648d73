"""Code, recipes and docs cite papers, public source files and the repository's own docs/, never notes
outside the repository; every docs/ page they cite exists."""

from __future__ import annotations

import re

from .reward.helpers import REPO_ROOT

PACKAGES = ("reward", "generator_rl", "benchmarks", "descore")
SOURCES = sorted(
    [path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")]
    + list((REPO_ROOT / "configs").rglob("*.yaml")) + list((REPO_ROOT / "docs").glob("*.md"))
    + [REPO_ROOT / "README.md"]
)


def test_no_citation_points_outside_the_repository():
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}" for path in SOURCES
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"reference/\w+\.md|\.\./shared", line)]
    assert len(SOURCES) > 50 and offenders == []


def test_every_cited_docs_page_exists():
    cited = {match for path in SOURCES for match in re.findall(r"docs/[\w./-]+\.md", path.read_text())}
    assert {"docs/descore.md", "docs/generator_rl.md"} <= cited
    assert [page for page in sorted(cited) if not (REPO_ROOT / page).is_file()] == []
