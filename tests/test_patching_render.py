"""The pictures of interventions (minilens/show/render.py): the patching grid and direct against
total effect, as terminal tables and as self-contained SVG.

Each picture must carry exactly the numbers of the result it draws (one cell per layer and
position or head, one pair of bars per component, the exact value in each hover text), colour
around the right centre (white is the base run: corrupted for denoising, clean for noising), say
which direction was patched, and stay legible for long prompts. Real results come from the
shipped Shakespeare Llama (a pronoun pair it tells apart); geometry checks at 60 positions use a
PatchingResult built by hand, since only its shape matters there.
"""

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.errors import InputError
from minilens.show import render

ROOT = Path(__file__).resolve().parents[1]
CLEAN, CORRUPTED = "For thou, sweet lord, that", "For you, sweet lord, that"
KW = dict(target=" thou", contrast=" you")


class Svg(HTMLParser):
    """Every start tag with its attributes, and the text of each element (the <title>s too)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.texts, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append([tag, dict(attrs), ""])

    def handle_endtag(self, tag):
        while self.stack:
            t, a, text = self.stack.pop()
            self.texts.append((t, a, text))
            if t == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][2] += data

    def of(self, tag, cls=None):
        return [a for t, a in self.tags if t == tag and (cls is None or a.get("class") == cls)]

    def text_of(self, tag, cls=None):
        return [s for t, a, s in self.texts if t == tag and (cls is None or a.get("class") == cls)]


def parse(html: str) -> Svg:
    p = Svg()
    p.feed(html)
    p.close()
    return p


def cells_of(html: str) -> tuple[np.ndarray, dict, list[str]]:
    """-> values [rows, cols] from data-value, {(row, col): fill}, and the hover titles."""
    p = parse(html)
    groups = p.of("g", "ml-cell")
    R = 1 + max(int(a["data-row"]) for a in groups)
    C = 1 + max(int(a["data-pos"]) for a in groups)
    assert len(groups) == R * C, "one cell per (row, column)"
    values = np.zeros((R, C))
    for a in groups:
        values[int(a["data-row"]), int(a["data-pos"])] = float(a["data-value"])
    fills, in_cell = {}, None
    for t, a in p.tags:
        if t == "g" and a.get("class") == "ml-cell":
            in_cell = (int(a["data-row"]), int(a["data-pos"]))
        elif t == "rect" and in_cell is not None:
            fills[in_cell] = a["fill"]
            in_cell = None
    titles = [s for t, a, s in p.texts if t == "title"]
    return values, fills, titles


def rgb(fill: str) -> tuple[int, int, int]:
    return tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))


def assert_self_contained(html: str):
    assert not re.search(r"https?://(?!www\.w3\.org)", html), "no URLs: it must open offline"
    assert "<script" not in html.lower() and "<link" not in html.lower() and "url(" not in html, \
        "no scripts, no external stylesheets or fonts"


@pytest.fixture(scope="module")
def model():
    return ml.load(ROOT / "weights" / "shakespeare-llama")


@pytest.fixture(scope="module")
def results(model):
    norm = dict(metric="logit_diff_normalized", **KW)
    return {
        "resid": ml.activation_patching(model, CLEAN, CORRUPTED, key="resid_pre", **norm),
        "heads": ml.activation_patching(model, CLEAN, CORRUPTED, key="z", by="head", **norm),
        "head_position": ml.activation_patching(model, CLEAN, CORRUPTED, key="z",
                                                by="head_position", layers=[3, 4], **norm),
        "noising": ml.activation_patching(model, CLEAN, CORRUPTED, key="resid_pre",
                                          direction="noising", metric="logit_diff", **KW),
    }


def synthetic(n_pos: int, n_layers: int = 6, by: str = "position") -> "ml.PatchingResult":
    """A PatchingResult of a given shape (for geometry), with values spread over [-0.5, 1.2]."""
    rng = np.random.default_rng(0)
    positions = [f"{p}: tok{p}" if p % 3 else f"{p}:\nnew line" for p in range(n_pos)]
    shape = (n_layers, n_pos)
    return ml.PatchingResult(rng.uniform(-0.5, 1.2, shape), "resid_pre", by, "denoising",
                             "logit_diff_normalized", list(range(n_layers)), positions, 1.0, 0.0,
                             positions)


@pytest.mark.parametrize("name", ["resid", "heads", "head_position", "noising"])
def test_heatmap_cells_carry_the_values(results, name):
    result = results[name]
    html = render.patching_html(result)
    assert html.startswith('<div class="minilens">') and 'class="ml-patching"' in html
    assert_self_contained(html)
    values, _, titles = cells_of(html)
    expected = result.values.reshape(-1, result.values.shape[-1])    # head_position: L.H rows
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6,
                               err_msg="each cell's data-value is the result's value")
    for v in expected.ravel()[:20]:
        assert any(f"= {v:.4f} " in t for t in titles), \
            f"some cell's hover text gives the exact value {v:.4f}"


def test_the_colour_is_centred_on_the_base_run(results):
    """White where a patch leaves the base run's metric, blue above it, red below."""
    for name in ("resid", "noising"):
        result = results[name]
        base = render.patching_base(result)
        assert base == (result.corrupted if name == "resid" else result.clean)
        values, fills, _ = cells_of(render.patching_html(result))
        seen = set()
        for (r, c), fill in fills.items():
            v = values[r, c]
            red, _, blue = rgb(fill)
            # 1e-3 of the scale: a patch that copies identical numbers reproduces the base run
            # to float32 rounding (the batched rerun sums in another order), not bit for bit
            if abs(v - base) < 1e-3 * render.patching_scale(result):
                assert fill == "#ffffff", f"{name}: a cell at the base value ({v}) must be white"
                seen.add("white")
            elif v - base > 0.05 * render.patching_scale(result):
                assert blue > red, f"{name}: a cell above the base ({v} > {base}) must be blue"
                seen.add("blue")
            elif base - v > 0.05 * render.patching_scale(result):
                assert red > blue, f"{name}: a cell below the base ({v} < {base}) must be red"
                seen.add("red")
        assert {"white", "blue"} <= seen or {"white", "red"} <= seen, \
            f"{name}: expected white cells and coloured ones, saw {seen}"


