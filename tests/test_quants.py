"""minilens.loading.quants against gguf-py (llama.cpp's own Python reader), bit for bit.

Every comparison is of the float32 *bits*, not of values with a tolerance: both sides do the
same float32 operations in the same order, so any difference at all is a wrong formula (a wrong
nibble, bit, offset, scale or order of operations), never rounding. Comparing bits also tells
0.0 from -0.0.

gguf-py is the reference, so the tests that use it skip on a laptop without it, and fail when
MINILENS_REQUIRE_TORCH=1 (CI), like tests/_torch.py. The hand-worked blocks and the error tests
need only numpy.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from _real_model import smollm2_path
from minilens.errors import CheckpointError
from minilens.loading import quants

REQUIRE_REFERENCE = bool(os.environ.get("MINILENS_REQUIRE_TORCH"))


def import_gguf():
    """gguf-py, or skip the calling test when it is absent outside CI."""
    if REQUIRE_REFERENCE:
        import gguf  # an ImportError here fails the run, as it must in CI
        return gguf
    return pytest.importorskip("gguf")


# Why a mismatch happens, per type: the likely wrong formula.
HINTS = {
    "F32": "F32: read each 4 bytes as a little-endian float32 (and return a copy).",
    "F16": "F16: widen each little-endian float16 to float32.",
    "BF16": "BF16: a bfloat16 is the top 16 bits of a float32: is it shifted left by 16?",
    "Q4_0": "Q4_0: is the low nibble of qs[i] weight i and the high nibble weight i+16, "
            "and is w = d * (q - 8)?",
    "Q4_1": "Q4_1: is the low nibble of qs[i] weight i and the high nibble weight i+16, "
            "and is w = d * q + m, multiplied first?",
    "Q5_0": "Q5_0: is the 5th bit of weight i bit i of the little-endian u32 qh (bytes 2-5), "
            "and is w = d * (q - 16)?",
    "Q5_1": "Q5_1: is the 5th bit of weight i bit i of qh (bytes 4-7), and is w = d * q + m?",
    "Q8_0": "Q8_0: are the 32 quants *signed* int8, and is w = d * q?",
    "Q2_K": "Q2_K: is the low nibble of scales[s] the scale and the high nibble the min? Is "
            "weight 128h + 32k + j at bits 2k of qs[32h + j]? Is w = (d * scale) * q - dmin * min?",
    "Q3_K": "Q3_K: is 4 subtracted when the hmask bit is *clear*? Are the 6-bit scales "
            "unpacked (low 4 bits, then 2 from bytes 8-11) and offset by 32?",
    "Q4_K": "Q4_K: are the 6-bit scales and mins unpacked right (the top 2 bits of scales/mins "
            "4-7 are bits 6-7 of bytes 0-7)? Is chunk c's low nibble sub-block 2c? "
            "Is w = (d * scale) * q - (dmin * min)?",
    "Q5_K": "Q5_K: is the 5th bit of weight 32s + j bit s of qh[j]? Scales as in Q4_K?",
    "Q6_K": "Q6_K: weight 128h + 64n + j has its low 4 bits in nibble n of ql[64h + j] and "
            "weight 128h + 32k + j its top 2 at bits 2k of qh[32h + j]; w = (d * scale) * "
            "(q - 32)?",
}

# Where each block keeps its float16 scales (byte offsets). Random bytes there can be NaN or
# inf, which has no meaningful dequantized value; the tests write finite float16s instead.
F16_FIELDS = {"F16": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}

TYPE_IDS = {t.name: type_id for type_id, t in quants.GGML_TYPES.items()}


def finite_f16_bits(rng, shape) -> np.ndarray:
    """Random float16 bit patterns with NaN and inf made finite (zeros, subnormals and +-65504
    included)."""
    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    not_finite = (bits & 0x7C00) == 0x7C00        # exponent all ones
    bits[not_finite] &= np.uint16(~0x4000 & 0xFFFF)
    return bits


def random_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """[n_blocks, type_size] uint8: random bytes, with finite float16 scales (or F32 values)."""
    rng = np.random.default_rng(seed)
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    blocks = rng.integers(0, 256, size=(n_blocks, t.type_size), dtype=np.uint8)
    for offset in F16_FIELDS.get(name, []):
        blocks[:, offset:offset + 2] = finite_f16_bits(rng, (n_blocks, 1)).view(np.uint8)
    if name == "F32":   # finite float32s; NaN bit patterns are BF16's test
        blocks = rng.standard_normal((n_blocks, 1)).astype("<f4").view(np.uint8)
    return blocks


def reference(gguf, blocks: np.ndarray, type_id: int) -> np.ndarray:
    """gguf-py's dequantization of [n_blocks, type_size] bytes, flattened to float32 [n]."""
    return np.asarray(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(type_id)),
                      dtype=np.float32).reshape(-1)


