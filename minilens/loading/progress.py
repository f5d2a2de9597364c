"""Progress of slow forward passes: which layer is being widened, on stderr (issue 19).

A model too big to keep its widened layers (``load(..., cache_layers=False)``, the default from
2 GiB of widened layers up) widens or dequantizes every layer again on every pass, and an
8B-parameter pass on two cores takes a minute or more. Silence for that long looks like a hang, so
``LazyLayers`` reports each layer it widens to a ``LayerProgress``, which writes one line on stderr,
but only once the current pass has run PROGRESS_AFTER_SECONDS: small models and short passes (and
so the test suite) never print anything.

On a terminal the line rewrites itself in place; in a log file a line is written at most every
LOG_EVERY_SECONDS. ``MINILENS_PROGRESS=0`` in the environment, or ``model.layers.progress = None``,
switches it off.
"""

from __future__ import annotations

import os
import sys
import time

PROGRESS_AFTER_SECONDS = 3.0
LOG_EVERY_SECONDS = 10.0


def progress_enabled() -> bool:
    """Whether layer progress is on (``MINILENS_PROGRESS=0`` turns it off)."""
    return os.environ.get("MINILENS_PROGRESS", "1").strip() not in ("0", "false", "no", "off")


class LayerProgress:
    """Told of each layer as it is about to be widened: ``progress(l, n_layers, widen_seconds)``.

    A pass starts when a layer no later than the last one reported comes up (layer 0, or a single
    layer read again by attribution). ``widen_seconds`` is the model's running total of time spent
    widening or dequantizing layers; the line shows this pass's share of it beside the elapsed
    time, since it is the part of a streamed pass that is not matrix products.
    """

    def __init__(self, stream=None, after: float = PROGRESS_AFTER_SECONDS):
        self.stream = stream
        self.after = after
        self.last = -1
        self.t0 = time.perf_counter()
        self.widen0 = 0.0           # widen_seconds when this pass started
        self.logged = None          # when the last line went to a log file
        self.shown = False          # a terminal line is waiting for its newline

    def __call__(self, l: int, n_layers: int, widen_seconds: float) -> None:
        now = time.perf_counter()
        if l <= self.last or self.last < 0:                  # a new pass (or the first)
            self.finish()
            self.t0, self.widen0, self.logged = now, widen_seconds, None
        self.last = l
        elapsed = now - self.t0
        if elapsed < self.after:
            return
        stream = self.stream or sys.stderr
        line = (f"minilens: layer {l + 1}/{n_layers}, {elapsed:.0f} s "
                f"({widen_seconds - self.widen0:.0f} s of it widening the weights)")
        if _isatty(stream):
            stream.write(f"\r\x1b[K{line}")
            self.shown = True
            if l == n_layers - 1:
                self.finish()
        elif self.logged is None or now - self.logged >= LOG_EVERY_SECONDS or l == n_layers - 1:
            stream.write(line + "\n")
            self.logged = now
        stream.flush()

    def finish(self) -> None:
        """End a terminal line left open by the previous pass."""
        if self.shown:
            stream = self.stream or sys.stderr
            stream.write("\n")
            stream.flush()
            self.shown = False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