def test_title_names_the_direction_key_and_metric(results):
    den = parse(render.patching_html(results["resid"]))
    assert den.text_of("text", "ml-title") == ["denoising: clean -> corrupted"]
    assert "resid_pre patched by position" in den.text_of("text", "ml-subtitle")[0]
    assert "logit_diff_normalized" in den.text_of("text", "ml-subtitle")[0]
    noi = parse(render.patching_html(results["noising"]))
    assert noi.text_of("text", "ml-title") == ["noising: corrupted -> clean"]
    assert "white = the clean run" in noi.text_of("text", "ml-subtitle")[0]


def test_colour_bar_has_ticks_and_marks_both_runs(results):
    for result in results.values():
        p = parse(render.patching_html(result))
        base, scale = render.patching_base(result), render.patching_scale(result)
        ticks = [float(a["data-value"]) for a in p.of("text", "ml-tick")]
        assert len(ticks) >= 3, "at least three ticks on the colour bar"
        assert all(base - scale - 1e-9 <= t <= base + scale + 1e-9 for t in ticks)
        assert len(p.of("rect", "ml-legend")) >= 20, "a colour bar of swatches"
        marks = p.text_of("text", "ml-mark")
        assert any(m.startswith("◀ clean") for m in marks)
        assert any(m.startswith("◀ corrupted") for m in marks)


def test_column_labels_are_tokens_with_visible_spaces(results, model):
    result = results["resid"]
    p = parse(render.patching_html(result))
    cols = p.text_of("text", "ml-col")
    strs = model.to_str_tokens(model.to_tokens(CORRUPTED))           # denoising: the base run's
    assert len(cols) == len(strs)
    for label, s in zip(cols, strs):
        assert label.startswith(render.visible_token(s, 14)), f"{label!r} labels token {s!r}"
    assert "␣you" in "".join(cols), "a leading space is drawn, so ' you' does not read as 'you'"
    rows = p.text_of("text", "ml-rowlabel")
    assert rows == [f"L{l}" for l in result.layers]


def test_head_position_rows_are_layer_and_head(results, model):
    result = results["head_position"]
    p = parse(render.patching_html(result))
    rows = p.text_of("text", "ml-rowlabel")
    assert rows == [f"L{l}H{h}" for l in (3, 4) for h in range(model.cfg.n_heads)]
    assert "rows are layer.head" in " ".join(p.text_of("text", "ml-caption")).lower()


@pytest.mark.parametrize("n_pos", [20, 40, 60])
def test_long_prompts_stay_legible(n_pos):
    """Cells narrow with the prompt, but the rotated labels never collide and nothing is drawn
    outside the picture."""
    result = synthetic(n_pos)
    svg = render.patching_svg(result)
    p = parse(svg)
    root = p.of("svg", "ml-patching")[0]
    W, H = int(root["width"]), int(root["height"])
    xs = [float(a["x"]) for a in p.of("text", "ml-col")]
    assert len(xs) == n_pos
    step = np.diff(xs).min()
    assert step * np.sin(np.radians(60)) >= 12, \
        f"labels rotated by 60 degrees must sit a line apart (11px font), got {step:.1f}px"
    rects = [a for a in p.of("rect") if "width" in a]
    right = max(float(a["x"]) + float(a["width"]) for a in rects)
    bottom = max(float(a["y"]) + float(a["height"]) for a in rects)
    assert right <= W and bottom <= H, "every rect inside the picture"
    texts = [a for a in p.of("text") if "transform" not in a]
    assert all(0 <= float(a["x"]) <= W and 0 <= float(a["y"]) <= H for a in texts)
    cols = p.text_of("text", "ml-col")
    assert all("\n" not in c for c in cols), "newlines in tokens are escaped, never drawn"
    values, _, _ = cells_of(svg)
    np.testing.assert_allclose(values, result.values, rtol=1e-5)
    printed = [s for t, a, s in p.texts if t == "text" and re.fullmatch(r"-?\d\.\d\d", s or "")]
    if n_pos > 36:
        assert not printed, "cells too narrow for a number print none (the hover has it)"
    else:
        assert len(printed) == result.values.size