def first_difference(ours: np.ndarray, ref: np.ndarray, block_size: int) -> str:
    i = int(np.flatnonzero(ours.view(np.uint32) != ref.view(np.uint32))[0])
    return (f"first difference at block {i // block_size}, weight {i % block_size}: "
            f"minilens {ours[i]!r}, gguf {ref[i]!r}")


def assert_same_bits(ours, ref, name, block_size, context=""):
    assert ours.dtype == np.float32 and ours.shape == ref.shape, \
        f"{name}: expected float32 {ref.shape}, got {ours.dtype} {ours.shape}"
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), \
        f"{HINTS[name]} {context}{first_difference(ours, ref, block_size)}"


# ---------------------------------------------------------------------------------------------
# Against gguf-py, on random blocks

@pytest.mark.parametrize("name", list(HINTS))
def test_random_blocks_match_gguf_bit_for_bit(name):
    gguf = import_gguf()
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    n_blocks = 3000 if t.block_size == 1 else 400
    blocks = random_blocks(name, n_blocks, seed=TYPE_IDS[name])
    ours = quants.dequantize(blocks.reshape(-1), TYPE_IDS[name], n_blocks * t.block_size)
    assert_same_bits(ours, reference(gguf, blocks, TYPE_IDS[name]), name, t.block_size)


@pytest.mark.parametrize("name", list(HINTS))
def test_a_tensor_is_dequantized_in_chunks_exactly(name, monkeypatch):
    """dequantize works through a large tensor CHUNK_WEIGHTS at a time: with chunks of 512
    weights and a tensor that ends in a partial chunk, every weight is still gguf's, written into
    a new array or into out."""
    gguf = import_gguf()
    monkeypatch.setattr(quants, "CHUNK_WEIGHTS", 512)
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    n_blocks = 3001 if t.block_size == 1 else 403
    blocks = random_blocks(name, n_blocks, seed=TYPE_IDS[name] + 7)
    ref = reference(gguf, blocks, TYPE_IDS[name])
    n = n_blocks * t.block_size
    assert_same_bits(quants.dequantize(blocks.reshape(-1), TYPE_IDS[name], n), ref, name,
                     t.block_size, "(in chunks) ")
    out = np.full(n, np.nan, dtype=np.float32)
    got = quants.dequantize(blocks.reshape(-1), TYPE_IDS[name], n, out=out)
    assert np.shares_memory(got, out), f"{name}: the result must be out"
    assert_same_bits(out, ref, name, t.block_size, "(in chunks, into out) ")


def test_bf16_keeps_every_bit_pattern():
    """All 65536 bfloat16s, NaNs and infinities included, become the float32 with those top
    bits and zero low bits."""
    gguf = import_gguf()
    raw = np.arange(1 << 16, dtype="<u2").view(np.uint8)
    ours = quants.dequantize(raw, TYPE_IDS["BF16"], 1 << 16)
    assert_same_bits(ours, reference(gguf, raw.reshape(-1, 2), TYPE_IDS["BF16"]), "BF16", 1)
    assert np.array_equal(ours.view(np.uint32) >> 16, np.arange(1 << 16)), HINTS["BF16"]


@st.composite
def blocks_of_a_type(draw):
    """(type name, [n_blocks, type_size] uint8): any bytes, with finite float16 scales."""
    name = draw(st.sampled_from([n for n in HINTS if n != "F32"]))
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    n_blocks = draw(st.integers(1, 4))
    data = draw(st.binary(min_size=n_blocks * t.type_size, max_size=n_blocks * t.type_size))
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(n_blocks, t.type_size).copy()
    f16 = st.floats(width=16, allow_nan=False, allow_infinity=False)
    for b in range(n_blocks):
        for offset in F16_FIELDS.get(name, []):
            blocks[b, offset:offset + 2] = np.array([draw(f16)], dtype="<f2").view(np.uint8)
    return name, blocks


