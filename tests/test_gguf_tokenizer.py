"""minilens.loading.gguf_tokenizer against llama.cpp's own tokenizer, and against transformers.

The reference is llama.cpp (src/llama-vocab.cpp): its ids for 2,369 strings (Shakespeare,
code, numbers, whitespace runs, non-ASCII text, emoji, special-token text, random soup) under
eight tokenizer configurations are stored in tests/golden/gguf_tokenizer.npz, written by
tests/golden/make_gguf_tokenizer_golden.py with llama-cpp-python 0.3.36 (see its docstring).
Where llama_cpp is importable the same comparison also runs live.

The configurations: the real SmolLM2 file ("smollm"); SmolLM2's vocabulary under the "gpt-2",
"default", "llama-bpe" and "qwen2" pre-tokenizers; and a SentencePiece vocabulary as a Llama
("spm"), Gemma 2 ("spm-gemma", no space prefix) and Phi-3 ("spm-phi3") file. Every string is
compared twice: with special tokens matched in the text (minilens's default, llama.cpp's
special=True) and not (``encode_special_tokens = True``, llama.cpp's special=False).

transformers' GGUF conversion (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``) is a
second, independent reference where it knows the pre-tokenizer. Where it is known to differ
from llama.cpp, the test says how, and checks the rest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from minilens.errors import CheckpointError
from minilens.loading.gguf_tokenizer import (
    PRE_TOKENIZERS,
    check_tokenizer_metadata,
    gguf_add_bos,
    gguf_bos_token_id,
    tokenizer_from_gguf,
)

_MAKER = Path(__file__).parent / "golden" / "make_gguf_tokenizer_golden.py"
_spec = importlib.util.spec_from_file_location("make_gguf_tokenizer_golden", _MAKER)
G = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(G)

GOLDEN = G.load_golden()
STRINGS = GOLDEN["strings"]


# ---------------------------------------------------------------------------------------------
# fixtures: the metadata of each configuration, as minilens's GGUF reader gives it

@pytest.fixture(scope="module")
def smollm_path() -> Path:
    from _real_model import smollm2_path
    return smollm2_path()


@pytest.fixture(scope="module")
def smollm_md(smollm_path) -> dict:
    from minilens.loading.gguf_file import GGUFFile
    return GGUFFile(smollm_path).metadata


@pytest.fixture(scope="module")
def metadata(request) -> callable:
    """config -> its metadata dict (the BPE ones need the real SmolLM2 file's vocabulary)."""
    cache = {}

    def get(config: str) -> dict:
        if config not in cache:
            smollm = request.getfixturevalue("smollm_md") if config in G.BPE_PRES else None
            cache[config] = smollm if config == "smollm" else G.config_metadata(config, smollm)
        return cache[config]
    return get


def encode_all(tok: Tokenizer, special: bool) -> list[list[int]]:
    """Every test string's ids; special=False leaves control tokens in the text unmatched."""
    tok.encode_special_tokens = not special
    try:
        return [e.ids for e in tok.encode_batch(STRINGS, add_special_tokens=False)]
    finally:
        tok.encode_special_tokens = False


def mismatches(ours: list[list[int]], ref: list[list[int]], keep=lambda s: True) -> list:
    return [(s, r, o) for s, r, o in zip(STRINGS, ref, ours) if keep(s) and r != o]


def explain(config: str, bad: list, n: int, what: str) -> str:
    s, ref, ours = bad[0]
    return (f"{config}: {len(bad)} of {n} strings tokenize differently from {what}. First: {s!r}\n"
            f"  reference: {ref}\n  minilens:  {ours}\n"
            f"Check the pre-tokenizer regexes for tokenizer.ggml.pre (llama.cpp's "
            f"llm_tokenizer_bpe), ignore_merges, and for SentencePiece the space prefix and "
            f"the merge ranks (the tokens' scores).")


# ---------------------------------------------------------------------------------------------
# llama.cpp: the golden ids, and live where llama_cpp is importable

@pytest.mark.parametrize("config", G.CONFIGS)
def test_matches_llama_cpp_golden(config, metadata):
    tok = tokenizer_from_gguf(metadata(config), config)
    for special in (False, True):
        ref = GOLDEN[config]["special_true" if special else "special_false"]
        bad = mismatches(encode_all(tok, special), ref)
        assert not bad, explain(config, bad, len(STRINGS), f"llama.cpp (special={special})")


def test_golden_covers_what_the_brief_asks():
    """At least 2,000 strings, of every kind, and configurations that really differ."""
    assert len(STRINGS) >= 2000
    assert any("\n    " in s for s in STRINGS) and "  42" in STRINGS and "" in STRINGS
    assert any("😀" in s for s in STRINGS) and any("世界" in s for s in STRINGS)
    assert sum(s.count("\n") > 0 for s in STRINGS) > 1000   # most Shakespeare passages
    plain = {c: GOLDEN[c]["special_false"] for c in G.CONFIGS}
    for a, b in [("smollm", "gpt-2"), ("gpt-2", "default"), ("gpt-2", "llama-bpe"),
                 ("llama-bpe", "qwen2"), ("spm", "spm-gemma")]:
        n = sum(x != y for x, y in zip(plain[a], plain[b]))
        assert n >= 100, f"{a} and {b} differ on only {n} strings: the test cannot tell them apart"
    assert plain["spm"] != GOLDEN["spm-phi3"]["special_true"]   # Phi-3's rstrip shows
    byte_tokens = sum(3 <= i < 259 for row in plain["spm"] for i in row)   # <0x00>..<0xFF>
    assert byte_tokens > 1000, "the SentencePiece strings hardly use byte fallback"


@pytest.mark.parametrize("config", G.CONFIGS)
def test_matches_llama_cpp_live(config, metadata, smollm_path, tmp_path):
    """The same, against the installed llama.cpp, and the golden file is still what it says."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("gguf")
    md = metadata(config)
    path = smollm_path if config == "smollm" else G.write_tokenizer_gguf(tmp_path / "t.gguf", md)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    tok = tokenizer_from_gguf(md, config)
    for special in (False, True):
        live = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=special) for s in STRINGS]
        bad = mismatches(encode_all(tok, special), live)
        assert not bad, explain(config, bad, len(STRINGS), f"llama.cpp live (special={special})")
        assert live == GOLDEN[config]["special_true" if special else "special_false"], (
            f"the installed llama.cpp ({llama_cpp.__version__}) no longer gives the golden ids "
            f"(made with {GOLDEN['notes']['llama_cpp_python']}): regenerate them with "
            f"tests/golden/make_gguf_tokenizer_golden.py and find out what changed")


def test_gguf_py_reads_the_same_metadata(smollm_path, smollm_md):
    """The dict the tests build from minilens's reader equals the one gguf-py gives."""
    pytest.importorskip("gguf")
    theirs = G.read_metadata(smollm_path)
    for key in G.TOKENIZER_KEYS:
        if key in theirs or key in smollm_md:
            a, b = smollm_md[key], theirs[key]
            if isinstance(a, np.ndarray):
                same = np.array_equal(a, b) and a.dtype == b.dtype
            else:
                same = a == b
            assert same, f"{key}: minilens.loading.gguf_file and gguf-py disagree"


def test_decode_gives_the_text_back(metadata):
    """Byte-level BPE is lossless. SentencePiece too, once the decoder strips the space it
    prepended, except after a special token: llama.cpp prepends one there as well."""
    for config in ("smollm", "spm", "spm-gemma"):
        tok = tokenizer_from_gguf(metadata(config), config)
        for s, ids in zip(STRINGS, encode_all(tok, special=True)):
            if config == "smollm" or not any(t in s for t in ("<s>", "</s>", "<unk>", "<|")):
                assert tok.decode(ids, skip_special_tokens=False) == s, f"{config}: {s!r}"


# ---------------------------------------------------------------------------------------------
# transformers' GGUF conversion, a second reference

@pytest.fixture(scope="module")
def hf_gguf(tmp_path_factory, metadata, smollm_path):
    """config -> transformers' tokenizers.Tokenizer for that configuration's GGUF file."""
    from _torch import import_torch
    _, transformers = import_torch()
    pytest.importorskip("gguf")   # transformers reads GGUF files with it
    folder = tmp_path_factory.mktemp("hf_gguf")

    def get(config: str) -> Tokenizer:
        path = smollm_path if config == "smollm" else G.write_tokenizer_gguf(
            folder / f"{config}.gguf", metadata(config))
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return tok.backend_tokenizer
    return get


@pytest.mark.parametrize("config", ["gpt-2", "qwen2", "spm-gemma"])
def test_matches_transformers_gguf_conversion(config, metadata, hf_gguf):
    ours = encode_all(tokenizer_from_gguf(metadata(config), config), special=True)
    bad = mismatches(ours, encode_all(hf_gguf(config), special=True))
    assert not bad, explain(config, bad, len(STRINGS), "transformers' GGUF conversion")


def test_llama_bpe_matches_transformers_but_for_ignore_merges(metadata, hf_gguf):
    """transformers builds Llama 3's BPE without ignore_merges (its tokenizer.json has it; the
    GGUF conversion drops it). llama.cpp keeps it: a word that is a token is taken whole.
    Without it, minilens gives transformers' ids; with it, llama.cpp's."""
    md = metadata("llama-bpe")
    theirs = encode_all(hf_gguf("llama-bpe"), special=True)
    ours = tokenizer_from_gguf(md, "llama-bpe")
    assert '"ignore_merges":true' in ours.to_str()
    json = ours.to_str().replace('"ignore_merges":true', '"ignore_merges":false')
    plain = Tokenizer.from_str(json)
    bad = mismatches(encode_all(plain, special=True), theirs)
    assert not bad, explain("llama-bpe without ignore_merges", bad, len(STRINGS), "transformers")
    differ = sum(a != b for a, b in zip(encode_all(ours, special=True), theirs))
    assert differ > 0, "the vocabulary cannot show ignore_merges, so this test proves nothing"


def smollm_by_hand(md: dict) -> Tokenizer:
    """SmolLM2's tokenizer.json pre-tokenizer, written out by hand: Digits(individual) then GPT-2's
    byte-level regex; the vocabulary and merges straight from the file."""
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])
    return tok


