"""Bad GGUF files get a CheckpointError that names the file and the field, and cost kilobytes.

The files are written byte by byte here (``gguf_bytes``), so that each test can break exactly one
field: lengths, counts, offsets, types, the architecture, the metadata. A valid file made the same
way loads and runs, which shows that the writer is right and that each refusal is the one field's.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens import CheckpointError, MinilensError, UnsupportedModelError

U32, F32, STR, ARR = 4, 6, 8, 9
GGML_F32 = 0


def string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, value) -> bytes:
    if vtype == U32:
        body = struct.pack("<I", value)
    elif vtype == F32:
        body = struct.pack("<f", value)
    elif vtype == STR:
        body = string(value)
    elif vtype == ARR:  # an array of strings
        body = struct.pack("<IQ", STR, len(value)) + b"".join(string(v) for v in value)
    else:
        raise ValueError(vtype)
    return string(key) + struct.pack("<I", vtype) + body


def tiny_llama(n_layers=1, d=32, heads=4, kv_heads=2, d_mlp=64, vocab=64) -> tuple[list, list]:
    """(metadata pairs, [(name, numpy shape, array)]) of a random 1-layer llama, all F32."""
    rng = np.random.default_rng(0)
    meta = [("general.architecture", STR, "llama"), ("llama.block_count", U32, n_layers),
            ("llama.embedding_length", U32, d), ("llama.feed_forward_length", U32, d_mlp),
            ("llama.attention.head_count", U32, heads),
            ("llama.attention.head_count_kv", U32, kv_heads),
            ("llama.context_length", U32, 128), ("llama.rope.freq_base", F32, 10000.0),
            ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5)]
    d_kv = d // heads * kv_heads
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,)}
    for l in range(n_layers):
        shapes |= {f"blk.{l}.attn_norm.weight": (d,), f"blk.{l}.attn_q.weight": (d, d),
                   f"blk.{l}.attn_k.weight": (d_kv, d), f"blk.{l}.attn_v.weight": (d_kv, d),
                   f"blk.{l}.attn_output.weight": (d, d), f"blk.{l}.ffn_norm.weight": (d,),
                   f"blk.{l}.ffn_gate.weight": (d_mlp, d), f"blk.{l}.ffn_up.weight": (d_mlp, d),
                   f"blk.{l}.ffn_down.weight": (d, d_mlp)}
    tensors = [(n, s, (rng.standard_normal(s) * 0.2 + (1 if len(s) == 1 else 0)).astype(np.float32))
               for n, s in shapes.items()]
    return meta, tensors


def gguf_bytes(meta, tensors, *, version=3, alignment=32, types=None, offsets=None) -> bytes:
    """A GGUF file: header, metadata, tensor infos (dims fastest-first), padding, data."""
    infos, data, offset = b"", b"", 0
    for i, (name, shape, array) in enumerate(tensors):
        raw = array.astype("<f4").tobytes()
        off = offset if offsets is None or offsets[i] is None else offsets[i]
        infos += (string(name) + struct.pack("<I", len(shape))
                  + b"".join(struct.pack("<Q", d) for d in shape[::-1]))
        infos += struct.pack("<IQ", GGML_F32 if types is None else types[i], off)
        data += raw + b"\0" * (-len(raw) % alignment)
        offset += len(raw) + (-len(raw) % alignment)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta))
    head += b"".join(kv(*m) for m in meta) + infos
    return head + b"\0" * (-len(head) % alignment) + data


def expect(tmp_path: Path, blob: bytes, exc=CheckpointError, *fragments):
    path = tmp_path / "model.gguf"
    path.write_bytes(blob)
    with pytest.raises(exc) as info:
        ml.load(path)
    assert isinstance(info.value, MinilensError)
    message = str(info.value)
    for fragment in ("model.gguf",) + fragments:
        assert fragment in message, f"the message lacks {fragment!r}:\n{message}"
    return message


def test_the_valid_file_loads_and_runs(tmp_path):
    meta, tensors = tiny_llama()
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_bytes(meta, tensors))
    model = ml.load(path)
    logits = model(np.arange(10))
    assert logits.shape == (10, 64) and np.isfinite(logits).all()
    # and the same from the folder that holds it
    assert np.array_equal(ml.load(tmp_path)(np.arange(10)), logits)


def test_truncated_file(tmp_path):
    meta, tensors = tiny_llama()
    blob = gguf_bytes(meta, tensors)
    expect(tmp_path, blob[:-100], CheckpointError, "blk.0.ffn_down.weight",
           "past the end of the file", "download it again")


@pytest.mark.parametrize("cut", [10, 30, 200])
def test_truncated_inside_the_header(tmp_path, cut):
    meta, tensors = tiny_llama()
    expect(tmp_path, gguf_bytes(meta, tensors)[:cut], CheckpointError, "download it again")


def test_not_a_gguf_file(tmp_path):
    expect(tmp_path, b"GGML" + b"\0" * 100, CheckpointError, "GGUF magic")


def test_unsupported_version(tmp_path):
    meta, tensors = tiny_llama()
    expect(tmp_path, gguf_bytes(meta, tensors, version=1), CheckpointError, "version 1",
           "versions 2 and 3")


def test_big_endian_file_is_named(tmp_path):
    meta, tensors = tiny_llama()
    blob = bytearray(gguf_bytes(meta, tensors))
    blob[4:8] = struct.pack(">I", 3)
    expect(tmp_path, bytes(blob), CheckpointError, "big-endian")


def test_string_length_past_the_end(tmp_path):
    meta, tensors = tiny_llama()
    blob = bytearray(gguf_bytes(meta, tensors))
    # the first metadata key's length field sits right after the 24-byte header
    blob[24:32] = struct.pack("<Q", len(blob))
    expect(tmp_path, bytes(blob), CheckpointError, "metadata key 0", "past the end of the file")


def test_string_length_of_2_to_the_60(tmp_path):
    meta, tensors = tiny_llama()
    blob = bytearray(gguf_bytes(meta, tensors))
    blob[24:32] = struct.pack("<Q", 2**60)
    expect(tmp_path, bytes(blob), CheckpointError, "metadata key 0", "claims")


@pytest.mark.parametrize("field, at", [("the tensor count", 8), ("the metadata count", 16)])
def test_counts_of_2_to_the_60(tmp_path, field, at):
    meta, tensors = tiny_llama()
    blob = bytearray(gguf_bytes(meta, tensors))
    blob[at:at + 8] = struct.pack("<Q", 2**60)
    expect(tmp_path, bytes(blob), CheckpointError, field, "more than the")


def test_array_count_of_2_to_the_60(tmp_path):
    meta, tensors = tiny_llama()
    arr = string("tokenizer.ggml.scores") + struct.pack("<IIQ", ARR, F32, 2**60)
    blob = gguf_bytes(meta, tensors)
    # splice a hostile array in as an extra metadata pair
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta) + 1)
    blob = head + arr + blob[24:]
    expect(tmp_path, blob, CheckpointError, "tokenizer.ggml.scores", "more than the")


def spliced_array(meta, tensors, *elements: bytes) -> bytes:
    """The tiny llama with one more metadata pair, first: an array of strings whose elements are
    the given bytes, each after its length field (written as is: a hostile length goes in
    ``elements``)."""
    arr = string("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARR, STR, len(elements))
    blob = gguf_bytes(meta, tensors)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta) + 1)
    return head + arr + b"".join(elements) + blob[24:]


@pytest.mark.parametrize("length", [2**60, 10**6])
def test_string_array_element_length_past_the_end(tmp_path, length):
    """The vocabulary is read in one fast loop (_Parser.strings): its bounds checks are the
    same as string's, with the element named."""
    meta, tensors = tiny_llama()
    blob = spliced_array(meta, tensors, string("a"), struct.pack("<Q", length) + b"xyz")
    expect(tmp_path, blob, CheckpointError, "element 1 of 'tokenizer.ggml.tokens'",
           "claims" if length == 2**60 else "past the end of the file")


