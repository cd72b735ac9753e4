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


ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def test_the_architecture_map_names_every_module_of_core_and_nothing_that_is_gone():
    """docs/ARCHITECTURE.md is the map: every module of a room is in its row, and every path it names exists."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(core/\w+/|ui/|pages/)` \| ([^|]+) \|", text, re.M)}
    assert {"core/texts/", "core/engine/", "core/analyses/", "core/figures/", "core/shipped/", "core/report/"} <= set(rows)
    for room in ("texts", "engine", "analyses", "figures", "shipped"):
        listed = set(re.findall(r"`(\w+)`", rows[f"core/{room}/"]))
        modules = {p.stem for p in (REPO / "core" / room).glob("*.py") if p.stem != "__init__"}
        assert listed == modules, f"core/{room}/: the map lists {sorted(listed)}, the folder has {sorted(modules)}"
    assert not [p for p in (REPO / "core").glob("*.py") if p.stem not in ("__init__", "__main__")], \
        "a module outside the rooms: put it in one and on the map"
    rooms = {p.name for p in (REPO / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {f"core/{room}/" for room in rooms} <= set(rows), "a room of core that the map does not name"
    for path in re.findall(r"`((?:core|ui|pages|tests|bench|docs|data|scripts)/[\w/.-]+\.(?:py|md|json))`", text):
        if "capacity" not in path:  # the recipe's example page, yet to be written
            assert (REPO / path).exists(), f"docs/ARCHITECTURE.md names {path}, which does not exist"


def test_the_map_s_names_exist_in_the_code():
    """Every `run_x` / `load_x` / `XJob` / `XSettings` the naming table and the recipe's examples name is defined."""
    import importlib

    text = ARCHITECTURE.read_text(encoding="utf-8")
    defined = set()
    for room in ("engine", "analyses", "shipped"):
        for path in (REPO / "core" / room).glob("*.py"):
            module = importlib.import_module(f"core.{room}.{path.stem}")
            defined |= set(vars(module))
    named = set(re.findall(r"`((?:run|load)_\w+|\w+(?:Settings|Setting|Result|Job)|\w+_key)`", text))
    named = {n for n in named if "capacity" not in n.lower() and not n.startswith(("x_", "X", "run_x", "load_x"))}
    assert named and named <= defined, f"named in docs/ARCHITECTURE.md but not defined: {sorted(named - defined)}"
