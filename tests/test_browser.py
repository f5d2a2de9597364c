"""The HTML report really renders: headless Chromium takes a screenshot, and the test reads its
pixels.

Parsing the HTML proves the markup is there; only a browser proves it draws. The test opens the
report that ``minilens lens --html`` writes, screenshots it, decodes the PNG with the small decoder
below (numpy + zlib, no imaging library), and checks that
- the image is not blank, and
- every heatmap cell is on screen in its own colour: it finds the grid's offset on the page from the
  top-left corner of cell (0, 0), then samples a point inside each of the rows x positions cells,
  away from the centred token text, and compares it with the cell's fill attribute.
The activation-patching heatmap (a 40-token prompt, so its cells are narrow) gets the same check,
and its colour bar must show both ends of the diverging scale. So do the layer x head grid of head
attribution (every cell of L x H in its colour) and a 93-token lens, wrapped into panels in a
1024-px window (its colour bar on screen). On the shipped (tied-embedding) model, the log-scale
lens must draw the rows below 0_pre in clearly different colours, read from the screenshot.
Text must not overlap: Chromium loads the attribution bars and the head grid with a small script
(added for the test only; reports have none) that writes every <text>'s drawn box into the page,
and ``--dump-dom`` prints it.

Chromium is Debian's ``chromium`` package; .ci/run installs it and sets MINILENS_REQUIRE_BROWSER=1,
so in CI a missing browser is a failure, never a skip.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.show import cli, render

ROOT = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the"


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("MINILENS_REQUIRE_BROWSER") == "1":
        pytest.fail("MINILENS_REQUIRE_BROWSER=1 but no chromium on PATH: "
                    "apt-get install chromium (see .ci/run)")
    pytest.skip("headless Chromium is not installed (apt-get install chromium); CI requires it")


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB/RGBA, non-interlaced PNG -> [height, width, channels] uint8 (what Chromium
    writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (
                f"unsupported PNG: {depth=} {colour=}")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    prev = np.zeros(width * channels, dtype=np.int32)
    c = channels
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 1:       # Sub: add the byte one pixel to the left: a running sum per channel
            cur = np.cumsum(line.reshape(width, c), axis=0).reshape(-1) % 256
        elif f == 2:       # Up
            cur = (line + prev) % 256
        else:              # Average, Paeth: each byte depends on the decoded byte to its left
            cur = line.copy()
            for x in range(0, width * c, c):
                a = cur[x - c:x] if x else np.zeros(c, np.int32)
                b, d = prev[x:x + c], (prev[x - c:x] if x else np.zeros(c, np.int32))
                if f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - d
                    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - d)
                    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, d))
                cur[x:x + c] = (line[x:x + c] + pred) % 256
        out[y] = cur
        prev = cur
    return out.reshape(height, width, c)[:, :, :3].astype(np.uint8)


class Cells(HTMLParser):
    """The heatmap's <svg> size and every cell's rect: (row, pos, x, y, width, height, rgb).
    ``svg_class``: "ml-heatmap" (the lens) or "ml-patching"; ``legend``: the colour bar's swatches,
    top to bottom."""

    def __init__(self, svg_class="ml-heatmap"):
        super().__init__()
        self.cells, self.cell, self.svg, self.svg_class, self.legend = [], None, None, svg_class, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and a.get("class") == self.svg_class:
            self.svg = (int(a["width"]), int(a["height"]))
        if tag == "rect" and a.get("class") == "ml-legend":
            self.legend.append(tuple(int(a["fill"][i:i + 2], 16) for i in (1, 3, 5)))
        if tag == "g" and a.get("class") == "ml-cell":
            self.cell = (int(a["data-row"]), int(a["data-pos"]))
        elif tag == "rect" and self.cell is not None:
            rgb = tuple(int(a["fill"][i:i + 2], 16) for i in (1, 3, 5))
            self.cells.append(self.cell + (float(a["x"]), float(a["y"]), float(a["width"]),
                                           float(a["height"]), rgb))
            self.cell = None


def screenshot(chromium: str, html: Path, png: Path, size: tuple[int, int],
               tmp: Path) -> np.ndarray:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={tmp / 'profile'}",
           f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", html.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.is_file(), f"chromium wrote no screenshot (exit {p.returncode}): {p.stderr[-2000:]}"
    return decode_png(png.read_bytes())


def test_heatmap_renders_in_headless_chromium(tmp_path, capsys):
    chromium = find_chromium()
    report = tmp_path / "lens.html"
    assert cli.main(["lens", TEXT, "--html", str(report)]) == 0
    capsys.readouterr()
    parsed = Cells()
    parsed.feed(report.read_text(encoding="utf-8"))
    cells = parsed.cells
    R, P = 1 + max(c[0] for c in cells), 1 + max(c[1] for c in cells)
    assert len(cells) == R * P
    size = (parsed.svg[0] + 80, parsed.svg[1] + 320)              # the svg plus the report's header
    img = screenshot(chromium, report, tmp_path / "lens.png", size, tmp_path)
    assert img.shape[:2] == (size[1], size[0])

    assert_not_blank(img)
    assert_cells_on_screen(img, cells, tmp_path / "lens.png")
    distinct = len({c[6] for c in cells})
    assert distinct > 3, "the cells are shaded by probability, so they are not all one colour"


def assert_not_blank(img: np.ndarray, min_non_white: float = 0.05):
    """A real picture has many colours and a good share of non-white pixels."""
    flat = img.reshape(-1, 3)
    non_white = np.mean(np.any(flat < 250, axis=1))
    n_colours = len(np.unique(flat[:: 7], axis=0))
    assert non_white > min_non_white and n_colours > 20, (
        f"the screenshot looks blank ({non_white:.1%} non-white, {n_colours} colours)")


def assert_cells_on_screen(img: np.ndarray, cells: list, png: Path):
    """Every heatmap cell is on screen in its own colour, where it sits relative to the others."""
    R, P = 1 + max(c[0] for c in cells), 1 + max(c[1] for c in cells)
    # Find where the grid sits: candidates are top-left corners of regions in the darkest cell's
    # colour (a near-white cell would merge with the page's white background).
    first = min(cells, key=lambda c: sum(c[6]))
    fill0 = np.array(first[6])
    match = np.all(img.astype(int) == fill0, axis=2)
    corner = match.copy()
    corner[1:] &= ~match[:-1]
    corner[:, 1:] &= ~match[:, :-1]
    inset = 4                                   # px inside each rect, clear of the text
    best = 0
    for py, px in np.argwhere(corner):
        dx, dy = px - first[2], py - first[3]
        hits = 0
        for _, _, x, y, w, h, rgb in cells:
            for sx, sy in ((x + inset, y + inset), (x + w - inset, y + h - inset)):
                X, Y = int(round(dx + sx)), int(round(dy + sy))
                if not (0 <= Y < img.shape[0] and 0 <= X < img.shape[1]):
                    break
                if np.any(np.abs(img[Y, X].astype(int) - np.array(rgb)) > 2):
                    break
            else:
                hits += 1
        best = max(best, hits)
        if best == len(cells):
            break
    assert best == R * P, (f"only {best} of the {R} x {P} heatmap cells were found on screen "
                           f"in their own colour; see {png}")


def test_patching_heatmap_renders_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    model = ml.load(ROOT / "weights" / "shakespeare-llama")
    clean = ("For thou, sweet lord, that hast my heart in keeping, and for whom the heavens have "
             "wept so long, I say that thou art fair; and now, good lord, that")
    corrupted = clean.replace("For thou", "For you", 1)
    result = ml.activation_patching(model, clean, corrupted, key="resid_pre",
                                    metric="logit_diff_normalized", target=" thou",
                                    contrast=" you")
    assert len(result.positions) == 40, "a long prompt: the cells are narrow"
    page = tmp_path / "patching.html"
    page.write_text(render.report(patching=result, title="patching"), encoding="utf-8")
    parsed = Cells("ml-patching")
    parsed.feed(page.read_text(encoding="utf-8"))
    cells = parsed.cells
    assert len(cells) == result.values.size
    size = (parsed.svg[0] + 80, parsed.svg[1] + 160)              # the svg plus the report's title
    img = screenshot(chromium, page, tmp_path / "patching.png", size, tmp_path)
    assert img.shape[:2] == (size[1], size[0])
    assert_not_blank(img, min_non_white=0.02)                     # most cells sit near white
    assert_cells_on_screen(img, cells, tmp_path / "patching.png")
    # The colour bar shows the diverging scale's two ends: blue at the top, red at the bottom.
    top, bottom = parsed.legend[0], parsed.legend[-1]
    assert top[2] > top[0] and bottom[0] > bottom[2], "blue above the base run, red below"
    for rgb in (top, bottom):    # at least one pixel row across the 14px bar, inside its outline
        n = int(np.all(img.astype(int) == np.array(rgb), axis=2).sum())
        assert n >= 12, f"the colour bar's end swatch {rgb} is on screen ({n} pixels)"


def page(body: str) -> str:
    """A bare HTML page around some SVG."""
    return ('<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
            f'<body style="margin: 8px; background: #fff">{body}</body></html>')


def shoot(chromium: str, html: str, svg_class: str, tmp: Path, name: str,
          width: int | None = None) -> tuple[np.ndarray, Cells, Path]:
    """Write a page, parse its cells, and screenshot it big enough to hold the whole picture."""
    path = tmp / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    parsed = Cells(svg_class)
    parsed.feed(html)
    size = (width or parsed.svg[0] + 40, parsed.svg[1] + 40)
    png = tmp / f"{name}.png"
    return screenshot(chromium, path, png, size, tmp), parsed, png


def test_head_grid_renders_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    model = ml.load(ROOT / "weights" / "shakespeare-llama")
    attr = ml.layer_attribution(model.run(TEXT), " the", by="head")
    img, parsed, png = shoot(chromium, page(render.head_grid_svg(attr)), "ml-headgrid", tmp_path,
                             "heads")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(parsed.cells) == L * H and {c[:2] for c in parsed.cells} == {
        (l, h) for l in range(L) for h in range(H)}, "one cell per layer and head"
    assert_not_blank(img, min_non_white=0.02)
    assert_cells_on_screen(img, parsed.cells, png)
    top, bottom = parsed.legend[0], parsed.legend[-1]
    assert top[2] > top[0] and bottom[0] > bottom[2], "blue adds to the logit, red takes away"


def cell_samples(img: np.ndarray, cells: list, offset: tuple[float, float]) -> dict:
    """The on-screen colour at an inner corner of each cell, given where cell (0, 0) sits."""
    dx, dy = offset
    return {(r, p): tuple(int(v) for v in img[int(round(dy + y + 4)), int(round(dx + x + 4))])
            for r, p, x, y, w, h, rgb in cells}


def grid_offset(img: np.ndarray, cells: list) -> tuple[float, float]:
    """Where the SVG's origin sits on the page: from the darkest cell's top-left corner (the
    first corner in its colour whose neighbours are right too)."""
    first = min(cells, key=lambda c: sum(c[6]))
    match = np.all(img.astype(int) == np.array(first[6]), axis=2)
    for py, px in np.argwhere(match):
        dx, dy = px - first[2], py - first[3]
        if all(tuple(img[int(round(dy + y + 4)), int(round(dx + x + 4))]) == rgb
               for _, _, x, y, _, _, rgb in cells[:20]
               if 0 <= dy + y + 4 < img.shape[0] and 0 <= dx + x + 4 < img.shape[1]):
            return dx, dy
    raise AssertionError("the heatmap's cells were not found on screen")


@pytest.mark.parametrize("metric", ["kl", "target_prob"])
def test_log_scale_lens_shows_the_rows_below_0_pre(tmp_path, metric):
    """On the shipped model (tied embeddings), the rows below 0_pre are drawn in many clearly
    different colours: not one flat block, not all white."""
    chromium = find_chromium()
    model = ml.load("shakespeare-llama")
    assert model.cfg.tie_embeddings
    lens = ml.logit_lens(model.run(TEXT))
    img, parsed, png = shoot(chromium, page(render.heatmap_svg(lens, metric)), "ml-heatmap",
                             tmp_path, metric)
    assert_cells_on_screen(img, parsed.cells, png)
    seen = cell_samples(img, parsed.cells, grid_offset(img, parsed.cells))
    below = np.array([rgb for (r, _), rgb in seen.items() if r >= 1], dtype=float)
    luminance = below @ np.array([0.2126, 0.7152, 0.0722])
    bins = len(set((luminance // 20).astype(int)))
    assert luminance.max() - luminance.min() > 100 and bins >= 5, (
        f"{metric}: the rows below 0_pre span luminance {luminance.min():.0f}-"
        f"{luminance.max():.0f} in {bins} steps of 20; see {png}")
    assert len({tuple(c) for c in below}) >= len(below) // 2, "cells of distinct colour"


def test_long_lens_keeps_labels_and_legend_on_screen(tmp_path):
    """93 tokens in a 1024-px window: panels, each cell in its colour, the colour bar visible."""
    chromium = find_chromium()
    model = ml.load("shakespeare-llama")
    ids = model.to_tokens(" ".join(["To be, or not to be, that is the question:"] * 9))[:93]
    lens = ml.logit_lens(model.run(ids))
    img, parsed, png = shoot(chromium, page(render.heatmap_svg(lens)), "ml-heatmap", tmp_path,
                             "long", width=1024)
    assert parsed.svg[0] <= 1024 - 16, "no sideways scroll"
    assert_cells_on_screen(img, parsed.cells, png)
    for rgb in (parsed.legend[0], parsed.legend[-1]):
        n = int(np.all(img.astype(int) == np.array(rgb), axis=2).sum())
        assert n >= 12, f"the colour bar's end swatch {rgb} is on screen ({n} pixels)"


MEASURE = """<script>
const boxes = [];
document.querySelectorAll("svg").forEach(svg => svg.querySelectorAll("text").forEach(t => {
  const b = t.getBoundingClientRect();
  boxes.push({svg: svg.getAttribute("class"), text: t.textContent, x: b.left, y: b.top,
              w: b.width, h: b.height});
}));
const pre = document.createElement("pre");
pre.id = "boxes";
pre.textContent = JSON.stringify(boxes);
document.body.appendChild(pre);
</script>"""


def text_boxes(chromium: str, html: str, tmp: Path) -> list[dict]:
    """Every <text>'s box as Chromium draws it."""
    path = tmp / "measure.html"
    path.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1200", "--dump-dom",
           path.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="boxes">(.*?)</pre>', p.stdout, re.S)
    assert m, f"chromium printed no measurements (exit {p.returncode}): {p.stderr[-2000:]}"
    return json.loads(unescape(m.group(1)))