def test_string_array_element_longer_than_the_limit(tmp_path, monkeypatch):
    """An element inside the file but longer than MAX_STRING_BYTES is refused as ``string``
    refuses one (the limit lowered to 150 bytes here, above every key, not written out at
    16 MiB)."""
    from minilens.loading import gguf_file
    monkeypatch.setattr(gguf_file, "MAX_STRING_BYTES", 150)
    meta, tensors = tiny_llama()
    blob = spliced_array(meta, tensors, string("ab"), string("x" * 200), string("c"))
    expect(tmp_path, blob, CheckpointError, "element 1 of 'tokenizer.ggml.tokens'",
           "claims 200 bytes")


@pytest.mark.parametrize("second", [b"x" * 169, b"x" * 300])
def test_string_array_element_not_utf8_before_a_long_one(tmp_path, second):
    """A string cut off inside a UTF-8 sequence (b"ab\\xc3"), before a string of 169 bytes, whose
    length field begins with 0xA9: on its own a UTF-8 continuation byte, so the array's bytes
    read as is would decode ("\\xc3\\xa9" is "é"). _Parser.strings zeroes the length fields of
    strings of 128 bytes or more before it decodes the array in one go."""
    meta, tensors = tiny_llama()
    blob = spliced_array(meta, tensors, string(b"ab\xc3"), string(second))
    expect(tmp_path, blob, CheckpointError, "element 0 of 'tokenizer.ggml.tokens'", "UTF-8")


