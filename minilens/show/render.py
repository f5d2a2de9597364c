"""Pictures of the lens, attribution and interventions: terminal tables and a self-contained HTML
report.

Two audiences, one module. A terminal gets the classic lens table (rows are points in the stream,
columns are input tokens, each cell the top-1 token and its probability), shaded with ANSI colour
when it is a terminal and plain when piped; every token is printed with its control characters
escaped (``escape_controls``), so a token holding ESC or BEL is shown, never obeyed. A browser gets
one HTML file with inline CSS and SVG: no scripts, no fonts, no network, so a report opens offline
years later. The heatmap's hover text is an SVG <title>, which every browser shows without
JavaScript.

Every heatmap cell (the lens, the layer x head grid, the patching grid) is a ``<g class="ml-cell"
data-row=.. data-pos=.. data-value=..>`` and every attribution bar a ``<g class="ml-bar"
data-label=.. data-value=..>``, so tests (and scripts) can count and read them. The
activation-patching grid uses the same cells (a diverging scale, white at the base run's metric),
and direct against total effect draws ``<g class="ml-bar" data-kind="direct"|"total">`` pairs.
Nothing here computes model numbers: it draws what LensResult, Attribution, PatchingResult and
EffectsResult hold.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..analysis.attribution import Attribution
    from ..analysis.lens import LensResult
    from ..analysis.patching import EffectsResult, PatchingResult

METRICS = ("prob", "target_prob", "entropy", "kl")
SCALES = ("log", "linear")

# Heatmap geometry in SVG user units (= CSS px). Fixed, so a screenshot can be checked cell by cell.
CELL_W, CELL_H, GAP = 64, 26, 2          # a lens cell (wider when its text needs it), and the
                                         # white gap between neighbours
CHAR_W = 6.7                             # one character of the 11px monospace font
LENS_MAX_WIDTH = 1000                    # a lens heatmap wider than this wraps into panels
LOG_DECADES = {"prob": 8, "target_prob": 8, "entropy": 4, "kl": 5}   # the most decades a log
                                         # colour scale spans, per metric


# ------------------------------------------------------------------------------------------
# Text: tokens and numbers as a reader wants to see them
# ------------------------------------------------------------------------------------------

# Control characters as visible text: the C0 controls (U+0000-U+001F), DEL (U+007F) and the C1
# controls (U+0080-U+009F, which some terminals obey too). Newline, tab and carriage return get
# their familiar escapes, the rest \xNN.
_CONTROLS = {c: {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(chr(c), f"\\x{c:02x}")
             for c in [*range(0x20), *range(0x7F, 0xA0)]}


def escape_controls(s: str) -> str:
    """``s`` safe to print on a terminal: every control character becomes visible text ("\\n",
    "\\t", "\\r", "\\x1b", ...), everything else is kept (backslashes too). ESC, BEL and backspace
    would otherwise be obeyed by the terminal (colours, a beep, overwritten text), not shown."""
    return s.translate(_CONTROLS)


def show_token(s: str, width: int | None = None) -> str:
    """A token string made visible: backslashes doubled and control characters escaped (so "\\n"
    the token and "\\\\n" the two characters differ; a leading space is kept: it is real
    information), cut to ``width`` characters with an ellipsis."""
    out = escape_controls(s.replace("\\", "\\\\"))
    if width is not None and len(out) > width:
        out = out[:max(1, width - 1)] + "…"
    return out


def visible_token(s: str, width: int | None = None) -> str:
    """show_token with spaces drawn as '␣': a column head " John" must not read as "John" (and an
    SVG <text> would drop the leading space anyway)."""
    return show_token(s.replace(" ", "␣"), width)


def fmt_prob(p: float) -> str:
    """Probabilities in 4-5 characters: two decimals, or e-notation below 0.01 (where 0.00 would
    hide them)."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def fmt_rank(rank: int) -> str:
    """A rank in at most 5 characters: "r12", "r4096", "r37k" (thousands, rounded down)."""
    return f"r{rank}" if rank < 10000 else f"r{rank // 1000}k"


def fmt_value(v: float) -> str:
    """Two decimals, and no "-0.00": a value that rounds to zero prints as 0.00."""
    return "0.00" if abs(v) < 0.005 else f"{v:.2f}"


def part_label(attr: "Attribution", label: str, width: int | None = 20) -> str:
    """An attribution part's label as shown: by="token" parts "3:," become "3: ," (and "3: cat"
    "3: ␣cat"), so the position and the token never run together; other labels as they are,
    control characters escaped."""
    if attr.by == "token":
        m = re.fullmatch(r"(\d+):(.*)", label, re.S)
        if m:
            return f"{m.group(1)}: {visible_token(m.group(2), width)}"
    return show_token(label, width)


# ------------------------------------------------------------------------------------------
# Colour
# ------------------------------------------------------------------------------------------

# A perceptually ordered ramp (light blue -> deep blue), ColorBrewer's Blues without its two
# lightest steps, so that the lightest colour still shows on a white page (after nostalgebraist's
# lens plots).
_RAMP = np.array([[222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214],
                  [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]], dtype=np.float64)

# ColorBrewer's RdBu (11 classes), red end to blue end; the middle is white.
_DIVERGE = np.array([[103, 0, 31], [178, 24, 43], [214, 96, 77], [244, 165, 130], [253, 219, 199],
                     [255, 255, 255], [209, 229, 240], [146, 197, 222], [67, 147, 195],
                     [33, 102, 172], [5, 48, 97]], dtype=np.float64)


