"""Dequantizers for the tensor types of GGUF files (llama.cpp's ggml formats), in plain NumPy.

A quantized tensor is a row of fixed-size *blocks*. Each block stores a few float16 scales and,
for every weight, a small integer q of 2 to 8 bits. A weight is recovered as ``w = d * q`` or
``w = d * q + m``: the integers give the shape of the block's values, the scales give their size.
The K-quants ("Q4_K" and friends) use blocks of 256 weights cut into sub-blocks of 16 or 32, and
give every sub-block its own small integer scale, itself scaled by the block's float16 ``d``.

Every function below reads one type. It takes ``blocks: [n_blocks, type_size] uint8`` and
returns ``[n_blocks, block_size] float32``, and the comment above it draws the block's bytes.
The arithmetic is float32 in the same order as llama.cpp's reference (gguf-py's
``gguf.quants``), and the results are bit for bit the same (tests/test_quants.py). In fact
every product here is exact in float32: a float16 has 11 significant bits, and the integers
multiplied into it add at most 12 more (Q6_K: 7 for its int8 scale, 5 for q - 32), inside
float32's 24. Only a final ``+ m`` or ``- dmin * min`` rounds.

GGUF is little-endian, so every multi-byte field is read with an explicit "<" dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError

F16 = np.dtype("<f2")   # the scales d, m, dmin of every quantized block
# Weights dequantized per call of a type's function (dequantize): 256 KiB of float32, so that
# the function's few passes over them (unpack, scale, shift) stay in a core's cache.
CHUNK_WEIGHTS = 1 << 16


@dataclass(frozen=True)
class QuantType:
    name: str         # ggml's name, e.g. "Q4_K"
    block_size: int   # weights per block: 1 (F32, F16, BF16), 32, or 256 (the K-quants)
    type_size: int    # bytes per block
    scales: tuple[int, ...] = ()   # byte offsets of a block's float16 scales (d, m, dmin)


# ggml's type ids are fixed by the file format (ggml.h, enum ggml_type).
GGML_TYPES: dict[int, QuantType] = {
    0: QuantType("F32", 1, 4),
    1: QuantType("F16", 1, 2),
    2: QuantType("Q4_0", 32, 18, (0,)),
    3: QuantType("Q4_1", 32, 20, (0, 2)),
    6: QuantType("Q5_0", 32, 22, (0,)),
    7: QuantType("Q5_1", 32, 24, (0, 2)),
    8: QuantType("Q8_0", 32, 34, (0,)),
    10: QuantType("Q2_K", 256, 84, (80, 82)),
    11: QuantType("Q3_K", 256, 110, (108,)),
    12: QuantType("Q4_K", 256, 144, (0, 2)),
    13: QuantType("Q5_K", 256, 176, (0, 2)),
    14: QuantType("Q6_K", 256, 210, (208,)),
    30: QuantType("BF16", 1, 2),
}

# Every type id ggml knows (gguf-py 0.19's GGMLQuantizationType), so that a file of a type
# minilens does not read is refused by name. Ids 4, 5 and 31-33, 36-38 were retired by ggml.
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}


def quant_type(type_id: int, where: str) -> QuantType:
    """The block layout of a ggml type id; a CheckpointError naming `where` if minilens can't
    read that type."""
    if type_id in GGML_TYPES:
        return GGML_TYPES[type_id]
    name = GGML_TYPE_NAMES.get(type_id)
    what = f"ggml type {name} (id {type_id})" if name else f"unknown ggml type id {type_id}"
    readable = ", ".join(t.name for t in GGML_TYPES.values())
    raise CheckpointError(
        f"{where}: {what} is not one minilens can read. minilens reads {readable}. "
        "Convert the model to one of these, e.g. with llama.cpp's llama-quantize to Q8_0.")


def dequantize(raw: np.ndarray, type_id: int, n_elements: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """Weights of one tensor: raw [n_bytes] uint8 -> a new float32 array [n_elements], or ``out``
    (C-ordered float32 [n_elements]) filled and returned, with no float32 copy made on the way."""
    qtype = quant_type(type_id, "dequantize")
    if not (isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 1):
        raise TypeError(f"dequantize: raw must be a 1-D uint8 array, not {_describe(raw)}")
    if out is not None and not out_fits(out, n_elements):
        raise TypeError(f"dequantize: out must be a C-ordered float32 array of {n_elements} "
                        f"elements, not {_describe(out)}")
    if n_elements % qtype.block_size != 0:
        raise CheckpointError(
            f"{qtype.name}: {n_elements} weights is not a whole number of blocks of "
            f"{qtype.block_size}")
    n_blocks = n_elements // qtype.block_size
    if raw.size != n_blocks * qtype.type_size:
        raise CheckpointError(
            f"{qtype.name}: {n_elements} weights take {n_blocks} blocks of {qtype.type_size} "
            f"bytes = {n_blocks * qtype.type_size} bytes, but the tensor's data has {raw.size}")
    # np.asarray: a plain-ndarray view of an np.memmap, so that no result is typed memmap.
    blocks = np.asarray(raw).reshape(n_blocks, qtype.type_size)  # -> [n_blocks, type_size]
    dequantize_blocks = _DEQUANTIZERS[qtype.name]
    if n_elements <= CHUNK_WEIGHTS:
        return dequantize_blocks(blocks, out).reshape(n_elements)
    w = np.empty(n_elements, dtype=np.float32) if out is None else out.reshape(n_elements)
    step = CHUNK_WEIGHTS // qtype.block_size                     # blocks per chunk
    for a in range(0, n_blocks, step):
        dequantize_blocks(blocks[a:a + step], w[a * qtype.block_size:(a + step) * qtype.block_size])
    return w


# The unquantized types: each value's bits as one word, and the mask of its exponent's bits.
FLOAT_EXPONENTS = {"F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80)}


def all_finite(raw: np.ndarray, type_id: int) -> bool:
    """No NaN or inf among the weights of ``raw`` (a tensor's stored bytes), read without
    dequantizing them.

    A quantized weight is d * q, d * q + m, or (d * scale) * q - dmin * min, with q, scale and min
    small integers: it is finite when its block's float16 scales are, since such products and
    sums of finite float16s stay far inside float32's range. And an infinite or NaN scale makes
    some weight of its block infinite or NaN (0 * inf is NaN). So only the scales are read, a
    16th of a Q8_0 tensor's bytes. F32, F16 and BF16 values are read themselves. A float is
    finite unless its exponent bits are all ones; they are checked CHUNK_WEIGHTS at a time, so
    that no temporary grows with the tensor."""
    qtype = quant_type(type_id, "all_finite")
    blocks = np.asarray(raw).reshape(-1, qtype.type_size)
    if qtype.name in FLOAT_EXPONENTS:
        word, exponent = FLOAT_EXPONENTS[qtype.name]
        fields = [blocks.view(word).reshape(-1)]
    else:                                          # one column of 16-bit words for each scale
        fields, exponent = [blocks.view("<u2")[:, offset // 2] for offset in qtype.scales], 0x7C00
    return not any(((words[a:a + CHUNK_WEIGHTS] & exponent) == exponent).any()
                   for words in fields for a in range(0, len(words), CHUNK_WEIGHTS))


def out_fits(out, n_elements: int) -> bool:
    """Can ``out`` receive n_elements dequantized weights in place: a C-ordered float32 array of
    that size? (A strided one would be reshaped into a copy, and the weights lost.)"""
    return (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.size == n_elements
            and out.flags.c_contiguous)


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"a {x.ndim}-D {x.dtype} array"
    return type(x).__name__


def _into(x: np.ndarray, dtype, out: np.ndarray | None) -> np.ndarray:
    """x converted to dtype: a new array, or ``out``'s memory (dequantize's ``out=``) holding it,
    in x's shape."""
    if out is None:
        return x.astype(dtype)
    converted = out.view(dtype).reshape(x.shape)
    converted[...] = x
    return converted


