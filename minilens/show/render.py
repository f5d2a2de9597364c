"""Pictures of the lens: terminal tables and a self-contained HTML report.

Two audiences, one module. A terminal gets the classic lens table (rows are points in the stream,
columns are input tokens, each cell the top-1 token and its probability), shaded with ANSI colour
when it is a terminal and plain when piped. A browser gets one HTML file with inline CSS and SVG:
no scripts, no fonts, no network, so a report opens offline years later. The heatmap's hover text
is an SVG <title>, which every browser shows without JavaScript.

Every heatmap cell is a ``<g class="ml-cell" data-row=.. data-pos=.. data-value=..>`` and every
attribution bar a ``<g class="ml-bar" data-label=.. data-value=..>``, so tests (and scripts) can
count and read them. Nothing here computes model numbers: it draws what LensResult and Attribution
hold.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..analysis.attribution import Attribution
    from ..analysis.lens import LensResult

METRICS = ("prob", "target_prob", "entropy", "kl")

# Heatmap geometry in SVG user units (= CSS px). Fixed, so a screenshot can be checked cell by cell.
CELL_W, CELL_H, GAP = 64, 26, 2          # a cell, and the white gap between neighbours
LEFT, TOP = 96, 64                       # room for the row labels and the rotated token labels


# ------------------------------------------------------------------------------------------
# Text: tokens and numbers as a reader wants to see them
# ------------------------------------------------------------------------------------------

def show_token(s: str, width: int | None = None) -> str:
    """A token string made visible: newlines and tabs escaped (a leading space is kept: it is real
    information), cut to ``width`` characters with an ellipsis."""
    out = s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if width is not None and len(out) > width:
        out = out[:max(1, width - 1)] + "…"
    return out


def fmt_prob(p: float) -> str:
    """Probabilities in 4-5 characters: two decimals, or e-notation below 0.01 (where 0.00 would
    hide them)."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def metric_values(lens: "LensResult", metric: str) -> tuple[np.ndarray, float, float, str]:
    """The [rows, n_pos] numbers a heatmap colours by, their colour-scale range, and a caption."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not one of {', '.join(METRICS)}.")
    if metric == "prob":
        return lens.top_probs[:, :, 0], 0.0, 1.0, "probability of the top-1 token"
    if metric == "target_prob":
        return lens.target_prob, 0.0, 1.0, "probability of the target token"
    d_vocab = lens.trace.model.cfg.d_vocab
    if metric == "entropy":   # 0 (certain) .. log(d_vocab) (uniform)
        return lens.entropy, 0.0, float(np.log(d_vocab)), "entropy (nats); darker = more certain"
    kl = lens.kl_to_final
    return (kl, 0.0, float(max(np.max(kl), 1e-9)),
            "KL(final || layer) (nats); darker = closer to the final answer")


# ------------------------------------------------------------------------------------------
# Colour
# ------------------------------------------------------------------------------------------

# A perceptually ordered ramp (white -> light blue -> deep blue), after nostalgebraist's lens plots.
_RAMP = np.array([[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156],
                  [8, 38, 92]], dtype=np.float64)


def ramp(t: float) -> tuple[int, int, int]:
    """t in [0, 1] -> an RGB colour on the ramp (0 white, 1 deep blue)."""
    t = 0.0 if not np.isfinite(t) else min(1.0, max(0.0, float(t)))
    x = t * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    c = _RAMP[i] + (x - i) * (_RAMP[i + 1] - _RAMP[i])
    return tuple(int(round(v)) for v in c)


def cell_colour(value: float, lo: float, hi: float, metric: str) -> tuple[int, int, int]:
    t = (value - lo) / (hi - lo) if hi > lo else 0.0
    # low entropy / low KL is the "confident" end: dark, like high prob
    if metric in ("entropy", "kl"):
        t = 1.0 - t
    return ramp(t)


def ink(rgb: tuple[int, int, int]) -> str:
    """Black or white text, whichever reads better on this background (relative luminance)."""
    r, g, b = rgb
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "#fff"


def hexcolour(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


# ------------------------------------------------------------------------------------------
# Terminal
# ------------------------------------------------------------------------------------------

def ansi_cell(text: str, p: float) -> str:
    """Text on a background shaded by p (24-bit ANSI colour), reset after."""
    rgb = ramp(p)
    fg = (0, 0, 0) if ink(rgb) == "#000" else (255, 255, 255)
    return f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;{fg[0]};{fg[1]};{fg[2]}m{text}\x1b[0m"


def lens_table(lens: "LensResult", color: bool = False, width: int = 100, token_width: int = 6,
               values: np.ndarray | None = None, cell=None) -> str:
    """The classic lens table. Rows: lens rows; columns: positions; cells: top-1 token and its
    probability.

    Only as many of the *last* positions as fit in ``width`` characters are shown (the prediction at
    the end is what people look at first), with a note saying how many were left out.
    ``values``/``cell`` override what a cell shows ([rows, n_pos] numbers and a formatter).
    """
    model = lens.trace.model
    ids = lens.trace.ids[lens.positions]
    head_toks = [show_token(s, token_width) for s in model.token_strings(ids)]
    label_w = max(len(str(x)) for x in lens.labels)
    shade = lens.top_probs[:, :, 0] if values is None else values
    if cell is None:
        top = lens.top_ids[:, :, 0]
        top_strs = {}
        def cell(r, j):  # a closure over the cache
            t = int(top[r, j])
            if t not in top_strs:
                top_strs[t] = show_token(model.token_strings([t])[0], token_width)
            return f"{top_strs[t]} {fmt_prob(float(shade[r, j]))}"
    body = [[cell(r, j) for j in range(len(lens.positions))] for r in range(len(lens.labels))]
    col_w = max([len(h) for h in head_toks] + [len(c) for row in body for c in row])
    n_fit = max(1, (width - label_w) // (col_w + 1))
    first = max(0, len(lens.positions) - n_fit)
    cols = range(first, len(lens.positions))
    lines = []
    if first:
        lines.append(f"(showing the last {len(cols)} of {len(lens.positions)} positions; "
                     f"widen the terminal or use --last N)")
    lines.append(" " * label_w + " " + " ".join(head_toks[j].ljust(col_w) for j in cols))
    for r, label in enumerate(lens.labels):
        cells = []
        for j in cols:
            text = body[r][j].ljust(col_w)
            cells.append(ansi_cell(text, float(shade[r, j])) if color else text)
        lines.append(str(label).ljust(label_w) + " " + " ".join(cells))
    return "\n".join(line.rstrip() if not color else line for line in lines)


def attribution_bars(attr: "Attribution", color: bool = False, top: int = 20,
                     bar_width: int = 30) -> str:
    """The parts as a bar list, largest |value| first, then the check: sum of parts vs the model's
    logit."""
    values = attr.values
    order = np.argsort(-np.abs(values), kind="stable")
    shown = order[:top]
    scale = float(np.max(np.abs(values))) or 1.0
    label_w = max(len(str(attr.labels[i])) for i in shown)
    lines = []
    for i in shown:
        v = float(values[i])
        n = int(round(abs(v) / scale * bar_width))
        bar = "█" * n
        if color:
            bar = f"\x1b[{'32' if v >= 0 else '31'}m{bar}\x1b[0m"
        lines.append(f"  {str(attr.labels[i]).ljust(label_w)}  {v:+9.4f}  {bar}")
    if len(order) > len(shown):
        rest = float(values[order[top:]].sum())
        lines.append(f"  ... {len(order) - len(shown)} more parts, summing to {rest:+.4f}")
    total = float(values.sum())
    logit_name = "model's logit" + (" difference" if attr.contrast is not None else "")
    w = max(len(logit_name), len("sum of all parts"))
    lines.append(f"{'sum of all parts'.ljust(w)} = {total:+.6f}   ({len(values)} parts)")
    lines.append(f"{logit_name.ljust(w)} = {attr.logit:+.6f}"
                 + ("" if attr.capped_logit is None
                    else f"  (before the soft-cap; {attr.capped_logit:+.6f} after)"))
    lines.append(f"{'difference'.ljust(w)} = {total - attr.logit:+.2e}")
    return "\n".join(lines)


def attribution_title(attr: "Attribution") -> str:
    what = repr(attr.target_str) if attr.target_str is not None else f"#{attr.target}"
    if attr.contrast is not None:
        what += " - " + (repr(attr.contrast_str) if attr.contrast_str is not None
                         else f"#{attr.contrast}")
    layer = "" if attr.layer is None else f" in layer {attr.layer}"
    return f"logit[{what}] at position {attr.position}, split by {attr.by}{layer}"


# ------------------------------------------------------------------------------------------
# SVG
# ------------------------------------------------------------------------------------------

def _e(s) -> str:
    return html.escape(str(s), quote=True)


def heatmap_svg(lens: "LensResult", metric: str = "prob", token_width: int = 7) -> str:
    """The logit-lens heatmap: rows by positions, each cell coloured by ``metric`` and labelled with
    the top-1 token; hovering shows the top-k, entropy, KL and the target's probability (an SVG
    <title>)."""
    values, lo, hi, caption = metric_values(lens, metric)
    model = lens.trace.model
    R, P = values.shape
    in_toks = model.token_strings(lens.trace.ids[lens.positions])
    tgt_toks = model.token_strings(lens.target_ids)
    vocab_strs: dict[int, str] = {}

    def tok(i: int) -> str:
        if i not in vocab_strs:
            vocab_strs[i] = model.token_strings([i])[0]
        return vocab_strs[i]

    legend_w = 24
    W = LEFT + P * CELL_W + 80 + legend_w
    H = TOP + R * CELL_H + 30
    out = [(f'<svg class="ml-heatmap" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" data-rows="{R}" data-positions="{P}" '
            f'data-metric="{_e(metric)}" font-family="monospace" font-size="11">')]
    for j in range(P):   # column heads: the input token at each position, rotated so long ones fit
        x = LEFT + j * CELL_W + CELL_W / 2
        out.append(f'<text class="ml-col" x="{x:.1f}" y="{TOP - 6}" '
                   f'transform="rotate(-30 {x:.1f} {TOP - 6})">'
                   f'{_e(show_token(in_toks[j], 12))}<title>position {int(lens.positions[j])}: '
                   f'{_e(repr(in_toks[j]))}</title></text>')
    for r in range(R):
        y = TOP + r * CELL_H
        out.append(f'<text class="ml-rowlabel" x="{LEFT - 6}" y="{y + CELL_H / 2 + 4:.1f}" '
                   f'text-anchor="end">{_e(lens.labels[r])}</text>')
        for j in range(P):
            v = float(values[r, j])
            rgb = cell_colour(v, lo, hi, metric)
            top = ", ".join(f"{tok(int(t))!r} {float(p):.3f}"
                            for t, p in zip(lens.top_ids[r, j], lens.top_probs[r, j]))
            title = (f"{lens.labels[r]}, position {int(lens.positions[j])} ({in_toks[j]!r})\n"
                     f"top-{lens.top_ids.shape[2]}: {top}\n"
                     f"entropy {float(lens.entropy[r, j]):.3f} nats, "
                     f"KL to final {float(lens.kl_to_final[r, j]):.3f} nats\n"
                     f"target {tgt_toks[j]!r}: p={float(lens.target_prob[r, j]):.3g}, "
                     f"rank {int(lens.target_rank[r, j])}")
            x = LEFT + j * CELL_W
            out.append(f'<g class="ml-cell" data-row="{r}" data-pos="{j}" data-value="{v:.6g}">'
                       f'<rect x="{x + GAP / 2}" y="{y + GAP / 2}" '
                       f'width="{CELL_W - GAP}" height="{CELL_H - GAP}" '
                       f'fill="{hexcolour(rgb)}"/>'
                       f'<text x="{x + CELL_W / 2}" y="{y + CELL_H / 2 + 4:.1f}" '
                       f'text-anchor="middle" fill="{ink(rgb)}">'
                       f'{_e(show_token(tok(int(lens.top_ids[r, j, 0])), token_width))}</text>'
                       f'<title>{_e(title)}</title></g>')
    # The legend: ten swatches from lo (bottom) to hi (top).
    lx, steps = LEFT + P * CELL_W + 16, 10
    lh = (R * CELL_H) / steps
    for s in range(steps):
        v = lo + (hi - lo) * (steps - 1 - s) / (steps - 1)
        out.append(f'<rect class="ml-legend" x="{lx}" y="{TOP + s * lh:.1f}" '
                   f'width="{legend_w}" height="{lh + 0.5:.1f}" '
                   f'fill="{hexcolour(cell_colour(v, lo, hi, metric))}"/>')
    out.append(f'<text x="{lx + legend_w + 4}" y="{TOP + 10}">{hi:.3g}</text>')
    out.append(f'<text x="{lx + legend_w + 4}" y="{TOP + R * CELL_H}">{lo:.3g}</text>')
    out.append(f'<text x="{LEFT}" y="{TOP + R * CELL_H + 20}">{_e(caption)}</text>')
    out.append("</svg>")
    return "".join(out)


def attribution_svg(attr: "Attribution", top: int = 24) -> str:
    """The attribution as horizontal bars around a zero line: green adds to the logit, red takes
    away.

    by="layer" and by="token" keep their natural order (depth, or position); heads and neurons show
    the ``top`` parts of largest |value|, and one bar for all the others, so the bars still sum to
    the logit.
    """
    labels, values = [str(x) for x in attr.labels], attr.values.astype(np.float64)
    if attr.by in ("head", "neuron") and len(values) > top:
        order = np.argsort(-np.abs(values), kind="stable")
        keep, rest = order[:top], order[top:]
        labels = [labels[i] for i in keep] + [f"{len(rest)} others"]
        values = np.append(values[keep], values[rest].sum())
    n = len(values)
    bar_h, label_w, half = 18, 140, 220
    W, H = label_w + 2 * half + 90, 30 + n * bar_h + 50
    scale = float(np.max(np.abs(values))) or 1.0
    zero = label_w + half
    out = [(f'<svg class="ml-attribution" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" data-parts="{n}" font-family="monospace" font-size="11">'),
           f'<text x="4" y="16" font-weight="bold">{_e(attribution_title(attr))}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 26 + i * bar_h
        w = abs(v) / scale * half
        x = zero if v >= 0 else zero - w
        colour = "#1a9850" if v >= 0 else "#d73027"
        tx, anchor = (zero + w + 4, "start") if v >= 0 else (zero - w - 4, "end")
        out.append(f'<g class="ml-bar" data-label="{_e(label)}" data-value="{v:.6g}">'
                   f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">'
                   f'{_e(show_token(label, 20))}</text>'
                   f'<rect x="{x:.2f}" y="{y + 2}" width="{max(w, 0.5):.2f}" '
                   f'height="{bar_h - 4}" fill="{colour}"/>'
                   f'<text x="{tx:.2f}" y="{y + 13}" text-anchor="{anchor}">{v:+.3f}</text>'
                   f'<title>{_e(label)}: {v:+.6f}</title></g>')
    out.append(f'<line x1="{zero}" y1="24" x2="{zero}" y2="{26 + n * bar_h}" stroke="#333"/>')
    total = float(attr.values.sum())
    y = 26 + n * bar_h + 18
    out.append(f'<text class="ml-check" x="4" y="{y}">'
               f'sum of all {len(attr.values)} parts = {total:+.6f}; '
               f'model logit = {attr.logit:+.6f}; difference = {total - attr.logit:+.1e}</text>')
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------

CSS = """
.minilens { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; }
.minilens h1 { font-size: 20px; margin: 0 0 4px 0; }
.minilens h2 { font-size: 16px; margin: 18px 0 4px 0; }
.minilens .ml-meta { color: #555; font-size: 13px; margin: 2px 0 8px 0; }
.minilens .ml-prompt { font-family: monospace; background: #f4f4f4; padding: 4px 8px; \
white-space: pre-wrap; }
.minilens .ml-cell text { pointer-events: none; }
.minilens .ml-cell:hover rect { stroke: #e6550d; stroke-width: 2; }
"""


def _fragment(body: str) -> str:
    return f'<div class="minilens"><style>{CSS}</style>{body}</div>'


def lens_html(lens: "LensResult", metric: str = "prob") -> str:
    """An HTML fragment (a <div> with its own <style>): what Jupyter shows for a LensResult."""
    model = lens.trace.model
    n = len(lens.positions)
    meta = (f"{model.cfg.family}, {model.cfg.n_layers} layers; "
            f"{len(lens.labels)} rows x {n} positions. "
            f"Hover a cell for the top-{lens.top_ids.shape[2]}.")
    return _fragment(f'<div class="ml-meta">{_e(meta)}</div>{heatmap_svg(lens, metric)}')


def attribution_html(attr: "Attribution") -> str:
    """An HTML fragment: what Jupyter shows for an Attribution."""
    return _fragment(attribution_svg(attr))


def report(lens: "LensResult | None" = None, attr: "Attribution | None" = None,
           metric: str = "prob", title: str = "minilens report", text: str | None = None,
           model_name: str | None = None) -> str:
    """A whole HTML document, self-contained: inline CSS and SVG, no scripts, fonts or links."""
    if lens is None and attr is None:
        raise InputError("report() needs a LensResult, an Attribution, or both.")
    parts = [f"<h1>{_e(title)}</h1>"]
    if model_name:
        parts.append(f'<div class="ml-meta">model: {_e(model_name)}</div>')
    if text is not None:
        parts.append(f'<div class="ml-prompt">{_e(text)}</div>')
    if lens is not None:
        _, _, _, caption = metric_values(lens, metric)
        parts.append(f"<h2>Logit lens: {_e(caption)}</h2>")
        parts.append(lens_html(lens, metric))
    if attr is not None:
        parts.append(f"<h2>Layer attribution</h2>{attribution_html(attr)}")
    body = "".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title>"
            f"<style>body {{ margin: 16px; background: #fff; }}{CSS}</style></head>"
            f'<body class="minilens">{body}</body></html>\n')


def lens_repr(lens: "LensResult") -> str:
    """The plain-text table ``repr(lens)`` shows: top-1 token and probability, the last 8
    positions."""
    model = lens.trace.model
    show = list(range(len(lens.positions)))[-8:]

    def tok(i) -> str:
        return repr(model.token_strings([i])[0])[1:-1][:12]

    head = ["row"] + [f"{int(lens.positions[j])}:{tok(lens.trace.ids[lens.positions[j]])}"
                      for j in show]
    body = [[str(label)] + [f"{tok(lens.top_ids[r, j, 0])} {fmt_prob(lens.top_probs[r, j, 0])}"
                            for j in show]
            for r, label in enumerate(lens.labels)]
    widths = [max(len(line[c]) for line in [head] + body) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [head] + body]
    more = (f", last {len(show)} of {len(lens.positions)} positions"
            if len(show) < len(lens.positions) else "")
    return (f"LensResult({len(lens.labels)} rows x {len(lens.positions)} positions{more}; "
            f"top-1 token and prob)\n"
            + "\n".join(lines))


def attach() -> None:
    """Results draw themselves in Jupyter and at the prompt; the methods are attached here, so that
    analysis/ never imports show/ (tests/test_import_graph.py). minilens/__init__.py calls this."""
    from ..analysis.attribution import Attribution
    from ..analysis.lens import LensResult

    LensResult._repr_html_ = lambda self: lens_html(self)
    LensResult.__repr__ = lens_repr
    Attribution._repr_html_ = lambda self: attribution_html(self)
