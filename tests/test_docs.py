"""The README stays short, has its table of contents, and every relative link in the docs resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "benchmarks/README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_with_a_table_of_contents_and_the_three_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "## Contents" in text
    for command in ('pip install -e ".[dev]"', "\nfedrl-run ", "python -m pytest -q "):
        assert command in text, command


@pytest.mark.parametrize("name", DOCS)
def test_every_relative_link_and_anchor_resolves(name):
    path = ROOT / name
    text = path.read_text()
    headings = {anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file_part, _, fragment = target.partition("#")
        if file_part:
            assert (path.parent / file_part).exists(), f"{name}: broken link {target}"
        elif fragment:
            assert fragment in headings, f"{name}: broken anchor #{fragment}"
