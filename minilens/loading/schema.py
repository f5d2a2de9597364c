"""The schema: every field minilens reads from a checkpoint's config files and GGUF metadata.

One table per file says, for each field, its type, the values allowed, and what minilens assumes
when it is absent. Every reader (config.py's family readers, tokenizer.py, gguf_checkpoint.py) goes
through these tables, so that:

- a present but invalid value raises a CheckpointError naming the file, the field, the value and
  what is allowed (a value that names a feature minilens lacks, such as rope type 'yarn', raises
  UnsupportedModelError instead);
- an absent field (or a null one, unless null has a meaning of its own) takes the default written
  here, and nothing else is ever substituted: ``rope_theta: 0`` is an error, not 10000;
- the ranges keep every number the forward pass computes finite: a soft-cap of 1e-300 or a RoPE
  factor of 0 would give NaN logits, so they are refused at load time.

The files:

- config.json: ``model_type`` (which picks the family's reader, config.FAMILY_READERS), then
  ``CONFIG`` (top-level fields) and ``ROPE`` (fields inside ``rope_parameters``, as
  transformers >= 5 writes them, or ``rope_scaling``, the hub's older dialect);
- tokenizer_config.json: ``TOKENIZER_CONFIG``;
- generation_config.json: nothing. minilens decodes greedily and never stops at an EOS token, so
  no field of it changes a number minilens computes;
- GGUF metadata: ``GGUF`` maps each ``{arch}.*`` key to the config.json field it becomes, with
  llama.cpp's default where the key may be absent; the value is checked by that field's rule and
  a bad one is reported under its GGUF key.

JSON files are read by ``read_json``, with limits on size and nesting depth (a config.json nested
100,000 deep, or holding a 5,000-digit integer, is a CheckpointError, not a RecursionError).
``describe()`` renders the tables as markdown.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, UnsupportedModelError
from .gguf_file import StringArray

MAX_INT = 2**31 - 1          # sizes, positions, window widths, token ids: anything larger is damage
MAX_LAYERS = 2**16           # a tuple of per-layer windows is built from n_layers
MAX_JSON_BYTES = 64 << 20    # the largest real tokenizer_config.json files are a few MB
MAX_JSON_DEPTH = 64          # real config files nest 4 or 5 levels deep

# The activations the forward pass implements (ops.ACTIVATIONS and fast.kernels.ACTIVATIONS hold
# exactly these; tests/test_fast_paths.py checks it).
ACTIVATION_NAMES = ("gelu_new", "gelu_tanh", "gelu_pytorch_tanh", "gelu", "silu", "swish", "relu")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


class _Marker:
    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


REQUIRED = _Marker("required")   # no default: an absent (or null) field is an error


@dataclass(frozen=True)
class Derived:
    """A default computed from other fields by the reader; ``text`` says how."""

    text: str


@dataclass(frozen=True)
class Field:
    """One field: its JSON type, the values allowed, its default and what minilens does with it.

    kind: "int" (an integer in [lo, hi]), "number" (a finite int or float in [lo, hi], or in
    (lo, hi] with lo_open), "bool", "str" (one of ``choices``), "text" (any string), "object" (a
    JSON object), "names" (a list of strings), "numbers" (a 1-D array or list of numbers),
    "token_id" (an integer in [0, MAX_INT]), "token_ids" (a token id or a list of them), "token"
    (a string, or an object whose "content" is one).

    default: the value when the field is absent or null; a dict ``{family: value, "*": value}``
    where the families differ; ``Derived`` when the reader computes it; REQUIRED when there is none.
    null: when not None, null is a value of its own (not "absent") and this says what it means.
    unsupported: for a "str" field, a string outside ``choices`` names a feature minilens does not
    implement (UnsupportedModelError); this is what the feature is called ("activation").
    """

    name: str
    kind: str
    doc: str
    default: Any = REQUIRED
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    null: str | None = None
    unsupported: str | None = None
    aliases: tuple = ()          # older names read when ``name`` is absent, in this order

    def default_for(self, family: str | None) -> Any:
        return by_family(self.default, family)

    def allowed(self) -> str:
        """What the field may hold, in words, for messages and for describe()."""
        if self.kind == "int":
            if self.lo == 1:
                return f"a positive integer, at most {self.hi}"
            return f"an integer from {self.lo} to {self.hi}"
        if self.kind == "number":
            if self.lo_open and self.lo == 0:
                return f"a positive finite number, at most {self.hi:g}"
            return f"a positive finite number from {self.lo:g} to {self.hi:g}"
        if self.kind == "str":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return {"bool": "true or false (a JSON boolean)", "object": "a JSON object",
                "text": "a string", "names": "a list of strings",
                "numbers": "an array of numbers",
                "token_id": f"a token id (an integer from 0 to {MAX_INT})",
                "token_ids": "a token id or a list of token ids",
                "token": "a string, or an object whose \"content\" is a string"}[self.kind]

    def valid(self, value: Any) -> Any:
        """``value`` in its Python form (int, float, ...) if this field allows it, else _INVALID."""
        if self.kind in ("int", "token_id"):
            lo, hi = (0, MAX_INT) if self.kind == "token_id" else (self.lo, self.hi)
            return int(value) if _is_int(value) and lo <= value <= hi else _INVALID
        if self.kind == "number":
            if not _is_number(value) or not (_is_int(value) or math.isfinite(value)):
                return _INVALID                 # (math.isfinite(10**400) would overflow)
            above = value > self.lo if self.lo_open else value >= self.lo
            return float(value) if above and value <= self.hi else _INVALID
        if self.kind == "bool":
            return value if isinstance(value, bool) else _INVALID
        if self.kind == "str":
            return value if isinstance(value, str) and value in self.choices else _INVALID
        if self.kind == "text":
            return value if isinstance(value, str) else _INVALID
        if self.kind == "object":
            return value if isinstance(value, dict) else _INVALID
        if self.kind == "numbers":
            dtype = getattr(value, "dtype", None)
            ok = (dtype is not None and getattr(value, "ndim", 0) == 1 and dtype.kind in "iuf"
                  or isinstance(value, list) and all(_is_number(v) for v in value))
            return value if ok else _INVALID
        if self.kind == "names":
            # (a GGUF file's arrays of strings are read as StringArrays, all str by construction)
            strings = (isinstance(value, StringArray) or isinstance(value, list)
                       and all(map(isinstance, value, itertools.repeat(str))))
            return value if strings else _INVALID
        if self.kind == "token_ids":
            ids = value if isinstance(value, list) else [value]
            return (value if ids and all(_is_int(i) and 0 <= i <= MAX_INT for i in ids)
                    else _INVALID)
        if self.kind == "token":
            content = value.get("content") if isinstance(value, dict) else value
            return value if isinstance(content, str) else _INVALID
        raise AssertionError(f"unknown kind {self.kind!r}")


_INVALID = _Marker("invalid")


def by_family(default: Any, family: str | None) -> Any:
    """A default that may differ by family (or GGUF architecture): {family: value, "*": value}."""
    if isinstance(default, dict):
        return default.get(family, default.get("*"))
    return default


def _is_int(value: Any) -> bool:
    """An integer, not a bool (JSON true would pass isinstance(v, int)); numpy's too (GGUF)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or _numpy_scalar(value, "iu")


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float) or _numpy_scalar(value, "f")


