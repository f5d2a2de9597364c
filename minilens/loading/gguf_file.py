"""Read GGUF files (versions 2 and 3): validated header, memory-mapped tensors, metadata.

GGUF is llama.cpp's single-file format, the one in which llama.cpp, Ollama and LM Studio keep
local models. All numbers are little-endian.
(https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv metadata pairs:  key (string) | value type u32 | value
    n_tensors infos:      name (string) | n_dims u32 | dims u64[n_dims] | ggml type u32 | offset u64
    padding to `general.alignment` (default 32), then the data block; each tensor's offset is
    relative to the data block's start and aligned, and the tensors follow one another in the
    order of their infos, each padded to the alignment.

    a string is its byte length u64 and its UTF-8 bytes; an array is its element type u32,
    its count u64 and its elements.

As for safetensors (safetensors_io.py), a file from a stranger is validated before anything is
allocated for it: every length and count is checked against the bytes left in the file before it
is read, so a hostile header costs kilobytes, not gigabytes. The file is memory-mapped
read-only. Tensors stay as their stored (often 4-bit) blocks until one is asked for; quants.py
turns those blocks into numbers.

Dims are listed fastest-first: a `[49152, 576]` numpy embedding is stored with dims `(576, 49152)`.
``GGUFTensor.shape`` is the numpy (row-major) shape, the reverse of the stored dims.
"""

from __future__ import annotations

import math
import mmap
import reprlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CheckpointError
from ..fast import workers
from .quants import QuantType, all_finite, dequantize, out_fits, quant_type

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                 # GGML_MAX_DIMS
DEQUANTIZE_PIECE = 1 << 24   # weights dequantized at a time (GGUFFile.dequantize)
PARALLEL_WEIGHTS = 1 << 22   # a tensor this large is dequantized by all the workers; smaller ones
                             # one at a time: SmolLM2's layer tensors (0.1M to 0.9M weights) took
                             # longer split, their fresh output pages faulting in no faster
MAX_STRING_BYTES = 1 << 24   # a key or a string value; the longest real ones are chat templates
                             # (~10 KB)

# Metadata value types: id -> (name, struct format of one element, its byte size)
STRING, ARRAY = 8, 9
SCALARS = {
    0: ("uint8", "<B", 1), 1: ("int8", "<b", 1), 2: ("uint16", "<H", 2), 3: ("int16", "<h", 2),
    4: ("uint32", "<I", 4), 5: ("int32", "<i", 4), 6: ("float32", "<f", 4), 7: ("bool", "<?", 1),
    10: ("uint64", "<Q", 8), 11: ("int64", "<q", 8), 12: ("float64", "<d", 8),
}
NUMPY_OF = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
            6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]     # numpy order (slowest first): the stored dims reversed
    qtype: QuantType
    type_id: int
    offset: int                # absolute byte offset in the file
    n_bytes: int