def _float32(out: np.ndarray | None, *shape: int) -> np.ndarray:
    """float32 [shape] to dequantize into: dequantize's ``out``, or a new array."""
    return np.empty(shape, dtype=np.float32) if out is None else out.reshape(shape)


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The float16 field at bytes offset, offset+1 of every block, widened exactly to float32.
    Every block size and float16 offset is even, so the blocks are read as 16-bit words and the
    field is one column of them."""
    column = blocks.view("<u2")[:, offset // 2]                       # [n_blocks] 16-bit words
    return column.view(F16).astype(np.float32)[:, None]              # [n_blocks, 1]


# Shift amounts shaped [k, 1]: `x[..., None, :] >> SHIFTS` puts field k of every byte on axis -2.
NIBBLE_SHIFTS = np.array([[0], [4]], dtype=np.uint8)             # two 4-bit fields per byte
CRUMB_SHIFTS = np.array([[0], [2], [4], [6]], dtype=np.uint8)    # four 2-bit fields per byte
BIT_SHIFTS = np.arange(8, dtype=np.uint8)[:, None]               # eight 1-bit fields per byte
NIBBLE_SHIFTS.flags.writeable = CRUMB_SHIFTS.flags.writeable = BIT_SHIFTS.flags.writeable = False


# ----------------------------------------------------------------------------------------------
# Unquantized types: one weight per "block".

def dequantize_f32(blocks, out=None):            # [n_blocks, 4] uint8 -> [n_blocks, 1] float32
    return _into(blocks.view("<f4"), np.float32, out)   # a copy, never a view of the file


def dequantize_f16(blocks, out=None):            # [n_blocks, 2] uint8 -> [n_blocks, 1] float32
    return _into(blocks.view(F16), np.float32, out)


# A bfloat16 is the top half of a float32: the same sign and 8-bit exponent, 7 mantissa bits.
def dequantize_bf16(blocks, out=None):           # [n_blocks, 2] uint8 -> [n_blocks, 1] float32
    bits = _into(blocks.view("<u2"), np.uint32, out)   # the 16 bits, in the low half of 32
    bits <<= 16                                  # moved to the top half; the low half is zero
    return bits.view(np.float32)


# ----------------------------------------------------------------------------------------------
# Blocks of 32 weights, with one or two float16 scales per block.
#
# Each dequantizer casts q to float32 first (into dequantize's ``out``, when it has one) and then
# scales it in place: the same numbers as d * q, for which numpy casts q in small buffers, one
# block row at a time, and runs slower.

# Q4_0 block, 18 bytes, 32 weights: d (f16) | qs[16]: weight i in the low nibble of qs[i],
# weight i+16 in the high nibble;  w = d * (q - 8), so q = 0..15 stands for -8..7 steps of d.
def dequantize_q4_0(blocks, out=None):           # [n_blocks, 18] uint8 -> [n_blocks, 32] float32
    d = _f16(blocks, 0)                          # [n_blocks, 1]
    w = _nibbles(blocks[:, 2:18], _float32(out, blocks.shape[0], 32))   # [n_blocks, 32] 0..15
    w -= 8
    w *= d
    return w


# Q4_1 block, 20 bytes, 32 weights: d (f16) | m (f16) | qs[16]: weight i in the low nibble of
# qs[i], weight i+16 in the high nibble;  w = d * q + m, where m is the block's smallest weight.
def dequantize_q4_1(blocks, out=None):           # [n_blocks, 20] uint8 -> [n_blocks, 32] float32
    d, m = _f16(blocks, 0), _f16(blocks, 2)      # [n_blocks, 1] each
    w = _nibbles(blocks[:, 4:20], _float32(out, blocks.shape[0], 32))   # [n_blocks, 32] 0..15
    w *= d
    w += m
    return w


# Q5_0 block, 22 bytes, 32 weights: d (f16) | qh (u32) | qs[16]: the low 4 bits of weights
# i and i+16 as in Q4_0, the 5th bit of weight i is bit i of qh;  w = d * (q - 16).
def dequantize_q5_0(blocks, out=None):           # [n_blocks, 22] uint8 -> [n_blocks, 32] float32
    d = _f16(blocks, 0)                          # [n_blocks, 1]
    q = _nibbles(blocks[:, 6:22]) | (_bits(blocks[:, 2:6]) << 4)   # [n_blocks, 32] uint8, 0..31
    w = _into(q.view(np.int8) - np.int8(16), np.float32, out)
    w *= d
    return w


# Q5_1 block, 24 bytes, 32 weights: d (f16) | m (f16) | qh (u32) | qs[16], bits as in Q5_0;
# w = d * q + m.
def dequantize_q5_1(blocks, out=None):           # [n_blocks, 24] uint8 -> [n_blocks, 32] float32
    d, m = _f16(blocks, 0), _f16(blocks, 2)      # [n_blocks, 1] each
    q = _nibbles(blocks[:, 8:24]) | (_bits(blocks[:, 4:8]) << 4)   # [n_blocks, 32] uint8, 0..31
    w = _into(q, np.float32, out)
    w *= d
    w += m
    return w


# Q8_0 block, 34 bytes, 32 weights: d (f16) | qs[32] (int8);  w = d * q.
def dequantize_q8_0(blocks, out=None):           # [n_blocks, 34] uint8 -> [n_blocks, 32] float32
    d = _f16(blocks, 0)                          # [n_blocks, 1]
    q = blocks[:, 2:34].view(np.int8)            # [n_blocks, 32] int8, -128..127
    w = _into(q, np.float32, out)
    w *= d
    return w


def _nibbles(qs, out=None):                      # [n_blocks, 16] uint8 -> [n_blocks, 32] uint8
    """Weights 0..15 in the low nibbles of qs[0..15], weights 16..31 in the high nibbles; written
    into ``out`` ([n_blocks, 32] float32) when given, each value cast as it is unpacked (no uint8
    copy, and no pass to cast it)."""
    q = np.empty((qs.shape[0], 32), dtype=np.uint8) if out is None else out
    np.bitwise_and(qs, 0x0F, out=q[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=q[:, 16:], casting="unsafe")
    return q


def _bits(qh):                                   # [n_blocks, 4] uint8 -> [n_blocks, 32] 0 or 1
    """Bit i of the little-endian 32-bit word qh, i = 0..31: bit i % 8 of byte i // 8."""
    return np.unpackbits(qh, axis=1, bitorder="little")


