"""ModelConfig: one frozen dataclass that describes every supported family.

Families differ by *data* (which norm, which activation, learned or rotary positions, which
biases), never by subclasses that copy the forward pass. ``ModelConfig.from_hf`` reads a
Hugging Face ``config.json`` in either of its two dialects:

- hub checkpoints mostly carry a top-level ``rope_theta`` plus ``rope_scaling``, whose type key
  is ``type`` or ``rope_type``;
- transformers >= 5 writes a ``rope_parameters`` dict (with ``rope_theta`` and ``rope_type``
  inside) when it saves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError, CheckpointNotFoundError, UnsupportedModelError
from .loading.schema import (
    ACTIVATION_NAMES as ACTIVATION_NAMES,  # re-exported: tests name it here
    ConfigReader,
    read_json,
    short,
)


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters (Su et al. 2021), as transformers computes them."""

    theta: float                                   # base of the geometric frequency ladder
    rotary_dim: int                                # how many of d_head's dims rotate
                                                   # (partial rotary)
    kind: str = "default"                          # default | linear | dynamic | llama3
    factor: float = 1.0                            # linear, dynamic, llama3
    low_freq_factor: float = 1.0                   # llama3
    high_freq_factor: float = 4.0                  # llama3
    original_max_position_embeddings: int | None = None  # llama3
    max_position_embeddings: int | None = None     # dynamic: the length beyond which theta grows
    freq_factors: tuple = ()                       # "factors": each frequency divided by its
                                                   # factor (GGUF rope_freqs)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of one transformer, in minilens's vocabulary.

    Shape names used across minilens: n_seq, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab.
    """

    family: str            # the checkpoint's model_type, e.g. "gpt2", "llama"
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int        # < n_heads for grouped-query attention; query head h reads kv head
                           # h // (n_heads // n_kv_heads)
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int | None      # a hard context limit (learned positions), or None where rotary
                           # positions extrapolate
    norm: str              # "layernorm" | "rmsnorm"
    norm_eps: float
    act: str               # "gelu_new" | "gelu" | "silu" | "gelu_tanh" | "relu"
    gated_mlp: bool        # SwiGLU/GeGLU: act(x W_gate) * (x W_in), then W_out
    positional: str        # "learned" | "rope"
    rope: RopeConfig | None
    tie_embeddings: bool   # W_U = W_E^T
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norm_bias: bool        # LayerNorm has a beta; RMSNorm has none
    parallel_residual: bool = False  # GPT-NeoX/Phi style: attn and mlp both read resid_pre
    # Switches of the newer families (issue 7). Their defaults are GPT-2/Llama behaviour.
    qk_norm: bool = False               # Qwen3: RMSNorm over each head's q and k (d_head wide),
                                        # before RoPE
    sandwich_norms: bool = False        # Gemma 2: also a norm on each sublayer's output, before it
                                        # joins the stream
    embed_scale: float | None = None    # embeddings times this (Gemma: sqrt(d_model)); resolved
                                        # to 1.0
    attn_scale: float | None = None     # scores times this; resolved to 1 / sqrt(d_head)
                                        # (Gemma 2: query_pre_attn_scalar**-0.5)
    attn_softcap: float | None = None   # Gemma 2: scores -> cap * tanh(scores / cap),
                                        # before the mask
    final_softcap: float | None = None  # Gemma 2: logits -> cap * tanh(logits / cap)
    layer_windows: tuple = ()           # per layer: a sliding-window width (int) or None (full
                                        # causal); resolved to one per layer
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    prepend_bos: bool = False        # does this family's tokenizer convention start with BOS?
    architecture: str | None = None

    def __post_init__(self) -> None:
        """Resolve the defaults, so that the forward pass needs no ``is None`` checks: the attention
        scale 1 / sqrt(d_head), the embedding scale 1.0, and one window entry per layer. (A size of
        the wrong type is left for check_sizes to name; ``replace(d_head=...)`` should pass
        attn_scale=None.)"""
        sizes_ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                       for v in (self.d_head, self.n_layers))
        if self.attn_scale is None and sizes_ok:
            object.__setattr__(self, "attn_scale", 1.0 / math.sqrt(self.d_head))
        if self.embed_scale is None:
            object.__setattr__(self, "embed_scale", 1.0)
        if not self.layer_windows and sizes_ok:
            object.__setattr__(self, "layer_windows", (None,) * self.n_layers)

    @property
    def n_params(self) -> int:
        """Parameter count from the shapes (the unembedding counted once when tied)."""
        d, m = self.d_model, self.d_mlp
        q, kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        norm = d * (2 if self.norm_bias else 1)
        extra = (2 * self.d_head if self.qk_norm else 0) + (2 * norm if self.sandwich_norms else 0)
        attn = (d * (q + 2 * kv) + q * d
                + (q + 2 * kv if self.qkv_bias else 0) + (d if self.o_bias else 0))
        mlp = (d * m * (3 if self.gated_mlp else 2)
               + ((m * (2 if self.gated_mlp else 1) + d) if self.mlp_bias else 0))
        embed = self.d_vocab * d + (self.n_ctx * d if self.positional == "learned" else 0)
        unembed = 0 if self.tie_embeddings else self.d_vocab * d
        return embed + unembed + self.n_layers * (2 * norm + attn + mlp + extra) + norm

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json", fix: str | None = None,
                names: dict[str, str] | None = None) -> "ModelConfig":
        """Read a Hugging Face config dict, every field through the schema (loading/schema.py).

        ``source`` names the file in error messages and ``fix`` says what to do about a bad field;
        ``names`` maps config fields to the names the user knows (a GGUF file's metadata keys).
        """
        model_type = hf.get("model_type")
        if not isinstance(model_type, str) or model_type not in FAMILY_READERS:
            missing = " (config.json has no model_type field)" if model_type is None else ""
            raise UnsupportedModelError(
                f"{source}: model_type {short(model_type)} is not supported{missing}. "
                f"minilens supports: {', '.join(sorted(FAMILY_READERS))}."
            )
        f = ConfigReader(hf, source, CONFIG_FIX if fix is None else fix, model_type, names)
        check_architecture(f)
        cfg = FAMILY_READERS[model_type](f)
        check_sizes(cfg, f)
        # A bos_token_id past the vocabulary is refused only where it would be used: transformers
        # itself writes tiny GPT-2 configs with GPT-2's 50256 kept (Model.to_tokens says so then).
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"{path}: no config.json here. A Hugging Face model folder holds config.json "
                f"and model.safetensors; point minilens.load at that folder."
            )
        fix = (f"Fix config.json in {path.parent}. Re-download or re-save config.json "
               f"(transformers' save_pretrained) if it is damaged.")
        hf = read_json(path, fix)
        if not isinstance(hf, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(hf).__name__}. "
                                  f"{fix}")
        return cls.from_hf(hf, source=str(path), fix=fix)


CONFIG_FIX = ("Fix the config (or re-download config.json, or re-save it with transformers' "
              "save_pretrained).")

# Heads that replace the language-model head: their checkpoints have no W_U to read a lens through.
TASK_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
              "DoubleHeadsModel", "ForImageClassification")


def check_architecture(f: ConfigReader) -> None:
    """Refuse checkpoints saved with a task head instead of the causal language-model head."""
    for arch in f.get("architectures"):
        if arch.endswith(TASK_HEADS):
            raise UnsupportedModelError(
                f"{f.source}: architecture {arch!r} is a task head, not a causal language model, "
                f"so it has no unembedding to read the residual stream through. "
                f"Use the ...ForCausalLM / ...LMHeadModel checkpoint of the same model."
            )


def first_architecture(f: ConfigReader) -> str | None:
    names = f.get("architectures")
    return names[0] if names else None


def check_sizes(cfg: "ModelConfig", f: ConfigReader) -> None:
    """The sizes computed from other fields (d_head = d_model // n_heads, the rotary dims) positive,
    and the head counts consistent, so that no shape error surfaces later in numpy. (Each field
    on its own was checked by the schema.)"""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{f.source}: {field} = {getattr(cfg, field)!r} {why}. {f.fix}")

    for field in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab"):
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(field, "is not a positive integer")
    if cfg.n_heads % cfg.n_kv_heads:
        raise bad("n_heads", f"is not a multiple of n_kv_heads = {cfg.n_kv_heads} "
                             f"(each KV head serves a whole group)")
    if cfg.rope is not None and not (0 < cfg.rope.rotary_dim <= cfg.d_head
                                     and cfg.rope.rotary_dim % 2 == 0):
        raise CheckpointError(f"{f.source}: the rotary dimension {cfg.rope.rotary_dim} must be "
                              f"even and at most d_head = {cfg.d_head}. {f.fix}")
    if cfg.rope is not None and cfg.rope.kind == "dynamic" and cfg.rope.rotary_dim <= 2:
        # dynamic NTK scales theta by ratio ** (dim / (dim - 2)): undefined for a 2-dim rotation
        raise UnsupportedModelError(f"{f.source}: dynamic RoPE needs a rotary dimension above 2, "
                                    f"got {cfg.rope.rotary_dim}. "
                                    f"Use rope_type 'linear' or 'default' for this model.")


def read_rope(f: ConfigReader, d_head: int, rotary_dim: int | None = None) -> RopeConfig:
    """Rotary parameters from either config dialect (see the module docstring). Each is read only
    where its rope type uses it: a linear rope's ``low_freq_factor`` is never looked at."""
    kind = f.rope("rope_type")
    theta = f.rope("rope_theta", absent=None)
    if theta is None:                       # the top-level rope_theta (or rotary_emb_base)
        theta = f.get("rope_theta")
    max_pos = f.get("max_position_embeddings")
    rope = RopeConfig(theta=theta, rotary_dim=d_head if rotary_dim is None else rotary_dim,
                      kind=kind, max_position_embeddings=max_pos)
    if kind in ("linear", "dynamic", "llama3"):
        rope = dataclasses.replace(rope, factor=f.rope("factor"))
    if kind == "dynamic" and max_pos is None:
        raise CheckpointError(f"{f.source}: dynamic RoPE rescales beyond max_position_embeddings, "
                              f"and the config has none. {f.fix}")
    if kind == "llama3":
        low, high = f.rope("low_freq_factor"), f.rope("high_freq_factor")
        if not high > low:                  # the smoothing divides by high - low
            raise f.bad("high_freq_factor", high,
                        f"is not allowed: llama3 RoPE needs it above low_freq_factor = {low}")
        original = f.rope("original_max_position_embeddings", derived=max_pos)
        if original is None:
            raise CheckpointError(
                f"{f.source}: llama3 RoPE needs original_max_position_embeddings (in "
                f"rope_parameters) or max_position_embeddings, and the config has neither. "
                f"{f.fix}")
        rope = dataclasses.replace(rope, low_freq_factor=low, high_freq_factor=high,
                                   original_max_position_embeddings=original)
    return rope


def activation(f: ConfigReader) -> str:
    """The MLP activation: Gemma reads hidden_activation before hidden_act."""
    if f.family in ("gemma", "gemma2"):
        return f.get("hidden_activation", derived=lambda: f.get("hidden_act"))
    return f.get("hidden_act")


def _gpt2(f: ConfigReader) -> ModelConfig:
    d_model, n_heads = f.get("n_embd"), f.get("n_head")
    if d_model % n_heads:  # GPT-2 splits d_model into heads
        raise f.bad("n_embd", d_model, f"is not divisible by n_head = {n_heads}")
    act = f.get("activation_function")
    # These switches rescale the attention scores (Stanford CRFM's GPT-2s use the first); minilens
    # always divides by sqrt(d_head), so it refuses them rather than compute silently wrong numbers.
    if f.get("scale_attn_by_inverse_layer_idx") or not f.get("scale_attn_weights"):
        raise UnsupportedModelError(
            f"{f.source}: scale_attn_by_inverse_layer_idx=true or scale_attn_weights=false "
            f"is not supported; "
            f"minilens implements GPT-2's standard 1/sqrt(d_head) attention scale.")
    return ModelConfig(
        family="gpt2", n_layers=f.get("n_layer"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=n_heads, d_head=d_model // n_heads, d_mlp=f.get("n_inner", derived=4 * d_model),
        d_vocab=f.get("vocab_size"), n_ctx=f.get("n_positions"), norm="layernorm",
        norm_eps=f.get("layer_norm_epsilon"),
        act={"gelu_pytorch_tanh": "gelu_new"}.get(act, act), gated_mlp=False, positional="learned",
        rope=None, tie_embeddings=f.get("tie_word_embeddings"), qkv_bias=True, o_bias=True,
        mlp_bias=True, norm_bias=True, bos_token_id=f.get("bos_token_id"),
        eos_token_id=f.get("eos_token_id"), prepend_bos=False,
        architecture=first_architecture(f),
    )


def _llama(f: ConfigReader) -> ModelConfig:
    d_model, n_heads = f.get("hidden_size"), f.get("num_attention_heads")
    d_head = f.get("head_dim", derived=lambda: d_model // n_heads)
    bias = f.get("attention_bias")
    return ModelConfig(
        family=f.family, n_layers=f.get("num_hidden_layers"), d_model=d_model,
        n_heads=n_heads, n_kv_heads=f.get("num_key_value_heads", derived=n_heads), d_head=d_head,
        d_mlp=f.get("intermediate_size"), d_vocab=f.get("vocab_size"), n_ctx=None, norm="rmsnorm",
        norm_eps=f.get("rms_norm_eps"), act=activation(f), gated_mlp=True,
        positional="rope", rope=read_rope(f, d_head),
        tie_embeddings=f.get("tie_word_embeddings"), qkv_bias=bias, o_bias=bias,
        mlp_bias=f.get("mlp_bias"), norm_bias=False, bos_token_id=f.get("bos_token_id"),
        eos_token_id=f.get("eos_token_id"), prepend_bos=True, architecture=first_architecture(f),
    )


def rotary_dim(f: ConfigReader, d_head: int) -> int:
    """How many of d_head's dims rotate: d_head * partial_rotary_factor (GPT-NeoX's older name:
    rotary_pct; its default, 0.25 for GPT-NeoX and 1 otherwise, is the schema's)."""
    fraction = f.rope("partial_rotary_factor", absent=None)
    if fraction is None:
        fraction = f.get("partial_rotary_factor", derived=lambda: f.get("rotary_pct"))
    return int(d_head * fraction)  # transformers truncates, as int() does


def windows(sliding: list[bool], width: int | None) -> tuple:
    """Per-layer sliding-window widths: ``width`` where ``sliding[l]``, else None (full causal
    attention)."""
    if width is None or not any(sliding):
        return ()
    return tuple(width if s else None for s in sliding)


def layer_types(f: ConfigReader, n_layers: int, default: Callable[[], list[bool]]) -> list[bool]:
    """Which layers slide: config.json's ``layer_types`` if it has them (transformers >= 4.53),
    else ``default()``."""
    if not f.present("layer_types"):
        return default()
    types = f.get("layer_types")
    if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise f.bad("layer_types", types,
                    f"is not allowed: it must list 'sliding_attention' or 'full_attention' for "
                    f"each of the {n_layers} layers")
    return [t == "sliding_attention" for t in types]


def _mistral(f: ConfigReader) -> ModelConfig:
    # Llama plus a sliding window on every layer: query i sees keys i - window + 1 .. i.
    cfg = _llama(f)
    return cfg.replace(layer_windows=windows([True] * cfg.n_layers, f.get("sliding_window")),
                       prepend_bos=True)


def _qwen(f: ConfigReader) -> ModelConfig:
    # Qwen2: q/k/v biases but none on o_proj. Qwen3: no biases (attention_bias), per-head q/k
    # RMSNorm. Sliding windows only with use_sliding_window, on layers >= max_window_layers unless
    # layer_types says.
    cfg = _llama(f)
    qwen2 = cfg.family == "qwen2"
    n = cfg.n_layers
    cfg = cfg.replace(qkv_bias=True if qwen2 else cfg.qkv_bias,
                      o_bias=False if qwen2 else cfg.o_bias, qk_norm=not qwen2, prepend_bos=False)
    if not f.get("use_sliding_window"):
        return cfg
    sliding = layer_types(f, n, lambda: [l >= f.get("max_window_layers") for l in range(n)])
    return cfg.replace(layer_windows=windows(sliding, f.get("sliding_window")))


def _gemma(f: ConfigReader) -> ModelConfig:
    # Gemma: RMSNorm with (1 + gamma) (folded into gamma by the loader), embeddings times
    # sqrt(d_model), GeGLU with the tanh GELU, tied embeddings. Gemma 2 adds sandwich norms,
    # soft-capping, sliding layers and the attention scale query_pre_attn_scalar**-0.5.
    cfg = _llama(f)
    # transformers maps Gemma's legacy hidden_act "gelu" to the tanh approximation, which is what it
    # was trained with.
    cfg = cfg.replace(act="gelu_tanh" if cfg.act in ("gelu", "gelu_pytorch_tanh") else cfg.act,
                      embed_scale=math.sqrt(cfg.d_model), prepend_bos=True)
    if cfg.family == "gemma":
        return cfg
    n = cfg.n_layers
    # Older configs have no layer_types: transformers then slides on even layers (0, 2, ...).
    sliding = layer_types(f, n, lambda: [l % 2 == 0 for l in range(n)])
    return cfg.replace(sandwich_norms=True,
                       attn_scale=f.get("query_pre_attn_scalar") ** -0.5,
                       attn_softcap=f.get("attn_logit_softcapping"),
                       final_softcap=f.get("final_logit_softcapping"),
                       layer_windows=windows(sliding, f.get("sliding_window")))


def _phi3(f: ConfigReader) -> ModelConfig:
    # Phi-3: Llama with fused qkv_proj and gate_up_proj (split by the loader), optional partial
    # rotary and an optional sliding window on every layer. longrope ("su") is refused by read_rope.
    cfg = _llama(f)
    rope = read_rope(f, cfg.d_head, rotary_dim(f, cfg.d_head))
    return cfg.replace(rope=rope, qkv_bias=False, o_bias=False, mlp_bias=False,
                       layer_windows=windows([True] * cfg.n_layers, f.get("sliding_window")))


def _gpt_neox(f: ConfigReader) -> ModelConfig:
    # Pythia: LayerNorm with biases, parallel residual (or sequential), partial rotary (rotary_pct,
    # default 0.25 as in transformers), fused per-head-interleaved query_key_value, untied
    # embed_out.
    d_model, n_heads = f.get("hidden_size"), f.get("num_attention_heads")
    if d_model % n_heads:
        raise f.bad("hidden_size", d_model, f"is not divisible by num_attention_heads = {n_heads}")
    d_head = d_model // n_heads
    bias = f.get("attention_bias")
    return ModelConfig(
        family="gpt_neox", n_layers=f.get("num_hidden_layers"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=n_heads, d_head=d_head, d_mlp=f.get("intermediate_size"),
        d_vocab=f.get("vocab_size"), n_ctx=None, norm="layernorm",
        norm_eps=f.get("layer_norm_eps"), act=f.get("hidden_act"), gated_mlp=False,
        positional="rope", rope=read_rope(f, d_head, rotary_dim(f, d_head)),
        tie_embeddings=f.get("tie_word_embeddings"), qkv_bias=bias, o_bias=bias,
        mlp_bias=True, norm_bias=True, parallel_residual=f.get("use_parallel_residual"),
        bos_token_id=f.get("bos_token_id"), eos_token_id=f.get("eos_token_id"), prepend_bos=False,
        architecture=first_architecture(f),
    )


# model_type -> reader. A family is supported exactly when it is listed here and in weights.LAYOUTS.
FAMILY_READERS: dict[str, Callable[[ConfigReader], ModelConfig]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen,
    "qwen3": _qwen,
    "gemma": _gemma,
    "gemma2": _gemma,
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
}
