"""Pictures of a lens evaluation (analysis/tuned_lens.py): a per-layer table and a KL plot.

``evaluation_table`` prints KL to the final layer, cross-entropy, top-1 agreement and bias per
layer for several lenses side by side (plain text or Markdown). ``kl_plot_html`` draws KL against
layer, one line per lens, on a log scale (the logit lens's early layers sit tens of nats above the
rest), as one self-contained HTML file: inline SVG, no scripts, fonts or network, like render.py's
report. Every line is a ``<g class="ml-line" data-lens=.. data-values=..>``, so tests can read it.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..analysis.tuned_lens import LensEvaluation

COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")  # one per lens
COLUMNS = (("kl", "KL", "{:.3f}"), ("cross_entropy", "CE", "{:.2f}"),
           ("top1_agreement", "top1", "{:.2f}"), ("bias", "bias", "{:.3f}"))


def _check(evals: dict) -> None:
    if not evals:
        raise InputError("give at least one LensEvaluation, as {name: evaluation}.")
    lengths = {len(e.labels) for e in evals.values()}
    if len(lengths) != 1:
        raise InputError("the evaluations are of models with different numbers of layers.")


def evaluation_table(evals: "dict[str, LensEvaluation]", markdown: bool = False) -> str:
    """One row per layer; for each lens its KL (nats), cross-entropy (nats), top-1 agreement
    with the final layer and bias (nats); the mean over layers 0..L-1 at the bottom."""
    _check(evals)
    names = list(evals)
    head = ["row"] + [f"{name} {title}" for name in names for _, title, _ in COLUMNS]
    labels = next(iter(evals.values())).labels
    rows = []
    for r, label in enumerate(labels):
        rows.append([str(label)] + [fmt.format(float(getattr(evals[n], key)[r]))
                                    for n in names for key, _, fmt in COLUMNS])
    rows.append([f"mean 0..{len(labels) - 2}"]
                + [fmt.format(float(getattr(evals[n], key)[:-1].mean()))
                   for n in names for key, _, fmt in COLUMNS])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(line[c]) for line in [head] + rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths))
                     for line in [head] + rows)


def kl_plot_svg(evals: "dict[str, LensEvaluation]", title: str = "") -> str:
    """KL(p_final || p_lens) against layer, one line per lens, log-scaled y.
    final_post (KL 0) is left out: it has no place on a log scale."""
    _check(evals)
    W, H, left, right, top, bottom = 720, 420, 70, 150, 40, 50
    n = len(next(iter(evals.values())).labels) - 1                 # layers 0..L-1
    values = {name: [max(float(v), 1e-4) for v in e.kl[:-1]] for name, e in evals.items()}
    lo = math.floor(math.log10(min(min(v) for v in values.values())))
    hi = math.ceil(math.log10(max(max(v) for v in values.values())))
    hi = max(hi, lo + 1)

    def x(l: float) -> float:
        return left + (W - left - right) * (l / max(n - 1, 1))

    def y(v: float) -> float:
        return top + (H - top - bottom) * (hi - math.log10(v)) / (hi - lo)

    out = [(f'<svg class="ml-klplot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'data-layers="{n}" font-family="sans-serif" font-size="12">'),
           f'<text x="{left}" y="20" font-weight="bold">{html.escape(title)}</text>']
    for p in range(lo, hi + 1):                                      # decades: grid and labels
        out.append(f'<line x1="{left}" y1="{y(10 ** p):.1f}" x2="{W - right}" '
                   f'y2="{y(10 ** p):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y(10 ** p) + 4:.1f}" text-anchor="end">'
                   f'{10.0 ** p:g}</text>')
    step = max(1, round(n / 10))
    for l in range(0, n, step):
        out.append(f'<text x="{x(l):.1f}" y="{H - bottom + 16}" text-anchor="middle">{l}</text>')
    out.append(f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" '
               f'stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" '
               f'stroke="#333"/>')
    out.append(f'<text x="{(left + W - right) / 2}" y="{H - 12}" text-anchor="middle">'
               f'layer l (the lens reads resid_pre[l])</text>')
    out.append(f'<text x="16" y="{(top + H - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(top + H - bottom) / 2})">'
               f'KL(p_final || p_lens), nats (log scale)</text>')
    for i, (name, vals) in enumerate(values.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{x(l):.1f},{y(v):.1f}" for l, v in enumerate(vals))
        data = ",".join(f"{v:.6g}" for v in evals[name].kl[:-1])
        out.append(f'<g class="ml-line" data-lens="{html.escape(name)}" data-values="{data}">'
                   f'<polyline points="{points}" fill="none" stroke="{colour}" '
                   f'stroke-width="2"/>')
        for l, v in enumerate(vals):
            out.append(f'<circle cx="{x(l):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                       f'<title>{html.escape(name)}, layer {l}: KL {v:.4f} nats</title></circle>')
        ly = top + 10 + 22 * i
        mean = evals[name].mean_kl()
        out.append(f'<line x1="{W - right + 12}" y1="{ly}" x2="{W - right + 36}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/><text x="{W - right + 42}" '
                   f'y="{ly + 4}">{html.escape(name)} ({mean:.3f})</text></g>')
    out.append(f'<text x="{W - right + 12}" y="{top + 10 + 22 * len(values)}" fill="#555">'
               f'(mean over layers)</text></svg>')
    return "".join(out)


def kl_plot_html(evals: "dict[str, LensEvaluation]", title: str = "KL to the final layer",
                 note: str = "") -> str:
    """A whole HTML document: the KL plot and the table, self-contained."""
    table = html.escape(evaluation_table(evals))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body {{ margin: 16px; "
            f"font-family: sans-serif; color: #222; }} pre {{ font-size: 11px; }}</style></head>"
            f"<body><h1 style=\"font-size: 18px\">{html.escape(title)}</h1>"
            f"<p style=\"color: #555\">{html.escape(note)}</p>{kl_plot_svg(evals)}"
            f"<pre>{table}</pre></body></html>\n")
