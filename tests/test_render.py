"""The HTML report and the terminal tables (minilens/show/render.py).

The report must parse, be self-contained (it opens offline: no URLs, no scripts, no external fonts
or stylesheets), and carry exactly the numbers of the LensResult / Attribution it draws: one cell
per (row, position), one bar per part, the top-k in each cell's hover text. The expected values
come from the library's own results on the shipped weights, recomputed here.
"""

import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.errors import InputError
from minilens.show import render

ROOT = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the"


class Collect(HTMLParser):
    """Every start tag with its attributes, the text inside each <title>, and all text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.titles, self.text, self._in_title = [], [], [], False
        self.open = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "title":
            self._in_title = True
            self.titles.append("")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.titles[-1] += data


def parse(html: str) -> Collect:
    p = Collect()
    p.feed(html)
    p.close()
    return p


@pytest.fixture(scope="module")
def trace():
    return ml.load(ROOT / "weights" / "shakespeare-llama").run(TEXT)


def assert_self_contained(html: str):
    assert not re.search(r"https?://", html), "no URLs: the report must open offline"
    assert "<script" not in html.lower(), (
        "no scripts (hover text is SVG <title>, no JavaScript needed)")
    assert "<link" not in html.lower() and "@import" not in html and "url(" not in html, (
        "no external stylesheets or fonts")


@pytest.mark.parametrize("metric", render.METRICS)
def test_report_cells_carry_the_lens_numbers(trace, metric):
    lens = ml.logit_lens(trace, target=" the", top_k=4)
    html = render.report(lens=lens, metric=metric, text=TEXT)
    assert html.startswith("<!DOCTYPE html>")
    assert_self_contained(html)
    p = parse(html)
    cells = [a for t, a in p.tags if t == "g" and a.get("class") == "ml-cell"]
    R, P = lens.target_prob.shape
    assert len(cells) == R * P, "one heatmap cell per (row, position)"
    expected = {"prob": lens.top_probs[:, :, 0], "target_prob": lens.target_prob,
                "entropy": lens.entropy, "kl": lens.kl_to_final}[metric]
    got = np.zeros((R, P))
    for a in cells:
        got[int(a["data-row"]), int(a["data-pos"])] = float(a["data-value"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                               err_msg=f"cells must hold lens.{metric}")
    fills = {a["fill"] for t, a in p.tags if t == "rect" and a.get("fill", "").startswith("#")}
    assert len(fills) > 3, "cells are coloured by value, not all one colour"


def test_hover_text_lists_the_top_k(trace):
    lens = ml.logit_lens(trace, top_k=3)
    p = parse(lens._repr_html_())
    model = trace.model
    hovers = [t for t in p.titles if t.startswith("final_post, position")]
    assert len(hovers) == len(lens.positions)
    last = hovers[-1]
    for t, prob in zip(lens.top_ids[-1, -1], lens.top_probs[-1, -1]):
        assert f"{model.to_str_tokens([int(t)])[0]!r} {float(prob):.3f}" in last, \
            "each cell's <title> lists its top-k tokens with their probabilities"


def test_text_is_escaped(trace):
    model = trace.model
    text = 'a <b> & "c"'
    lens = ml.logit_lens(model.run(text))
    html = render.report(lens=lens, text=text, title="<script>alert(1)</script>")
    assert "<script" not in html and "<b>" not in html, "user text is escaped, never markup"
    assert text in "".join(parse(html).text), "and still shows up as text"


@pytest.mark.parametrize("by,layer", [("layer", None), ("head", None), ("neuron", 0), ("token", 1)])
def test_attribution_bars_sum_to_the_logit(trace, by, layer):
    attr = ml.layer_attribution(trace, " the", by=by, layer=layer)
    html = render.report(attr=attr)
    assert_self_contained(html)
    bars = [a for t, a in parse(html).tags if t == "g" and a.get("class") == "ml-bar"]
    values = np.array([float(a["data-value"]) for a in bars])
    if by in ("layer", "token"):
        assert [a["data-label"] for a in bars] == attr.labels.tolist(), (
            "layers and tokens keep their natural order")
    else:
        assert len(bars) <= 25, "heads and neurons: the largest parts and one bar for the others"
    assert values.sum() == pytest.approx(attr.logit, abs=1e-3), (
        "the bars (with 'others') still sum to the logit")
    assert "sum of all" in html and "difference" in html
    assert attr._repr_html_().startswith('<div class="minilens">')


def test_bad_metric_and_empty_report(trace):
    lens = ml.logit_lens(trace)
    with pytest.raises(InputError, match="metric"):
        render.heatmap_svg(lens, metric="loudness")
    with pytest.raises(InputError):
        render.report()


def test_terminal_table_and_bars(trace):
    lens = ml.logit_lens(trace)
    plain = render.lens_table(lens, color=False, width=10 ** 6)
    assert "\x1b" not in plain and len(plain.splitlines()) == len(lens.labels) + 1
    coloured = render.lens_table(lens, color=True, width=10 ** 6)
    assert coloured.count("\x1b[48;2;") == lens.top_probs[:, :, 0].size, (
        "one shaded background per cell")
    narrow = render.lens_table(lens, width=40)
    assert narrow.startswith("(showing the last"), (
        "a narrow terminal shows the last positions, with a note")
    attr = ml.layer_attribution(trace, " the", by="neuron", layer=0)
    bars = render.attribution_bars(attr, top=5)
    assert f"... {len(attr.values) - 5} more parts" in bars


def test_ramp_and_ink():
    assert render.ramp(1) == tuple(int(v) for v in render._RAMP[-1])
    lightest = render.ramp(0)
    assert max(255 - c for c in lightest) >= 25, (
        f"the lightest step {lightest} must be visible on a white page")
    assert render.ink(render.ramp(0)) == "#000" and render.ink(render.ramp(1)) == "#fff", \
        "dark cells need white text, light cells black"
    assert render.show_token("a\nb", 10) == "a\\nb" and render.show_token("abcdefgh", 4) == "abc…"


# ------------------------------------------------------------------------------------------
# Tokens on screen
# ------------------------------------------------------------------------------------------

CONTROLS = "".join(chr(c) for c in [*range(0x20), 0x7F])


def raw_controls(text: str) -> set[str]:
    """Control characters in printed text, other than the newlines between lines."""
    return {c for c in text if c in CONTROLS and c != "\n"}


def test_escape_controls_leaves_no_control_character():
    escaped = render.escape_controls(CONTROLS + "plain \\ text é")
    assert not raw_controls(escaped) and "\n" not in escaped.replace("\\n", ""), escaped
    assert escaped.endswith("plain \\ text é"), "everything else is kept as it is"
    assert render.escape_controls("\x1b[31m") == "\\x1b[31m"
    assert render.escape_controls("a\tb\r") == "a\\tb\\r"
    assert len(set(render.escape_controls(c) for c in CONTROLS)) == len(CONTROLS), (
        "each control character reads differently")


def test_control_bytes_never_reach_the_terminal(trace):
    """ESC, BEL and backspace inside a prompt: the lens table and the token bars show them
    escaped."""
    model = trace.model
    text = "To be\x1b[31m or\x07 not\x08 to"
    ids = model.to_tokens(text)
    assert set("\x1b\x07\x08") <= set("".join(model.token_strings(ids))), (
        "the tokenizer keeps the control bytes as tokens (else this test tests nothing)")
    tr = model.run(ids)
    lens = ml.logit_lens(tr)
    for color in (False, True):
        table = render.lens_table(lens, color=color, width=10 ** 6)
        if color:   # the table's own colour codes are the only escapes allowed
            table = re.sub(r"\x1b\[[0-9;]*m", "", table)
        assert not raw_controls(table), f"raw control characters in the lens table: {table!r}"
        assert "\\x1b" in table and "\\x07" in table and "\\x08" in table
    attr = ml.layer_attribution(tr, " the", by="token", layer=1)
    bars = render.attribution_bars(attr, top=len(attr.values))
    assert not raw_controls(bars) and "\\x1b" in bars


def test_byte_tokens_show_their_bytes(trace):
    """A character split into byte pieces shows as "<0xNN>" pieces, not "�"; the pieces, read back
    as bytes, are the character's UTF-8."""
    model = trace.model
    for text in ("🙂", "naïve ∑"):
        ids = model.to_tokens(text, prepend_bos=False)
        shown = "".join(model.token_strings(ids))
        assert "\ufffd" not in shown, f"{text!r} shows as {shown!r}"
        raw = re.sub(rb"<0x([0-9A-F]{2})>", lambda m: bytes([int(m.group(1), 16)]),
                     shown.encode("utf-8"))
        assert raw == text.encode("utf-8"), f"{shown!r} does not spell {text!r}'s bytes"
    assert "<0x" in "".join(model.token_strings(model.to_tokens("🙂", prepend_bos=False))), (
        "the emoji is split into byte tokens by this vocabulary (else this test tests nothing)")
    assert model.token_strings(model.to_tokens(" be", prepend_bos=False)) == [" be"]