def _interpolate(table: np.ndarray, x: float) -> tuple[int, int, int]:
    """x in [0, 1] -> the colour that far along the table's steps."""
    x = x * (len(table) - 1)
    i = min(int(x), len(table) - 2)
    c = table[i] + (x - i) * (table[i + 1] - table[i])
    return tuple(int(round(v)) for v in c)


def ramp(t: float) -> tuple[int, int, int]:
    """t in [0, 1] -> an RGB colour on the ramp (0 lightest blue, 1 deep blue)."""
    return _interpolate(_RAMP, 0.0 if not np.isfinite(t) else min(1.0, max(0.0, float(t))))


def diverge(t: float) -> tuple[int, int, int]:
    """t in [-1, 1] -> an RGB colour: -1 deep red, 0 white, +1 deep blue."""
    t = 0.0 if not np.isfinite(t) else min(1.0, max(-1.0, float(t)))
    return _interpolate(_DIVERGE, (t + 1) / 2)


def ink(rgb: tuple[int, int, int]) -> str:
    """Black or white text, whichever reads better on this background (relative luminance)."""
    r, g, b = rgb
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "#fff"


def hexcolour(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


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


@dataclass(frozen=True)
class ColourScale:
    """How a lens metric's values become colours: [lo, hi] on a log or linear axis, onto the ramp.

    ``reverse``: low values are dark (entropy and KL, where low means confident, or close to the
    final answer, like a high probability). Values outside [lo, hi] clip to the ends; on a log
    axis, zero and negative values count as lo.
    """

    lo: float
    hi: float
    log: bool
    reverse: bool
    title: str                    # the colour bar's title, e.g. "p(top-1), log scale"

    def position(self, value: float) -> float:
        """Where ``value`` sits between lo (0) and hi (1), clipped."""
        if not np.isfinite(value):
            return 0.0
        if self.log:
            if value <= self.lo:
                return 0.0
            x = (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi)
                                                              - math.log10(self.lo))
        else:
            x = (value - self.lo) / (self.hi - self.lo) if self.hi > self.lo else 0.0
        return min(1.0, max(0.0, x))

    def colour(self, value: float) -> tuple[int, int, int]:
        x = self.position(value)
        return ramp(1.0 - x if self.reverse else x)

    def ticks(self) -> list[tuple[float, str]]:
        """(value, label) of the colour bar's ticks: the decades on a log axis (every second
        one when there are more than seven), round steps on a linear one."""
        if self.log:
            a = math.ceil(math.log10(self.lo) - 1e-9)
            b = math.floor(math.log10(self.hi) + 1e-9)
            step = 1 if b - a <= 7 else 2
            decades = [(10.0 ** k, f"{10.0 ** k:g}") for k in range(b, a - 1, -step)][::-1]
            if len(decades) >= 2:
                return decades
            return [(self.lo, f"{self.lo:.2g}"), (self.hi, f"{self.hi:.2g}")]
        ticks, decimals = nice_ticks(self.lo, self.hi)
        return [(v, f"{v:.{decimals}f}") for v in ticks]


def _decade_floor(x: float) -> float:
    return 10.0 ** math.floor(math.log10(x) + 1e-9)


def _decade_ceil(x: float) -> float:
    return 10.0 ** math.ceil(math.log10(x) - 1e-9)


def metric_values(lens: "LensResult", metric: str) -> tuple[np.ndarray, str]:
    """The [rows, n_pos] numbers a heatmap colours by, and what they are."""
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not one of {', '.join(METRICS)}.")
    if metric == "prob":
        return lens.top_probs[:, :, 0], "probability of the top-1 token"
    if metric == "target_prob":
        return lens.target_prob, "probability and rank of the target token"
    if metric == "entropy":
        return lens.entropy, "entropy (nats); darker = more certain"
    return lens.kl_to_final, "KL(final || layer) (nats); darker = closer to the final answer"


def scale_rows(lens: "LensResult", exclude=None) -> list[int]:
    """The rows that set the colour scale: all but ``exclude`` (row labels).

    The default leaves out "0_pre" when the model ties its embeddings (W_U = W_E^T): read through
    the unembedding, the embedding row predicts the input token itself, near probability 1 and tens
    of nats from the final answer, and would wash out every other row."""
    labels = [str(x) for x in lens.labels]
    if exclude is None:
        tied = lens.trace.model.cfg.tie_embeddings
        exclude = ("0_pre",) if tied and "0_pre" in labels and len(labels) > 2 else ()
    elif isinstance(exclude, str):
        exclude = (exclude,)
    unknown = [x for x in exclude if x not in labels]
    if unknown:
        raise InputError(f"exclude names rows {unknown} that this lens does not have; "
                         f"its rows are {', '.join(labels)}.")
    rows = [r for r, label in enumerate(labels) if label not in exclude]
    if not rows:
        raise InputError("exclude leaves no row to set the colour scale: keep at least one.")
    return rows


