"""What both course graders share: calling a student's function, comparing its answer with
minilens's, and naming the mistake when they differ.

A hint teaches only if it names the mistake the student made. So for each part the grader also
computes the usual wrong answers (eps outside the sqrt, noising instead of denoising, ...), and
when the student's answer matches one of them, the hint for that one is printed. A wrong answer
can be expensive to compute (a whole patching grid), so a mistake may be given as a function,
called only when the answer is wrong.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np


class Unfinished(Exception):
    """A part the student has not started: the file does not define its function."""


def call(module, name: str, *args):
    """The student's ``name(*args)``; Unfinished (reported as TODO) if it is not defined."""
    fn = getattr(module, name, None)
    if fn is None:
        raise Unfinished(f"the file defines no function {name}()")
    return fn(*args)


def close(got, want, rtol: float = 1e-3, atol_frac: float = 1e-3,
          atol: float | None = None) -> bool:
    """Equal to rounding: within ``rtol`` and an absolute tolerance of ``atol`` (default
    ``atol_frac`` of want's largest entry, so that entries near zero do not need to match to
    their last digit)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        return False
    if atol is None:
        atol = atol_frac * max(1e-6, float(np.abs(want).max()))
    return bool(np.allclose(got, want, rtol=rtol, atol=atol))


def judge(fn_name: str, got, want, mistakes: dict[str, object], what: str,
          shape_hints: dict[tuple, str] | None = None, atol: float | None = None,
          nan_hint: str = "Look for a division by zero, or an exp or log of an extreme value."
          ) -> str | None:
    """None if ``got`` equals ``want``, else a message that teaches.

    ``mistakes``: {hint: the wrong answer, or a function computing it}; the first one the answer
    matches gives the message. ``shape_hints``: {a wrong shape: what it means}. ``what`` names the
    input, so that the student can reproduce it. ``atol``: an absolute tolerance, for numbers whose
    scale is known (a logit difference); by default it follows want's largest entry. ``nan_hint``:
    what to look at when the answer holds NaN or inf."""
    try:
        arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{fn_name} returned {type(got).__name__}, not an array of numbers ({what})."
    if arr.shape != np.shape(want):
        hint = (shape_hints or {}).get(arr.shape)
        expected = ("one number" if np.shape(want) == ()
                    else f"shape {list(np.shape(want))}")
        return (f"{fn_name} returned shape {list(arr.shape)}, expected {expected} ({what})."
                + (f" {hint}" if hint else ""))
    if not np.isfinite(arr).all():
        return f"{fn_name} returned NaN or inf ({what}). {nan_hint}"
    if close(arr, want, atol=atol):
        return None
    for hint, wrong in mistakes.items():
        wrong = wrong() if callable(wrong) else wrong
        if np.shape(wrong) == arr.shape and close(arr, wrong, atol=atol):
            return f"{hint} ({what})"
    err = float(np.abs(arr - np.asarray(want, dtype=np.float64)).max())
    return (f"{fn_name} is off by up to {err:.3g} ({what}); "
            f"compare your formula with the docstring line by line.")


def short_error(e: BaseException, student_file: Path) -> str:
    """The exception, and the line of the student's file it came from.

    Only the student's own file is quoted: the grader's lines (and numpy's) mean nothing to the
    student. An error raised inside minilens or numpy names the student's line that called it."""
    student = Path(student_file).resolve()
    frames = traceback.extract_tb(e.__traceback__)
    theirs = [f for f in frames if Path(f.filename).resolve() == student]
    where = ""
    if theirs:
        f = theirs[-1]
        code = f": {f.line}" if f.line else ""
        where = (f" (your line {f.lineno}{code})" if f is frames[-1]
                 else f" (raised in a call from your line {f.lineno}{code})")
    return f"{type(e).__name__}: {e}{where}"
