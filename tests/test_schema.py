"""Issue 18's findings about the files minilens reads: config.json, tokenizer_config.json, GGUF
metadata, safetensors headers and Hugging Face cache paths.

Each test is one finding of the adversarial campaign (its docstring quotes it). Before the schema
(minilens/loading/schema.py) each of these loaded silently with wrong or NaN logits, or raised a
bare Python exception; now each raises a minilens error that names the file, the field and the
value. The checkpoints are tiny and random, written with numpy (tests/random_checkpoints.py), so
this file needs no torch; the defaults are compared with transformers' config classes, which
import without torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens import CheckpointError, CheckpointNotFoundError, MinilensError
from minilens.config import FAMILY_READERS, ModelConfig
from random_checkpoints import edit_config, gpt2_config, llama_config, write_checkpoint

IDS = np.arange(12) % 50


def expect(exc_type, *fragments):
    """pytest.raises for a MinilensError whose message holds every fragment (checked after)."""
    return _Expect(exc_type, fragments)


class _Expect:
    def __init__(self, exc_type, fragments):
        self.raises = pytest.raises(exc_type)
        self.fragments = fragments

    def __enter__(self):
        self.info = self.raises.__enter__()
        return self.info

    def __exit__(self, *exc):
        suppressed = self.raises.__exit__(*exc)
        if not suppressed:                   # another exception: let it show
            return False
        assert isinstance(self.info.value, MinilensError), type(self.info.value)
        message = str(self.info.value)
        for fragment in self.fragments:
            assert fragment in message, f"the message lacks {fragment!r}:\n{message}"
        assert len(message) < 1000, f"a message of {len(message)} characters"
        return suppressed


def checkpoint(tmp_path: Path, hf: dict, name: str = "m") -> Path:
    return write_checkpoint(tmp_path / name, hf)


def rope(folder: Path, **changes) -> Path:
    hf = json.loads((folder / "config.json").read_text())
    return edit_config(folder, rope_parameters={**hf["rope_parameters"], **changes})


@pytest.fixture
def llama(tmp_path) -> Path:
    return checkpoint(tmp_path, llama_config())


@pytest.fixture
def gemma2(tmp_path) -> Path:
    return checkpoint(tmp_path, llama_config(model_type="gemma2", query_pre_attn_scalar=8))


# ------------------------------------------------------------------------------------------------
# Silent wrong answers
# ------------------------------------------------------------------------------------------------

def test_rope_theta_zero_is_refused_not_replaced(llama):
    """Finding: "`rope_theta: 0` is silently replaced by 10000 (a falsy `or` chain)"."""
    # the hub dialect: a top-level rope_theta
    edit_config(llama, rope_parameters=None, rope_theta=0)
    with expect(CheckpointError, "config.json", "rope_theta = 0", "positive finite",
                "the RoPE base", f"Fix config.json in {llama}"):
        ml.load(llama)


@pytest.mark.parametrize("theta", [-10000.0, float("nan"), float("inf")])
def test_rope_theta_negative_or_nan_is_refused(llama, theta):
    """Finding: "`rope_theta` negative or NaN ... accepted, and the forward pass returns NaN/inf
    logits with no error"."""
    with expect(CheckpointError, "rope_parameters.rope_theta", "positive finite"):
        ml.load(rope(llama, rope_theta=theta))


@pytest.mark.parametrize("factor", [0.0, float("nan"), -2.0])
def test_linear_rope_factor_zero_or_nan_is_refused(llama, factor):
    """Finding: "a linear rope `factor` of 0 or NaN ... accepted ... NaN/inf logits"."""
    with expect(CheckpointError, "rope_parameters.factor", "positive finite"):
        ml.load(rope(llama, rope_type="linear", factor=factor))


@pytest.mark.parametrize("family", ["mistral", "qwen2", "phi3"])
@pytest.mark.parametrize("window", [0, -3])
def test_sliding_window_zero_or_negative_is_refused(tmp_path, family, window):
    """Finding: "`sliding_window: 0` or negative (mistral, qwen2, phi3) ... accepted", and the
    forward pass returned NaN logits."""
    folder = checkpoint(tmp_path, llama_config(model_type=family, sliding_window=2,
                                               use_sliding_window=True, max_window_layers=0))
    with expect(CheckpointError, f"sliding_window = {window}", "positive integer"):
        ml.load(edit_config(folder, sliding_window=window))(IDS)