@settings(max_examples=300, deadline=None)
@given(blocks_of_a_type())
def test_any_block_matches_gguf(named_blocks):
    gguf = import_gguf()
    name, blocks = named_blocks
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    ours = quants.dequantize(blocks.reshape(-1), TYPE_IDS[name], blocks.shape[0] * t.block_size)
    ref = reference(gguf, blocks, TYPE_IDS[name])
    assert_same_bits(ours, ref, name, t.block_size, context=f"blocks {blocks.tobytes().hex()}: ")


@st.composite
def blocks_with_any_scales(draw):
    """(type name, [n_blocks, type_size] uint8): any bytes, and often one float16 scale (or, for
    F32, F16 and BF16, one value) made infinite or NaN."""
    name = draw(st.sampled_from(list(HINTS)))
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    n_blocks = draw(st.integers(1, 4))
    data = draw(st.binary(min_size=n_blocks * t.type_size, max_size=n_blocks * t.type_size))
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(n_blocks, t.type_size).copy()
    if draw(st.booleans()):
        b = draw(st.integers(0, n_blocks - 1))
        bad = draw(st.sampled_from([np.inf, -np.inf, np.nan]))
        if name in ("F32", "F16", "BF16"):
            words = {"F32": "<f4", "F16": "<f2", "BF16": "<f4"}[name]
            value = np.array([bad], words).view(np.uint8)
            blocks[b] = value[2:] if name == "BF16" else value      # BF16: float32's top half
        else:
            offset = draw(st.sampled_from(F16_FIELDS[name]))
            blocks[b, offset:offset + 2] = np.array([bad], "<f2").view(np.uint8)
    return name, blocks


@settings(max_examples=400, deadline=None)
@given(blocks_with_any_scales())
def test_all_finite_from_the_stored_bytes_is_gguf_dequantized(named_blocks):
    """quants.all_finite reads only the scales of quantized blocks (the values of F32, F16 and
    BF16), and says exactly whether gguf's dequantized weights are all finite."""
    gguf = import_gguf()
    name, blocks = named_blocks
    with np.errstate(all="ignore"):
        finite = bool(np.isfinite(reference(gguf, blocks, TYPE_IDS[name])).all())
    assert quants.all_finite(blocks.reshape(-1), TYPE_IDS[name]) == finite, (
        f"{name}: all_finite should be {finite} for blocks {blocks.tobytes().hex()}")


@pytest.mark.parametrize("name, finite, not_finite", [
    ("F32", np.array([3.4e38, -1e-45], "<f4"), np.array([np.inf], "<f4")),
    ("F16", np.array([65504, -6e-8], "<f2"), np.array([-np.inf], "<f2")),
    ("BF16", np.array([0x7F7F, 0xFF00], "<u2"), np.array([0x7F80], "<u2")),   # 3.39e38, -1.7e38
    ("Q8_0", np.array([65504], "<f2"), np.array([np.nan], "<f2")),
])
def test_all_finite_at_the_edges_of_the_exponent(name, finite, not_finite):
    """The largest finite numbers of each storage pass, infinity and NaN do not: the exponent
    mask is the type's own (BF16's is float32's, not float16's)."""
    def stored(values):
        if name != "Q8_0":
            return values.view(np.uint8)
        blocks = np.zeros((len(values), 34), np.uint8)
        blocks[:, 0:2] = values.view(np.uint8).reshape(-1, 2)
        return blocks.reshape(-1)
    assert quants.all_finite(stored(finite), TYPE_IDS[name])
    assert not quants.all_finite(stored(np.concatenate([finite, not_finite])), TYPE_IDS[name])


@pytest.mark.parametrize("name", ["F32", "BF16", "Q8_0", "Q4_K"])
def test_all_finite_looks_at_every_chunk(name, monkeypatch):
    """A NaN scale (or value) in the last, partial chunk is found: all_finite reads the scales
    CHUNK_WEIGHTS at a time."""
    monkeypatch.setattr(quants, "CHUNK_WEIGHTS", 64)
    blocks = random_blocks(name, 1001, seed=3)
    if name == "BF16":   # finite ones: the top halves of float32s
        top = np.random.default_rng(3).standard_normal(1001).astype("<f4").view("<u4") >> 16
        blocks = top.astype("<u2").view(np.uint8).reshape(1001, 2)
    assert quants.all_finite(blocks.reshape(-1), TYPE_IDS[name])
    offset = F16_FIELDS.get(name, [0])[-1]
    blocks[-1, offset:offset + 2] = np.array([np.nan], "<f2").view(np.uint8)
    if name in ("F32", "BF16"):
        blocks[-1, -2:] = np.array([0x7FC0], "<u2").view(np.uint8)   # the top 16 bits of a NaN
    assert not quants.all_finite(blocks.reshape(-1), TYPE_IDS[name]), (
        f"{name}: a NaN in the last block was missed")