def colour_scale(lens: "LensResult", metric: str = "prob", scale: str | None = None,
                 exclude=None, vmin: float | None = None,
                 vmax: float | None = None) -> ColourScale:
    """The colour scale of a lens heatmap.

    ``scale``: "log" or "linear". The default is log for the target's probability and for KL:
    they change by orders of magnitude across depth, and on a linear scale the early layers are
    all white, or (KL, below a tied "0_pre") one flat block. The top-1 probability (never below
    1/d_vocab, mostly 0.05-1) and entropy (0..log d_vocab) default to linear, which separates
    their values better. The range is that of the rows
    ``scale_rows(lens, exclude)`` keeps, widened to whole decades on a log axis (at most
    LOG_DECADES[metric] of them); probabilities always end at 1. ``vmin``/``vmax`` set the ends
    by hand.
    """
    values, _ = metric_values(lens, metric)
    scale = ("log" if metric in ("target_prob", "kl") else "linear") if scale is None else scale
    if scale not in SCALES:
        raise InputError(f"scale {scale!r} is not one of {', '.join(SCALES)}.")
    log = scale == "log"
    inside = values[scale_rows(lens, exclude)].astype(np.float64)
    inside = inside[np.isfinite(inside)]
    positive = inside[inside > 0]
    if metric in ("prob", "target_prob"):
        hi = 1.0
    elif metric == "entropy":
        hi = float(np.log(lens.trace.model.cfg.d_vocab))     # the uniform distribution's
    else:
        hi = float(positive.max()) if positive.size else 1.0
        hi = _decade_ceil(hi) if log else hi
    if log:
        lo = _decade_floor(float(positive.min())) if positive.size else hi / 10
        lo = min(max(lo, hi * 10.0 ** -LOG_DECADES[metric]), hi / 10)
    else:
        lo = 0.0
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if not hi > lo or (log and not lo > 0):
        raise InputError(f"the colour scale needs vmin < vmax (and vmin > 0 on a log scale), "
                         f"got {lo:g} and {hi:g}.")
    name = {"prob": "p(top-1)", "target_prob": "p(target)", "entropy": "entropy, nats",
            "kl": "KL to final, nats"}[metric]
    return ColourScale(lo, hi, log, reverse=metric in ("entropy", "kl"),
                       title=f"{name}, {scale} scale")


# ------------------------------------------------------------------------------------------
# Terminal
# ------------------------------------------------------------------------------------------