def test_token_labels_have_a_space_after_the_position(trace):
    attr = ml.layer_attribution(trace, " the", by="token", layer=1)
    bars = render.attribution_bars(attr, top=len(attr.values))
    comma = [i for i, s in enumerate(trace.model.token_strings(trace.ids)) if s == ","]
    assert comma, "the prompt has a comma token"
    assert f"  {comma[0]}: ,  " in bars, "'3:,' is shown as '3: ,'"
    assert not re.search(r"^\s+\d+:\S", bars, re.M), "a position never runs into its token"
    svg = render.attribution_svg(attr)
    labels = [t for t in parse(svg).text if re.match(r"\d+: ", t)]
    be = trace.model.token_strings(trace.ids).index(" be")
    assert f"{comma[0]}: ," in labels and f"{be}: ␣be" in labels, labels


# ------------------------------------------------------------------------------------------
# The lens heatmap
# ------------------------------------------------------------------------------------------

def svg_of(html: str, cls: str) -> dict:
    return next(a for t, a in parse(html).tags if t == "svg" and a.get("class") == cls)


def cell_fills(html: str) -> dict:
    """{(row, pos): (value, rgb)} of every heatmap cell."""
    out, cell = {}, None
    for t, a in parse(html).tags:
        if t == "g" and a.get("class") == "ml-cell":
            cell = (int(a["data-row"]), int(a["data-pos"]), float(a["data-value"]))
        elif t == "rect" and cell is not None:
            out[cell[:2]] = (cell[2], tuple(int(a["fill"][i:i + 2], 16) for i in (1, 3, 5)))
            cell = None
    return out


