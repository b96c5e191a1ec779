"""Every documentation reference in the code, the recipes and the README resolves to a file and section in docs/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    *ROOT.joinpath("hf_fewshot").rglob("*.py"),
    *ROOT.joinpath("recipes").rglob("*.py"),
    *ROOT.joinpath("recipes").rglob("*.yaml"),
    *ROOT.joinpath("bench").glob("*.py"),
    *ROOT.joinpath("model_cards").glob("*.md"),
    ROOT / "README.md",
]
REFERENCE = re.compile(r"docs/([a-z_]+\.md)(?:#([a-z0-9-]+)|, \"([^\"]+)\"(?: and \"([^\"]+)\")?)?")
DESIGN_FILES = re.compile(r"(?<![\w/])(SMAT|SAM|DATA|PMF_AND_EVAL|PERFORMANCE|ARCHITECTURE|HF_NOTES)\.md")


def headings(path: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")}


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_docs_reference_names_a_file_and_section_that_exist():
    checked = 0
    for source in SOURCES:
        for match in REFERENCE.finditer(source.read_text()):
            name, fragment, *sections = match.groups()
            doc = ROOT / "docs" / name
            assert doc.is_file(), f"{source.relative_to(ROOT)} cites docs/{name}, which does not exist"
            titles = headings(doc)
            for section in (" ".join(s.replace("#", " ").split()) for s in sections if s):  # wrapped lines
                assert any(re.match(re.escape(section) + r"(\W|$)", title) for title in titles), (
                    f"{source.relative_to(ROOT)} cites {name}, {section!r}: no such heading"
                )
            if fragment:
                assert fragment in {anchor(t) for t in titles}, f"{source.relative_to(ROOT)}: no #{fragment} in {name}"
            checked += 1
    assert checked > 30


def test_no_reference_points_outside_the_repository():
    for source in SOURCES:
        found = DESIGN_FILES.search(source.read_text())
        assert found is None, f"{source.relative_to(ROOT)} cites {found.group(0)}, which is not in the repository"