# ----------------------------------------------------------------------------------------------
# K-quants: super-blocks of 256 weights in sub-blocks of 16 or 32. Each sub-block has a small
# integer scale (and some a min), and the block's float16 d (and dmin) scale those in turn: a
# sub-block's step is d * scale, computed first and then multiplied by q, as ggml does.

# Q2_K block, 84 bytes, 256 weights in 16 sub-blocks of 16:
#   scales[16] | qs[64] | d (f16) | dmin (f16)
#   scales[s]: the low nibble is sub-block s's scale, the high nibble its min (both 0..15).
#   qs: two halves of 32 bytes. Weight 128*h + 32*k + j is bits 2k, 2k+1 of qs[32*h + j].
#   w = (d * scale) * q - (dmin * min),  q = 0..3.
def dequantize_q2_k(blocks, out=None):           # [n_blocks, 84] uint8 -> [n_blocks, 256] float32
    n_blocks = blocks.shape[0]
    scales = blocks[:, 0:16]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)                # [n_blocks, 1] each
    step = d * (scales & 0x0F)                                   # [n_blocks, 16] float32
    low = dmin * (scales >> 4)                                   # [n_blocks, 16] float32
    qs = blocks[:, 16:80].reshape(n_blocks, 2, 1, 32)            # [n_blocks, h, 1, j]
    q = (qs >> CRUMB_SHIFTS) & 0x03                              # [n_blocks, h, k, j] 0..3
    w = _into(q.reshape(n_blocks, 16, 16), np.float32, out)      # [n_blocks, sub-block, 16]
    w *= step[:, :, None]
    w -= low[:, :, None]
    return w.reshape(n_blocks, 256)


