"""`minilens patch CLEAN CORRUPTED --target TOK --contrast TOK`, run as a user runs it.

On the shipped Shakespeare Llama: "The king is dead, long live the" predicts " king", and
"The queen is dead, long live the" does not; both are 9 tokens.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import minilens as ml

CLEAN, CORRUPTED = "The king is dead, long live the", "The queen is dead, long live the"


def run(*args):
    return subprocess.run([sys.executable, "-m", "minilens", "patch", *args], capture_output=True,
                          text=True, timeout=300)


def test_patch_prints_the_grid_and_writes_the_heatmap(tmp_path):
    html = tmp_path / "patch.html"
    p = run(CLEAN, CORRUPTED, "--target", " king", "--contrast", " truth", "--html", str(html))
    assert p.returncode == 0, p.stderr
    assert ("denoising: clean -> corrupted" in p.stdout
            and "resid_pre patched by position" in p.stdout), p.stdout   # the table's title
    assert "strongest cells:" in p.stdout
    assert html.read_text().lstrip().startswith("<"), "the heatmap is an HTML file"
    assert f"wrote {html}" in p.stderr, "--html says where it wrote"
    # the numbers are the library's
    model = ml.load("shakespeare-llama")
    result = ml.activation_patching(model, CLEAN, CORRUPTED, "logit_diff_normalized",
                                    target=" king", contrast=" truth")
    label, value = result.top(1)[0]
    assert f"{label} {value:+.3f}" in p.stdout, "the CLI prints activation_patching's own numbers"
    assert np.isclose(result.clean, 1.0) and result.corrupted == 0.0


def test_patch_errors_speak_in_flags():
    p = run(CLEAN, "The queen is dead", "--target", " king", "--contrast", " truth")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "must align" in p.stderr and "Traceback" not in p.stderr
    p = run(CLEAN, CORRUPTED, "--target", " king")
    assert p.returncode == 2 and "--contrast" in p.stderr and "contrast=" not in p.stderr, p.stderr
    p = run(CLEAN, CORRUPTED, "--target", " king", "--contrast", " truth", "--by", "head")
    assert p.returncode == 2 and "--by" in p.stderr, p.stderr
    p = run(CLEAN, CORRUPTED, "--target", " king", "--contrast", " truth", "--layers", "a,b")
    assert p.returncode == 2 and "--layers" in p.stderr, p.stderr
