"""Every reference to docs/science.md in the code names an item that the page has."""

from __future__ import annotations

import re

from tests.conftest import REPO

SCIENCE = REPO / "docs" / "science.md"
# "docs/science.md, B.2", "docs/science.md (A.recipe)", "docs/science.md, A.recipe, verbatim"
REFERENCE = re.compile(r"docs/science\.md[,(]?\s*\(?([ABC]\.[0-9a-z-]+)")


def test_every_science_reference_resolves():
    items = set(re.findall(r"\*\*([ABC]\.[0-9a-z-]+)", SCIENCE.read_text(encoding="utf-8")))
    assert {"A.recipe", "A.layouts", "A.metrics", "B.1", "B.2", "B.3", "B.4"} <= items
    cited = {}
    for folder in ("core", "pages", "ui", "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for name in REFERENCE.findall(path.read_text(encoding="utf-8")):
                cited.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    assert cited, "no code cites docs/science.md"
    missing = {name: where for name, where in cited.items() if name not in items}
    assert not missing, f"references to items docs/science.md lacks: {missing}"


def test_no_reference_points_outside_the_repository():
    stale = [path.relative_to(REPO).as_posix() for folder in ("core", "pages", "ui", "bench", "tests")
             for path in (REPO / folder).rglob("*.py")
             if "PAPERS.md" in path.read_text(encoding="utf-8") and path.name != "test_docs.py"]
    assert not stale, f"cite docs/science.md instead of PAPERS.md (not in this repository): {stale}"