def test_smollm_matches_transformers_and_a_hand_built_tokenizer(metadata, hf_gguf):
    """transformers 5.24 has no "smollm" entry and falls back to GPT-2's split, so it disagrees
    wherever a digit follows a space or letters (" 42", "x = [\\n    1"). There minilens must
    equal llama.cpp (the golden test) and SmolLM's own pre-tokenizer, built here by hand."""
    md = metadata("smollm")
    ours = encode_all(tokenizer_from_gguf(md, "smollm"), special=True)
    theirs = encode_all(hf_gguf("smollm"), special=True)
    by_hand = encode_all(smollm_by_hand(md), special=True)
    golden = GOLDEN["smollm"]["special_true"]
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert differ, "no string shows the digit split: the strings cannot test it"
    assert all(any(c.isnumeric() for c in STRINGS[i]) for i in differ), (
        "transformers differs on a string without numerals, so not only because of the split")
    for i in differ:
        assert ours[i] == golden[i] == by_hand[i], f"smollm: {STRINGS[i]!r}"
    bad = mismatches(ours, by_hand)
    assert not bad, explain("smollm", bad, len(STRINGS), "the hand-built SmolLM tokenizer")


def test_spm_matches_transformers_where_they_agree_on_spaces(metadata, hf_gguf):
    """transformers' Llama GGUF tokenizer prepends "▁" with Metaspace(prepend_scheme="first"):
    not before text that already starts with a space ("  x" -> "▁▁x", llama.cpp "▁▁▁x") and not
    after a special token. Its Phi-3 one prepends like llama.cpp but knows no Phi-3 rstrip.
    Everything else must agree."""
    def plain_start(s):
        starts_blank = s[:1].isspace()
        return not starts_blank and not any(t in s for t in ("<s>", "</s>", "<unk>", "<|"))

    for config, keep in (("spm", plain_start), ("spm-phi3", lambda s: "<|" not in s
                                                and "</s>" not in s)):
        ours = encode_all(tokenizer_from_gguf(metadata(config), config), special=True)
        theirs = encode_all(hf_gguf(config), special=True)
        bad = mismatches(ours, theirs, keep)
        kept = sum(map(keep, STRINGS))
        assert kept > 1900, f"{config}: only {kept} strings left to compare"
        assert not bad, explain(config, bad, kept, "transformers")


