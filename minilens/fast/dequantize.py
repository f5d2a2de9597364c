"""Faster forms of three of loading/quants.py's dequantizers: Q4_0, Q4_1 and Q8_0.

quants.py is the one to read: each of its functions is a block layout and one formula. The
functions here compute the same numbers, bit for bit (tests/test_quants.py), with the order of work
changed for speed:
- they write into a given output, so that a tensor's float32 weights are written once, into the
  array the model keeps (quants.py returns new arrays, which GGUFFile.dequantize then copies);
- they go PIECE_BLOCKS blocks at a time, so that each pass over a piece (unpack the integers,
  multiply by d, add m) reads what the pass before it left in the core's cache;
- the 4-bit integers are unpacked straight into the float32 output (the cast happens in the
  shift), where quants.py unpacks them into uint8 and then multiplies into a new array.
The products and sums are the same float32 operations in the same order: q is exact in float32,
d * q is exact (quants.py's docstring), and only the final + m rounds, as it does there.

GGUFFile.dequantize uses these for the types in KERNELS, and quants.py's for every other type.
This module imports nothing of minilens: the GGUF reader (loading/) uses it.
"""

from __future__ import annotations

import numpy as np

F16 = np.dtype("<f2")
PIECE_BLOCKS = 2048    # 64K weights: a piece's output (256 KB) and scales stay in the core's cache


def _scales(piece: np.ndarray, n_scales: int) -> np.ndarray:
    """The first n_scales float16 fields of every block, widened to float32.
    [k, type_size] uint8 -> [k, n_scales] float32"""
    return np.ascontiguousarray(piece[:, :2 * n_scales]).view(F16).astype(np.float32)


def _nibbles_into(qs: np.ndarray, out: np.ndarray) -> None:
    """Weights 0..15 from the low nibbles of qs, 16..31 from the high ones, as float32 into out.
    qs [k, 16] uint8 -> out [k, 32] float32"""
    np.bitwise_and(qs, 0x0F, out=out[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")


def q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_0: w = d * (q - 8).  blocks [n, 18] uint8 -> out [n, 32] float32"""
    for a in range(0, len(blocks), PIECE_BLOCKS):
        piece, w = blocks[a:a + PIECE_BLOCKS], out[a:a + PIECE_BLOCKS]
        d = _scales(piece, 1)                                          # [k, 1]
        _nibbles_into(piece[:, 2:18], w)
        w -= 8
        w *= d


def q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_1: w = d * q + m.  blocks [n, 20] uint8 -> out [n, 32] float32"""
    for a in range(0, len(blocks), PIECE_BLOCKS):
        piece, w = blocks[a:a + PIECE_BLOCKS], out[a:a + PIECE_BLOCKS]
        dm = _scales(piece, 2)                                         # [k, 2]: d, m
        _nibbles_into(piece[:, 4:20], w)
        w *= dm[:, :1]
        w += dm[:, 1:]


def q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q8_0: w = d * q.  blocks [n, 34] uint8 -> out [n, 32] float32"""
    for a in range(0, len(blocks), PIECE_BLOCKS):
        piece, w = blocks[a:a + PIECE_BLOCKS], out[a:a + PIECE_BLOCKS]
        np.multiply(piece[:, 2:34].view(np.int8), _scales(piece, 1), out=w)


# ggml type name -> kernel(blocks [n, type_size] uint8, out [n, 32] float32)
KERNELS = {"Q4_0": q4_0, "Q4_1": q4_1, "Q8_0": q8_0}