def test_terminal_table(results, model):
    result = results["resid"]
    plain = render.patching_table(result)
    assert "\x1b" not in plain
    lines = plain.splitlines()
    assert lines[0].startswith("denoising: clean -> corrupted")
    assert len(lines) == 3 + len(result.layers), "title, position numbers, tokens, one per layer"
    assert "␣you" in lines[2]
    body = np.array([[float(x) for x in line.split()[1:]] for line in lines[3:]])
    np.testing.assert_allclose(body, result.values, atol=0.005 + 1e-9,
                               err_msg="two decimals of each value")
    assert "-0.00" not in plain, "a value that rounds to zero prints as 0.00"
    coloured = render.patching_table(result, color=True)
    assert coloured.count("\x1b[48;2;") == result.values.size, "one background per cell"
    assert repr(result) == plain, "repr is the plain table"


def test_narrow_terminal_wraps_and_hides_nothing():
    result = synthetic(40)
    table = render.patching_table(result, width=60)
    assert all(len(line) <= 60 for line in table.splitlines()[1:])
    blocks = [line for line in table.splitlines() if line.startswith("(positions ")]
    assert len(blocks) >= 2, "columns that do not fit continue in a block below"
    numbers = [int(x) for line in table.splitlines() if line.startswith(" ") for x in line.split()]
    assert sorted(numbers) == list(range(40)), "every position appears exactly once"


def test_heads_table_and_repr_html(results, model):
    result = results["heads"]
    table = render.patching_table(result)
    assert table.splitlines()[1].split() == ["layer"] + [f"H{h}" for h in range(model.cfg.n_heads)]
    assert result._repr_html_() == render.patching_html(result)
    hp = render.patching_table(results["head_position"])
    assert "L3H0" in hp and "L4H5" in hp


@pytest.fixture(scope="module")
def effects(model):
    return ml.direct_and_total_effects(model, CLEAN, " thou", " you", kind="zero")


def test_effects_bars_carry_direct_and_total(effects):
    html = render.effects_html(effects)
    assert_self_contained(html)
    p = parse(html)
    bars = p.of("g", "ml-bar")
    assert len(bars) == 2 * len(effects.labels), "a direct and a total bar per component"
    got = {(a["data-label"], a["data-kind"]): float(a["data-value"]) for a in bars}
    for label, d, t in zip(effects.labels, effects.direct, effects.total):
        assert got[(label, "direct")] == pytest.approx(d, rel=1e-5, abs=1e-6)
        assert got[(label, "total")] == pytest.approx(t, rel=1e-5, abs=1e-6)
    assert p.text_of("text", "ml-rowlabel") == list(effects.labels), "layer order by default"
    assert effects._repr_html_() == html


def test_effects_table(effects):
    table = render.effects_table(effects)
    lines = table.splitlines()
    assert lines[0].startswith("direct and total effect on logit_diff (zero ablation")
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == list(effects.labels)
    for row, d, t in zip(rows, effects.direct, effects.total):
        numbers = [float(x) for x in re.findall(r"[+-]\d+\.\d{3}", row)]
        assert numbers == pytest.approx([d, t, t - d], abs=1.5e-3)
    ranked = render.effects_table(effects, top=3, sort=True).splitlines()
    size = np.maximum(np.abs(effects.direct), np.abs(effects.total))
    assert [r.split()[0] for r in ranked[2:5]] == [effects.labels[i] for i in np.argsort(-size)[:3]]
    assert ranked[-1] == f"(3 of {len(effects.labels)} components, the largest)"
    assert repr(effects) == render.effects_table(effects, top=30)


def test_report_holds_patching_and_effects(results, effects):
    html = render.report(patching=[results["resid"], results["heads"]], effects=effects,
                         title="patching <report>")
    assert html.startswith("<!DOCTYPE html>")
    assert_self_contained(html)
    assert html.count('class="ml-patching"') == 2 and html.count('class="ml-effects"') == 1
    assert "patching &lt;report&gt;" in html, "the title is escaped"
    with pytest.raises(InputError):
        render.report()


def test_helpers():
    assert render.diverge(0) == (255, 255, 255)
    red, blue = render.diverge(-1), render.diverge(1)
    assert red[0] > red[2] and blue[2] > blue[0], "-1 is red, +1 is blue"
    assert render.diverge(5) == blue and render.diverge(float("nan")) == (255, 255, 255)
    assert render.fmt_value(-0.004) == "0.00" and render.fmt_value(-0.006) == "-0.01"
    assert render.visible_token(" John") == "␣John"
    ticks, decimals = render.nice_ticks(-1.01, 1.01)
    assert ticks == pytest.approx([-1, -0.5, 0, 0.5, 1]) and decimals == 1
    ticks, decimals = render.nice_ticks(-5.74, 17.98)
    assert ticks == pytest.approx([-5, 0, 5, 10, 15]) and decimals == 0