# ---------------------------------------------------------------------------------------------
# refusals and the BOS rule

@pytest.mark.parametrize("model", ["t5", "bert", "rwkv", "plamo2", None])
def test_other_tokenizer_models_are_refused_by_name(model):
    md = {"tokenizer.ggml.model": model, "tokenizer.ggml.tokens": ["a", "b"]}
    with pytest.raises(CheckpointError, match=f"{model!r}.*'gpt2', 'llama'") as e:
        tokenizer_from_gguf(md, "x.gguf")
    assert "x.gguf" in str(e.value) and "token ids" in str(e.value)


def test_unknown_pre_tokenizer_is_refused_with_the_known_ones():
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-coder",
          "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}
    with pytest.raises(CheckpointError, match="'deepseek-coder'.*llama-bpe.*smollm"):
        tokenizer_from_gguf(md, "x.gguf")
    assert {"gpt-2", "default", "llama-bpe", "smollm", "qwen2"} <= set(PRE_TOKENIZERS)


def test_a_missing_pre_is_llama_cpps_default():
    """llama.cpp warns and uses "default": punctuation runs, then GPT-2's regex, then digits in
    threes. GPT-2's own would keep "1234567" whole."""
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
          "tokenizer.ggml.merges": ["a b"]}
    pieces = tokenizer_from_gguf(md, "x.gguf").pre_tokenizer.pre_tokenize_str("x=1234567!!")
    assert [p for p, _ in pieces] == ["x", "=", "123", "456", "7", "!!"]
    md["tokenizer.ggml.pre"] = "gpt-2"
    pieces = tokenizer_from_gguf(md, "x.gguf").pre_tokenizer.pre_tokenize_str("x=1234567!!")
    assert [p for p, _ in pieces] == ["x", "=", "1234567", "!!"]