@pytest.mark.parametrize("field", ["attn_logit_softcapping", "final_logit_softcapping"])
def test_nan_soft_cap_is_refused(gemma2, field):
    """Finding: "NaN soft-caps (gemma2) are all accepted, and the forward pass returns NaN"."""
    with expect(CheckpointError, f"{field} = nan", "positive finite"):
        ml.load(edit_config(gemma2, **{field: float("nan")}))(IDS)


# ------------------------------------------------------------------------------------------------
# Python exceptions instead of MinilensError
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, fragments", [
    ({"hidden_act": ["silu"]}, ["hidden_act = ['silu']", "one of", "'silu'"]),
    ({"head_dim": float("inf")}, ["head_dim = inf", "positive integer"]),
    ({"num_attention_heads": "4"}, ["num_attention_heads = '4'", "positive integer"]),
], ids=["hidden_act-list", "head_dim-inf", "string-size"])
def test_config_values_of_the_wrong_type_name_the_field(llama, change, fragments):
    """Findings: "config values of the wrong type: `hidden_act: ["silu"]`, ... `head_dim: inf`"
    raised Python exceptions; and "Config type errors do not name the field ('a field has the
    wrong type or value')"."""
    with expect(CheckpointError, "config.json", *fragments):
        ml.load(edit_config(llama, **change))


@pytest.mark.parametrize("factor, max_pos, field", [
    ("2", 256, "rope_parameters.factor = '2'"),
    (2.0, "256", "max_position_embeddings = '256'"),
], ids=["factor", "max_position_embeddings"])
def test_string_sizes_for_dynamic_rope(llama, factor, max_pos, field):
    """Finding: "string sizes for dynamic rope" raised TypeError (at the first long prompt)."""
    edit_config(llama, max_position_embeddings=max_pos)
    with expect(CheckpointError, field):
        ml.load(rope(llama, rope_type="dynamic", factor=factor))(np.arange(300) % 50)


def test_original_max_position_embeddings_x(llama):
    """Finding: "`original_max_position_embeddings: "x"`" raised TypeError."""
    with expect(CheckpointError, "original_max_position_embeddings = 'x'", "positive integer"):
        ml.load(rope(llama, rope_type="llama3", factor=8.0,
                     original_max_position_embeddings="x"))


def test_string_soft_cap(gemma2):
    """Finding: "a string soft-cap" raised TypeError."""
    with expect(CheckpointError, "final_logit_softcapping = '30'", "positive finite"):
        ml.load(edit_config(gemma2, final_logit_softcapping="30"))(IDS)


def test_negative_query_pre_attn_scalar(gemma2):
    """Finding: "`query_pre_attn_scalar: -4` (a complex sqrt)" raised TypeError."""
    with expect(CheckpointError, "query_pre_attn_scalar = -4", "positive finite"):
        ml.load(edit_config(gemma2, query_pre_attn_scalar=-4))(IDS)


def test_sliding_window_of_ten_to_the_thirty(tmp_path):
    """Finding: "a `sliding_window` of 10^30" raised OverflowError in numpy."""
    folder = checkpoint(tmp_path, llama_config(model_type="mistral", sliding_window=4))
    with expect(CheckpointError, "sliding_window = ", "at most 2147483647"):
        ml.load(edit_config(folder, sliding_window=10**30))(IDS)


def test_llama3_rope_without_max_position_embeddings(llama):
    """Finding: "llama3 rope without any `max_position_embeddings`" raised TypeError."""
    edit_config(llama, max_position_embeddings=...)
    with expect(CheckpointError, "llama3 RoPE needs original_max_position_embeddings",
                "max_position_embeddings"):
        ml.load(rope(llama, rope_type="llama3", factor=8.0))(IDS)


DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5000


@pytest.mark.parametrize("text, fragment", [
    ('{"model_type": "llama", "x": ' + DEEP + "}", "nested 100001 deep"),
    ('{"model_type": "llama", "vocab_size": ' + HUGE_INT + "}", "cannot be read as JSON"),
], ids=["deep", "5000-digit-int"])
def test_pathological_json_in_config(llama, text, fragment):
    """Finding: "JSON nested 100k deep, and integers of 5,000 digits, in config.json" raised
    RecursionError and ValueError."""
    (llama / "config.json").write_text(text)
    with expect(CheckpointError, "config.json", fragment):
        ml.load(llama)