def test_string_arrays_are_decoded_on_first_read(tmp_path):
    """The header's arrays of strings are checked at load, decoded when first read, and then
    equal to gguf-py's reading of them (gguf.GGUFReader), with strings of 128 bytes and more,
    empty ones and non-ASCII ones among them."""
    import gguf

    from minilens.loading.gguf_file import GGUFFile, StringArray
    words = ["a", "", "é" * 70, "ü", "x" * 128, "Ġthe", "z" * 300, "日本"]
    meta, tensors = tiny_llama()
    path = tmp_path / "model.gguf"
    path.write_bytes(spliced_array(meta, tensors, *(string(w) for w in words)))
    tokens = GGUFFile(path).metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, StringArray) and len(tokens) == len(words)
    assert tokens._strings is None, "nothing should be decoded before the first read"
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"]
    reference = [bytes(field.parts[i]).decode() for i in field.data]
    assert reference == words
    assert tokens == reference and list(tokens) == reference and tokens[2] == reference[2]
    assert tokens[-2:] == reference[-2:] and tokens != reference[:-1] and tokens != "a"


def test_string_array_element_past_the_end_of_a_text_tail(tmp_path):
    """The array last in the file, and what follows the hostile length valid UTF-8: only the
    bounds check, not a failed decode, can catch it."""
    from minilens.loading.gguf_file import GGUFFile
    arr = string("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARR, STR, 2)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + arr + string("a")
                     + struct.pack("<Q", 50) + b"xyz")
    with pytest.raises(CheckpointError, match="element 1 of 'tokenizer.ggml.tokens'.*past the end"):
        GGUFFile(path)


def test_string_array_element_not_utf8(tmp_path):
    meta, tensors = tiny_llama()
    blob = spliced_array(meta, tensors, string("ok"), string(b"\xff\xfe"))
    expect(tmp_path, blob, CheckpointError, "element 1 of 'tokenizer.ggml.tokens'", "UTF-8")


def test_string_array_cut_inside_a_length(tmp_path):
    meta, tensors = tiny_llama()
    blob = spliced_array(meta, tensors, string("a"), string("b"))
    at = blob.index(b"\x01\x00\x00\x00\x00\x00\x00\x00b")   # element 1's length field
    expect(tmp_path, blob[:at + 4], CheckpointError, "download it again")