@pytest.mark.parametrize("md, expected", [
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
      "tokenizer.ggml.add_bos_token": False}, False),                 # SmolLM2 says so
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}, False),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}, False),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"}, False),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe"}, True),   # Llama 3
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
      "tokenizer.ggml.add_bos_token": False}, False),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
      "tokenizer.ggml.add_bos_token": True}, True),
    ({"tokenizer.ggml.model": "llama"}, True),                        # SentencePiece
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_bos_token": False}, False),  # Phi-3
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gemma4",
      "tokenizer.ggml.add_bos_token": False}, True),                  # llama.cpp forces it
    ({"tokenizer.ggml.model": "t5"}, False),
])
def test_gguf_add_bos_follows_llama_cpp(md, expected):
    assert gguf_add_bos(md) is expected


def test_gguf_add_bos_must_be_a_bool():
    with pytest.raises(CheckpointError,
                       match="'tokenizer.ggml.add_bos_token' = 'false' is not allowed"):
        gguf_add_bos({"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_bos_token": "false"})


def test_real_file_bos(smollm_md):
    assert gguf_add_bos(smollm_md) is False and gguf_bos_token_id(smollm_md) == 1
    spm = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"] * 3}
    assert gguf_bos_token_id(spm) == 1                     # llama.cpp's SentencePiece default
    spm["tokenizer.ggml.tokens"] = ["a"]
    assert gguf_bos_token_id(spm) is None                  # out of range: none


@pytest.mark.parametrize("value", [["a", 3], ["a", b"b"], "ab", np.array([1, 2]), [["a"]]])
def test_a_vocabulary_that_is_not_a_list_of_strings_is_refused(value):
    """tokenizer.ggml.tokens and .merges must be lists of strings (schema kind "names"); any
    element of another type, wherever it stands, is a CheckpointError naming the key."""
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
            check_tokenizer_metadata({key: value}, "model.gguf")
    check_tokenizer_metadata({"tokenizer.ggml.tokens": ["a", "b"]}, "model.gguf")