# Q3_K block, 110 bytes, 256 weights in 16 sub-blocks of 16:
#   hmask[32] | qs[64] | scales[12] | d (f16)
#   qs: the low 2 bits of each weight, laid out as in Q2_K.
#   hmask: the high bit of weight 32*k + j is bit k of hmask[j]. When it is *clear*, q loses 4:
#     q = low2 - 4 * (1 - bit), so q runs over -4..3.
#   scales: 16 6-bit numbers, scale + 32 (0..63), so scale = stored - 32 runs over -32..31.
#     The low 4 bits of number s are the low nibble of scales[s] for s < 8 and the high nibble
#     of scales[s - 8] for s >= 8; its top 2 bits are bits 2*(s // 4), 2*(s // 4) + 1 of
#     scales[8 + s % 4].
#   w = (d * scale) * q.
def dequantize_q3_k(blocks, out=None):           # [n_blocks, 110] uint8 -> [n_blocks, 256] float32
    n_blocks = blocks.shape[0]
    hmask, packed = blocks[:, 0:32], blocks[:, 96:108]
    d = _f16(blocks, 108)                                                  # [n_blocks, 1]
    low4 = np.concatenate([packed[:, 0:8] & 0x0F, packed[:, 0:8] >> 4], axis=1)  # [n_blocks, s]
    top2 = (packed[:, None, 8:12] >> CRUMB_SHIFTS) & 0x03       # [n_blocks, s // 4, s % 4]
    stored = low4 | (top2.reshape(n_blocks, 16) << 4)            # [n_blocks, 16] 0..63
    scale = stored.view(np.int8) - np.int8(32)                   # -32..31
    step = d * scale                                             # [n_blocks, 16] float32
    qs = blocks[:, 32:96].reshape(n_blocks, 2, 1, 32)            # [n_blocks, h, 1, j]
    low2 = (qs >> CRUMB_SHIFTS) & 0x03                           # [n_blocks, h, k, j] 0..3
    high = (hmask[:, None, :] >> BIT_SHIFTS) & 0x01              # [n_blocks, k, j]: bit k
    minus_4 = (high.reshape(n_blocks, 256) ^ 1) << 2             # 4 where the bit is clear
    q = low2.reshape(n_blocks, 256).view(np.int8) - minus_4.view(np.int8)   # -4..3
    w = _into(q.reshape(n_blocks, 16, 16), np.float32, out)      # [n_blocks, sub-block, 16]
    w *= step[:, :, None]
    return w.reshape(n_blocks, 256)