def ramp_position(rgb) -> float:
    """Where a colour sits on the ramp, 0..1, found by search (independent of ColourScale)."""
    ts = np.linspace(0, 1, 2001)
    d = [sum((a - b) ** 2 for a, b in zip(render.ramp(t), rgb)) for t in ts]
    return float(ts[int(np.argmin(d))])


@pytest.mark.parametrize("metric", ["kl", "target_prob", "prob"])
def test_log_scale_spreads_the_rows_below_0_pre(trace, metric):
    """On a log scale, with the tied model's 0_pre row left out of the range, the rows below it
    use most of the ramp, and each cell's colour follows log(value) between the ends."""
    lens = ml.logit_lens(trace)
    assert trace.model.cfg.tie_embeddings
    svg = render.heatmap_svg(lens, metric, scale="log")
    root = svg_of(svg, "ml-heatmap")
    assert root["data-scale"] == "log"
    default = svg_of(render.heatmap_svg(lens, metric), "ml-heatmap")["data-scale"]
    assert default == ("linear" if metric == "prob" else "log"), (
        "log by default for the target's probability and KL, linear for the top-1 probability")
    lo, hi = float(root["data-lo"]), float(root["data-hi"])
    cells = cell_fills(svg)
    below = {k: v for k, v in cells.items() if k[0] >= 1}
    values = np.array([v for v, _ in below.values()])
    positive = values[values > 0]
    assert lo <= positive.min() * (1 + 1e-6) or lo >= hi * 10.0 ** -8, "lo covers the rows' values"
    assert hi >= values.max() * (1 - 1e-6), "hi covers the rows' values"
    spots = [ramp_position(rgb) for _, rgb in below.values()]
    assert max(spots) - min(spots) > 0.6, (
        f"{metric}: the rows below 0_pre use only {max(spots) - min(spots):.2f} of the ramp")
    for (v, rgb), t in zip(below.values(), spots):
        x = (np.log10(max(v, lo)) - np.log10(lo)) / (np.log10(hi) - np.log10(lo))
        x = min(max(x, 0.0), 1.0)
        expected = 1 - x if metric == "kl" else x
        assert abs(t - expected) < 0.01, (f"{metric} {v}: colour at {t:.3f}, the log scale "
                                          f"says {expected:.3f}")