def tokenizer_folder(tmp_path: Path) -> Path:
    """A llama checkpoint with a word-level tokenizer.json (ids 0, 1, 2 = <unk>, <s>, </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    folder = checkpoint(tmp_path, llama_config())
    words = ["<unk>", "<s>", "</s>", "to", "be", "or", "not"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("text, fragment", [
    ('{"add_bos_token": ' + DEEP + "}", "nested 100001 deep"),
    ('{"add_bos_token": true, "x": ' + HUGE_INT + "}", "cannot be read as JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("7", "expected a JSON object, got int"),
    ('"add_bos_token"', "expected a JSON object, got str"),
    ("null", "expected a JSON object, got NoneType"),
], ids=["deep", "5000-digit-int", "list", "number", "string", "null"])
def test_pathological_tokenizer_config(tmp_path, text, fragment):
    """Findings: "JSON nested 100k deep, and integers of 5,000 digits, in ...
    tokenizer_config.json" and "a tokenizer_config.json that is a list, a number, a string or
    null" raised Python exceptions. (All but the deep one were already refused when this test
    was written; they stay here as regression tests.)"""
    folder = tokenizer_folder(tmp_path)
    (folder / "tokenizer_config.json").write_text(text)
    with expect(CheckpointError, "tokenizer_config.json", fragment):
        ml.load(folder)


def test_bos_token_of_the_wrong_type_in_tokenizer_config(tmp_path):
    """The schema covers tokenizer_config.json's bos_token too: a number is not a token's
    text (it was silently ignored)."""
    folder = tokenizer_folder(tmp_path)
    (folder / "tokenizer_config.json").write_text('{"add_bos_token": true, "bos_token": 5}')
    with expect(CheckpointError, "tokenizer_config.json", "bos_token = 5"):
        ml.load(folder)


# ------------------------------------------------------------------------------------------------
# Messages that mislead
# ------------------------------------------------------------------------------------------------

def test_out_of_range_bos_token_id_blames_config_json(tmp_path):
    """Finding: "An out-of-range `bos_token_id` blames the user's ids, where the fault is in
    config.json"."""
    folder = tokenizer_folder(tmp_path)
    edit_config(folder, bos_token_id=500)
    (folder / "tokenizer_config.json").write_text('{"add_bos_token": true}')
    with expect(CheckpointError, "config.json", "bos_token_id = 500", "vocab_size = 101"):
        ml.load(folder).run("to be")


def test_empty_safetensors_header_names_the_file(tmp_path):
    """Finding: "A header of `{}` says a tensor is missing 'from .' (an empty file list)"."""
    folder = checkpoint(tmp_path, gpt2_config())
    header = b"{}"
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with expect(CheckpointError, "model.safetensors", "holds no tensors") as info:
        ml.load(folder)
    assert "from ." not in str(info.value)


def test_a_shape_of_10000_dims_is_not_echoed(tmp_path):
    """Finding: "A shape of 10,000 dims is echoed in a 30 KB message"."""
    folder = checkpoint(tmp_path, gpt2_config())
    header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [1] * 10_000,
                                        "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with expect(CheckpointError, "model.safetensors", "wte.weight", "..."):
        ml.load(folder)          # (expect also checks the message is under 1,000 characters)


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

def hf_cache(tmp_path: Path, monkeypatch, ref: bytes) -> Path:
    """A Hugging Face cache holding one model, "org/tiny", whose refs/main holds ``ref``, and a
    checkpoint three folders up from its snapshots/, where ``../../..`` leads."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    write_checkpoint(repo / "snapshots" / ("a" * 40), llama_config())
    write_checkpoint(tmp_path, llama_config())          # the decoy, outside the cache
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_bytes(ref)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path / "hub")
    return repo


@pytest.mark.parametrize("ref, fragment", [
    (b"../../..", "not a commit hash"),
    (b"\xff\xfe\xfa", "not UTF-8"),
    (b"a" * 300, "not a commit hash"),
], ids=["dotdot", "not-utf8", "300-chars"])
def test_hf_cache_refs_main_is_checked(tmp_path, monkeypatch, ref, fragment):
    """Findings: "A HF cache whose `refs/main` holds `../../..` resolves outside the cache" and
    "A non-UTF-8 `refs/main`, or one longer than 255 characters, raises UnicodeDecodeError or
    OSError"."""
    hf_cache(tmp_path, monkeypatch, ref)
    with expect(CheckpointError, "refs/main", fragment, "delete"):
        ml.load("org/tiny")


def test_hf_cache_with_a_good_ref_still_loads(tmp_path, monkeypatch):
    repo = hf_cache(tmp_path, monkeypatch, b"a" * 40 + b"\n")
    assert ml.load("org/tiny").folder == repo / "snapshots" / ("a" * 40)