def ansi_background(text: str, rgb: tuple[int, int, int]) -> str:
    """Text on a background colour (24-bit ANSI), in black or white, reset after."""
    fg = "0;0;0" if ink(rgb) == "#000" else "255;255;255"
    return f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;{fg}m{text}\x1b[0m"


def ansi_cell(text: str, p: float) -> str:
    """Text on a background shaded by p on the ramp, reset after."""
    return ansi_background(text, ramp(p))


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


def bar_scale(labels, values: np.ndarray) -> float:
    """The |value| a full bar stands for: the largest part's, leaving out "rest" and the "N others"
    bar (sums of many parts, which would shrink every real part to nothing)."""
    own = [abs(float(v)) for label, v in zip(labels, values) if not is_lump(str(label))]
    return max(own or [float(np.max(np.abs(values))) if len(values) else 0.0]) or 1.0


def is_lump(label: str) -> bool:
    """"rest" (everything outside the split) and "N others" (the parts not drawn one by one)."""
    return label == "rest" or re.fullmatch(r"\d+ others", label) is not None


def attribution_bars(attr: "Attribution", color: bool = False, top: int = 20,
                     bar_width: int = 30, grid: bool | None = None) -> str:
    """The parts as a bar list, largest |value| first, then the check: sum of parts vs the model's
    logit.

    Bars are scaled to the largest part other than "rest"; a longer bar is cut at the full width
    and ends in "▸". ``grid``: also print the layer x head grid (head_grid_table) below; the
    default does for by="head" over more than one layer."""
    values = attr.values
    order = np.argsort(-np.abs(values), kind="stable")
    shown = order[:top]
    scale = bar_scale(attr.labels, values)
    labels = {i: part_label(attr, str(attr.labels[i]), None) for i in shown}
    label_w = max(len(labels[i]) for i in shown)
    lines, clipped = [], False
    for i in shown:
        v = float(values[i])
        n = int(round(min(abs(v) / scale, 1.0) * bar_width))
        bar = "█" * n + ("▸" if abs(v) > scale * (1 + 1e-9) else "")
        clipped |= bar.endswith("▸")
        if color:
            bar = f"\x1b[{'32' if v >= 0 else '31'}m{bar}\x1b[0m"
        lines.append(f"  {labels[i].ljust(label_w)}  {v:+9.4f}  {bar}")
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
    if clipped:
        lines.append(f"(▸: longer than drawn; bars are scaled to the largest part, "
                     f"{scale:.4f}, not to 'rest')")
    grid_values = head_grid(attr)
    if grid if grid is not None else (grid_values is not None and len(grid_values[1]) > 1):
        lines += ["", head_grid_table(attr, color=color)]
    return "\n".join(lines)


def attribution_title(attr: "Attribution") -> str:
    what = repr(attr.target_str) if attr.target_str is not None else f"#{attr.target}"
    if attr.contrast is not None:
        what += " - " + (repr(attr.contrast_str) if attr.contrast_str is not None
                         else f"#{attr.contrast}")
    layer = "" if attr.layer is None else f" in layer {attr.layer}"
    return f"logit[{what}] at position {attr.position}, split by {attr.by}{layer}"


def head_grid(attr: "Attribution") -> tuple[np.ndarray, list[int], int] | None:
    """By-head attribution as a grid: values [layers, n_heads], the layers, n_heads; None when the
    attribution is not split by head. Read from the "L{l}H{h}" labels."""
    if attr.by != "head":
        return None
    heads = {}
    for label, v in zip(attr.labels, attr.values):
        m = re.fullmatch(r"L(\d+)H(\d+)", str(label))
        if m:
            heads[int(m.group(1)), int(m.group(2))] = float(v)
    if not heads:
        return None
    layers = sorted({l for l, _ in heads})
    n_heads = 1 + max(h for _, h in heads)
    grid = np.zeros((len(layers), n_heads))
    for (l, h), v in heads.items():
        grid[layers.index(l), h] = v
    return grid, layers, n_heads


def head_grid_note(attr: "Attribution") -> str:
    """What the grid leaves out, so that the reader can still add it up to the logit."""
    biases = sum(float(v) for label, v in zip(attr.labels, attr.values)
                 if str(label).endswith("_attn_bias"))
    rest = sum(float(v) for label, v in zip(attr.labels, attr.values) if str(label) == "rest")
    return (f"not in the grid: attention biases {biases:+.3f}, rest {rest:+.3f} (embeddings, "
            f"MLPs, ...); all parts sum to the logit {attr.logit:+.4f}")


def head_grid_table(attr: "Attribution", color: bool = False) -> str:
    """The layer x head grid as text: a row per layer, a column per head, two decimals; ``color``:
    a diverging background, blue where a head adds to the logit, red where it takes away."""
    got = head_grid(attr)
    if got is None:
        raise InputError(f"the layer x head grid needs an attribution by='head', "
                         f"got by={attr.by!r}.")
    grid, layers, n_heads = got
    scale = float(np.max(np.abs(grid))) or 1.0
    label_w = max(len("layer"), *(len(f"L{l}") for l in layers))
    col_w = max(5, len(f"H{n_heads - 1}"), *(len(fmt_value(v)) for v in grid.ravel()))
    lines = [f"layer x head: {attribution_title(attr)}",
             "layer".ljust(label_w) + " " + " ".join(f"H{h}".rjust(col_w) for h in range(n_heads))]
    for r, l in enumerate(layers):
        cells = []
        for h in range(n_heads):
            text = fmt_value(float(grid[r, h])).rjust(col_w)
            cells.append(ansi_background(text, diverge(grid[r, h] / scale)) if color else text)
        lines.append(f"L{l}".ljust(label_w) + " " + " ".join(cells))
    lines.append(head_grid_note(attr))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# SVG
# ------------------------------------------------------------------------------------------

def _e(s) -> str:
    return html.escape(str(s), quote=True)


def colour_bar_svg(x: float, y: float, height: float, colours: list, ticks: list[tuple[float, str]],
                   where, title: str, width: float = 14) -> tuple[list[str], float]:
    """A vertical colour bar: ``colours`` from the top down as swatches (class "ml-legend") in a
    grey outline, a tick and label (class "ml-tick", with data-value) at each of ``ticks``, placed
    by ``where(value)`` in [0, 1] from the bottom, and ``title`` rotated beside them.
    -> the SVG pieces, and the x just right of the title."""
    out, n = [], len(colours)
    for s, rgb in enumerate(colours):
        out.append(f'<rect class="ml-legend" x="{x:.1f}" y="{y + s * height / n:.1f}" '
                   f'width="{width}" height="{height / n + (s < n - 1):.1f}" '
                   f'fill="{hexcolour(rgb)}"/>')                # overlapping: no seams
    out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width}" height="{height:.1f}" '
               f'fill="none" stroke="#999"/>')
    for value, label in ticks:
        ty = y + (1 - where(value)) * height
        out.append(f'<line x1="{x + width:.1f}" y1="{ty:.1f}" x2="{x + width + 4:.1f}" '
                   f'y2="{ty:.1f}" stroke="#333"/>'
                   f'<text class="ml-tick" x="{x + width + 6:.1f}" y="{ty + 4:.1f}" '
                   f'data-value="{value:.6g}">{_e(label)}</text>')
    tx = x + width + 10 + max(len(label) for _, label in ticks) * CHAR_W + 10
    out.append(f'<text class="ml-bartitle" x="{tx:.1f}" y="{y + height / 2:.1f}" '
               f'text-anchor="middle" fill="#555" '
               f'transform="rotate(-90 {tx:.1f} {y + height / 2:.1f})">{_e(title)}</text>')
    return out, tx + 8


