"""The Jupyter twins of the tutorials: in sync with their `# %%` source, and runnable top to bottom.

tutorials/make_notebooks.py writes each tutorial's .ipynb from its .py. Here every twin is made
again in memory and compared with the file, so a tutorial edited without regenerating fails.

Then each notebook runs as a course would run it: `jupyter nbconvert --execute --to notebook`
(nbconvert starts an IPython kernel and runs every cell in order; a cell that raises fails the run).
The .py tests (tests/test_tutorials.py) run the tutorials on the shipped Shakespeare Llama, the
offline fallback; the notebooks run with the real SmolLM2 wherever it is fetched, so that each
tutorial runs once on each path and never twice on the slow one.

Jupyter (nbconvert, nbclient, ipykernel) is in the test extra. Without it the execution tests
skip; .ci/run sets MINILENS_REQUIRE_JUPYTER=1, so in CI a missing Jupyter is a failure, and with
MINILENS_REQUIRE_MODEL=1 a notebook that fell back to the shipped model is one too.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _real_model import REQUIRE_MODEL, smollm2_path
from minilens.loading.fetch import fetched_path

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
# tutorials/ is not a package: load the generator from its file
_spec = importlib.util.spec_from_file_location("make_notebooks", TUTORIALS / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)

SCRIPTS = make_notebooks.tutorial_scripts()
FALLBACK = "SmolLM2 is not fetched"          # what a tutorial prints when it falls back


def test_every_tutorial_has_a_twin_and_every_twin_a_tutorial():
    twins = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert twins == [p.with_suffix(".ipynb").name for p in SCRIPTS], (
        "run `python tutorials/make_notebooks.py` (and delete the .ipynb of a removed tutorial)")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_twin_is_in_sync_with_its_script(script):
    twin = script.with_suffix(".ipynb")
    assert twin.read_text(encoding="utf-8") == make_notebooks.notebook_text(script), (
        f"{twin.name} is stale: run `python tutorials/make_notebooks.py` after editing "
        f"{script.name}")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_twin_holds_every_line_of_its_script(script):
    """Read the other way, independently of the generator's parser: every code line of the script
    is in the notebook's code cells, in order, and every comment line's words in some cell."""
    nb = json.loads(script.with_suffix(".ipynb").read_text(encoding="utf-8"))
    code = [line.rstrip("\n") for c in nb["cells"] if c["cell_type"] == "code"
            for line in c["source"]]
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    lines = script.read_text(encoding="utf-8").splitlines()
    in_markdown = False
    expected_code = []
    for line in lines:
        if line.startswith("# %%"):
            in_markdown = "[markdown]" in line
        elif in_markdown:
            assert line.lstrip("# ") in prose, f"prose line missing from the notebook: {line!r}"
        elif line.strip():
            expected_code.append(line)
    assert [line for line in code if line.strip()] == expected_code, (
        "the notebook's code cells are not the script's code, in order")
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"


def jupyter_or_skip():
    missing = [m for m in ("nbconvert", "nbclient", "ipykernel")
               if importlib.util.find_spec(m) is None]
    if missing:
        message = (f"Jupyter is not installed ({', '.join(missing)} missing): "
                   f"pip install -e \".[test]\"")
        if os.environ.get("MINILENS_REQUIRE_JUPYTER") == "1":
            pytest.fail(message + "; CI requires it (MINILENS_REQUIRE_JUPYTER=1)")
        pytest.skip(message)


def outputs_text(nb: dict) -> str:
    """Everything the executed notebook's cells wrote: streams, and plain-text results."""
    parts = []
    for c in nb["cells"]:
        for out in c.get("outputs", []):
            if out["output_type"] == "stream":
                parts.append("".join(out["text"]))
            elif out["output_type"] in ("execute_result", "display_data"):
                parts.append("".join(out["data"].get("text/plain", "")))
            elif out["output_type"] == "error":
                parts.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(script, tmp_path):
    jupyter_or_skip()
    uses_smollm2 = "fetched_path(\"smollm2\")" in script.read_text(encoding="utf-8")
    if uses_smollm2 and REQUIRE_MODEL:
        smollm2_path()                       # fails in CI when SmolLM2 is not fetched
    twin = tmp_path / script.with_suffix(".ipynb").name
    shutil.copy(script.with_suffix(".ipynb"), twin)       # the kernel runs in the notebook's folder
    p = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "notebook",
         "--output", "executed", "--ExecutePreprocessor.timeout=1200", str(twin)],
        capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert p.returncode == 0, f"{twin.name} failed under nbconvert:\n{p.stderr[-4000:]}"
    nb = json.loads((tmp_path / "executed.ipynb").read_text(encoding="utf-8"))
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells and all(c["execution_count"] for c in code_cells), "every cell ran"
    text = outputs_text(nb)
    assert "Notice" in text, f"{twin.name} should tell the reader what to notice"
    if uses_smollm2 and fetched_path("smollm2") is not None:
        assert FALLBACK not in text, (
            f"{twin.name} fell back to the shipped model although SmolLM2 is fetched")
