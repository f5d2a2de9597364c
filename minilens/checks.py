"""Checks of the public API's arguments, at the boundary (issue 18).

Each function checks one kind of argument and returns it in the form the code after it uses, or
raises InputError naming the argument as the caller wrote it (``top_k``, ``n_new``, ``save_dir``)
with its value, shortened. Without them a bad argument surfaces deep inside numpy as a Python
error that says nothing of what was passed (``range(2.5)``'s TypeError, an OSError "file name too
long"), or, worse, as an answer: ``k=-3`` took ``ids[:-3]`` and listed 4093 tokens.

Torch tensors are read without importing torch: anything with ``.detach()`` is detached and
moved to the CPU first (``np.asarray`` refuses a tensor that requires grad).
"""

from __future__ import annotations

import math
import os
import reprlib

import numpy as np

from .errors import InputError

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3

# A path component longer than this is refused before the file system sees it: the usual
# NAME_MAX, in bytes, of Linux and macOS file systems (open() would raise "File name too long").
NAME_MAX = 255
PATH_MAX = 4096


def shown(value) -> str:
    """repr(value), cut to about 60 characters, with its type: what an error message echoes."""
    return f"{_REPR.repr(value)} ({type(value).__name__})"


def is_int(value) -> bool:
    """A Python or numpy integer, but not a bool (True would pass as 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def count(value, name: str, minimum: int = 1) -> int:
    """An int >= minimum: k, top_k, n_new, steps, batch sizes."""
    if not is_int(value) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {shown(value)}.")
    return int(value)


def layer(value, n_layers: int, name: str = "layer") -> int:
    """A layer index, negative allowed as in Python. -> 0..n_layers - 1"""
    if not is_int(value) or not -n_layers <= value < n_layers:
        raise InputError(f"{name} {_REPR.repr(value)} is out of range: this model has {n_layers} "
                         f"layers, so use 0..{n_layers - 1} (or -{n_layers}..-1 from the end).")
    return int(value) % n_layers


def layers(value, n_layers: int, name: str = "layers") -> list[int]:
    """None (every layer), one layer index, or a list of them. -> [int], each 0..n_layers - 1"""
    if value is None:
        return list(range(n_layers))
    if is_int(value):
        return [layer(value, n_layers, name)]
    value = as_numpy(value)
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise InputError(f"{name} must be a layer index or a list of them (None for all), "
                         f"got {shown(value)}.")
    chosen = [layer(v, n_layers, f"{name} entry") for v in value]
    if not chosen:
        raise InputError(f"{name} is empty: give at least one layer, or None for all.")
    return chosen


def number(value, name: str, minimum: float | None = None, allow_inf: bool = False) -> float:
    """A real number (not a bool), finite unless ``allow_inf``, at least ``minimum`` if given."""
    ok = (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))
    if ok:
        value = float(value)
        ok = (math.isfinite(value) or (allow_inf and value == math.inf)) and (
            minimum is None or value >= minimum)
    if not ok:
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise InputError(f"{name} must be a {'' if allow_inf else 'finite '}number{bound}, "
                         f"got {shown(value)}.")
    return value


def flag(value, name: str) -> bool:
    """True or False (a numpy bool too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {shown(value)}.")
    return bool(value)


def as_numpy(value):
    """``value`` as numpy can read it: a torch tensor (duck-typed by ``.detach``) is detached,
    moved to the CPU and converted, bfloat16 through float32 (numpy has no bfloat16). Anything
    else is returned unchanged."""
    if isinstance(value, np.ndarray) or not callable(getattr(value, "detach", None)):
        return value
    tensor = value.detach().cpu()
    if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def vector(value, name: str, size: int, size_name: str = "d_model") -> np.ndarray:
    """A finite 1-D vector of ``size`` real numbers (a list, an array or a tensor).
    -> [size] float64"""
    value = as_numpy(value)
    what = f"{name} must be a 1-D array of {size} finite numbers ([{size_name}])"
    if isinstance(value, (str, bytes, dict, set)):
        raise InputError(f"{what}, got {shown(value)}.")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):           # ragged nested lists
        raise InputError(f"{what}, got {shown(value)}, which is not a rectangular array.") from None
    if arr.dtype.kind not in "iuf":          # strings, objects, bools, complex numbers
        raise InputError(f"{what}, got an array of dtype {arr.dtype}: {_REPR.repr(value)}.")
    if arr.shape != (size,):
        raise InputError(f"{name} must have shape [{size_name}] = [{size}], "
                         f"got {list(arr.shape)[:8]}{'...' if arr.ndim > 8 else ''}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds NaN or inf values (the first at index "
                         f"{int(np.flatnonzero(~np.isfinite(arr))[0])}). Check the vector you "
                         f"passed (e.g. the SAE decoder row or neuron weights it came from).")
    return arr


def text(value: str, name: str = "text") -> str:
    """A str that can be encoded as UTF-8, as the tokenizer needs (a lone surrogate cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{name} holds {value[e.start:e.end]!r} at index {e.start}, a lone "
                         f"surrogate, which is not a character and cannot be tokenized. It "
                         f"usually comes from decoding bytes with errors='surrogateescape'; "
                         f"decode them with errors='replace' instead.") from None
    return value


def path(value, name: str) -> str | os.PathLike:
    """A file or folder path (a str or os.PathLike) that the file system can be asked about:
    not empty, no NUL byte, each component at most NAME_MAX bytes and the whole at most PATH_MAX.
    Whether it exists is for the caller to say."""
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name} must be a path or a name (a str or pathlib.Path), "
                         f"got {shown(value)}.")
    raw = os.fspath(value)
    if not isinstance(raw, str):
        raise InputError(f"{name} must be a str path, got bytes {_REPR.repr(raw)}: "
                         f"decode it with os.fsdecode.")
    if not raw.strip():
        raise InputError(f"{name} is empty: give a folder, a file or a model name.")
    if "\0" in raw:
        raise InputError(f"{name} holds a NUL byte (at index {raw.index(chr(0))}), "
                         f"which no path can contain: {_REPR.repr(raw)}.")
    try:
        encoded = os.fsencode(raw)
    except UnicodeEncodeError:
        raise InputError(f"{name} {_REPR.repr(raw)} cannot be encoded for the file system "
                         f"(a lone surrogate?).") from None
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX or len(encoded) > PATH_MAX:
        raise InputError(f"{name} is too long to be a path or a model name: "
                         f"{_REPR.repr(raw)} has {len(encoded)} bytes, and a part of "
                         f"{len(longest)} (file systems allow {NAME_MAX} per part, "
                         f"{PATH_MAX} in all).")
    return value