def test_rows_left_out_of_the_scale(trace):
    lens = ml.logit_lens(trace)
    kl = lens.kl_to_final
    default = svg_of(render.heatmap_svg(lens, "kl"), "ml-heatmap")
    assert float(default["data-hi"]) < kl[0].max(), "0_pre's KL does not set the top by default"
    every = svg_of(render.heatmap_svg(lens, "kl", exclude=()), "ml-heatmap")
    assert float(every["data-hi"]) >= kl[0].max(), "exclude=() keeps 0_pre in the range"
    p = parse(render.heatmap_svg(lens, "kl"))
    grey = [a for t, a in p.tags if t == "text" and a.get("class") == "ml-rowlabel"
            and a.get("fill") == "#999"]
    assert len(grey) == 1, "the left-out row's label is grey"
    assert any("0_pre (grey labels) are left out" in t for t in p.text)
    linear = svg_of(render.heatmap_svg(lens, "target_prob", scale="linear"), "ml-heatmap")
    assert linear["data-scale"] == "linear" and float(linear["data-lo"]) == 0
    with pytest.raises(InputError, match="scale"):
        render.heatmap_svg(lens, "kl", scale="cubic")
    with pytest.raises(InputError, match="9_pre"):
        render.heatmap_svg(lens, "kl", exclude=["9_pre"])
    with pytest.raises(InputError, match="at least one"):
        render.heatmap_svg(lens, "kl", exclude=list(lens.labels))


def test_target_cells_show_probability_and_rank(trace):
    lens = ml.logit_lens(trace, target=" the")
    p = parse(render.heatmap_svg(lens, "target_prob"))
    cells = re.findall(r'data-row="(\d+)" data-pos="(\d+)"[^>]*>.*?<text[^>]*>([^<]*)</text>',
                       render.heatmap_svg(lens, "target_prob"))
    assert len(cells) == lens.target_prob.size
    for r, j, text in cells:
        r, j = int(r), int(j)
        rank = int(lens.target_rank[r, j])
        assert text == (f"{render.fmt_prob(float(lens.target_prob[r, j]))} "
                        f"r{rank if rank < 10000 else f'{rank // 1000}k'}"), text
    assert p.text.count("logit lens: probability and rank of the target token") == 1
    assert [render.fmt_rank(k) for k in (0, 9999, 10000, 37429)] == ["r0", "r9999", "r10k", "r37k"]


def test_colour_bar_has_ticks_and_a_title(trace):
    lens = ml.logit_lens(trace)
    for metric in render.METRICS:
        p = parse(render.heatmap_svg(lens, metric))
        ticks = [float(a["data-value"]) for t, a in p.tags
                 if t == "text" and a.get("class") == "ml-tick"]
        root = svg_of(render.heatmap_svg(lens, metric), "ml-heatmap")
        lo, hi = float(root["data-lo"]), float(root["data-hi"])
        assert len(ticks) >= 3 and all(lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9) for t in ticks)
        if root["data-scale"] == "log":
            assert all(abs(np.log10(t) - round(np.log10(t))) < 1e-9 for t in ticks), \
                "ticks at whole decades"
        titles = [i for i, (t, a) in enumerate(p.tags) if a.get("class") == "ml-bartitle"]
        assert len(titles) == 1
        assert sum(1 for t, a in p.tags if a.get("class") == "ml-legend") >= 20


