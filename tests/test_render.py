"""The HTML report and the terminal tables (minilens/show/render.py).

The report must parse, be self-contained (it opens offline: no URLs, no scripts, no external fonts
or stylesheets), and carry exactly the numbers of the LensResult / Attribution it draws: one cell
per (row, position), one bar per part, the top-k in each cell's hover text. The expected values
come from the library's own results on the shipped weights, recomputed here.
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
    assert (render.ramp(0) == (255, 255, 255)
            and render.ramp(1) == tuple(int(v) for v in render._RAMP[-1]))
    assert render.ink(render.ramp(0)) == "#000" and render.ink(render.ramp(1)) == "#fff", \
        "dark cells need white text, light cells black"
    assert render.show_token("a\nb", 10) == "a\\nb" and render.show_token("abcdefgh", 4) == "abc…"