def test_hostile_header_costs_kilobytes(tmp_path):
    """Refusing 2**60 counts and lengths allocates nothing of their size (as for safetensors)."""
    meta, tensors = tiny_llama()
    blobs = []
    for at in (8, 16, 24):
        b = bytearray(gguf_bytes(meta, tensors))
        b[at:at + 8] = struct.pack("<Q", 2**60)
        blobs.append(bytes(b))
    for i, blob in enumerate(blobs):
        path = tmp_path / f"hostile{i}.gguf"
        path.write_bytes(blob)
        tracemalloc.start()
        with pytest.raises(CheckpointError):
            ml.load(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 256 * 1024, f"refusing a hostile header allocated {peak} bytes"


def test_tensor_offset_outside_the_data(tmp_path):
    meta, tensors = tiny_llama()
    offsets = [None] * len(tensors)
    offsets[-1] = 1 << 40
    expect(tmp_path, gguf_bytes(meta, tensors, offsets=offsets), CheckpointError,
           "blk.0.ffn_down.weight", "data offset")


def test_tensor_offset_misaligned(tmp_path):
    meta, tensors = tiny_llama()
    offsets = [None] * len(tensors)
    offsets[1] = 4
    expect(tmp_path, gguf_bytes(meta, tensors, offsets=offsets), CheckpointError,
           "output_norm.weight", "starts at data offset 4")


def test_unknown_quantization_type(tmp_path):
    meta, tensors = tiny_llama()
    types = [GGML_F32] * len(tensors)
    types[0] = 16  # IQ2_XXS: a real ggml type that minilens does not read
    message = expect(tmp_path, gguf_bytes(meta, tensors, types=types), CheckpointError,
                     "token_embd.weight")
    assert "IQ2_XXS" in message, message


def test_undefined_quantization_type(tmp_path):
    meta, tensors = tiny_llama()
    types = [GGML_F32] * len(tensors)
    types[0] = 999
    expect(tmp_path, gguf_bytes(meta, tensors, types=types), CheckpointError, "token_embd.weight",
           "999")


def test_unknown_architecture(tmp_path):
    meta, tensors = tiny_llama()
    meta[0] = ("general.architecture", STR, "mamba")
    expect(tmp_path, gguf_bytes(meta, tensors), UnsupportedModelError, "'mamba'", "llama", "qwen2",
           "gpt2")


def test_metadata_disagrees_with_tensor_shapes(tmp_path):
    meta, tensors = tiny_llama()
    # 8 heads of 4 over 2 kv heads: q is still 32 wide
    meta[4] = ("llama.attention.head_count", U32, 8)
    meta[2] = ("llama.embedding_length", U32, 48)
    expect(tmp_path, gguf_bytes(meta, tensors), CheckpointError, "token_embd.weight",
           "GGUF metadata implies")


def test_missing_tensor_named_by_its_gguf_name(tmp_path):
    meta, tensors = tiny_llama()
    tensors = [t for t in tensors if t[0] != "blk.0.ffn_up.weight"]
    expect(tmp_path, gguf_bytes(meta, tensors), CheckpointError, "'blk.0.ffn_up.weight' is missing")


def test_metadata_of_the_wrong_type(tmp_path):
    meta, tensors = tiny_llama()
    meta[1] = ("llama.block_count", STR, "one")
    expect(tmp_path, gguf_bytes(meta, tensors), CheckpointError, "'llama.block_count'", "'one'",
           "integer")


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_rope_base_must_be_positive_and_finite(tmp_path, value):
    meta, tensors = tiny_llama()
    meta[7] = ("llama.rope.freq_base", F32, value)
    expect(tmp_path, gguf_bytes(meta, tensors), CheckpointError, "'llama.rope.freq_base'",
           "positive finite")


def test_missing_required_metadata(tmp_path):
    meta, tensors = tiny_llama()
    meta = [m for m in meta if m[0] != "llama.block_count"]
    expect(tmp_path, gguf_bytes(meta, tensors), CheckpointError, "'llama.block_count'")


def test_a_folder_with_two_gguf_files(tmp_path):
    meta, tensors = tiny_llama()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(gguf_bytes(meta, tensors))
    with pytest.raises(CheckpointError, match="holds 2 GGUF files"):
        ml.load(tmp_path)


def test_the_file_is_never_written(tmp_path):
    meta, tensors = tiny_llama()
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_bytes(meta, tensors))
    path.chmod(0o444)
    before = path.read_bytes()
    model = ml.load(path)
    model(np.arange(5))
    assert (path.read_bytes() == before
            and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"])


def test_an_uncovered_tokenizer_type_leaves_a_model_that_runs_on_ids(tmp_path):
    meta, tensors = tiny_llama()
    meta += [("tokenizer.ggml.model", STR, "rwkv"),
             ("tokenizer.ggml.tokens", ARR, [f"t{i}" for i in range(64)])]
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_bytes(meta, tensors))
    model = ml.load(path)
    assert np.isfinite(model(np.arange(8))).all()
    with pytest.raises(ml.TokenizerMissingError, match="rwkv.*runs on token ids"):
        model.to_tokens("hello")