class StringArray(Sequence):
    """A metadata array of strings, such as a tokenizer's vocabulary and merges: a read-only
    sequence of str, decoded from the file when it is first read.

    Reading the header checks every string (_Parser.strings) but makes no Python strings: a
    vocabulary and its merges are about 100,000 of them, which took more than a third of
    ``minilens.load``'s time on SmolLM2, and only the tokenizer reads them, which is itself
    built on first use (Model.tokenizer). The first read decodes them all and keeps them."""

    def __init__(self, mm: mmap.mmap, start: int, n: int, strings: list[str] | None = None):
        self._mm, self._start, self._n, self._strings = mm, start, n, strings

    def _decoded(self) -> list[str]:
        if self._strings is None:
            self._strings = _decode(self._mm, self._start, self._n)
        return self._strings

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        return self._decoded()[i]

    def __iter__(self):
        return iter(self._decoded())

    def __eq__(self, other) -> bool:
        return (isinstance(other, Sequence) and not isinstance(other, str)
                and len(other) == self._n and list(self) == list(other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringArray({reprlib.repr(self._decoded())}, {self._n} strings)"


def _decode(mm: mmap.mmap, start: int, n: int) -> list[str]:
    """The n strings at ``start``, each after its 8-byte length, already checked (_Parser)."""
    length = struct.Struct("<Q").unpack_from
    out, end = [], start
    for _ in range(n):
        begin = end + 8
        end = begin + length(mm, end)[0]
        out.append(mm[begin:end].decode("utf-8"))
    return out


class GGUFFile:
    """One GGUF file: its metadata (a dict of Python values) and its tensors, memory-mapped.

    Metadata values: ints, floats, bools and strings as Python values; arrays of strings as
    StringArray (a read-only sequence of str, decoded on first read); numeric arrays as 1-D
    numpy arrays.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = self.path.stat().st_size
                if size < 24:
                    raise self.error(f"only {size} bytes, too short to be a GGUF file")
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot be read ({e.strerror or e}). "
                                  f"Check that the file is readable (its permissions, the disk) "
                                  f"and try again.") from None
        self.size = size
        self.version, self.metadata, self.tensors = _Parser(self).parse()

    def error(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}. "
                               f"The file is damaged or was downloaded halfway; download it again.")

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of one tensor: a read-only uint8 view of the file, nothing copied."""
        t = self.tensors[name]
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.n_bytes, offset=t.offset)

    def all_finite(self, name: str) -> bool:
        """No NaN or inf among the weights of tensor ``name``, told from its stored bytes (for a
        quantized tensor, its blocks' scales: quants.all_finite)."""
        return all_finite(self.raw(name), self.tensors[name].type_id)

    def dequantize(self, name: str, out: np.ndarray | None = None,
                   rows: np.ndarray | None = None) -> np.ndarray:
        """One tensor as float32 numbers, in its numpy shape: a new array, or ``out`` (C-ordered
        float32 of the tensor's size) filled and returned in that shape. ``rows``: the order in
        which to take the rows (the first numpy axis), as ``w[rows]`` would; the quantized bytes
        are reordered, so a row must be a whole number of blocks (a 2-D tensor's always is).

        A large tensor is dequantized in pieces of at most DEQUANTIZE_PIECE weights, written into
        the one result: the unpacking's temporaries (a few bytes per weight) then stay a few tens
        of MB, where for an 8B model's 525M-weight embedding they would add gigabytes to the peak
        (issue 19). A tensor of PARALLEL_WEIGHTS weights or more is cut into at least one piece
        per worker, and the workers (fast/workers.py) dequantize the pieces side by side.
        """
        t = self.tensors[name]
        n = math.prod(t.shape)
        n_workers = workers.n_workers() if n >= PARALLEL_WEIGHTS else 1
        if out is None and n <= DEQUANTIZE_PIECE and n_workers == 1:
            return dequantize(self._in_order(name, rows), t.type_id, n).reshape(t.shape)
        if out is None:
            out = np.empty(n, dtype=np.float32)
        jobs = self.pieces(name, out, rows, min(DEQUANTIZE_PIECE, -(-n // n_workers)))
        workers.split(lambda w: [job() for _, job in jobs[w::n_workers]], n_workers)
        return out.reshape(t.shape)

    def pieces(self, name: str, out: np.ndarray, rows: np.ndarray | None = None,
               piece: int = DEQUANTIZE_PIECE) -> list[tuple[int, Callable[[], None]]]:
        """The work of dequantizing tensor ``name`` into ``out`` (as ``dequantize``'s), cut at
        block boundaries into pieces of at most ``piece`` weights: (weights, job) pairs, whose
        jobs may run in any order, on any threads."""
        t = self.tensors[name]
        n, raw = math.prod(t.shape), self._in_order(name, rows)
        if not out_fits(out, n):
            raise ValueError(f"dequantize: out must be C-ordered float32 with {n} elements "
                             f"(tensor {name!r}), not {out.dtype} {out.shape}")
        flat, size, type_size = out.reshape(n), t.qtype.block_size, t.qtype.type_size
        n_blocks = n // size
        n_pieces = max(1, -(-n // piece))
        bounds = [n_blocks * i // n_pieces for i in range(n_pieces + 1)]    # in blocks

        def job(a: int, b: int) -> Callable[[], None]:
            return lambda: dequantize(raw[a * type_size:b * type_size], t.type_id,
                                      (b - a) * size, out=flat[a * size:b * size])
        return [((b - a) * size, job(a, b)) for a, b in zip(bounds, bounds[1:])]

    def _in_order(self, name: str, rows: np.ndarray | None) -> np.ndarray:
        """The tensor's stored bytes (``raw``), with its rows in the order ``rows`` if given."""
        t, raw = self.tensors[name], self.raw(name)
        if rows is None:
            return raw
        if (math.prod(t.shape) // t.shape[0]) % t.qtype.block_size:
            raise self.error(f"tensor {name!r} ({t.qtype.name}, shape {list(t.shape)}) must "
                             f"have its rows reordered, but they are not whole blocks of "
                             f"{t.qtype.block_size}")
        return raw.reshape(t.shape[0], -1)[rows].reshape(-1)

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version {self.version}, {len(self.tensors)} tensors)"


class _Parser:
    """Reads the header from the memory map with a cursor; every read is bounds-checked first."""

    def __init__(self, f: GGUFFile):
        self.f, self.buf, self.pos = f, memoryview(f._mm), 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.f.size:
            raise self.f.error(f"{what} needs {n} bytes at offset {self.pos}, "
                               f"past the end of the file ({self.f.size} bytes)")

    def unpack(self, fmt: str, n: int, what: str):
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        if n > MAX_STRING_BYTES:
            raise self.f.error(f"{what} claims {n} bytes (the limit is {MAX_STRING_BYTES})")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.f.error(f"{what} is not valid UTF-8") from None

    def strings(self, n: int, key: str) -> StringArray:
        """The n strings of the array ``key``, every one checked: inside the file, at most
        MAX_STRING_BYTES, UTF-8. A tight loop walks their length fields, and what it skips is
        checked after it: an unpack past the end of the map raises, and a length that overruns
        the file leaves ``end`` past it. The length field of a string shorter than 128 bytes is
        ASCII bytes only, and so are those of the longer ones once zeroed in a copy: then the
        array's bytes decode as UTF-8 exactly when each string does (an ASCII byte ends any
        UTF-8 sequence), and one decode of them all checks them all. Anything wrong, and
        ``string`` reads the array again from its start, one string at a time, and raises its
        message for the first bad one."""
        mm, start = self.f._mm, self.pos
        length = struct.Struct("<Q").unpack_from
        end, long = start, []
        try:
            for _ in range(n):
                begin = end + 8
                end = begin + length(mm, end)[0]
                if end - begin > 127:
                    long.append(begin - start)
                    if end - begin > MAX_STRING_BYTES:
                        raise ValueError
            if end > self.f.size:
                raise ValueError
            text = bytearray(mm[start:end])
            for begin in long:
                text[begin - 8:begin] = bytes(8)
            text.decode("utf-8")
        except (struct.error, OverflowError, ValueError):   # (UnicodeDecodeError is a ValueError)
            self.pos = start
            return StringArray(mm, start, n,
                               [self.string(f"element {i} of {key!r}") for i in range(n)])
        self.pos = end
        return StringArray(mm, start, n)

    def count(self, what: str, min_bytes_each: int) -> int:
        """A count of things still to read, each at least ``min_bytes_each`` bytes: checked against
        the bytes left, so that a count of 2**60 is refused before any list is made for it."""
        n = self.u64(what)
        if n * min_bytes_each > self.f.size - self.pos:
            raise self.f.error(f"{what} is {n}, "
                               f"more than the {self.f.size - self.pos} bytes left could hold")
        return n

    def value(self, vtype: int, key: str) -> Any:
        if vtype in SCALARS:
            _, fmt, size = SCALARS[vtype]
            return self.unpack(fmt, size, f"the value of {key!r}")
        if vtype == STRING:
            return self.string(f"the value of {key!r}")
        if vtype == ARRAY:
            etype = self.u32(f"the element type of {key!r}")
            if etype in SCALARS:
                size = SCALARS[etype][2]
                n = self.count(f"the element count of {key!r}", size)
                out = np.frombuffer(self.buf, dtype=NUMPY_OF[etype], count=n,
                                    offset=self.pos).copy()
                self.pos += n * size
                return out
            if etype == STRING:
                n = self.count(f"the element count of {key!r}", 8)
                return self.strings(n, key)
            raise self.f.error(f"metadata {key!r} is an array of type {etype}, "
                               f"which GGUF does not define "
                               f"(arrays of arrays are not used by any model)")
        raise self.f.error(f"metadata {key!r} has value type {vtype}, which GGUF does not define")

    def parse(self) -> tuple[int, dict[str, Any], dict[str, GGUFTensor]]:
        f = self.f
        magic = bytes(self.buf[:4])
        self.pos = 4
        if magic != MAGIC:
            raise CheckpointError(f"{f.path}: does not start with the GGUF magic "
                                  f"(found {magic!r}); it is not a GGUF file, or it is damaged.")
        version = self.u32("the version")
        if version not in VERSIONS:
            swapped = version.to_bytes(4, "little")[::-1]
            hint = (" It looks big-endian (byte-swapped); minilens reads little-endian GGUF only."
                    if int.from_bytes(swapped, "little") in VERSIONS else "")
            raise CheckpointError(f"{f.path}: GGUF version {version}; "
                                  f"minilens reads versions 2 and 3.{hint}")
        # a tensor info is at least 4 + 8 + 4 + 8 + 4 + 8 bytes; a metadata pair at least 8 + 4 + 1
        n_tensors = self.count("the tensor count", 36)
        n_kv = self.count("the metadata count", 13)

        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = self.string(f"metadata key {i}")
            vtype = self.u32(f"the value type of {key!r}")
            if key in metadata:
                raise f.error(f"metadata key {key!r} appears twice")
            metadata[key] = self.value(vtype, key)

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1
                or alignment & (alignment - 1)):
            raise f.error(f"general.alignment is {alignment!r}; it must be a positive power of two")

        infos = []
        for i in range(n_tensors):
            name = self.string(f"the name of tensor {i}")
            n_dims = self.u32(f"the dim count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise f.error(f"tensor {name!r} has {n_dims} dims; GGUF allows 1 to {MAX_DIMS}")
            dims = [self.u64(f"dim {d} of tensor {name!r}") for d in range(n_dims)]
            type_id = self.u32(f"the type of tensor {name!r}")
            offset = self.u64(f"the offset of tensor {name!r}")
            infos.append((name, dims, type_id, offset))

        data_start = -(-self.pos // alignment) * alignment
        tensors: dict[str, GGUFTensor] = {}
        # tensors follow one another, each padded to the alignment (as llama.cpp checks)
        expected = 0
        for name, dims, type_id, offset in infos:
            where = f"{f.path}: tensor {name!r}"
            if name in tensors:
                raise f.error(f"tensor {name!r} appears twice")
            if any(d < 1 for d in dims) or math.prod(dims) > f.size * 256:
                # no block format stores more than 256 elements per byte... or anywhere near it
                raise f.error(f"tensor {name!r} has dims {dims[:MAX_DIMS]}, "
                              f"which the file cannot hold")
            qtype = quant_type(type_id, where)
            n_elements = math.prod(dims)
            if dims[0] % qtype.block_size:
                raise f.error(f"tensor {name!r} is {qtype.name}, "
                              f"whose blocks hold {qtype.block_size} numbers, "
                              f"but its rows hold {dims[0]}")
            n_bytes = n_elements // qtype.block_size * qtype.type_size
            if offset % alignment or offset != expected:
                raise f.error(f"tensor {name!r} starts at data offset {offset}, "
                              f"but the tensors before it end at {expected} "
                              f"(padded to the alignment {alignment})")
            if data_start + offset + n_bytes > f.size:
                raise f.error(f"tensor {name!r} ({qtype.name}, {n_bytes} bytes) ends at byte "
                              f"{data_start + offset + n_bytes}, "
                              f"past the end of the file ({f.size} bytes)")
            tensors[name] = GGUFTensor(name, tuple(reversed(dims)), qtype, type_id,
                                       data_start + offset, n_bytes)
            expected = -(-(offset + n_bytes) // alignment) * alignment
        return version, metadata, tensors