def test_tables_match_ggml():
    """The id -> name table and every supported block layout are ggml's (gguf-py's constants)."""
    gguf = import_gguf()
    names = {t.value: t.name for t in gguf.GGMLQuantizationType}
    assert quants.GGML_TYPE_NAMES == names, \
        "GGML_TYPE_NAMES should be a copy of gguf.GGMLQuantizationType (did ggml add a type?)"
    for type_id, t in quants.GGML_TYPES.items():
        expected = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        assert (t.name, (t.block_size, t.type_size)) == (names[type_id], expected), \
            f"{t.name}: block_size, type_size should be {expected}"


# ---------------------------------------------------------------------------------------------
# Worked by hand (numpy only): the formulas in the module's comments, on one block each

def f16_bytes(x: float) -> list[int]:
    return list(np.array([x], dtype="<f2").view(np.uint8))


def test_q4_1_by_hand():
    # d = 0.5, m = -1; qs[0] = 0x21: weight 0 is q=1 (low nibble), weight 16 is q=2 (high).
    block = np.array(f16_bytes(0.5) + f16_bytes(-1.0) + [0x21] + [0] * 15, dtype=np.uint8)
    w = quants.dequantize(block, TYPE_IDS["Q4_1"], 32)
    assert (w[0], w[16]) == (0.5 * 1 - 1, 0.5 * 2 - 1), HINTS["Q4_1"]
    assert np.all(np.delete(w, [0, 16]) == -1.0), "Q4_1: a zero nibble is the block's min m"


def test_q4_0_by_hand():
    # d = 2; qs[3] = 0xF0: weight 3 is q=0 -> -8 steps, weight 19 is q=15 -> +7 steps.
    block = np.array(f16_bytes(2.0) + [0x88] * 3 + [0xF0] + [0x88] * 12, dtype=np.uint8)
    w = quants.dequantize(block, TYPE_IDS["Q4_0"], 32)
    assert (w[3], w[19]) == (2.0 * -8, 2.0 * 7), HINTS["Q4_0"]
    assert np.all(np.delete(w, [3, 19]) == 0.0), "Q4_0: q=8 is zero"


def test_q8_0_by_hand():
    block = np.array(f16_bytes(0.25) + list(range(-16, 16)), dtype=np.int8).view(np.uint8)
    w = quants.dequantize(block, TYPE_IDS["Q8_0"], 32)
    assert np.array_equal(w, 0.25 * np.arange(-16, 16, dtype=np.float32)), HINTS["Q8_0"]


def test_q5_0_fifth_bit_by_hand():
    # Only bit 17 of qh set: weight 17 is q = 16 + 0 -> 0 steps; every other is q=0 -> -16.
    qh = (1 << 17).to_bytes(4, "little")
    block = np.array(f16_bytes(1.0) + list(qh) + [0] * 16, dtype=np.uint8)
    w = quants.dequantize(block, TYPE_IDS["Q5_0"], 32)
    assert w[17] == 0.0 and np.all(np.delete(w, 17) == -16.0), HINTS["Q5_0"]


def test_q4_k_scales_by_hand():
    # Sub-block 5 (weights 160..191) gets scale 0b10_0011 = 35 and min 0b01_0100 = 20: its low
    # 4 bits sit in byte 8 + 1, its top 2 bits in bits 6-7 of byte 1 (scale) and 5 (min).
    d, dmin = 0.5, 0.25
    packed = [0] * 12
    packed[1] = 0b10 << 6
    packed[5] = 0b01 << 6
    packed[9] = (0b0100 << 4) | 0b0011
    qs = [0] * 128
    qs[64 + 7] = 0x30          # chunk 2, byte 7: sub-block 5 weight 7 has q = 3 (high nibble)
    block = np.array(f16_bytes(d) + f16_bytes(dmin) + packed + qs, dtype=np.uint8)
    w = quants.dequantize(block, TYPE_IDS["Q4_K"], 256)
    assert w[160 + 7] == np.float32(d * 35) * 3 - np.float32(dmin * 20), HINTS["Q4_K"]
    assert np.all(w[160:192][np.arange(32) != 7] == -dmin * 20), HINTS["Q4_K"]
    assert np.all(np.delete(w, np.arange(160, 192)) == 0.0), HINTS["Q4_K"]