def heatmap_svg(lens: "LensResult", metric: str = "prob", token_width: int = 7,
                scale: str | None = None, exclude=None, input_at_bottom: bool = False,
                max_width: int | None = LENS_MAX_WIDTH, vmin: float | None = None,
                vmax: float | None = None) -> str:
    """The logit-lens heatmap: rows by positions, each cell coloured by ``metric``.

    A cell shows the top-1 token (spaces as '␣'); with metric="target_prob", the target's
    probability and rank ("0.07 r2": two tokens above it; "r37k": 37 thousand). Hovering shows
    the top-k, entropy, KL and the target's probability and exact rank (an SVG <title>).

    ``scale``, ``exclude``, ``vmin``, ``vmax``: the colour scale (see ``colour_scale``); the rows
    left out of it are drawn with grey labels, and clip. ``input_at_bottom``: the tuned lens's
    orientation, the embedding row at the bottom and depth going up, tokens under the grid.
    ``max_width`` (px): a longer input wraps into panels of positions stacked top to bottom, each
    with its own row labels, the colour bar beside the first, so nothing needs a sideways scroll;
    None draws one panel however wide.
    """
    values, caption = metric_values(lens, metric)
    cs = colour_scale(lens, metric, scale, exclude, vmin, vmax)
    kept = set(scale_rows(lens, exclude))
    model = lens.trace.model
    R, P = values.shape
    labels = [str(x) for x in lens.labels]
    in_toks = model.token_strings(lens.trace.ids[lens.positions])
    tgt_toks = model.token_strings(lens.target_ids)
    vocab_strs: dict[int, str] = {}

    def tok(i: int) -> str:
        if i not in vocab_strs:
            vocab_strs[i] = model.token_strings([i])[0]
        return vocab_strs[i]

    if metric == "target_prob":
        texts = [[f"{fmt_prob(float(lens.target_prob[r, j]))} "
                  f"{fmt_rank(int(lens.target_rank[r, j]))}" for j in range(P)] for r in range(R)]
    else:
        texts = [[visible_token(tok(int(lens.top_ids[r, j, 0])), token_width) for j in range(P)]
                 for r in range(R)]
    cw = max(CELL_W, math.ceil(max(len(t) for row in texts for t in row) * CHAR_W + 8))
    col_text = [visible_token(s, 12) for s in in_toks]
    col_h = max(len(t) for t in col_text) * CHAR_W * 0.5 + 16    # labels rotated by 30 degrees
    left = max(len(x) for x in labels) * CHAR_W + 16
    ticks = cs.ticks()
    legend_w = 14 + 10 + max(len(t) for _, t in ticks) * CHAR_W + 10 + 24
    fit = P if max_width is None else max(1, int((max_width - left - legend_w - 24) // cw))
    per_panel = math.ceil(P / math.ceil(P / fit))       # panels of even size: no orphan columns
    panels = [range(a, min(a + per_panel, P)) for a in range(0, P, per_panel)]
    grid_h = R * CELL_H
    pad = 18 if len(panels) > 1 else 0                            # room for "positions a-b"
    panel_h = pad + col_h + grid_h + 22
    head = 44                                                     # the title and subtitle
    # A tall enough colour bar for its ticks, unless it would run into a second panel or the
    # tokens under the grid.
    bar_h = grid_h if len(panels) > 1 or input_at_bottom else max(grid_h, 150.0)
    first_w = left + len(panels[0]) * cw
    W = int(max(first_w + 20 + legend_w,
                left + (len(panels[0]) - 0.5) * cw + 12 * CHAR_W * 0.87 + 8,  # the last head
                16 + len(f"logit lens: {caption}") * 7.5))
    left_out = ", ".join(labels[r] for r in range(R) if r not in kept)
    notes = ([f"rows {left_out} (grey labels) are left out of the colour scale and clip."]
             if left_out else [])
    notes.append("hover a cell for the top-k, entropy, KL and the target's probability and rank.")
    bar_top = head + pad + (0 if input_at_bottom else col_h)     # beside the first panel's grid
    body_h = max(head + len(panels) * panel_h, bar_top + bar_h + 10)
    H = int(body_h + 10 + 15 * len(notes))
    out = [(f'<svg class="ml-heatmap" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" data-rows="{R}" data-positions="{P}" '
            f'data-metric="{_e(metric)}" data-scale="{"log" if cs.log else "linear"}" '
            f'data-lo="{cs.lo:.6g}" data-hi="{cs.hi:.6g}" data-panels="{len(panels)}" '
            f'font-family="monospace" font-size="11">'),
           (f'<text class="ml-title" x="8" y="18" font-size="13" font-weight="bold">'
            f'logit lens: {_e(caption)}</text>'),
           (f'<text class="ml-subtitle" x="8" y="34" fill="#555">{_e(model.cfg.family)}, '
            f'{R} rows x {P} positions; colours on a {"log" if cs.log else "linear"} scale'
            f'{", depth going up" if input_at_bottom else ""}</text>')]
    for k, cols in enumerate(panels):
        top = head + k * panel_h
        grid_top = top + pad + (0 if input_at_bottom else col_h)
        if len(panels) > 1:
            out.append(f'<text class="ml-panel" x="8" y="{top + 12:.1f}" fill="#555">'
                       f'positions {cols[0]}-{cols[-1]}</text>')
        for c, j in enumerate(cols):   # column heads: the input token at each position
            x = left + c * cw + cw / 2
            if input_at_bottom:
                y, angle = grid_top + grid_h + 12, 30
            else:
                y, angle = grid_top - 6, -30
            out.append(f'<text class="ml-col" x="{x:.1f}" y="{y:.1f}" '
                       f'transform="rotate({angle} {x:.1f} {y:.1f})">'
                       f'{_e(col_text[j])}<title>position {int(lens.positions[j])}: '
                       f'{_e(repr(in_toks[j]))}</title></text>')
        for r in range(R):
            y = grid_top + ((R - 1 - r) if input_at_bottom else r) * CELL_H
            grey = "" if r in kept else ' fill="#999"'
            out.append(f'<text class="ml-rowlabel" x="{left - 6:.1f}" y="{y + CELL_H / 2 + 4:.1f}" '
                       f'text-anchor="end"{grey}>{_e(labels[r])}</text>')
            for c, j in enumerate(cols):
                v = float(values[r, j])
                rgb = cs.colour(v)
                top_k = ", ".join(f"{tok(int(t))!r} {float(p):.3f}"
                                  for t, p in zip(lens.top_ids[r, j], lens.top_probs[r, j]))
                title = (f"{labels[r]}, position {int(lens.positions[j])} ({in_toks[j]!r})\n"
                         f"top-{lens.top_ids.shape[2]}: {top_k}\n"
                         f"entropy {float(lens.entropy[r, j]):.3f} nats, "
                         f"KL to final {float(lens.kl_to_final[r, j]):.3f} nats\n"
                         f"target {tgt_toks[j]!r}: p={float(lens.target_prob[r, j]):.3g}, "
                         f"rank {int(lens.target_rank[r, j])}")
                x = left + c * cw
                out.append(f'<g class="ml-cell" data-row="{r}" data-pos="{j}" '
                           f'data-value="{v:.6g}">'
                           f'<rect x="{x + GAP / 2:.1f}" y="{y + GAP / 2:.1f}" '
                           f'width="{cw - GAP}" height="{CELL_H - GAP}" '
                           f'fill="{hexcolour(rgb)}"/>'
                           f'<text x="{x + cw / 2:.1f}" y="{y + CELL_H / 2 + 4:.1f}" '
                           f'text-anchor="middle" fill="{ink(rgb)}">{_e(texts[r][j])}</text>'
                           f'<title>{_e(title)}</title></g>')
    # The colour bar: hi at the top.
    steps = 40
    colours = [cs.colour(_scale_value(cs, 1 - (s + 0.5) / steps)) for s in range(steps)]
    bar, _ = colour_bar_svg(first_w + 20, bar_top, bar_h, colours, ticks, cs.position, cs.title)
    out += bar
    for k, line in enumerate(notes):
        out.append(f'<text class="ml-caption" x="8" y="{body_h + 10 + 15 * k:.1f}" fill="#555">'
                   f'{_e(line)}</text>')
    out.append("</svg>")
    return "".join(out)


def _scale_value(cs: ColourScale, x: float) -> float:
    """The value at position x in [0, 1] along a colour scale (the inverse of cs.position)."""
    if cs.log:
        return 10.0 ** (math.log10(cs.lo) + x * (math.log10(cs.hi) - math.log10(cs.lo)))
    return cs.lo + x * (cs.hi - cs.lo)


def attribution_svg(attr: "Attribution", top: int = 24) -> str:
    """The attribution as horizontal bars around a zero line: blue adds to the logit, red takes
    away (the colours of the head grid and the token picture).

    by="layer" and by="token" keep their natural order (depth, or position); heads and neurons show
    the ``top`` parts of largest |value|, and one bar for all the others, so the bars still sum to
    the logit. "rest" and the others' bar are drawn apart, below a dashed line; the bars are scaled
    to the largest part without them, and a longer bar is cut at the full width with a white
    double slash and its value printed. Values sit between the labels and the bars, never on a
    label.
    """
    labels, values = [str(x) for x in attr.labels], attr.values.astype(np.float64)
    if attr.by in ("head", "neuron") and len(values) > top:
        order = np.argsort(-np.abs(values), kind="stable")
        keep, rest = order[:top], order[top:]
        labels = [labels[i] for i in keep] + [f"{len(rest)} others"]
        values = np.append(values[keep], values[rest].sum())
    rows = ([i for i in range(len(values)) if not is_lump(labels[i])]
            + [i for i in range(len(values)) if is_lump(labels[i])])
    n_own = sum(not is_lump(label) for label in labels)
    n = len(values)
    shown = {i: part_label(attr, labels[i]) for i in range(n)}
    bar_h, half = 18, 220
    label_w = max(len(s) for s in shown.values()) * CHAR_W + 10
    num_w = max(len(f"{v:+.3f}") for v in values) * CHAR_W + 10  # room for a value, either side
    scale = bar_scale(labels, values)
    zero = label_w + num_w + half
    title = attribution_title(attr)
    gap = 10 if 0 < n_own < n else 0                              # the dashed line's room
    H = 30 + n * bar_h + gap + 50
    check = (f"sum of all {len(attr.values)} parts = {float(attr.values.sum()):+.6f}; "
             f"model logit = {attr.logit:+.6f}; difference = "
             f"{float(attr.values.sum()) - attr.logit:+.1e}")
    W = int(max(zero + half + num_w + 10, 12 + len(title) * 7.5, 12 + len(check) * CHAR_W))
    out = [(f'<svg class="ml-attribution" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" data-parts="{n}" font-family="monospace" font-size="11">'),
           f'<text class="ml-title" x="4" y="16" font-weight="bold">{_e(title)}</text>']
    for k, i in enumerate(rows):
        label, v = labels[i], float(values[i])
        y = 26 + k * bar_h + (gap if k >= n_own else 0)
        w = min(abs(v) / scale, 1.0) * half
        x = zero if v >= 0 else zero - w
        colour = hexcolour(diverge(0.75 if v >= 0 else -0.75))
        tx, anchor = (zero + w + 4, "start") if v >= 0 else (zero - w - 4, "end")
        cut = ""
        if abs(v) > scale * (1 + 1e-9):             # clipped: a white "//" near the end
            cx = zero + (0.85 if v >= 0 else -0.85) * half
            cut = "".join(f'<line class="ml-cut" x1="{cx + d - 3:.1f}" y1="{y + bar_h - 2}" '
                          f'x2="{cx + d + 3:.1f}" y2="{y + 2}" stroke="#fff" stroke-width="2"/>'
                          for d in (-3, 3))
        out.append(f'<g class="ml-bar" data-label="{_e(label)}" data-value="{v:.6g}">'
                   f'<text class="ml-label" x="{label_w - 6:.1f}" y="{y + 13}" '
                   f'text-anchor="end">{_e(shown[i])}</text>'
                   f'<rect x="{x:.2f}" y="{y + 2}" width="{max(w, 0.5):.2f}" '
                   f'height="{bar_h - 4}" fill="{colour}"/>{cut}'
                   f'<text class="ml-value" x="{tx:.2f}" y="{y + 13}" '
                   f'text-anchor="{anchor}">{v:+.3f}</text>'
                   f'<title>{_e(label)}: {v:+.6f}</title></g>')
    bottom = 26 + n * bar_h + gap
    out.append(f'<line x1="{zero:.1f}" y1="24" x2="{zero:.1f}" y2="{bottom}" stroke="#333"/>')
    if gap:
        y = 26 + n_own * bar_h + gap / 2
        out.append(f'<line x1="4" y1="{y}" x2="{W - 4}" y2="{y}" stroke="#999" '
                   f'stroke-dasharray="4 3"/>')
    out.append(f'<text class="ml-check" x="4" y="{bottom + 18}">{_e(check)}</text>')
    if any(abs(v) > scale * (1 + 1e-9) for v in values):
        out.append(f'<text class="ml-caption" x="4" y="{bottom + 34}" fill="#555">'
                   f'// cut: the bar is longer than drawn (bars are scaled to the largest part, '
                   f'{scale:.3f}).</text>')
    out.append("</svg>")
    return "".join(out)


def head_grid_svg(attr: "Attribution") -> str:
    """By-head attribution as a layer x head heatmap (the picture of ARENA's and TransformerLens's
    demos): a row per layer, a column per head, each cell coloured on a diverging scale centred on
    zero (blue adds to the logit, red takes away) with its value printed, a colour bar with
    ticks, and a note of what the grid leaves out (the attention biases and "rest")."""
    got = head_grid(attr)
    if got is None:
        raise InputError(f"the layer x head grid needs an attribution by='head', "
                         f"got by={attr.by!r}.")
    grid, layers, n_heads = got
    R, C = grid.shape
    scale = float(np.max(np.abs(grid))) or 1.0
    cw, ch = 44, 20 if R <= 32 else 16
    left, top = 16 + max(len(f"L{l}") for l in layers) * CHAR_W + 12, 64
    title = f"heads: {attribution_title(attr)}"
    note = head_grid_note(attr)
    grid_w, grid_h = C * cw, R * ch
    bar_h = max(grid_h, 150.0)
    ticks_v, decimals = nice_ticks(-scale, scale)
    ticks = [(v, f"{v:.{decimals}f}") for v in ticks_v]
    W = int(max(left + grid_w + 20 + 14 + 10 + max(len(t) for _, t in ticks) * CHAR_W + 40,
                16 + len(title) * 7.5, 16 + len(note) * CHAR_W))
    H = int(top + max(grid_h, bar_h) + 52)
    out = [(f'<svg class="ml-headgrid" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'data-rows="{R}" data-cols="{C}" data-layers="{",".join(map(str, layers))}" '
            f'font-family="monospace" font-size="11">'),
           (f'<text class="ml-title" x="8" y="18" font-size="13" font-weight="bold">'
            f'{_e(title)}</text>'),
           (f'<text class="ml-subtitle" x="8" y="36" fill="#555">each head\'s direct write to '
            f'the logit{" difference" if attr.contrast is not None else ""}: blue adds, red '
            f'takes away</text>')]
    for h in range(C):
        out.append(f'<text class="ml-col" x="{left + h * cw + cw / 2:.1f}" y="{top - 6}" '
                   f'text-anchor="middle">H{h}</text>')
    ax, ay = 10, top + grid_h / 2
    out.append(f'<text x="{ax}" y="{ay:.1f}" text-anchor="middle" fill="#555" '
               f'transform="rotate(-90 {ax} {ay:.1f})">layer</text>')
    for r, l in enumerate(layers):
        y = top + r * ch
        out.append(f'<text class="ml-rowlabel" x="{left - 6:.1f}" y="{y + ch / 2 + 4:.1f}" '
                   f'text-anchor="end">L{l}</text>')
        for h in range(C):
            v = float(grid[r, h])
            rgb = diverge(v / scale)
            x = left + h * cw
            shown = fmt_value(v)
            fill = "#aaa" if shown == "0.00" else ink(rgb)
            out.append(f'<g class="ml-cell" data-row="{r}" data-pos="{h}" data-layer="{l}" '
                       f'data-head="{h}" data-value="{v:.6g}">'
                       f'<rect x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" '
                       f'fill="{hexcolour(rgb)}"/>'
                       f'<text x="{x + cw / 2}" y="{y + ch / 2 + 3.5:.1f}" text-anchor="middle" '
                       f'font-size="10" fill="{fill}">{shown}</text>'
                       f'<title>L{l}H{h}: {v:+.6f}</title></g>')
    steps = 40
    colours = [diverge(1 - 2 * (s + 0.5) / steps) for s in range(steps)]
    bar, _ = colour_bar_svg(left + grid_w + 20, top, bar_h, colours, ticks,
                            lambda v: (v / scale + 1) / 2, "logit contribution")
    out += bar
    out.append(f'<text class="ml-caption" x="8" y="{top + max(grid_h, bar_h) + 30:.1f}" '
               f'fill="#555">{_e(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def tokens_html(attr: "Attribution") -> str:
    """By-token attribution as the text itself: each source token on a background coloured by its
    contribution (blue adds to the logit, red takes away, white nothing), the predicting position
    outlined, each token's value in its hover text. Long prompts wrap like text."""
    if attr.by != "token":
        raise InputError(f"the token picture needs an attribution by='token', got by={attr.by!r}.")
    parts = []
    for label, v in zip(attr.labels, attr.values):
        m = re.fullmatch(r"(\d+):(.*)", str(label), re.S)
        if m:
            parts.append((int(m.group(1)), m.group(2), float(v)))
    scale = max(abs(v) for _, _, v in parts) or 1.0
    spans = []
    for k, s, v in parts:
        rgb = diverge(v / scale)
        edge = "outline: 2px solid #e6550d; " if k == attr.position else ""
        spans.append(f'<span class="ml-token" data-pos="{k}" data-value="{v:.6g}" '
                     f'style="background: {hexcolour(rgb)}; color: {ink(rgb)}; {edge}" '
                     f'title="{k}: {_e(repr(s))}: {v:+.4f}">{_e(show_token(s))}</span>')
    key = "".join(f'<span class="ml-token-key" style="background: {hexcolour(diverge(t))}; '
                  f'color: {ink(diverge(t))}">{t * scale:+.2f}</span>'
                  for t in (-1, -0.5, 0, 0.5, 1))
    others = float(attr.values.sum()) - sum(v for _, _, v in parts)
    return (f'<div class="ml-tokens-title">{_e(attribution_title(attr))}: each source token by '
            f'its contribution through layer {attr.layer}\'s attention</div>'
            f'<div class="ml-tokens">{"".join(spans)}</div>'
            f'<div class="ml-meta">scale {key} &nbsp; outlined: the position that predicts; '
            f'not in the tokens: the attention bias and the rest of the stream, '
            f'{others:+.3f}</div>')


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
.minilens .ml-tokens-title { font-family: monospace; font-size: 12px; font-weight: bold; \
margin: 4px 0; }
.minilens .ml-tokens { font-family: monospace; font-size: 14px; line-height: 1.9; \
white-space: pre-wrap; max-width: 900px; }
.minilens .ml-token { padding: 2px 0; border-right: 1px solid #fff; }
.minilens .ml-token-key { font-family: monospace; font-size: 11px; padding: 1px 4px; }
"""


def _fragment(body: str) -> str:
    return f'<div class="minilens"><style>{CSS}</style>{body}</div>'


def lens_html(lens: "LensResult", metric: str = "prob", **options) -> str:
    """An HTML fragment (a <div> with its own <style>): what Jupyter shows for a LensResult.
    ``options`` go to heatmap_svg (scale, exclude, input_at_bottom, max_width, vmin, vmax)."""
    return _fragment(heatmap_svg(lens, metric, **options))


def attribution_html(attr: "Attribution") -> str:
    """An HTML fragment: what Jupyter shows for an Attribution. By head, the layer x head grid
    comes first; by token, the text coloured token by token; then the bars."""
    pictures = []
    if head_grid(attr) is not None:
        pictures.append(head_grid_svg(attr))
    if attr.by == "token":
        pictures.append(tokens_html(attr))
    pictures.append(attribution_svg(attr))
    return _fragment("".join(f"<div>{p}</div>" for p in pictures))


def report(lens: "LensResult | None" = None, attr: "Attribution | None" = None,
           metric: str = "prob", title: str = "minilens report", text: str | None = None,
           model_name: str | None = None, patching=None,
           effects: "EffectsResult | None" = None, lens_options: dict | None = None) -> str:
    """A whole HTML document, self-contained: inline CSS and SVG, no scripts, fonts or links.

    ``lens_options``: heatmap_svg's options for the lens (scale, exclude, input_at_bottom, ...);
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
        parts.append("<h2>Logit lens</h2>")
        parts.append(lens_html(lens, metric, **(lens_options or {})))
    if attr is not None:
        parts.append(f"<h2>Attribution by {_e(attr.by)}</h2>{attribution_html(attr)}")
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

def patching_base(result: "PatchingResult") -> float:
    """The metric of the run that is patched *into*: corrupted for denoising, clean for noising."""
    return result.corrupted if result.direction == "denoising" else result.clean


def patching_scale(result: "PatchingResult") -> float:
    """Half the colour range: at least the clean-corrupted gap, so a full restore is full colour."""
    base = patching_base(result)
    spread = float(np.max(np.abs(result.values - base))) if result.values.size else 0.0
    return max(abs(result.clean - result.corrupted), spread) or 1.0


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
                    text = ansi_background(text, diverge((float(values[r, j]) - base) / scale))
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