def test_a_folder_that_cannot_be_searched(tmp_path, monkeypatch):
    """Finding: "A folder the user cannot search raises PermissionError". The tests run as root,
    for whom chmod changes nothing, so the OS's refusal is simulated."""
    locked = tmp_path / "locked"
    write_checkpoint(locked / "model", llama_config())
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if str(self).startswith(str(locked) + "/"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with expect(CheckpointError, "permission denied", str(locked), "chmod"):
        ml.load(locked / "model")


def test_a_name_too_long_for_the_hf_cache(tmp_path, monkeypatch):
    """Finding: "a 300-character name (OSError: name too long)". A name of 250 characters is a
    valid file name, but its cache folder, models--<name>, is not."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with expect(CheckpointNotFoundError, "too long for the file system"):
        ml.load("x" * 250)


# ------------------------------------------------------------------------------------------------
# GGUF metadata through the same schema
# ------------------------------------------------------------------------------------------------

def gguf_file(tmp_path: Path, edit) -> Path:
    """A gemma2 GGUF file (llama.cpp's converter, mirrored by gguf_factories) whose metadata
    ``edit(writer_args)`` changes."""
    from gguf_factories import hf_to_gguf
    hf = llama_config(model_type="gemma2", query_pre_attn_scalar=8, sliding_window=4,
                      attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                      hidden_activation="gelu_pytorch_tanh")
    folder = checkpoint(tmp_path, hf, "hf")
    edit(hf)
    (folder / "config.json").write_text(json.dumps(hf))
    return hf_to_gguf(folder, tmp_path / "m.gguf")


@pytest.mark.parametrize("field, value, key", [
    ("sliding_window", 0, "'gemma2.attention.sliding_window'"),
    ("final_logit_softcapping", float("nan"), "'gemma2.final_logit_softcapping'"),
    ("rms_norm_eps", -1e-6, "'gemma2.attention.layer_norm_rms_epsilon'"),
    ("rms_norm_eps", 5.0, "'gemma2.attention.layer_norm_rms_epsilon'"),
])
def test_gguf_metadata_is_checked_by_the_schema_and_named_by_its_key(tmp_path, field, value,
                                                                       key):
    """GGUF metadata goes through the same schema as config.json, and a bad value is named by
    its GGUF key. (The first three were refused before too, by gguf_checkpoint's own rules; an
    eps of 5 was accepted from GGUF while config.json's rule would refuse it: one rule now.)"""
    path = gguf_file(tmp_path, lambda hf: hf.update({field: value}))
    with expect(CheckpointError, "m.gguf", key):
        ml.load(path)


# ------------------------------------------------------------------------------------------------
# Absent fields take the documented defaults, which are transformers' own
# ------------------------------------------------------------------------------------------------

SAME_AS_TRANSFORMERS = {  # ModelConfig field -> how to read it from a transformers config
    "norm_eps": lambda c: getattr(c, "rms_norm_eps", None) or c.layer_norm_eps,
    "tie_embeddings": lambda c: c.tie_word_embeddings,
    "attn_softcap": lambda c: getattr(c, "attn_logit_softcapping", None),
    "final_softcap": lambda c: getattr(c, "final_logit_softcapping", None),
}


@pytest.mark.parametrize("family", sorted(set(FAMILY_READERS) - {"gpt2"}))
def test_absent_fields_take_transformers_defaults(family):
    """A config.json with only the sizes: every default minilens fills in is the one
    transformers' config class has (issue 18: "Absent fields take documented defaults")."""
    transformers = pytest.importorskip("transformers")
    sizes = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
             "intermediate_size": 64, "vocab_size": 101, "head_dim": 8,
             "max_position_embeddings": 64}
    ours = ModelConfig.from_hf({"model_type": family, **sizes})
    theirs = transformers.AutoConfig.for_model(family, **sizes)
    for field, read in SAME_AS_TRANSFORMERS.items():
        assert getattr(ours, field) == read(theirs), (
            f"{family}: absent -> {field} = {getattr(ours, field)!r}, transformers has "
            f"{read(theirs)!r}; fix the default in minilens/loading/schema.py")
    if family in ("mistral", "gemma2"):
        assert ours.layer_windows[0] == theirs.sliding_window
    assert ours.rope.theta == theirs.rope_parameters["rope_theta"]


def test_the_schema_reads_as_documentation():
    """describe() renders every field of every table (the schema is data, in one place)."""
    from minilens.loading import schema
    text = schema.describe()
    for table in (schema.CONFIG, schema.ROPE, schema.TOKENIZER_CONFIG, schema.GGUF_TOKENIZER):
        for name in table:
            assert f"| {name}" in text
    for key in schema.GGUF:
        assert f"| {key} |" in text