# ---------------------------------------------------------------------------------------------
# The API's promises

@pytest.mark.parametrize("name", list(HINTS))
def test_result_is_a_new_float32_array(name, tmp_path):
    """From a read-only np.memmap of a file, as the GGUF loader calls it: a new, writable,
    plain ndarray, never a view of the file."""
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    path = tmp_path / "tensor.bin"
    path.write_bytes(b"\x00" * 8 + random_blocks(name, 3, seed=1).tobytes())
    raw = np.memmap(path, dtype=np.uint8, mode="r")[8:]
    w = quants.dequantize(raw, TYPE_IDS[name], 3 * t.block_size)
    assert type(w) is np.ndarray and w.dtype == np.float32 and w.shape == (3 * t.block_size,)
    assert not np.shares_memory(w, raw), f"{name}: the result must not be a view of the file"
    assert w.flags.writeable and w.flags.c_contiguous


@pytest.mark.parametrize("name", list(HINTS))
def test_out_receives_the_same_bits(name):
    """dequantize(..., out=buf) fills buf itself and returns it, bit for bit the numbers of a new
    array: GGUFFile.dequantize writes each piece of a large tensor into its result so, with no
    float32 copy on the way. An unfit out is refused."""
    t = quants.GGML_TYPES[TYPE_IDS[name]]
    raw, n = random_blocks(name, 40, seed=2).reshape(-1), 40 * t.block_size
    buf = np.full(n, np.nan, dtype=np.float32)
    got = quants.dequantize(raw, TYPE_IDS[name], n, out=buf)
    assert got.shape == (n,) and np.shares_memory(got, buf), f"{name}: the result must be out"
    assert_same_bits(buf, quants.dequantize(raw, TYPE_IDS[name], n), name, t.block_size,
                     "(written into out) ")
    for unfit in (np.empty(n - 1, np.float32), np.empty(n, np.float64),
                  np.empty((n, 2), np.float32)[:, 0]):
        with pytest.raises(TypeError, match="C-ordered float32"):
            quants.dequantize(raw, TYPE_IDS[name], n, out=unfit)


def test_the_real_models_tensors_match_gguf():
    """Every tensor of SmolLM2-135M-Instruct Q4_1 (Q4_1, Q8_0 and F32), read by gguf's reader."""
    from minilens.loading.gguf_file import GGUFFile
    gguf = import_gguf()
    reader = gguf.GGUFReader(smollm2_path())
    ours_file = GGUFFile(smollm2_path())          # what ml.load reads through (in pieces)
    seen, wrong = set(), []                       # wrong: (tensor name, type name, difference)
    for tensor in reader.tensors:
        type_id, name = int(tensor.tensor_type), tensor.tensor_type.name
        raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
        ref = reference(gguf, np.asarray(tensor.data), type_id)
        for how, ours in (("quants.py", quants.dequantize(raw, type_id, int(tensor.n_elements))),
                          ("GGUFFile", ours_file.dequantize(tensor.name).reshape(-1))):
            if not np.array_equal(ours.view(np.uint32), ref.view(np.uint32)):
                block_size = quants.GGML_TYPES[type_id].block_size
                wrong.append((tensor.name, name, how, first_difference(ours, ref, block_size)))
        seen.add(name)
    hints = " ".join(HINTS[name] for name in sorted({name for _, name, _, _ in wrong}))
    assert not wrong, f"{len(wrong)} tensors differ from gguf, e.g. {wrong[:3]}. {hints}"
    assert seen == {"Q4_1", "Q8_0", "F32"}, f"expected Q4_1, Q8_0 and F32 tensors, saw {seen}"


# ---------------------------------------------------------------------------------------------
# Errors

@pytest.mark.parametrize("type_id, name", [(16, "IQ2_XXS"), (20, "IQ4_NL"), (24, "I8"),
                                           (34, "TQ1_0"), (39, "MXFP4"), (15, "Q8_K")])
