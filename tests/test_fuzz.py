"""Fuzzing the files minilens reads: config.json, tokenizer_config.json, safetensors headers, and
GGUF headers and metadata (issue 18, item 9).

Hypothesis mutates a valid tiny checkpoint and every mutated input must meet one property:

- it raises a MinilensError (any other exception is an escape and fails the test), or
- it loads and runs with finite logits; and where the mutation touched nothing the forward pass
  reads (the ModelConfig is unchanged, and the tensors are the same bytes), the logits are
  bit-identical to the unmutated model's.

So a mutation that would give NaN or inf logits must be refused, and one that changes nothing
must change nothing. For safetensors files the reference library (``safetensors``) is a second
judge: a header it refuses must not load in minilens either.

Profiles: "ci" (the default: 60 cases per format, seconds) and "thorough"
(``MINILENS_FUZZ=thorough``: 1,000 cases per format), run by hand:

    MINILENS_FUZZ=thorough OPENBLAS_NUM_THREADS=1 python -m pytest -q -s tests/test_fuzz.py

Each test prints its counts (cases, MinilensError, accepted, accepted and bit-identical, escapes).
The cases are derandomized, so a count is reproducible. The bases are written with numpy
(random_checkpoints.py) and gguf-py (gguf_factories.py); no torch.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import minilens as ml
from minilens import MinilensError
from minilens.loading import schema
from random_checkpoints import gpt2_config, llama_config, write_checkpoint

PROFILE = os.environ.get("MINILENS_FUZZ", "ci")
if PROFILE not in ("ci", "thorough"):
    raise ValueError(f"MINILENS_FUZZ={PROFILE!r}: use 'ci' or 'thorough'")
CASES = {"ci": 60, "thorough": 1000}[PROFILE]    # per format
IDS = np.arange(16, dtype=np.int64) * 7 % 97


def fuzz_settings(cases: int = CASES):
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


class Tally:
    """What happened to the cases of one format; ``check`` is the property."""

    def __init__(self, fmt: str):
        self.fmt, self.counts = fmt, collections.Counter()

    def check(self, run, base_logits: np.ndarray, untouched) -> None:
        """``run()`` -> (model, logits); ``untouched(model)``: did the mutation leave everything
        the forward pass reads alone?"""
        self.counts["cases"] += 1
        try:
            model, logits = run()
        except MinilensError:
            self.counts["MinilensError"] += 1
            return
        assert np.isfinite(logits).all(), "accepted, but the logits are not finite"
        self.counts["accepted"] += 1
        if untouched(model):
            np.testing.assert_array_equal(logits, base_logits,
                                          "the mutation touched nothing read, yet the logits moved")
            self.counts["accepted, identical"] += 1

    def report(self) -> None:
        c = self.counts
        print(f"\nfuzz {self.fmt} ({PROFILE}): {c['cases']} cases, {c['MinilensError']} "
              f"MinilensError, {c['accepted']} accepted and correct "
              f"({c['accepted, identical']} bit-identical to the unmutated model), 0 escapes "
              f"(an escape fails the test)")


def load_and_run(path: Path):
    model = ml.load(path)
    return model, model(IDS)


def forward_config(cfg) -> object:
    """The part of a ModelConfig the forward pass reads (not the BOS/EOS ids or the class name)."""
    return dataclasses.replace(cfg, bos_token_id=None, eos_token_id=None, architecture=None,
                               prepend_bos=False)


# ------------------------------------------------------------------------------------------------
# Values a mutation writes
# ------------------------------------------------------------------------------------------------

NASTY = [0, 1, -1, 2, 3, 4, 8, 255, 2**31, 2**63, 10**30, 0.0, -0.0, 0.5, 1.5, 1e-300, 1e300,
         float("nan"), float("inf"), -float("inf"), "", "x", "4", "false", "silu", "gelu", "linear",
         "llama3", "dynamic", "default", "sliding_attention", None, True, False, [], {}, ["silu"],
         [1, 2], ["full_attention", "sliding_attention"], {"rope_type": "linear"}, {"factor": 0}]
json_values = st.one_of(
    st.sampled_from(NASTY),
    st.integers(-10, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-2, 200), max_size=3),
)
CONFIG_KEYS = sorted(schema.CONFIG) + ["model_type", "architectures", "unknown_key"]
ROPE_KEYS = sorted(schema.ROPE) + ["type"]


@st.composite
def config_edits(draw):
    """One edit of a config dict: (where, key, value); value ... deletes."""
    where = draw(st.sampled_from(["top", "top", "top", "rope_parameters", "rope_scaling"]))
    key = draw(st.sampled_from(CONFIG_KEYS if where == "top" else ROPE_KEYS))
    value = draw(st.one_of(st.just(...), json_values))
    return where, key, value


def apply_edits(hf: dict, edits) -> dict:
    hf = json.loads(json.dumps(hf))
    for where, key, value in edits:
        target = hf
        if where != "top":
            if not isinstance(hf.get(where), dict):
                hf[where] = {}
            target = hf[where]
        if value is ...:
            target.pop(key, None)
        else:
            target[key] = value
    return hf


@st.composite
def raw_text_edits(draw, text: str) -> str:
    """Text-level damage: truncation, a replaced character, deep nesting, a 5,000-digit int."""
    kind = draw(st.sampled_from(["truncate", "replace", "deep", "bigint", "whole"]))
    if kind == "truncate":
        return text[:draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "replace":
        i = draw(st.integers(0, len(text) - 1))
        return text[:i] + draw(st.sampled_from(list('{}[]":,0 \x00\\e-'))) + text[i + 1:]
    if kind == "deep":
        depth = draw(st.sampled_from([65, 1000, 100_000]))
        return text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    if kind == "bigint":
        return text[:-1] + ', "vocab_size": ' + "9" * draw(st.sampled_from([20, 5000])) + "}"
    return draw(st.sampled_from(["[]", "7", '"x"', "null", "", "{", "true"]))


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------

BASE_CONFIGS = {
    "gpt2": gpt2_config(),
    "llama": llama_config(n_kv_heads=2),
    "llama3-rope": llama_config(rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8}),
    "mistral": llama_config(model_type="mistral", sliding_window=5),
    "qwen2": llama_config(model_type="qwen2", use_sliding_window=True, sliding_window=3,
                          max_window_layers=1, bias=True),
    "gemma2": llama_config(model_type="gemma2", query_pre_attn_scalar=8, sliding_window=4,
                           attn_logit_softcapping=5.0, final_logit_softcapping=3.0, tie=True),
    "phi3": llama_config(model_type="phi3", partial_rotary_factor=0.5, sliding_window=6),
    "gpt_neox": {"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 32,
                 "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 101,
                 "layer_norm_eps": 1e-5, "hidden_act": "gelu", "use_parallel_residual": True,
                 "max_position_embeddings": 64, "rotary_pct": 0.5,
                 "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0,
                                     "factor": 2.0}},
}


@pytest.fixture(scope="module")
def config_bases(tmp_path_factory):
    """name -> (folder, config dict, forward config, logits) of each unmutated base."""
    out = {}
    for name, hf in BASE_CONFIGS.items():
        folder = write_checkpoint(tmp_path_factory.mktemp("config") / name, hf)
        model = ml.load(folder)
        out[name] = folder, hf, forward_config(model.cfg), model(IDS)
    return out


def test_mutated_config_json(config_bases):
    tally = Tally("config.json")

    @fuzz_settings()
    @given(name=st.sampled_from(sorted(BASE_CONFIGS)), edits=st.lists(config_edits(), min_size=1,
                                                                      max_size=3),
           raw=st.one_of(st.none(), st.data()))
    def run(name, edits, raw):
        folder, hf, base_cfg, base_logits = config_bases[name]
        text = json.dumps(apply_edits(hf, edits))
        if raw is not None:
            text = raw.draw(raw_text_edits(text), label="text edit")
        try:
            (folder / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
            tally.check(lambda: load_and_run(folder), base_logits,
                        lambda m: forward_config(m.cfg) == base_cfg)
        finally:
            (folder / "config.json").write_text(json.dumps(hf))

    run()
    tally.report()


# ------------------------------------------------------------------------------------------------
# tokenizer_config.json
# ------------------------------------------------------------------------------------------------

WORDS = ["<unk>", "<s>", "</s>", "to", "be", "or", "not", "that", "is", "the", "question"]
TEXT = "to be or not to be that is the question"
BASE_TOKENIZER_CONFIG = {"add_bos_token": True, "bos_token": "<s>", "model_max_length": 64}


@pytest.fixture(scope="module")
def tokenizer_base(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    folder = write_checkpoint(tmp_path_factory.mktemp("tok") / "m", llama_config())
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(BASE_TOKENIZER_CONFIG))
    model = ml.load(folder)
    ids = model.to_tokens(TEXT)
    return folder, ids, model(ids)


TOKEN_VALUES = st.one_of(json_values, st.sampled_from(
    ["<s>", "</s>", "to", "<nope>", {"content": "<s>"}, {"content": "to", "lstrip": False},
     {"content": 5}, {"no": "content"}]))


@st.composite
def tokenizer_edits(draw):
    key = draw(st.sampled_from(["add_bos_token", "bos_token", "eos_token", "model_max_length",
                                "added_tokens_decoder", "x"]))
    return "top", key, draw(st.one_of(st.just(...), TOKEN_VALUES))


def test_mutated_tokenizer_config(tokenizer_base):
    folder, base_ids, base_logits = tokenizer_base
    tally = Tally("tokenizer_config.json")
    path = folder / "tokenizer_config.json"

    @fuzz_settings()
    @given(edits=st.lists(tokenizer_edits(), min_size=1, max_size=3),
           raw=st.one_of(st.none(), st.data()))
    def run(edits, raw):
        mutated = apply_edits(BASE_TOKENIZER_CONFIG, edits)
        text = json.dumps(mutated)
        if raw is not None:
            text = raw.draw(raw_text_edits(text), label="text edit")
        same = (raw is None and all(mutated.get(k) == BASE_TOKENIZER_CONFIG.get(k)
                                    for k in ("add_bos_token", "bos_token")))
        try:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")

            def load_and_encode():
                model = ml.load(folder)
                ids = model.to_tokens(TEXT)
                assert ((ids >= 0) & (ids < model.cfg.d_vocab)).all(), ids
                if same:
                    np.testing.assert_array_equal(ids, base_ids)
                return model, model(ids)

            tally.check(load_and_encode, base_logits, lambda m: same)
        finally:
            path.write_text(json.dumps(BASE_TOKENIZER_CONFIG))

    run()
    tally.report()


# ------------------------------------------------------------------------------------------------
# safetensors headers
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def safetensors_bases(tmp_path_factory):
    out = {}
    for name, hf, dtype in [("gpt2", gpt2_config(), np.float32),
                            ("llama-f16", llama_config(), np.float16)]:
        folder = write_checkpoint(tmp_path_factory.mktemp("st") / name, hf, dtype=dtype)
        raw = (folder / "model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        out[name] = (folder, json.loads(raw[8:8 + n]), raw[8 + n:],
                     reference_tensors(folder / "model.safetensors"), ml.load(folder)(IDS))
    return out


@st.composite
def header_edits(draw, header: dict):
    """One edit of a parsed safetensors header."""
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    entry = dict(header[name])
    kind = draw(st.sampled_from(["dtype", "shape", "offsets", "delete", "duplicate", "rename",
                                 "metadata", "entry"]))
    if kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "f32", "",
                                               5, None, ["F32"]]))
    elif kind == "shape":
        shape = list(entry["shape"])
        entry["shape"] = draw(st.one_of(
            st.just(shape[::-1]), st.just(shape + [1]), st.just([1] * 10_000), st.just([]),
            st.just([-1] + shape[1:]), st.just([2**62, 2**62]), st.just("x"), st.just([1.0]),
            st.lists(st.integers(0, 40), min_size=1, max_size=3),
            st.just([d + draw(st.integers(-1, 1)) for d in shape])))
    elif kind == "offsets":
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = draw(st.one_of(
            st.just([begin + draw(st.integers(-8, 8)), end + draw(st.integers(-8, 8))]),
            st.just([end, begin]), st.just([begin]), st.just([-4, end]), st.just([begin, "x"]),
            st.just([begin, 2**64]), st.just(None)))
    elif kind == "entry":
        entry = draw(st.sampled_from([None, [], "x", {}, {"dtype": "F32"}]))
    header = dict(header)
    if kind == "delete":
        del header[name]
    elif kind == "duplicate":
        header[name + ".copy"] = entry
    elif kind == "rename":
        header[draw(st.sampled_from(["", "x", name + "x", "model." + name]))] = header.pop(name)
    elif kind == "metadata":
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"a": 1}, [], None, "x"]))
    else:
        header[name] = entry
    return header


def reference_accepts(path: Path) -> bool:
    """Does the reference library open the file (it validates the whole header on opening)?"""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
        return True
    except Exception:   # safetensors_rust.SafetensorError: the reference refuses
        return False


def reference_tensors(path: Path) -> dict | None:
    """name -> (dtype, shape, bytes) as the reference library reads them; None if it cannot."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {n: (str(t.dtype), t.shape, t.tobytes())
                    for n in f.keys() for t in [f.get_tensor(n)]}
    except Exception:   # refused, or a dtype numpy lacks (BF16)
        return None


