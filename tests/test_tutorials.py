"""Every tutorial runs as a script on the shipped weights and exits 0.

The tutorials assert their own checks (the hand-built block matches the trace, the parts sum to
the logit, ...), so a tutorial that runs to the end has also verified what it teaches. They run
in a subprocess, from a different working directory, as a reader would run them.

Tutorials 02-09 use the real SmolLM2 where `minilens fetch smollm2` has put it, and the shipped
Shakespeare Llama otherwise. Here they run with MINILENS_HOME set to an empty folder, so that they
take the offline path a reader without the fetched model takes; tests/test_notebooks.py runs their
notebook twins on SmolLM2.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def test_all_five_tutorials_are_there_and_listed():
    assert ((n := [p.name[:2] for p in SCRIPTS]) == sorted(set(n))
            and {"01", "02", "03", "04", "05"} <= set(n)), f"numbers {n}: unique, 01-05 there"
    readme = (TUTORIALS / "README.md").read_text()
    for p in SCRIPTS:
        assert p.name in readme, f"tutorials/README.md should link {p.name}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_tutorial_runs_offline(script, tmp_path):
    home = tmp_path / "empty-minilens-home"          # no fetched model in it
    home.mkdir()
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300, env=dict(os.environ, MINILENS_HOME=str(home)))
    assert p.returncode == 0, f"{script.name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "Notice" in p.stdout, f"{script.name} should tell the reader what to notice"
    if 'fetched_path("smollm2")' in script.read_text():
        assert "SmolLM2 is not fetched" in p.stdout, (
            f"{script.name} should say that it falls back to the shipped model")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_tutorial_is_a_notebook_too(script):
    text = script.read_text()
    assert text.startswith("# %% [markdown]"), "open with a prose cell"
    assert text.count("# %%\n") >= 3 and text.count("# %% [markdown]") >= 3, (
        "code cells explained by prose cells")