def test_column_heads_show_leading_spaces(trace):
    lens = ml.logit_lens(trace)
    cols = [unescape(c) for c in
            re.findall(r'<text class="ml-col"[^>]*>([^<]*)<title>', render.heatmap_svg(lens))]
    strs = trace.model.token_strings(trace.ids)
    assert len(cols) == len(strs)
    assert cols == [render.visible_token(s, 12) for s in strs]
    assert "␣be" in cols, "' be' shows its space"


def test_input_at_bottom(trace):
    lens = ml.logit_lens(trace)
    svg = render.heatmap_svg(lens, input_at_bottom=True)
    rows = re.findall(r'data-row="(\d+)" data-pos="0"[^>]*><rect x="[^"]*" y="([^"]*)"', svg)
    y_of = {int(r): float(y) for r, y in rows}
    assert y_of[0] > y_of[len(lens.labels) - 1], "0_pre at the bottom, final_post at the top"
    col_y = [float(y) for y in re.findall(r'<text class="ml-col" x="[^"]*" y="([^"]*)"', svg)]
    assert min(col_y) > max(y_of.values()), "the tokens sit under the grid"


def test_long_inputs_wrap_into_panels(trace):
    """93 tokens: the picture stays within LENS_MAX_WIDTH, every panel repeats the row labels, the
    colour bar is inside the picture, and every cell is there once."""
    model = trace.model
    text = " ".join(["To be, or not to be, that is the question:"] * 9)
    ids = model.to_tokens(text)[:93]
    assert len(ids) == 93
    lens = ml.logit_lens(model.run(ids))
    svg = render.heatmap_svg(lens)
    root = svg_of(svg, "ml-heatmap")
    W, n_panels = int(root["width"]), int(root["data-panels"])
    assert W <= render.LENS_MAX_WIDTH and n_panels > 1
    p = parse(svg)
    R = len(lens.labels)
    rowlabels = [a for t, a in p.tags if t == "text" and a.get("class") == "ml-rowlabel"]
    assert len(rowlabels) == R * n_panels, "each panel has its own row labels"
    legend = [a for t, a in p.tags if t == "rect" and a.get("class") == "ml-legend"]
    assert all(float(a["x"]) + float(a["width"]) <= W for a in legend)
    assert len(cell_fills(svg)) == R * 93
    rects = [a for t, a in p.tags if t == "rect" and "width" in a]
    assert max(float(a["x"]) + float(a["width"]) for a in rects) <= W
    assert max(float(a["y"]) + float(a["height"]) for a in rects) <= int(root["height"])
    one = svg_of(render.heatmap_svg(lens, max_width=None), "ml-heatmap")
    assert int(one["data-panels"]) == 1 and int(one["width"]) > 93 * render.CELL_W


# ------------------------------------------------------------------------------------------
# Attribution pictures
# ------------------------------------------------------------------------------------------

def bars_of(svg: str) -> list[dict]:
    """Each bar: label, value, the rect's width, and whether it has the cut mark."""
    out = []
    for m in re.finditer(r'<g class="ml-bar" data-label="([^"]*)" data-value="([^"]*)">(.*?)</g>',
                         svg):
        width = float(re.search(r'<rect [^>]*width="([^"]*)"', m.group(3)).group(1))
        out.append(dict(label=m.group(1), value=float(m.group(2)), width=width,
                        cut="ml-cut" in m.group(3)))
    return out


def test_rest_does_not_set_the_scale(trace):
    attr = ml.layer_attribution(trace, " be", by="head")
    own = np.abs([v for label, v in zip(attr.labels, attr.values) if label != "rest"])
    assert abs(attr["rest"]) > 3 * own.max(), "rest dwarfs the heads here (else no test)"
    bars = bars_of(render.attribution_svg(attr, top=len(attr.values)))
    half = max(b["width"] for b in bars)
    for b in bars:
        if b["label"] == "rest":
            assert b["cut"] and b["width"] == pytest.approx(half), "rest is cut at the full width"
        else:
            assert not b["cut"]
            assert b["width"] == pytest.approx(max(abs(b["value"]) / own.max() * half, 0.5),
                                               abs=0.01), "heads are drawn to the heads' scale"
    assert bars[-1]["label"] == "rest", "rest is drawn apart, after the parts"
    text = render.attribution_bars(attr, top=5)
    rest_line = next(line for line in text.splitlines() if line.strip().startswith("rest"))
    assert rest_line.endswith("▸") and "not to 'rest'" in text