def test_mutated_safetensors_header(safetensors_bases):
    tally = Tally("safetensors")

    @fuzz_settings()
    @given(name=st.sampled_from(sorted(safetensors_bases)), data=st.data())
    def run(name, data):
        folder, header, block, base_tensors, base_logits = safetensors_bases[name]
        path = folder / "model.safetensors"
        kind = data.draw(st.sampled_from(["header", "header", "header", "length", "bitflip",
                                          "truncate"]))
        text = json.dumps(header).encode()
        mutated, length = header, None
        if kind == "header":
            mutated = data.draw(header_edits(header))
            text = json.dumps(mutated).encode()
        text += b" " * (-len(text) % 8)
        if kind == "length":
            length = len(text) + data.draw(st.integers(-9, 9))
        blob = struct.pack("<Q", len(text) if length is None else length) + text + block
        if kind == "bitflip":
            i = data.draw(st.integers(0, 8 + len(text) - 1))
            blob = blob[:i] + bytes([blob[i] ^ (1 << data.draw(st.integers(0, 7)))]) + blob[i + 1:]
        if kind == "truncate":
            blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
        original = path.read_bytes()
        try:
            path.write_bytes(blob)
            accepted_by_reference = reference_accepts(path)

            def load():
                model = ml.load(folder)
                assert accepted_by_reference, "minilens loaded a file the reference refuses"
                return model, model(IDS)

            untouched = accepted_by_reference and reference_tensors(path) == base_tensors
            tally.check(load, base_logits, lambda m: untouched)
        finally:
            path.write_bytes(original)

    run()
    tally.report()


