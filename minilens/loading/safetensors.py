"""Read safetensors files: validated header, memory-mapped tensors, exact bfloat16 widening.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON describing each
tensor (dtype, shape, [begin, end) offsets into the data block), then the data block.
(https://github.com/huggingface/safetensors#format)

We parse the header ourselves rather than calling ``safetensors.numpy``, for two reasons:
numpy has no bfloat16, so that loader cannot return Llama checkpoints; and a file from a
stranger must be validated (sizes, offsets, dtypes) *before* any memory is allocated for it.
Tensors are views into a read-only ``np.memmap``: nothing is read until a tensor is used,
and nothing can be written back.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .schema import short

# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 is stored as uint16 bits.
DTYPES = {"F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2),
          "BF16": (np.uint16, 2)}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                 # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int                 # byte offsets inside the data block
    end: int
    file: Path


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading any tensor data."""
    fix = "The file is damaged or was downloaded halfway; download it again."
    try:
        size, n_header, raw = _read_raw_header(path, fix)
    except OSError as e:  # unreadable: permissions, a broken network mount, ...
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}). "
                              f"Check that the file is readable (its permissions, the disk) "
                              f"and try again.") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: JSONDecodeError, or an integer past Python's int-digit limit;
        # RecursionError: absurd nesting
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e}). "
                              f"{fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object. {fix}")

    data_bytes = size - 8 - n_header
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            # unused by minilens, but the reference refuses anything but strings to strings
            if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise CheckpointError(f"{path}: the header's __metadata__ is {short(entry)}; it "
                                      f"must map names to strings. {fix}")
            continue
        infos[name] = _validate_entry(path, name, entry, data_bytes, fix)
    _check_coverage(path, infos, data_bytes, fix)
    return infos


def _check_coverage(path: Path, infos: dict[str, TensorInfo], data_bytes: int, fix: str) -> None:
    """The tensors must tile the data block exactly: no overlap, no gap, no trailing byte.

    The reference library requires the same ("file not fully covered"). Without it, a header
    length lowered by a few bytes (one bit flip) still parses, because headers are padded with
    spaces, and every tensor is then read a few bytes off: finite, wrong weights, no error.
    """
    covered_to, previous = 0, None  # bytes [0, covered_to) belong to tensors seen so far
    for info in sorted(infos.values(), key=lambda i: (i.begin, i.end)):
        if info.begin < covered_to:
            raise CheckpointError(f"{path}: tensors {previous!r} and {info.name!r} overlap "
                                  f"in the data block. {fix}")
        if info.begin > covered_to:
            raise CheckpointError(
                f"{path}: bytes [{covered_to}, {info.begin}) of the data block belong to no tensor "
                f"(a gap before {info.name!r}); the header and the data disagree. {fix}"
            )
        covered_to, previous = info.end, info.name
    if covered_to != data_bytes:
        raise CheckpointError(
            f"{path}: bytes [{covered_to}, {data_bytes}) of the data block belong to no tensor "
            f"(the header's length or offsets are wrong, "
            f"so every tensor may be read off by some bytes). {fix}"
        )


def _read_raw_header(path: Path, fix: str) -> tuple[int, int, bytes]:
    """(file size, header length, header bytes); the length is checked against the file before
    reading."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: only {size} bytes, "
                                  f"too short to be a safetensors file. {fix}")
        (n_header,) = struct.unpack("<Q", prefix)
        if n_header > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path}: header claims {n_header} bytes "
                f"but the file holds {size - 8} after the length. {fix}"
            )
        return size, n_header, fh.read(n_header)


def _validate_entry(path: Path, name: str, entry: object, data_bytes: int,
                    fix: str) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: header entry for tensor {name!r} "
                              f"lacks dtype, shape or data_offsets. {fix}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        shown = dtype if isinstance(dtype, str) and len(dtype) < 40 else short(dtype)
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {shown}, which minilens does not read "
            f"(it reads {', '.join(DTYPES)}). "
            f"Convert the checkpoint to float16, bfloat16 or float32 first."
        )
    def is_int(v: object) -> bool:  # JSON true/false would pass isinstance(v, int)
        return isinstance(v, int) and not isinstance(v, bool)

    if (not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_int(o) for o in offsets)):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {short(shape)} "
                              f"or offsets {short(offsets)}. {fix}")
    begin, end = offsets
    n_bytes = math.prod(shape) * DTYPES[dtype][1]
    if not 0 <= begin <= end <= data_bytes or end - begin != n_bytes:
        raise CheckpointError(
            f"{path}: tensor {name!r} claims bytes [{short(begin)}, {short(end)}) for shape "
            f"{short(shape)} {dtype} ({short(n_bytes)} bytes), but the data block holds "
            f"{data_bytes} bytes. {fix}"
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end, path)


def open_tensor(info: TensorInfo, memmaps: dict[Path, np.memmap]) -> np.ndarray:
    """A read-only view of one tensor's stored bits (bfloat16 stays as uint16 bits)."""
    if info.file not in memmaps:
        memmaps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
    mm = memmaps[info.file]
    (n_header,) = struct.unpack("<Q", mm[:8].tobytes())
    start = 8 + n_header + info.begin
    storage, _ = DTYPES[info.dtype]
    return mm[start:8 + n_header + info.end].view(storage).reshape(info.shape)


def widen(stored: np.ndarray, st_dtype: str, dtype: np.dtype) -> np.ndarray:
    """Stored bits -> ``dtype`` values. bfloat16 is the top half of a float32, so widening is
    exact."""
    if st_dtype == "BF16":
        # One pass into one new buffer: ``stored.astype(np.uint32) << 16`` allocates two, and first
        # touches of fresh memory dominate loading a 1B-parameter checkpoint (issue 6).
        bits = np.empty(stored.shape, dtype=np.uint32)
        np.left_shift(stored, 16, out=bits, dtype=np.uint32)
        return bits.view(np.float32).astype(dtype, copy=False)
    return stored.astype(dtype)
