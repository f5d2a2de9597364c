"""Write the Jupyter twin (.ipynb) of every numbered tutorial from its `# %%` source.

The .py files are the source: edit them, then run

    python tutorials/make_notebooks.py

to rewrite the notebooks next to them. The output is deterministic (no execution counts, no
outputs, cell ids made from the cell's number), so a notebook changes only when its tutorial does,
and tests/test_notebooks.py can regenerate every twin in memory and compare it with the file.

The format is the "percent" format that VS Code, Spyder and jupytext read: a line `# %%` opens a
code cell, `# %% [markdown]` a prose cell whose lines start with `# ` (the `# ` is removed). Only
the standard library is needed, so the check runs without Jupyter installed.
"""

import json
import sys
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent
CODE, MARKDOWN = "# %%", "# %% [markdown]"


def tutorial_scripts(folder: Path = TUTORIALS) -> list[Path]:
    """The numbered tutorials (01_*.py, 02_*.py, ...), in order."""
    return sorted(folder.glob("[0-9][0-9]_*.py"))


def split_cells(source: str) -> list[tuple[str, str]]:
    """`# %%` source -> [(kind, text)], kind "code" or "markdown", blank edges trimmed."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.strip() == MARKDOWN:
            cells.append(("markdown", []))
        elif line.strip() == CODE:
            cells.append(("code", []))
        elif not cells:
            raise ValueError(f"text before the first `{CODE}` line: {line!r}. A tutorial opens "
                             f"with `{MARKDOWN}`.")
        else:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            for line in lines:
                if line and not line.startswith("#"):
                    raise ValueError(f"a markdown cell holds a line that is not a comment: "
                                     f"{line!r}. Start it with `# `, or open a code cell with "
                                     f"`{CODE}` before it.")
            lines = [line[2:] if line.startswith("# ") else line[1:] for line in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def notebook(source: str, stem: str) -> dict:
    """The nbformat 4.5 notebook of one tutorial's source."""
    cells = []
    for i, (kind, text) in enumerate(split_cells(source)):
        lines = text.split("\n")
        cell = {"cell_type": kind, "id": f"{stem[:2]}-{i:03d}", "metadata": {},
                "source": [line + "\n" for line in lines[:-1]] + [lines[-1]]}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_text(script: Path) -> str:
    """What ``script``'s .ipynb twin must contain, as text (the way Jupyter indents it)."""
    nb = notebook(script.read_text(encoding="utf-8"), script.stem)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    for script in tutorial_scripts():
        twin = script.with_suffix(".ipynb")
        text = notebook_text(script)
        if not twin.is_file() or twin.read_text(encoding="utf-8") != text:
            twin.write_text(text, encoding="utf-8")
            print(f"wrote {twin.relative_to(TUTORIALS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