# ------------------------------------------------------------------------------------------------
# GGUF headers and metadata
# ------------------------------------------------------------------------------------------------

def gguf_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


NUMPY_TYPE = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.uint16): 2,
              np.dtype(np.int16): 3, np.dtype(np.uint32): 4, np.dtype(np.int32): 5,
              np.dtype(np.float32): 6, np.dtype(np.bool_): 7, np.dtype(np.uint64): 10,
              np.dtype(np.int64): 11, np.dtype(np.float64): 12}


def gguf_value(v) -> bytes:
    """Type id and bytes of one metadata value, the type chosen from the Python value."""
    if isinstance(v, (bool, np.bool_)):
        return struct.pack("<I?", 7, bool(v))
    if isinstance(v, (int, np.integer)):
        v = int(v)
        for lo, hi, type_id, fmt in [(0, 2**32, 4, "<II"), (-2**31, 0, 5, "<Ii"),
                                     (0, 2**64, 10, "<IQ"), (-2**63, 0, 11, "<Iq")]:
            if lo <= v < hi:
                return struct.pack(fmt, type_id, v)
        raise OverflowError(v)
    if isinstance(v, (float, np.floating)):
        return (struct.pack("<If", 6, v) if np.float32(v) == v or not math.isfinite(v)
                else struct.pack("<Id", 12, v))
    if isinstance(v, str):
        return struct.pack("<I", 8) + gguf_string(v)
    if isinstance(v, collections.abc.Sequence) and all(isinstance(x, str) for x in v):
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(gguf_string(x) for x in v)
    a = np.asarray(v)
    if a.dtype.kind == "i":
        a = a.astype(np.int32)
    return struct.pack("<IIQ", 9, NUMPY_TYPE[a.dtype], a.size) + a.tobytes()  # little-endian host


