"""Paste each benchmark's committed table.md into benchmarks/README.md between its markers, or check they match.

A block in the README looks like::

    <!-- table: results/rl_attacks_defaults/table.md -->
    ...the table, as the benchmark wrote it...
    <!-- /table -->

The path is relative to the README's folder. `python -m benchmarks.readme_tables` rewrites every block from its
file; `--check` changes nothing and exits 1 naming each block whose text differs from its file, so a README figure
can never drift from the results it quotes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
_OPEN = re.compile(r"^<!-- table: (?P<path>\S+) -->$", re.M)
_CLOSE = "<!-- /table -->"


def table_blocks(text: str) -> list[tuple[str, int, int]]:
    """(table path, start, end) of each block's body: text[start:end] lies between the two markers."""
    blocks = []
    for match in _OPEN.finditer(text):
        start = match.end() + 1
        end = text.find("\n" + _CLOSE, match.end())
        if end < 0:
            line = text.count("\n", 0, match.start()) + 1
            raise ValueError(f"table marker for {match['path']} (line {line}) has no closing {_CLOSE!r}")
        nested = _OPEN.search(text, start, end)
        if nested:
            raise ValueError(f"table marker for {match['path']} is not closed before the one for {nested['path']}")
        blocks.append((match["path"], start, end + 1))
    return blocks


def embed_tables(text: str, folder: Path) -> str:
    """`text` with every block's body replaced by its file (paths relative to `folder`)."""
    pieces, last = [], 0
    for path, start, end in table_blocks(text):
        source = folder / path
        if not source.is_file():
            raise FileNotFoundError(f"README table marker names {path}, but {source} does not exist")
        pieces += [text[last:start], source.read_text().strip() + "\n"]
        last = end
    return "".join(pieces) + text[last:]


def stale_tables(text: str, folder: Path) -> list[str]:
    """The paths whose block differs from the file (trailing whitespace aside)."""
    return [path for path, start, end in table_blocks(text)
            if not (folder / path).is_file() or text[start:end].strip() != (folder / path).read_text().strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block is out of date")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    text = args.readme.read_text()
    if args.check:
        stale = stale_tables(text, args.readme.parent)
        for path in stale:
            print(f"{args.readme}: the block for {path} differs from the file; run python -m benchmarks.readme_tables")
        sys.exit(1 if stale else 0)
    new = embed_tables(text, args.readme.parent)
    args.readme.write_text(new)
    print(f"{args.readme}: {len(table_blocks(new))} tables pasted, {'changed' if new != text else 'unchanged'}")


if __name__ == "__main__":
    main()
