"""Docstrings of the reward package cite papers, public source files and the repository's own docs/, never
notes outside the repository; every docs/ page they cite exists."""

from __future__ import annotations

import re

from ..conftest import REPO_ROOT

SOURCES = sorted((REPO_ROOT / "reward").glob("*.py"))


def test_no_citation_points_outside_the_repository():
    offenders = [f"{path.name}:{number}" for path in SOURCES
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"reference/\w+\.md|\.\./shared", line)]
    assert SOURCES and offenders == []


def test_every_cited_docs_page_exists():
    cited = {match for path in SOURCES for match in re.findall(r"docs/[\w./-]+\.md", path.read_text())}
    assert "docs/descore.md" in cited
    assert [page for page in sorted(cited) if not (REPO_ROOT / page).is_file()] == []