def overlaps(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of texts whose drawn boxes share more than a pixel."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if w > 1 and h > 1:
                out.append((a["text"], b["text"]))
    return out


def test_attribution_labels_do_not_overlap(tmp_path):
    """The contrast chart (long negative bars put their values left of the bar), the head bars
    with "rest" cut, and the head grid: no two texts drawn on top of each other."""
    chromium = find_chromium()
    model = ml.load("shakespeare-llama")
    trace = model.run(TEXT)
    contrast = ml.layer_attribution(trace, " the", contrast=" a")
    assert min(contrast.values) < -0.5 * max(abs(contrast.values)), (
        "a long negative bar (else this tests nothing)")
    heads = ml.layer_attribution(trace, " be", by="head")
    body = (render.attribution_svg(contrast) + render.attribution_svg(heads)
            + render.head_grid_svg(heads))
    boxes = text_boxes(chromium, page(body), tmp_path)
    for cls in ("ml-attribution", "ml-headgrid"):
        mine = [b for b in boxes if b["svg"] == cls]
        assert len(mine) > 10, f"the {cls} texts were measured"
        assert all(b["w"] > 0 and b["h"] > 0 for b in mine), "every text is drawn"
        clash = overlaps(mine)
        assert not clash, f"{cls}: texts drawn over each other: {clash[:5]}"