# The 6-bit scales and mins of Q4_K and Q5_K, 8 of each in 12 bytes. For s < 4:
#   byte s:     scale s in its low 6 bits; its top 2 bits are bits 4, 5 of scale s+4
#   byte 4+s:   min s in its low 6 bits;   its top 2 bits are bits 4, 5 of min s+4
#   byte 8+s:   its low nibble is bits 0-3 of scale s+4, its high nibble bits 0-3 of min s+4
def _scales_and_mins_k4(packed):         # [n_blocks, 12] uint8 -> 2 x [n_blocks, 8] uint8 0..63
    s_lo, m_lo, mixed = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = np.concatenate([s_lo & 0x3F, (mixed & 0x0F) | ((s_lo >> 6) << 4)], axis=1)
    min_ = np.concatenate([m_lo & 0x3F, (mixed >> 4) | ((m_lo >> 6) << 4)], axis=1)
    return scale, min_


# Q4_K block, 144 bytes, 256 weights in 8 sub-blocks of 32:
#   d (f16) | dmin (f16) | scales[12]: 8 6-bit scales and 8 6-bit mins (above) | qs[128]
#   qs: four chunks of 32 bytes; chunk c holds sub-block 2c in its low nibbles and 2c+1 in its
#   high nibbles: weight 64*c + j is the low nibble of qs[32*c + j], weight 64*c + 32 + j the
#   high one.  w = (d * scale) * q - (dmin * min),  q = 0..15.
def dequantize_q4_k(blocks, out=None):           # [n_blocks, 144] uint8 -> [n_blocks, 256] float32
    n_blocks = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)                   # [n_blocks, 1] each
    scale, min_ = _scales_and_mins_k4(blocks[:, 4:16])           # [n_blocks, 8] each
    step, low = d * scale, dmin * min_                           # [n_blocks, 8] float32
    q = _k_nibbles(blocks[:, 16:144])                            # [n_blocks, 8, 32] 0..15
    w = _into(q, np.float32, out)
    w *= step[:, :, None]
    w -= low[:, :, None]
    return w.reshape(n_blocks, 256)