def gguf_bytes(metadata: dict, tensors: list, alignment: int = 32) -> tuple[bytes, int]:
    """A GGUF v3 file from metadata and (name, numpy shape, type id, raw bytes) tensors.
    -> (the file, where its data block starts)"""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(gguf_string(k) + gguf_value(v) for k, v in metadata.items())
    data, offset = b"", 0
    for name, shape, type_id, raw in tensors:
        head += gguf_string(name) + struct.pack("<I", len(shape))
        head += b"".join(struct.pack("<Q", d) for d in shape[::-1]) + struct.pack("<IQ", type_id,
                                                                                 offset)
        data += raw + b"\0" * (-len(raw) % alignment)
        offset = len(data)
    head += b"\0" * (-len(head) % alignment)
    return head + data, len(head)


@pytest.fixture(scope="module")
def gguf_bases(tmp_path_factory):
    """name -> (metadata, tensors, logits) of GGUF files written as llama.cpp's converter does."""
    pytest.importorskip("gguf")
    from gguf_factories import hf_to_gguf
    from minilens.loading.gguf_file import GGUFFile
    out = {}
    root = tmp_path_factory.mktemp("gguf")
    for name in ("llama", "gemma2", "phi3", "gpt2", "qwen2"):
        hf = BASE_CONFIGS[name]
        folder = write_checkpoint(root / name, hf)
        path = hf_to_gguf(folder, root / f"{name}.gguf", types="F32", tokenizer=name != "phi3")
        f = GGUFFile(path)
        tensors = [(n, t.shape, t.type_id, f.raw(n).tobytes()) for n, t in f.tensors.items()]
        metadata = dict(f.metadata)
        blob, _ = gguf_bytes(metadata, tensors)
        path.write_bytes(blob)            # our writer's bytes are the base the mutations start from
        model = ml.load(path)
        out[name] = metadata, tensors, forward_config(model.cfg), model(IDS)
    return out


