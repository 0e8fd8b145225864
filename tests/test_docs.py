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


def test_every_pasted_benchmark_table_matches_its_results_file():
    from benchmarks.readme_tables import stale_tables, table_blocks

    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert len(table_blocks(text)) >= 8
    assert stale_tables(text, ROOT / "benchmarks") == []


def test_embed_tables_replaces_each_block_body_and_names_what_is_wrong(tmp_path):
    from benchmarks.readme_tables import embed_tables, stale_tables

    (tmp_path / "a.md").write_text("| new |\n|---|\n\n")
    text = "intro\n<!-- table: a.md -->\n| old |\n<!-- /table -->\noutro\n"
    assert stale_tables(text, tmp_path) == ["a.md"]
    new = embed_tables(text, tmp_path)
    assert new == "intro\n<!-- table: a.md -->\n| new |\n|---|\n<!-- /table -->\noutro\n"
    assert stale_tables(new, tmp_path) == []
    assert embed_tables(new, tmp_path) == new
    with pytest.raises(FileNotFoundError, match="missing.md"):
        embed_tables("<!-- table: missing.md -->\nx\n<!-- /table -->\n", tmp_path)
    with pytest.raises(ValueError, match="a.md.*line 2.*no closing"):
        embed_tables("x\n<!-- table: a.md -->\nbody\n", tmp_path)
    with pytest.raises(ValueError, match="a.md is not closed before the one for b.md"):
        embed_tables("<!-- table: a.md -->\n<!-- table: b.md -->\n<!-- /table -->\n", tmp_path)