def test_an_unsupported_type_is_refused_by_name(type_id, name):
    where = "model.gguf: tensor 'blk.0.attn_q.weight'"
    with pytest.raises(CheckpointError) as error:
        quants.quant_type(type_id, where)
    message = str(error.value)
    assert where in message and f"{name} (id {type_id})" in message, message
    assert "Q4_K" in message and "BF16" in message, f"should list what minilens reads: {message}"
    with pytest.raises(CheckpointError, match=name):
        quants.dequantize(np.zeros(64, np.uint8), type_id, 32)


def test_an_id_ggml_does_not_know_is_refused():
    with pytest.raises(CheckpointError, match="unknown ggml type id 31"):
        quants.quant_type(31, "x.gguf")


def test_every_supported_type_is_found():
    for type_id, t in quants.GGML_TYPES.items():
        assert quants.quant_type(type_id, "x.gguf") is t


@pytest.mark.parametrize("n_bytes", [0, 39, 41, 60])
def test_a_buffer_of_the_wrong_length_is_refused(n_bytes):
    # Two Q4_1 blocks (64 weights) take 40 bytes.
    with pytest.raises(CheckpointError, match="2 blocks of 20 bytes = 40 bytes") as error:
        quants.dequantize(np.zeros(n_bytes, np.uint8), TYPE_IDS["Q4_1"], 64)
    assert f"has {n_bytes}" in str(error.value)


def test_a_partial_block_is_refused():
    with pytest.raises(CheckpointError, match="not a whole number of blocks of 256"):
        quants.dequantize(np.zeros(144, np.uint8), TYPE_IDS["Q4_K"], 250)


def test_raw_must_be_bytes():
    with pytest.raises(TypeError, match="1-D uint8"):
        quants.dequantize(np.zeros(8, np.float32), TYPE_IDS["F32"], 8)


def test_the_file_reader_splits_tensors_among_workers_exactly(monkeypatch):
    """GGUFFile.dequantize cuts a tensor into pieces, which the workers (fast/workers.py)
    dequantize side by side into the one result: the same bits as one call over the whole tensor.
    A piece's bytes and weights counted from different blocks, or a worker skipping its last
    piece, shows here (Q8_0 embedding, Q4_1 matrices; 3 workers, pieces of 8192 weights)."""
    import minilens.loading.gguf_file as gguf_file
    f = gguf_file.GGUFFile(smollm2_path())
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight"]
    whole = {n: quants.dequantize(f.raw(n), f.tensors[n].type_id, int(np.prod(f.tensors[n].shape)))
             for n in names}
    monkeypatch.setattr(gguf_file, "DEQUANTIZE_PIECE", 1 << 13)
    monkeypatch.setattr(gguf_file, "PARALLEL_WEIGHTS", 1)
    monkeypatch.setattr(gguf_file.workers, "n_workers", lambda: 3)
    for n in names:
        got = f.dequantize(n)
        assert np.array_equal(got.reshape(-1).view(np.uint32), whole[n].view(np.uint32)), (
            f"{n}: dequantized in pieces by 3 workers, it differs from one call")


def test_the_file_reader_fills_a_given_output():
    """GGUFFile.dequantize(name, out=...) writes into out and returns it in the tensor's shape
    (the GGUF checkpoint puts W_gate and W_in into one buffer so); an unfit out is refused."""
    import minilens.loading.gguf_file as gguf_file
    f = gguf_file.GGUFFile(smollm2_path())
    for name in ("blk.0.ffn_gate.weight", "blk.0.attn_norm.weight"):       # Q4_1, F32
        t = f.tensors[name]
        out = np.full(int(np.prod(t.shape)), np.nan, dtype=np.float32)
        got = f.dequantize(name, out=out)
        assert got.shape == t.shape and np.shares_memory(got, out), (
            f"{name}: the result must be out, in the tensor's shape")
        assert np.array_equal(out.view(np.uint32), f.dequantize(name).reshape(-1).view(np.uint32))
    with pytest.raises(ValueError, match="C-ordered float32"):
        f.dequantize("blk.0.ffn_gate.weight", out=np.empty(10, np.float32))
    with pytest.raises(ValueError, match="C-ordered float32"):
        f.dequantize("blk.0.ffn_gate.weight", out=np.empty(576 * 1536, np.float64))