gguf_values = st.one_of(
    st.sampled_from([0, 1, 2, 3, 8, 32, 64, 101, 2**31, 2**32 + 5, 2**63, -1, -2**31, 0.0, -1.0,
                     1e-30, 1e30, float("nan"), float("inf"), "", "x", "llama", "gpt2", "linear",
                     "yarn", "none", True, False, ["a", "b"], np.array([1, 2], np.uint32),
                     np.array([0.5], np.float32), np.array([], np.int32)]),
    st.integers(-2**31, 2**32 - 1),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@st.composite
def gguf_mutations(draw, metadata: dict):
    """(metadata, "bytes" or "truncate" or None) for one mutated file: new metadata, or the
    header's bytes to damage once written."""
    arch = metadata["general.architecture"]
    metadata = dict(metadata)
    kind = draw(st.sampled_from(["metadata", "metadata", "metadata", "bytes", "truncate"]))
    if kind == "metadata":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.one_of(st.sampled_from(sorted(metadata)),
                                 st.sampled_from([f"{arch}.{k}" for k in schema.GGUF]),
                                 st.just("general.alignment")))
            value = draw(st.one_of(st.just(...), gguf_values))
            if value is ...:
                metadata.pop(key, None)
            else:
                metadata[key] = value
        return metadata, None
    return metadata, kind


def test_mutated_gguf(gguf_bases, tmp_path):
    tally = Tally("GGUF")
    path = tmp_path / "m.gguf"

    @fuzz_settings()
    @given(name=st.sampled_from(sorted(gguf_bases)), data=st.data())
    def run(name, data):
        base_meta, base_tensors, base_cfg, base_logits = gguf_bases[name]
        metadata, kind = data.draw(gguf_mutations(base_meta))
        try:
            blob, data_start = gguf_bytes(metadata, base_tensors, alignment=_alignment(metadata))
        except (KeyError, OverflowError):
            assume(False)                   # a value this writer cannot store: draw another
        if kind == "bytes":
            i = data.draw(st.integers(0, data_start - 1))
            blob = blob[:i] + bytes([data.draw(st.integers(0, 255))]) + blob[i + 1:]
        elif kind == "truncate":
            blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
        path.write_bytes(blob)
        same_tensors = kind is None or tensors_as_read_by_gguf_py(path) == {
            n: (t, r) for n, _, t, r in base_tensors}
        tally.check(lambda: load_and_run(path), base_logits,
                    lambda m: same_tensors and forward_config(m.cfg) == base_cfg)

    run()
    tally.report()


def _alignment(metadata: dict) -> int:
    """The file's alignment as the writer follows it: a mutated general.alignment if it is a
    power of two up to 4096 (beyond, the writer would pad gigabytes), else 32."""
    a = metadata.get("general.alignment", 32)
    ok = isinstance(a, int) and not isinstance(a, bool) and 0 < a <= 4096 and not a & (a - 1)
    return a if ok else 32


def tensors_as_read_by_gguf_py(path: Path) -> dict | None:
    """name -> (type id, raw bytes) as llama.cpp's own reader (gguf-py) sees them; None if it
    refuses the file."""
    import gguf
    try:
        reader = gguf.GGUFReader(str(path))
        return {t.name: (int(t.tensor_type), bytes(t.data.tobytes())) for t in reader.tensors}
    except Exception:   # gguf-py raises ValueError, struct.error, IndexError, ... on damage
        return None
