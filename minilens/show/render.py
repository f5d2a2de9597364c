"""Pictures of the lens, attribution and interventions: terminal tables and a self-contained HTML
report.

Two audiences, one module. A terminal gets the classic lens table (rows are points in the stream,
columns are input tokens, each cell the top-1 token and its probability), shaded with ANSI colour
when it is a terminal and plain when piped. A browser gets one HTML file with inline CSS and SVG:
no scripts, no fonts, no network, so a report opens offline years later. The heatmap's hover text
is an SVG <title>, which every browser shows without JavaScript.

Every heatmap cell is a ``<g class="ml-cell" data-row=.. data-pos=.. data-value=..>`` and every
attribution bar a ``<g class="ml-bar" data-label=.. data-value=..>``, so tests (and scripts) can
count and read them. The activation-patching grid uses the same cells (a diverging scale, white at
the base run's metric), and direct against total effect draws ``<g class="ml-bar"
data-kind="direct"|"total">`` pairs. Nothing here computes model numbers: it draws what
LensResult, Attribution, PatchingResult and EffectsResult hold.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..analysis.attribution import Attribution
    from ..analysis.lens import LensResult
    from ..analysis.patching import EffectsResult, PatchingResult

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
           model_name: str | None = None, patching=None,
           effects: "EffectsResult | None" = None) -> str:
    """A whole HTML document, self-contained: inline CSS and SVG, no scripts, fonts or links.

    ``patching``: a PatchingResult or a list of them (one heatmap each); ``effects``: an
    EffectsResult."""
    if isinstance(patching, (list, tuple)):
        patchings = list(patching)
    else:
        patchings = [] if patching is None else [patching]
    if lens is None and attr is None and not patchings and effects is None:
        raise InputError("report() needs a LensResult, an Attribution, a PatchingResult or an "
                         "EffectsResult.")
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
    for result in patchings:
        parts.append(f"<h2>Activation patching: {_e(result.key)} by {_e(result.by)}</h2>"
                     f"{patching_html(result)}")
    if effects is not None:
        parts.append(f"<h2>Direct and total effect</h2>{effects_html(effects)}")
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


# ------------------------------------------------------------------------------------------
# Interventions: the patching grid and direct against total effect
# ------------------------------------------------------------------------------------------

# ColorBrewer's RdBu (11 classes), red end to blue end; the middle (white) is the base run.
_DIVERGE = np.array([[103, 0, 31], [178, 24, 43], [214, 96, 77], [244, 165, 130], [253, 219, 199],
                     [255, 255, 255], [209, 229, 240], [146, 197, 222], [67, 147, 195],
                     [33, 102, 172], [5, 48, 97]], dtype=np.float64)


def diverge(t: float) -> tuple[int, int, int]:
    """t in [-1, 1] -> an RGB colour: -1 deep red, 0 white, +1 deep blue."""
    t = 0.0 if not np.isfinite(t) else min(1.0, max(-1.0, float(t)))
    x = (t + 1) / 2 * (len(_DIVERGE) - 1)
    i = min(int(x), len(_DIVERGE) - 2)
    c = _DIVERGE[i] + (x - i) * (_DIVERGE[i + 1] - _DIVERGE[i])
    return tuple(int(round(v)) for v in c)


def visible_token(s: str, width: int | None = None) -> str:
    """show_token with spaces drawn as '␣': a column head " John" must not read as "John"."""
    return show_token(s.replace(" ", "␣"), width)


def fmt_value(v: float) -> str:
    """Two decimals, and no "-0.00": a value that rounds to zero prints as 0.00."""
    return "0.00" if abs(v) < 0.005 else f"{v:.2f}"


def patching_base(result: "PatchingResult") -> float:
    """The metric of the run that is patched *into*: corrupted for denoising, clean for noising."""
    return result.corrupted if result.direction == "denoising" else result.clean


def patching_scale(result: "PatchingResult") -> float:
    """Half the colour range: at least the clean-corrupted gap, so a full restore is full colour."""
    base = patching_base(result)
    spread = float(np.max(np.abs(result.values - base))) if result.values.size else 0.0
    return max(abs(result.clean - result.corrupted), spread) or 1.0


def nice_ticks(lo: float, hi: float, n: int = 6) -> tuple[list[float], int]:
    """Round tick values inside [lo, hi], at most n intervals apart (steps of 1, 2, 2.5 or 5 times
    a power of ten, so at least three ticks), and the number of decimals the step needs."""
    raw = (hi - lo) / n if hi > lo else 1.0
    mag = 10.0 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-12))
    first, last = int(np.ceil(lo / step - 1e-9)), int(np.floor(hi / step + 1e-9))
    ticks = [float(k * step) for k in range(first, last + 1)]
    decimals = next(d for d in range(12) if abs(round(step, d) - step) <= 1e-9 * step)
    return ticks, decimals


def patching_grid(result: "PatchingResult") -> tuple[np.ndarray, list[str], list[str], str, str]:
    """The result as one 2-D grid: values [rows, cols], row labels, column labels, and the two axes'
    names. by="head_position" ([layer, head, pos]) flattens layer and head into rows "L{l}H{h}"."""
    v = result.values
    if result.by == "head_position":
        n_layers, n_heads, n_pos = v.shape
        rows = [f"L{l}{h}" for l in result.layers for h in result.columns]
        return v.reshape(n_layers * n_heads, n_pos), rows, list(result.positions), "layer.head", \
            "position"
    rows = [f"L{l}" for l in result.layers]
    return v, rows, list(result.columns), "layer", "position" if result.by == "position" else "head"


def _split_position(label: str) -> tuple[str, str]:
    """"3: John" (activation_patching's position label) -> ("3", " John")."""
    p, _, tok = label.partition(":")
    return p, tok


def patching_title(result: "PatchingResult") -> tuple[str, str]:
    arrow = "clean -> corrupted" if result.direction == "denoising" else "corrupted -> clean"
    base = "corrupted" if result.direction == "denoising" else "clean"
    subtitle = (f"{result.key} patched by {result.by}; metric {result.metric} (clean "
                f"{result.clean:+.3f}, corrupted {result.corrupted:+.3f}; white = the {base} run)")
    return f"{result.direction}: {arrow}", subtitle


def patching_table(result: "PatchingResult", color: bool = False, width: int = 100) -> str:
    """The patching grid as text: a row per layer (per layer and head for by="head_position"), a
    column per position (number and token, spaces as '␣') or per head; two decimals per cell.

    Columns that do not fit in ``width`` characters continue in a second block below, so nothing
    is hidden. ``color``: a diverging background (ANSI), white at the base run's metric, blue
    above it, red below."""
    values, rows, cols, row_axis, col_axis = patching_grid(result)
    base, scale = patching_base(result), patching_scale(result)
    cells = [[fmt_value(float(x)) for x in row] for row in values]
    if col_axis == "position":
        heads = [_split_position(c) for c in cols]
    else:
        heads = [("", c) for c in cols]
    col_w = max([5] + [len(c) for row in cells for c in row] + [len(p) for p, _ in heads])
    if col_axis == "head":
        col_w = max([col_w] + [len(t) for _, t in heads])
    label_w = max([len(row_axis)] + [len(r) for r in rows])
    per_block = max(1, (width - label_w) // (col_w + 1))
    title, subtitle = patching_title(result)
    lines = [f"{title}; {subtitle}"]
    for lo in range(0, len(cols), per_block):
        block = range(lo, min(lo + per_block, len(cols)))
        if lo:
            lines.append("")
        if len(cols) > per_block:
            lines.append(f"({col_axis}s {lo}-{block[-1]} of {len(cols)})")
        if col_axis == "position":
            lines.append(" " * label_w + " " + " ".join(heads[j][0].rjust(col_w) for j in block))
        lines.append(row_axis.ljust(label_w) + " "
                     + " ".join(visible_token(heads[j][1], col_w).rjust(col_w) for j in block))
        for r, label in enumerate(rows):
            out = []
            for j in block:
                text = cells[r][j].rjust(col_w)
                if color:
                    rgb = diverge((float(values[r, j]) - base) / scale)
                    fg = "0;0;0" if ink(rgb) == "#000" else "255;255;255"
                    text = f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;{fg}m{text}\x1b[0m"
                out.append(text)
            lines.append(label.ljust(label_w) + " " + " ".join(out))
    return "\n".join(line.rstrip() if not color else line for line in lines)


def patching_repr(result: "PatchingResult") -> str:
    """What ``repr(result)`` shows: the plain table."""
    return patching_table(result, color=False, width=100)


def patching_svg(result: "PatchingResult") -> str:
    """The patching grid as a heatmap: a diverging colour scale centred on the base run's metric
    (white), blue above and red below, with a colour bar marking the clean and corrupted runs.

    Rows are layers (for by="head_position": one row per layer and head, "L{l}H{h}", with a gap
    between layers); columns are positions, labelled by their token (spaces as '␣'), or heads.
    Cells are narrower for long prompts (down to 16 px at 56+ positions); the value is printed
    in a cell when it fits, and every cell's <title> holds its exact value."""
    values, rows, cols, row_axis, col_axis = patching_grid(result)
    base, scale = patching_base(result), patching_scale(result)
    R, P = values.shape
    cw = int(min(48, max(16, 900 // max(P, 1))))                  # cell width
    ch = 20 if R <= 48 else 14                                     # cell height
    n_heads = len(result.columns) if result.by == "head_position" else 0
    layer_gap = 4 if n_heads else 0

    def row_y(r: int) -> float:
        return r * ch + (r // n_heads) * layer_gap if n_heads else r * ch

    if col_axis == "position":
        split = [_split_position(c) for c in cols]
        col_text = [visible_token(t, 14) for _, t in split]
        col_full = [f"position {p}: {t!r}" for p, t in split]
    else:
        col_text, col_full = list(cols), [f"head {c}" for c in cols]
    title, subtitle = patching_title(result)
    char_w = 6.7                                                   # monospace 11px, per character
    label_w = max(len(r) for r in rows) * char_w
    left = 30 + label_w + 8                                        # axis title, labels, gap
    col_h = max(len(t) for t in col_text) * char_w * 0.87 + 10     # labels rotated by -60 degrees
    top = 48 + col_h
    grid_w, grid_h = P * cw, row_y(R - 1) + ch
    bar_x, bar_w = left + grid_w + 24, 14
    bar_h = max(grid_h, 160.0)
    caption = patching_caption(result, cw >= len("-0.00") * 6.2 + 4)
    marks = [(name, v, f"\u25c0 {name} {v:+.2f}") for name, v in
             (("clean", result.clean), ("corrupted", result.corrupted))]
    ticks, decimals = nice_ticks(base - scale, base + scale)
    tick_w = max(len(f"{v:.{decimals}f}") for v in ticks) * char_w
    mark_x = bar_x + bar_w + 6 + tick_w + 10                       # right of the tick labels
    title_x = mark_x + max(len(m[2]) for m in marks) * char_w + 16 # the colour bar's title
    W = int(max(title_x + 12, 16 + max(len(s) for s in [subtitle, *caption]) * char_w,
                16 + len(title) * 8))
    H = int(top + max(grid_h, bar_h) + 78)
    out = [(f'<svg class="ml-patching" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'data-rows="{R}" data-cols="{P}" data-base="{base:.6g}" '
            f'data-direction="{_e(result.direction)}" data-key="{_e(result.key)}" '
            f'font-family="monospace" font-size="11">'),
           (f'<text class="ml-title" x="8" y="18" font-size="13" font-weight="bold">'
            f'{_e(title)}</text>'),
           f'<text class="ml-subtitle" x="8" y="36">{_e(subtitle)}</text>']
    small = P > 36 and col_axis == "position"
    for j in range(P):
        x = left + j * cw + cw / 2
        y = top - 6
        out.append(f'<text class="ml-col" x="{x:.1f}" y="{y:.1f}" '
                   f'transform="rotate(-60 {x:.1f} {y:.1f})">{_e(col_text[j])}'
                   f'<title>{_e(col_full[j])}</title></text>')
        if col_axis == "position" and (not small or j % 5 == 0 or j == P - 1):
            out.append(f'<text class="ml-colnum" x="{x:.1f}" y="{top + grid_h + 13:.1f}" '
                       f'text-anchor="middle" font-size="9" fill="#555">{j}</text>')
    out.append(f'<text x="{left + grid_w / 2:.1f}" '
               f'y="{top + grid_h + (28 if col_axis == "position" else 16):.1f}" '
               f'text-anchor="middle" fill="#555">{_e(col_axis)}</text>')
    ax, ay = 14, top + grid_h / 2
    out.append(f'<text x="{ax}" y="{ay:.1f}" text-anchor="middle" fill="#555" '
               f'transform="rotate(-90 {ax} {ay:.1f})">{_e(row_axis)}</text>')
    fits = cw >= len("-0.00") * 6.2 + 4
    row_font = ' font-size="10"' if ch < 20 else ""
    for r in range(R):
        y = top + row_y(r)
        out.append(f'<text class="ml-rowlabel" x="{left - 6:.1f}" y="{y + ch / 2 + 4:.1f}" '
                   f'text-anchor="end"{row_font}>{_e(rows[r])}</text>')
        for j in range(P):
            v = float(values[r, j])
            rgb = diverge((v - base) / scale)
            x = left + j * cw
            hover = (f"{rows[r]}, {col_full[j]}: {result.metric} = {v:.4f} "
                     f"(base {base:+.4f}; clean {result.clean:+.4f}, "
                     f"corrupted {result.corrupted:+.4f})")
            shown = fmt_value(v)
            fill = "#aaa" if shown == fmt_value(base) else ink(rgb)   # the base's value: quiet
            text = (f'<text x="{x + cw / 2:.1f}" y="{y + ch / 2 + 3.5:.1f}" text-anchor="middle" '
                    f'font-size="10" fill="{fill}">{shown}</text>') if fits else ""
            out.append(f'<g class="ml-cell" data-row="{r}" data-pos="{j}" data-value="{v:.6g}">'
                       f'<rect x="{x + 1:.1f}" y="{y + 1:.1f}" width="{cw - 2}" '
                       f'height="{ch - 2}" fill="{hexcolour(rgb)}"/>{text}'
                       f'<title>{_e(hover)}</title></g>')
    # The colour bar: 40 swatches from base + scale (top) to base - scale (bottom), ticks at the
    # ends, halves and the base, and the clean and corrupted runs marked by name.
    steps = 40
    for s in range(steps):
        t = 1 - 2 * (s + 0.5) / steps
        out.append(f'<rect class="ml-legend" x="{bar_x:.1f}" '
                   f'y="{top + s * bar_h / steps:.1f}" width="{bar_w}" '
                   f'height="{bar_h / steps + 0.5:.1f}" fill="{hexcolour(diverge(t))}"/>')
    out.append(f'<rect x="{bar_x:.1f}" y="{top:.1f}" width="{bar_w}" height="{bar_h:.1f}" '
               f'fill="none" stroke="#999"/>')

    def bar_y(v: float) -> float:
        return top + (1 - ((v - base) / scale + 1) / 2) * bar_h

    for v in ticks:
        y = bar_y(v)
        out.append(f'<line x1="{bar_x + bar_w:.1f}" y1="{y:.1f}" x2="{bar_x + bar_w + 4:.1f}" '
                   f'y2="{y:.1f}" stroke="#333"/>'
                   f'<text class="ml-tick" x="{bar_x + bar_w + 6:.1f}" y="{y + 4:.1f}" '
                   f'data-value="{v:.6g}">{v:.{decimals}f}</text>')
    for name, v, text in marks:
        y = bar_y(v)
        out.append(f'<line x1="{bar_x - 3:.1f}" y1="{y:.1f}" x2="{bar_x + bar_w:.1f}" y2="{y:.1f}" '
                   f'stroke="#000" stroke-width="1.5"/>'
                   f'<text class="ml-mark" x="{mark_x:.1f}" y="{y + 4:.1f}" '
                   f'fill="#333">{_e(text)}</text>')
    mx, my = title_x, top + bar_h / 2
    out.append(f'<text x="{mx:.1f}" y="{my:.1f}" text-anchor="middle" fill="#555" '
               f'transform="rotate(-90 {mx:.1f} {my:.1f})">{_e(result.metric)}</text>')
    cap_y = top + max(grid_h, bar_h) + 44
    for k, line in enumerate(caption):
        out.append(f'<text class="ml-caption" x="8" y="{cap_y + 15 * k:.1f}" fill="#555">'
                   f'{_e(line)}</text>')
    out.append("</svg>")
    return "".join(out)


def patching_caption(result: "PatchingResult", values_shown: bool = True) -> list[str]:
    """Two short lines under the heatmap: what the colours mean, and how to read the axes."""
    base = "corrupted" if result.direction == "denoising" else "clean"
    rows = "rows are layer.head (flattened); " if result.by == "head_position" else ""
    tokens = f"tokens are the {base} prompt's; " if result.by != "head" else ""
    hover = "" if values_shown else " (cells too narrow to print it)"
    return [f"blue: the patch moves {result.metric} above the {base} run's; red: below.",
            (rows + tokens + f"hover a cell for its exact value{hover}.").capitalize()]


def patching_html(result: "PatchingResult") -> str:
    """An HTML fragment: what Jupyter shows for a PatchingResult."""
    return _fragment(patching_svg(result))


def effects_order(result: "EffectsResult", top: int | None = None, sort: bool = False) -> list[int]:
    """Which rows to draw: all, or the ``top`` of largest max(|direct|, |total|), kept in layer
    order (the result's own order) unless ``sort``."""
    size = np.maximum(np.abs(result.direct), np.abs(result.total))
    order = list(np.argsort(-size, kind="stable"))
    keep = order if top is None else order[:top]
    return keep if sort else sorted(keep)


EFFECTS_NOTE = ("A total effect nearer zero than the direct effect: the rest of the model\n"
                "makes up for part of the ablated component (self-repair).")


def effects_title(result: "EffectsResult") -> str:
    return (f"direct and total effect on {result.metric} ({result.ablation} ablation; "
            f"clean {result.metric} {result.clean:+.3f})")


def effects_table(result: "EffectsResult", top: int | None = None, sort: bool = False,
                  bar_width: int = 12) -> str:
    """Direct (attribution) and total (the metric's drop when ablated) effect side by side, one
    row per component, each with a bar around a zero line '│'; total - direct is what the rest of
    the model makes up for (negative: it compensates)."""
    keep = effects_order(result, top, sort)
    scale = float(max(np.max(np.abs(result.direct)), np.max(np.abs(result.total)))) or 1.0

    def bar(v: float) -> str:
        n = int(round(abs(v) / scale * bar_width))
        neg, pos = ("█" * n, "") if v < 0 else ("", "█" * n)
        return neg.rjust(bar_width) + "│" + pos.ljust(bar_width)

    label_w = max([len("component")] + [len(result.labels[i]) for i in keep])
    blank = " " * (2 * bar_width + 1)
    lines = [effects_title(result),
             (f"{'component'.ljust(label_w)}  {'direct':>8} {blank}  {'total':>8} {blank}  "
              f"total-direct")]
    for i in keep:
        d, t = float(result.direct[i]), float(result.total[i])
        lines.append(f"{result.labels[i].ljust(label_w)}  {d:+8.3f} {bar(d)}  {t:+8.3f} {bar(t)}  "
                     f"{t - d:+8.3f}")
    if len(keep) < len(result.labels):
        lines.append(f"({len(keep)} of {len(result.labels)} components, the largest)")
    return "\n".join(line.rstrip() for line in lines)


def effects_repr(result: "EffectsResult") -> str:
    return effects_table(result, top=30)


def effects_svg(result: "EffectsResult", top: int | None = 40, sort: bool = False) -> str:
    """Direct and total effect as paired bars around one zero line, a row per component (layer
    order, or the ``top`` largest), with total - direct printed at the right."""
    keep = effects_order(result, top, sort)
    n = len(keep)
    row_h, label_w, half = 30, 110, 200
    scale = float(max(np.max(np.abs(result.direct)), np.max(np.abs(result.total)))) or 1.0
    zero = label_w + 60 + half
    gap_x = zero + half + 100                   # the total-direct column, clear of bar labels
    note = "" if n == len(result.labels) else \
        f"{n} of {len(result.labels)} components, the largest.\n"
    caption = (note + EFFECTS_NOTE).split("\n")
    W, H = gap_x + 60, 64 + n * row_h + 34 + 15 * len(caption)
    colours = {"direct": "#636363", "total": "#e6550d"}
    out = [(f'<svg class="ml-effects" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'data-parts="{n}" font-family="monospace" font-size="11">'),
           (f'<text class="ml-title" x="8" y="18" font-size="13" font-weight="bold">'
            f'{_e(effects_title(result))}</text>')]
    for k, (name, what) in enumerate((("direct", "what it writes (attribution)"),
                                      ("total", "the drop when it is ablated"))):
        x = 8 + k * 300
        out.append(f'<rect x="{x}" y="28" width="12" height="10" fill="{colours[name]}"/>'
                   f'<text x="{x + 16}" y="37">{name}: {_e(what)}</text>')
    out.append(f'<text x="{gap_x}" y="58" text-anchor="middle" fill="#555">'
               f'total-direct</text>')
    for row, i in enumerate(keep):
        y = 64 + row * row_h
        label = result.labels[i]
        out.append(f'<text class="ml-rowlabel" x="{label_w}" y="{y + row_h / 2 + 4}" '
                   f'text-anchor="end">{_e(label)}</text>')
        for k, name in enumerate(("direct", "total")):
            v = float((result.direct if name == "direct" else result.total)[i])
            w = abs(v) / scale * half
            x = zero if v >= 0 else zero - w
            by = y + 3 + k * 12
            tx, anchor = (zero + w + 4, "start") if v >= 0 else (zero - w - 4, "end")
            out.append(f'<g class="ml-bar" data-label="{_e(label)}" data-kind="{name}" '
                       f'data-value="{v:.6g}">'
                       f'<rect x="{x:.2f}" y="{by}" width="{max(w, 0.5):.2f}" height="11" '
                       f'fill="{colours[name]}"/>'
                       f'<text x="{tx:.2f}" y="{by + 9}" text-anchor="{anchor}" font-size="10">'
                       f'{v:+.3f}</text>'
                       f'<title>{_e(label)} {name} effect: {v:+.6f}</title></g>')
        gap = float(result.total[i] - result.direct[i])
        out.append(f'<text x="{gap_x}" y="{y + row_h / 2 + 4}" text-anchor="middle">'
                   f'{gap:+.3f}<title>{_e(label)}: total - direct = {gap:+.6f}</title></text>')
    out.append(f'<line x1="{zero}" y1="60" x2="{zero}" y2="{64 + n * row_h}" stroke="#333"/>')
    for k, line in enumerate(caption):
        out.append(f'<text class="ml-caption" x="8" y="{64 + n * row_h + 24 + 15 * k}" '
                   f'fill="#555">{_e(line)}</text>')
    out.append("</svg>")
    return "".join(out)


def effects_html(result: "EffectsResult") -> str:
    """An HTML fragment: what Jupyter shows for an EffectsResult."""
    return _fragment(effects_svg(result))


def attach() -> None:
    """Results draw themselves in Jupyter and at the prompt; the methods are attached here, so that
    analysis/ never imports show/ (tests/test_import_graph.py). minilens/__init__.py calls this."""
    from ..analysis.attribution import Attribution
    from ..analysis.lens import LensResult
    from ..analysis.patching import EffectsResult, PatchingResult

    LensResult._repr_html_ = lambda self: lens_html(self)
    LensResult.__repr__ = lens_repr
    Attribution._repr_html_ = lambda self: attribution_html(self)
    PatchingResult.__repr__ = patching_repr
    PatchingResult._repr_html_ = lambda self: patching_html(self)
    EffectsResult.__repr__ = effects_repr
    EffectsResult._repr_html_ = lambda self: effects_html(self)