def test_value_labels_stay_clear_of_the_part_labels(trace):
    """A long negative bar puts its value left of the bar end: it must end right of the labels
    (the browser test checks the drawn boxes; this checks the geometry in characters)."""
    attr = ml.layer_attribution(trace, " the", contrast=" a")
    svg = render.attribution_svg(attr)
    label_x = [float(x) for x in re.findall(r'<text class="ml-label" x="([^"]*)"', svg)]
    for x, anchor, text in re.findall(
            r'<text class="ml-value" x="([^"]*)" y="[^"]*" text-anchor="(\w+)">([^<]*)<', svg):
        left = float(x) - (len(text) * render.CHAR_W if anchor == "end" else 0)
        assert left > max(label_x), f"{text} starts at {left:.0f}, inside the labels"


def test_head_grid(trace):
    attr = ml.layer_attribution(trace, " the", by="head")
    cfg = trace.model.cfg
    html = attr._repr_html_()
    assert 'class="ml-headgrid"' in html and 'class="ml-attribution"' in html
    svg = render.head_grid_svg(attr)
    cells = cell_fills(svg)
    assert len(cells) == cfg.n_layers * cfg.n_heads
    for (l, h), (v, rgb) in cells.items():
        assert v == pytest.approx(attr[f"L{l}H{h}"], rel=1e-5, abs=1e-7)
        if abs(v) > 0.05 * max(abs(x) for x, _ in cells.values()):
            assert (rgb[2] > rgb[0]) == (v > 0), f"L{l}H{h} {v:+.3f}: blue adds, red takes away"
    one = render.head_grid_svg(ml.layer_attribution(trace, " the", by="head", layer=3))
    assert len(cell_fills(one)) == cfg.n_heads
    table = render.head_grid_table(attr)
    lines = table.splitlines()
    assert lines[1].split() == ["layer"] + [f"H{h}" for h in range(cfg.n_heads)]
    body = np.array([[float(x) for x in line.split()[1:]] for line in lines[2:2 + cfg.n_layers]])
    expected = np.array([[attr[f"L{l}H{h}"] for h in range(cfg.n_heads)]
                         for l in range(cfg.n_layers)])
    np.testing.assert_allclose(body, expected, atol=0.005 + 1e-9)
    assert "rest" in lines[-1] and "attention biases" in lines[-1]
    coloured = render.head_grid_table(attr, color=True)
    assert coloured.count("\x1b[48;2;") == cfg.n_layers * cfg.n_heads
    assert table in render.attribution_bars(attr), "the terminal bars end with the grid"
    assert "layer x head" not in render.attribution_bars(
        ml.layer_attribution(trace, " the", by="head", layer=3)), "one layer: no grid"
    with pytest.raises(InputError, match="by='head'"):
        render.head_grid_svg(ml.layer_attribution(trace, " the"))


def test_tokens_coloured_by_contribution(trace):
    attr = ml.layer_attribution(trace, " the", by="token", layer=1)
    html = attr._repr_html_()
    spans = re.findall(r'<span class="ml-token" data-pos="(\d+)" data-value="([^"]*)" '
                       r'style="background: (#[0-9a-f]{6})', html)
    assert len(spans) == attr.position + 1
    strs = trace.model.token_strings(trace.ids[:attr.position + 1])
    for (k, v, fill), label in zip(spans, attr.labels):
        assert label == f"{k}:{strs[int(k)]}"
        assert float(v) == pytest.approx(attr[label], rel=1e-5, abs=1e-7)
        rgb = tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))
        if abs(float(v)) > 0.05 * np.abs(attr.values[:-2]).max():
            assert (rgb[2] > rgb[0]) == (float(v) > 0), f"token {k}: blue adds, red takes away"
    assert render.report(attr=attr).count('class="ml-token"') == attr.position + 1