def _numpy_scalar(value: Any, kinds: str) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and getattr(value, "ndim", 1) == 0 and dtype.kind in kinds


def short(value: Any) -> str:
    """repr(value), cut to a readable length: a 10,000-element shape is not echoed in full."""
    return _SHORT.repr(value)


class _Short(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int past 4,300 digits raises ValueError; past 40 digits it is unreadable
        if x.bit_length() > 128:
            return f"<an integer of {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return repr(x)


_SHORT = _Short()
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel = 3


# ------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------

def _size(name: str, doc: str, default: Any = REQUIRED, hi: int = MAX_INT) -> Field:
    return Field(name, "int", doc, default, lo=1, hi=hi)


def _eps(name: str, default: Any) -> Field:
    return Field(name, "number", "the norm's epsilon, added to the variance inside the sqrt",
                 default, lo=0, hi=1, lo_open=True)


def _act(name: str, default: Any, doc: str = "the MLP's activation") -> Field:
    return Field(name, "str", doc, default, choices=ACTIVATION_NAMES, unsupported="activation")


def _theta(name: str, aliases: tuple = ()) -> Field:
    return Field(name, "number", "the RoPE base, e.g. 10000", 10000.0, lo=1, hi=1e30,
                 aliases=aliases)


def _cap(name: str, default: float, what: str) -> Field:
    return Field(name, "number", f"Gemma 2 soft-caps the {what} to (-cap, cap)", default,
                 lo=1e-6, hi=1e12, null="no soft-cap")


def _table(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


# config.json, top level. A field belongs to the families whose reader (config.py) reads it.
CONFIG: dict[str, Field] = _table(
    # GPT-2's names
    _size("n_layer", "n_layers: the number of transformer blocks", hi=MAX_LAYERS),
    _size("n_embd", "d_model: the width of the residual stream"),
    _size("n_head", "n_heads: attention heads per layer"),
    _size("n_inner", "d_mlp: the MLP's hidden width", Derived("4 * n_embd")),
    _size("n_positions", "n_ctx: the number of learned positions"),
    _eps("layer_norm_epsilon", 1e-5),
    _act("activation_function", "gelu_new"),
    Field("scale_attn_weights", "bool", "scores divided by sqrt(d_head); minilens requires true",
          True),
    Field("scale_attn_by_inverse_layer_idx", "bool",
          "scores also divided by the layer index (Stanford CRFM); minilens requires false", False),
    # the Llama family's names (and GPT-NeoX's)
    _size("num_hidden_layers", "n_layers: the number of transformer blocks", hi=MAX_LAYERS),
    _size("hidden_size", "d_model: the width of the residual stream"),
    _size("num_attention_heads", "n_heads: query heads per layer"),
    _size("num_key_value_heads", "n_kv_heads: key/value heads (fewer for grouped-query attention)",
          Derived("num_attention_heads")),
    _size("head_dim", "d_head: the width of one head",
          Derived("hidden_size // num_attention_heads")),
    _size("intermediate_size", "d_mlp: the MLP's hidden width"),
    _eps("rms_norm_eps", {"*": 1e-6, "phi3": 1e-5}),
    _eps("layer_norm_eps", 1e-5),
    _act("hidden_act", {"*": "silu", "gpt_neox": "gelu", "gemma": "gelu_pytorch_tanh",
                        "gemma2": "gelu_pytorch_tanh"}),
    _act("hidden_activation", Derived("hidden_act"), "Gemma's name for hidden_act, read first"),
    Field("attention_bias", "bool", "q, k, v and o projections have biases",
          {"*": False, "gpt_neox": True}),
    Field("mlp_bias", "bool", "the MLP's projections have biases", False),
    Field("use_parallel_residual", "bool",
          "GPT-NeoX: attention and MLP both read resid_pre (else one after the other)", True),
    # both
    _size("vocab_size", "d_vocab: rows of the embedding and the unembedding"),
    Field("tie_word_embeddings", "bool", "the unembedding is the embedding's transpose",
          {"*": False, "gpt2": True, "gemma": True, "gemma2": True}),
    Field("bos_token_id", "token_id", "the BOS token, prepended to text when the tokenizer says "
          "so; it must be below vocab_size", None, null="no BOS token"),
    Field("eos_token_id", "token_ids", "the EOS token(s); kept in the config, unused by the "
          "forward pass", None, null="no EOS token"),
    Field("architectures", "names", "class names; a task head (...ForSequenceClassification) is "
          "refused", ()),
    # positions
    _size("max_position_embeddings", "the trained context of a rotary model: dynamic RoPE rescales "
          "beyond it, llama3 RoPE falls back to it", None),
    _theta("rope_theta", aliases=("rotary_emb_base",)),
    Field("rope_parameters", "object", "RoPE settings (transformers >= 5), see ROPE", None,
          null="the same as absent"),
    Field("rope_scaling", "object", "RoPE settings (the hub's dialect), see ROPE", None,
          null="the same as absent"),
    Field("partial_rotary_factor", "number", "the fraction of d_head that rotates",
          Derived("rotary_pct, else 1"), lo=0, hi=1, lo_open=True),
    Field("rotary_pct", "number", "GPT-NeoX's name for partial_rotary_factor",
          {"*": 1.0, "gpt_neox": 0.25}, lo=0, hi=1, lo_open=True),
    # sliding windows and Gemma 2
    Field("sliding_window", "int", "the number of keys a sliding layer sees, itself included",
          {"mistral": 4096, "qwen2": 4096, "qwen3": 4096, "gemma2": 4096, "phi3": None},
          lo=1, hi=MAX_INT, null="no sliding window (full causal attention)"),
    Field("use_sliding_window", "bool", "Qwen: do any layers slide", False),
    Field("max_window_layers", "int", "Qwen: layers from this index on slide", 28,
          lo=0, hi=MAX_LAYERS),
    Field("layer_types", "names", "per layer, 'sliding_attention' or 'full_attention'",
          Derived("Gemma 2: even layers slide; Qwen: from max_window_layers on")),
    Field("query_pre_attn_scalar", "number", "Gemma 2: scores times query_pre_attn_scalar**-0.5",
          256, lo=1e-6, hi=1e12),
    _cap("attn_logit_softcapping", 50.0, "attention scores"),
    _cap("final_logit_softcapping", 30.0, "logits"),
)

# Inside rope_parameters or rope_scaling (rope_parameters is read first).
ROPE: dict[str, Field] = _table(
    Field("rope_type", "str", "how the frequencies are rescaled", "default", choices=ROPE_TYPES,
          unsupported="rope type", aliases=("type",)),
    _theta("rope_theta"),
    Field("factor", "number", "linear, dynamic, llama3: the context extension factor", 1.0,
          lo=1, hi=1e6),
    Field("low_freq_factor", "number", "llama3: below this the frequencies are divided by factor",
          1.0, lo=0, hi=1e6, lo_open=True),
    Field("high_freq_factor", "number", "llama3: above this they are kept (must exceed "
          "low_freq_factor)", 4.0, lo=0, hi=1e6, lo_open=True),
    _size("original_max_position_embeddings", "llama3: the context the model was first trained at",
          Derived("max_position_embeddings")),
    Field("partial_rotary_factor", "number", "the fraction of d_head that rotates (read before the "
          "top-level field)", Derived("the top-level field"), lo=0, hi=1, lo_open=True),
)

TOKENIZER_CONFIG: dict[str, Field] = _table(
    Field("add_bos_token", "bool", "does text start with BOS (tokenizer.py's rule (a))", None,
          null="let tokenizer.json's post-processor decide"),
    Field("bos_token", "token", "the BOS token's text, e.g. \"<s>\" or {\"content\": \"<s>\"}",
          None, null="no BOS text"),
)

GENERATION_CONFIG: dict[str, Field] = {}   # nothing read: see the module docstring

# A GGUF file's tokenizer (gguf_tokenizer.py), under its own keys. Absent keys take llama.cpp's
# defaults, which depend on the tokenizer type (gguf_tokenizer.gguf_add_bos, gguf_bos_token_id).
GGUF_TOKENIZER: dict[str, Field] = _table(
    Field("tokenizer.ggml.model", "text", "the tokenizer type: 'gpt2' (byte-level BPE) or "
          "'llama' (SentencePiece) are rebuilt; others leave a model that runs on ids", None),
    Field("tokenizer.ggml.pre", "text", "byte-level BPE: the pre-tokenizer's name", "default"),
    Field("tokenizer.ggml.tokens", "names", "the vocabulary, token by id", None),
    Field("tokenizer.ggml.merges", "names", "byte-level BPE: the merges, 'left right'", None),
    Field("tokenizer.ggml.token_type", "numbers", "llama.cpp's type of each token",
          Derived("every token normal")),
    Field("tokenizer.ggml.scores", "numbers", "SentencePiece: each token's score", 0.0),
    Field("tokenizer.ggml.bos_token_id", "token_id", "the BOS token",
          Derived("llama.cpp's default for the tokenizer type")),
    Field("tokenizer.ggml.eos_token_id", "token_id", "the EOS token (kept, unused)", None),
    Field("tokenizer.ggml.unknown_token_id", "token_id", "SentencePiece: the unknown token", 0),
    Field("tokenizer.ggml.add_bos_token", "bool", "does text start with BOS",
          Derived("llama.cpp's default for the tokenizer type")),
    Field("tokenizer.ggml.add_space_prefix", "bool", "SentencePiece: a space before the text",
          True),
)


@dataclass(frozen=True)
class GGUFKey:
    """A GGUF metadata key (after ``{arch}.``): the config.json field it becomes, whose rule checks
    its value, and what minilens assumes (as llama.cpp does) when it is absent."""

    field: Field
    default: Any = REQUIRED      # a dict by architecture where they differ


GGUF: dict[str, GGUFKey] = {
    "block_count": GGUFKey(CONFIG["num_hidden_layers"]),
    "embedding_length": GGUFKey(CONFIG["hidden_size"]),
    "feed_forward_length": GGUFKey(CONFIG["intermediate_size"]),
    "attention.head_count": GGUFKey(CONFIG["num_attention_heads"]),
    "attention.head_count_kv": GGUFKey(CONFIG["num_key_value_heads"],
                                       Derived("attention.head_count")),
    "attention.key_length": GGUFKey(CONFIG["head_dim"],
                                    Derived("embedding_length // attention.head_count")),
    "vocab_size": GGUFKey(CONFIG["vocab_size"], Derived("the rows of token_embd.weight")),
    "context_length": GGUFKey(CONFIG["max_position_embeddings"], {"*": None, "gpt2": REQUIRED}),
    "attention.layer_norm_epsilon": GGUFKey(CONFIG["layer_norm_epsilon"], 1e-5),
    "attention.layer_norm_rms_epsilon": GGUFKey(CONFIG["rms_norm_eps"], 1e-6),
    "rope.freq_base": GGUFKey(ROPE["rope_theta"], 10000.0),
    "rope.scaling.type": GGUFKey(Field("rope.scaling.type", "str", "RoPE scaling ('none' or "
                                       "'linear'; others are not implemented)", "none",
                                       choices=("none", "linear"), unsupported="rope scaling type"),
                                 "none"),
    "rope.scaling.factor": GGUFKey(ROPE["factor"]),
    "rope.dimension_count": GGUFKey(_size("rope.dimension_count", "the rotating dims of a head "
                                          "(phi3: partial rotary; others: d_head)"),
                                    Derived("attention.key_length")),
    "attention.sliding_window": GGUFKey(Field("attention.sliding_window", "int", "the sliding "
                                              "window; phi3 writes 0 for none", lo=0, hi=MAX_INT),
                                        {"*": 4096, "phi3": 0}),
    "attn_logit_softcapping": GGUFKey(CONFIG["attn_logit_softcapping"], 50.0),
    "final_logit_softcapping": GGUFKey(CONFIG["final_logit_softcapping"], 30.0),
}


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

def invalid(source: str, shown: str, value: Any, field: Field, fix: str) -> Exception:
    """The error for a present value that ``field`` does not allow."""
    if field.unsupported and isinstance(value, str):
        return UnsupportedModelError(
            f"{source}: {field.unsupported} {value!r} is not supported ({shown}); "
            f"minilens implements {', '.join(field.choices)}.")
    return CheckpointError(f"{source}: {shown} = {short(value)} is not allowed: it must be "
                           f"{field.allowed()} ({field.doc}). {fix}")


def check(field: Field, value: Any, source: str, shown: str, fix: str) -> Any:
    """``value`` in its Python form if ``field`` allows it; the error naming it otherwise."""
    ok = field.valid(value)
    if ok is _INVALID:
        raise invalid(source, shown, value, field, fix)
    return ok


_ABSENT = _Marker("absent")


class ConfigReader:
    """A JSON object read field by field through a table (CONFIG and ROPE for config.json).

    ``source`` names the file in messages and ``fix`` says what to do; ``family`` picks the
    defaults that differ by family; ``names`` maps a field to the name the user knows it by (a
    GGUF key), for messages.
    """

    def __init__(self, hf: dict, source: str, fix: str, family: str | None = None,
                 names: Mapping[str, str] | None = None, table: Mapping[str, Field] = CONFIG):
        self.hf, self.source, self.fix, self.family = hf, source, fix, family
        self.names, self.table = {} if names is None else names, table

    def shown(self, name: str) -> str:
        return self.names.get(name, name)

    def present(self, name: str) -> bool:
        """Is ``name`` (or an alias) in the file, and not null where null means absent?"""
        return self._raw(self.table[name], self.hf, "")[0] is not _ABSENT

    def get(self, name: str, derived: Any = None) -> Any:
        """The checked value of top-level field ``name``; its default when absent.

        ``derived``: the value, or a function giving it, for a field whose default is Derived."""
        return self._read(self.table[name], self.hf, "", derived)

    def rope(self, name: str, derived: Any = None, absent: Any = _ABSENT) -> Any:
        """A ROPE field from rope_parameters, else rope_scaling; ``absent`` (if given) when neither
        holds it, else its default."""
        field = ROPE[name]
        for container in ("rope_parameters", "rope_scaling"):
            inner = self.get(container)
            if inner is not None and self._raw(field, inner, container + ".")[0] is not _ABSENT:
                return self._read(field, inner, container + ".", derived)
        if absent is not _ABSENT:
            return absent
        return self._default(field, derived)

    def bad(self, name: str, value: Any, why: str) -> CheckpointError:
        """An error for a value that fails a check across fields: "{name} = {value} {why}"."""
        return CheckpointError(f"{self.source}: {self.shown(name)} = {short(value)} {why}. "
                               f"{self.fix}")

    def _raw(self, field: Field, d: dict, prefix: str) -> tuple[Any, str]:
        for key in (field.name,) + field.aliases:
            if key in d and (d[key] is not None or field.null is not None):
                return d[key], prefix + key
        return _ABSENT, prefix + field.name

    def _read(self, field: Field, d: dict, prefix: str, derived: Any) -> Any:
        value, key = self._raw(field, d, prefix)
        if value is _ABSENT:
            return self._default(field, derived)
        if value is None:                     # null with a meaning of its own (field.null)
            return None
        return check(field, value, self.source, self.shown(key), self.fix)

    def _default(self, field: Field, derived: Any) -> Any:
        default = field.default_for(self.family)
        if default is REQUIRED:
            raise CheckpointError(f"{self.source}: required field {self.shown(field.name)!r} "
                                  f"is missing or null. {self.fix}")
        if isinstance(default, Derived):
            return derived() if callable(derived) else derived
        return default


# ------------------------------------------------------------------------------------------------
# JSON with limits
# ------------------------------------------------------------------------------------------------

def read_json(path: Path, fix: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file no larger than ``max_bytes`` and nested at most MAX_JSON_DEPTH deep.

    Every failure is a CheckpointError naming the file: unreadable, too large, not UTF-8, not
    JSON, too deep, or an integer longer than Python's int-digit limit (4,300 digits).
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CheckpointError(f"{path}: {size} bytes, more than the {max_bytes} a JSON file "
                                  f"minilens reads may hold. {fix}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise CheckpointError(f"{path}: cannot be read as JSON ({reason}). {fix}") from None
    return parse_json(text, str(path), fix)


def parse_json(text: str, source: str, fix: str) -> Any:
    """json.loads with the depth checked first, so that the parser never recurses deeply."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{source}: cannot be read as JSON (nested {depth} deep; minilens "
                              f"reads at most {MAX_JSON_DEPTH}). {fix}")
    try:
        return json.loads(text)
    except ValueError as e:   # JSONDecodeError, and "Exceeds the limit (4300 digits)" for ints
        raise CheckpointError(
            f"{source}: cannot be read as JSON ({short(str(e))}). {fix}") from None


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text; brackets inside strings do not count."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]")


# ------------------------------------------------------------------------------------------------
# As documentation
# ------------------------------------------------------------------------------------------------

def describe() -> str:
    """The tables as markdown: field, type and range, default, meaning."""
    def rows(table: Mapping[str, Field]) -> list[str]:
        out = ["| field | allowed | default | meaning |", "|---|---|---|---|"]
        for f in table.values():
            default = f.default.text if isinstance(f.default, Derived) else repr(f.default)
            null = f"; null: {f.null}" if f.null else ""
            alias = f" (or {', '.join(f.aliases)})" if f.aliases else ""
            out.append(f"| {f.name}{alias} | {f.allowed()}{null} | {default} | {f.doc} |")
        return out

    parts = ["## config.json", *rows(CONFIG), "", "## config.json: rope_parameters / rope_scaling",
             *rows(ROPE), "", "## tokenizer_config.json", *rows(TOKENIZER_CONFIG), "",
             "## generation_config.json", "nothing is read", "",
             "## GGUF metadata: the tokenizer", *rows(GGUF_TOKENIZER), "",
             "## GGUF metadata ({arch}.*)",
             "| key | becomes | default |", "|---|---|---|"]
    for key, g in GGUF.items():
        default = g.default.text if isinstance(g.default, Derived) else repr(g.default)
        parts.append(f"| {key} | {g.field.name} | {default} |")
    return "\n".join(parts)