# Q5_K block, 176 bytes, 256 weights in 8 sub-blocks of 32:
#   d (f16) | dmin (f16) | scales[12] (as Q4_K) | qh[32] | qs[128] (the low 4 bits, as Q4_K)
#   qh: the 5th bit of weight 32*s + j is bit s of qh[j].
#   w = (d * scale) * q - (dmin * min),  q = 0..31.
def dequantize_q5_k(blocks, out=None):           # [n_blocks, 176] uint8 -> [n_blocks, 256] float32
    n_blocks = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)                   # [n_blocks, 1] each
    scale, min_ = _scales_and_mins_k4(blocks[:, 4:16])           # [n_blocks, 8] each
    step, low = d * scale, dmin * min_                           # [n_blocks, 8] float32
    high = (blocks[:, None, 16:48] >> BIT_SHIFTS) & 0x01         # [n_blocks, s, j]: bit s
    q = _k_nibbles(blocks[:, 48:176]) | (high << 4)              # [n_blocks, 8, 32] 0..31
    w = _into(q, np.float32, out)
    w *= step[:, :, None]
    w -= low[:, :, None]
    return w.reshape(n_blocks, 256)


# Q6_K block, 210 bytes, 256 weights in 16 sub-blocks of 16:
#   ql[128] | qh[64] | scales[16] (int8) | d (f16)
#   Two halves of 128 weights; half h uses ql[64h : 64h+64] and qh[32h : 32h+32].
#   The low 4 bits: weight 128*h + j (j < 64) in the low nibble of ql[64h + j], weight
#   128*h + 64 + j in the high nibble. The top 2 bits: weight 128*h + 32*k + j (j < 32) at
#   bits 2k, 2k+1 of qh[32h + j].  w = (d * scale) * (q - 32),  q = 0..63.
def dequantize_q6_k(blocks, out=None):           # [n_blocks, 210] uint8 -> [n_blocks, 256] float32
    n_blocks = blocks.shape[0]
    d = _f16(blocks, 208)                                        # [n_blocks, 1]
    step = d * blocks[:, 192:208].view(np.int8)                  # [n_blocks, 16] float32
    ql = blocks[:, 0:128].reshape(n_blocks, 2, 1, 64)            # [n_blocks, h, 1, j]
    low4 = (ql >> NIBBLE_SHIFTS) & 0x0F                          # [n_blocks, h, nibble, j]
    qh = blocks[:, 128:192].reshape(n_blocks, 2, 1, 32)          # [n_blocks, h, 1, j]
    top2 = (qh >> CRUMB_SHIFTS) & 0x03                           # [n_blocks, h, k, j]
    q = low4.reshape(n_blocks, 256) | (top2.reshape(n_blocks, 256) << 4)   # 0..63
    w = _into((q.view(np.int8) - np.int8(32)).reshape(n_blocks, 16, 16), np.float32, out)
    w *= step[:, :, None]
    return w.reshape(n_blocks, 256)


def _k_nibbles(qs):                              # [n_blocks, 128] uint8 -> [n_blocks, 8, 32]
    """Sub-block 2c in the low nibbles of the c-th 32 bytes, sub-block 2c+1 in the high ones."""
    chunks = qs.reshape(qs.shape[0], 4, 1, 32)                   # [n_blocks, c, 1, j]
    return ((chunks >> NIBBLE_SHIFTS) & 0x0F).reshape(qs.shape[0], 8, 32)


_DEQUANTIZERS = {
    "F32": dequantize_f32, "F16": dequantize_f16, "BF16": dequantize_bf16,
    "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q5_0": dequantize_q5_0,
    "Q5_1": dequantize_q5_1, "Q8_0": dequantize_q8_0,
    "Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k,
}
