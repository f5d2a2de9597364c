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
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError, CheckpointNotFoundError, MinilensError, UnsupportedModelError


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
    def from_hf(cls, hf: dict, source: str = "config.json") -> "ModelConfig":
        """Read a Hugging Face config dict; ``source`` names the file in error messages."""
        model_type = hf.get("model_type")
        if not isinstance(model_type, str) or model_type not in FAMILY_READERS:
            missing = " (config.json has no model_type field)" if model_type is None else ""
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported{missing}. "
                f"minilens supports: {', '.join(sorted(FAMILY_READERS))}."
            )
        check_architecture(hf.get("architectures"), source)
        try:
            cfg = FAMILY_READERS[model_type](_Fields(hf, source))
        except MinilensError:
            raise
        except KeyError as e:  # raised by _Fields.need
            raise CheckpointError(str(e.args[0])) from None
        except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. "n_head": "4", or 0 heads
            raise CheckpointError(
                f"{source}: a field has the wrong type or value ({e}). Sizes must be "
                f"positive integers; fix or re-save config.json.") from None
        check_sizes(cfg, source)
        if cfg.act not in ACTIVATION_NAMES:  # else a bare KeyError would surface at the first run
            raise UnsupportedModelError(
                f"{source}: activation {cfg.act!r} is not supported; "
                f"minilens implements {', '.join(sorted(ACTIVATION_NAMES))}.")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"{path}: no config.json here. A Hugging Face model folder holds config.json "
                f"and model.safetensors; point minilens.load at that folder."
            )
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot be read as JSON ({e}). "
                                  f"Re-download or re-save config.json.") from None
        if not isinstance(hf, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(hf).__name__}. "
                                  f"Re-download or re-save config.json.")
        return cls.from_hf(hf, source=str(path))


# The activations the forward pass implements (ops.ACTIVATIONS and fast.kernels.ACTIVATIONS hold
# exactly these; tests/test_fast_paths.py checks it). Named here so that config needs no ops.
ACTIVATION_NAMES = ("gelu_new", "gelu_tanh", "gelu_pytorch_tanh", "gelu", "silu", "swish", "relu")

# Heads that replace the language-model head: their checkpoints have no W_U to read a lens through.
TASK_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
              "DoubleHeadsModel", "ForImageClassification")


def check_architecture(architectures: Any, source: str) -> None:
    """Refuse checkpoints saved with a task head instead of the causal language-model head."""
    if architectures is None:
        return
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CheckpointError(f"{source}: 'architectures' should be a list of class names, "
                              f"got {architectures!r}.")
    for arch in architectures:
        if arch.endswith(TASK_HEADS):
            raise UnsupportedModelError(
                f"{source}: architecture {arch!r} is a task head, not a causal language model, "
                f"so it has no unembedding to read the residual stream through. "
                f"Use the ...ForCausalLM / ...LMHeadModel checkpoint of the same model."
            )


def check_sizes(cfg: "ModelConfig", source: str) -> None:
    """Every size a positive integer and the head counts consistent, so no shape error surfaces
    later in numpy."""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {field} = {getattr(cfg, field)!r} {why}. "
                               f"Fix config.json (it must describe the checkpoint's tensors).")

    for field in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab"):
        value = getattr(cfg, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(field, "is not a positive integer")
    if cfg.n_ctx is not None and (isinstance(cfg.n_ctx, bool) or not isinstance(cfg.n_ctx, int)
                                  or cfg.n_ctx < 1):
        raise bad("n_ctx", "is not a positive integer")
    if cfg.n_heads % cfg.n_kv_heads:
        raise bad("n_heads", f"is not a multiple of n_kv_heads = {cfg.n_kv_heads} "
                             f"(each KV head serves a whole group)")
    if (isinstance(cfg.norm_eps, bool) or not isinstance(cfg.norm_eps, (int, float))
            or not cfg.norm_eps >= 0):
        raise bad("norm_eps", "is not a non-negative number")
    if cfg.rope is not None and not (0 < cfg.rope.rotary_dim <= cfg.d_head
                                     and cfg.rope.rotary_dim % 2 == 0):
        raise CheckpointError(f"{source}: the rotary dimension {cfg.rope.rotary_dim} must be even "
                              f"and at most d_head = {cfg.d_head}. Fix config.json.")
    if cfg.rope is not None and cfg.rope.kind == "dynamic" and cfg.rope.rotary_dim <= 2:
        # dynamic NTK scales theta by ratio ** (dim / (dim - 2)): undefined for a 2-dim rotation
        raise UnsupportedModelError(f"{source}: dynamic RoPE needs a rotary dimension above 2, "
                                    f"got {cfg.rope.rotary_dim}. "
                                    f"Use rope_type 'linear' or 'default' for this model.")


class _Fields:
    """A config dict whose required fields fail with a message naming the field and the file."""

    def __init__(self, hf: dict, source: str):
        self.hf, self.source = hf, source

    def need(self, *names: str) -> Any:
        """The first of ``names`` present and not null; a KeyError with a clear message
        otherwise."""
        for name in names:
            if self.hf.get(name) is not None:
                return self.hf[name]
        raise KeyError(f"{self.source}: required field {' or '.join(map(repr, names))} "
                       f"is missing or null. Re-download config.json, "
                       f"or re-save it with transformers' save_pretrained.")

    def get(self, name: str, default: Any = None) -> Any:
        value = self.hf.get(name)
        return default if value is None else value


def read_rope(f: _Fields, d_head: int, rotary_dim: int | None = None,
              default_theta: float = 10000.0) -> RopeConfig:
    """Rotary parameters from either config dialect (see the module docstring)."""
    params = dict(f.get("rope_parameters", {}) or {})
    scaling = dict(f.get("rope_scaling", {}) or {})
    merged = {**scaling, **params}  # transformers >= 5 puts everything in rope_parameters
    kind = merged.get("rope_type") or merged.get("type") or "default"
    theta = (merged.get("rope_theta") or f.get("rope_theta") or f.get("rotary_emb_base")
             or default_theta)
    if kind not in ("default", "linear", "dynamic", "llama3"):
        raise UnsupportedModelError(
            f"{f.source}: rope type {kind!r} is not supported; "
            f"minilens implements default, linear, dynamic and llama3."
        )
    max_pos = f.get("max_position_embeddings")
    return RopeConfig(
        theta=float(theta),
        rotary_dim=rotary_dim or d_head,
        kind=kind,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        # llama3: original_max_position_embeddings falls back to max_position_embeddings
        original_max_position_embeddings=merged.get("original_max_position_embeddings") or max_pos,
        max_position_embeddings=max_pos,
    )


def _gpt2(f: _Fields) -> ModelConfig:
    d_model, n_heads = f.need("n_embd"), f.need("n_head")
    if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 and d_model % n_heads:
        # GPT-2 splits d_model into heads
        raise ValueError(f"n_embd = {d_model} is not divisible by n_head = {n_heads}")
    act = f.get("activation_function", "gelu_new")
    # These switches rescale the attention scores (Stanford CRFM's GPT-2s use the first); minilens
    # always divides by sqrt(d_head), so it refuses them rather than compute silently wrong numbers.
    if f.get("scale_attn_by_inverse_layer_idx", False) or not f.get("scale_attn_weights", True):
        raise UnsupportedModelError(
            f"{f.source}: scale_attn_by_inverse_layer_idx=true or scale_attn_weights=false "
            f"is not supported; "
            f"minilens implements GPT-2's standard 1/sqrt(d_head) attention scale.")
    return ModelConfig(
        family="gpt2", n_layers=f.need("n_layer"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=n_heads, d_head=d_model // n_heads, d_mlp=f.get("n_inner") or 4 * d_model,
        d_vocab=f.need("vocab_size"), n_ctx=f.need("n_positions"), norm="layernorm",
        norm_eps=f.get("layer_norm_epsilon", 1e-5),
        act={"gelu_pytorch_tanh": "gelu_new"}.get(act, act), gated_mlp=False, positional="learned",
        rope=None, tie_embeddings=f.get("tie_word_embeddings", True), qkv_bias=True, o_bias=True,
        mlp_bias=True, norm_bias=True, bos_token_id=f.get("bos_token_id"),
        eos_token_id=f.get("eos_token_id"), prepend_bos=False,
        architecture=(f.get("architectures") or [None])[0],
    )


def _llama(f: _Fields) -> ModelConfig:
    d_model, n_heads = f.need("hidden_size"), f.need("num_attention_heads")
    d_head = f.get("head_dim") or d_model // n_heads  # head_dim may be present but null
    return ModelConfig(
        family=f.hf["model_type"], n_layers=f.need("num_hidden_layers"), d_model=d_model,
        n_heads=n_heads, n_kv_heads=f.get("num_key_value_heads", n_heads), d_head=d_head,
        d_mlp=f.need("intermediate_size"), d_vocab=f.need("vocab_size"), n_ctx=None, norm="rmsnorm",
        norm_eps=f.get("rms_norm_eps", 1e-6), act=f.get("hidden_act", "silu"), gated_mlp=True,
        positional="rope", rope=read_rope(f, d_head),
        tie_embeddings=f.get("tie_word_embeddings", False), qkv_bias=f.get("attention_bias", False),
        o_bias=f.get("attention_bias", False), mlp_bias=f.get("mlp_bias", False), norm_bias=False,
        bos_token_id=f.get("bos_token_id"), eos_token_id=f.get("eos_token_id"), prepend_bos=True,
        architecture=(f.get("architectures") or [None])[0],
    )


def rotary_dim(f: _Fields, d_head: int, default_fraction: float = 1.0) -> int:
    """How many of d_head's dims rotate: d_head * partial_rotary_factor (GPT-NeoX's older name:
    rotary_pct)."""
    params = f.get("rope_parameters", {}) or {}
    fraction = (params.get("partial_rotary_factor") or f.get("partial_rotary_factor")
                or f.get("rotary_pct"))
    # transformers truncates, as int() does
    return int(d_head * (default_fraction if fraction is None else fraction))


def windows(sliding: list[bool], width: int | None) -> tuple:
    """Per-layer sliding-window widths: ``width`` where ``sliding[l]``, else None (full causal
    attention)."""
    if width is None or not any(sliding):
        return ()
    return tuple(int(width) if s else None for s in sliding)


def sliding_window(f: _Fields, default: int | None) -> int | None:
    """config.json's sliding_window; ``default`` (the transformers class default) only when the key
    is absent."""
    return f.hf.get("sliding_window", default)


def layer_types(f: _Fields, n_layers: int, default: list[bool]) -> list[bool]:
    """Which layers slide: config.json's ``layer_types`` if it has them (transformers >= 4.53),
    else ``default``."""
    types = f.get("layer_types")
    if types is None:
        return default
    if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise ValueError(f"layer_types must list 'sliding_attention' or 'full_attention' "
                         f"for each of the {n_layers} layers, got {types!r}")
    return [t == "sliding_attention" for t in types]


def _mistral(f: _Fields) -> ModelConfig:
    # Llama plus a sliding window on every layer: query i sees keys i - window + 1 .. i.
    cfg = _llama(f)
    return cfg.replace(layer_windows=windows([True] * cfg.n_layers, sliding_window(f, 4096)),
                       prepend_bos=True)


def _qwen(f: _Fields) -> ModelConfig:
    # Qwen2: q/k/v biases but none on o_proj. Qwen3: no biases (attention_bias), per-head q/k
    # RMSNorm. Sliding windows only with use_sliding_window, on layers >= max_window_layers unless
    # layer_types says.
    cfg = _llama(f)
    qwen2 = cfg.family == "qwen2"
    n = cfg.n_layers
    width = sliding_window(f, 4096) if f.get("use_sliding_window", False) else None
    sliding = layer_types(f, n, [l >= f.get("max_window_layers", 28) for l in range(n)])
    return cfg.replace(qkv_bias=True if qwen2 else cfg.qkv_bias,
                       o_bias=False if qwen2 else cfg.o_bias, qk_norm=not qwen2,
                       layer_windows=windows(sliding, width), prepend_bos=False)


def _gemma(f: _Fields) -> ModelConfig:
    # Gemma: RMSNorm with (1 + gamma) (folded into gamma by the loader), embeddings times
    # sqrt(d_model), GeGLU with the tanh GELU, tied embeddings. Gemma 2 adds sandwich norms,
    # soft-capping, sliding layers and the attention scale query_pre_attn_scalar**-0.5.
    cfg = _llama(f)
    act = f.get("hidden_activation") or f.get("hidden_act") or "gelu_pytorch_tanh"
    # transformers maps Gemma's legacy hidden_act "gelu" to the tanh approximation, which is what it
    # was trained with.
    cfg = cfg.replace(act="gelu_tanh" if act in ("gelu", "gelu_pytorch_tanh") else act,
                      embed_scale=math.sqrt(cfg.d_model),
                      tie_embeddings=f.get("tie_word_embeddings", True), prepend_bos=True)
    if cfg.family == "gemma":
        return cfg
    n = cfg.n_layers
    # Older configs have no layer_types: transformers then slides on even layers (0, 2, ...).
    sliding = layer_types(f, n, [l % 2 == 0 for l in range(n)])
    return cfg.replace(sandwich_norms=True,
                       attn_scale=float(f.get("query_pre_attn_scalar", 256)) ** -0.5,
                       attn_softcap=f.get("attn_logit_softcapping"),
                       final_softcap=f.get("final_logit_softcapping"),
                       layer_windows=windows(sliding, sliding_window(f, 4096)))


def _phi3(f: _Fields) -> ModelConfig:
    # Phi-3: Llama with fused qkv_proj and gate_up_proj (split by the loader), optional partial
    # rotary and an optional sliding window on every layer. longrope ("su") is refused by read_rope.
    cfg = _llama(f)
    rope = read_rope(f, cfg.d_head, rotary_dim(f, cfg.d_head))
    return cfg.replace(rope=rope, qkv_bias=False, o_bias=False, mlp_bias=False,
                       layer_windows=windows([True] * cfg.n_layers, sliding_window(f, None)))


def _gpt_neox(f: _Fields) -> ModelConfig:
    # Pythia: LayerNorm with biases, parallel residual (or sequential), partial rotary (rotary_pct,
    # default 0.25 as in transformers), fused per-head-interleaved query_key_value, untied
    # embed_out.
    d_model, n_heads = f.need("hidden_size"), f.need("num_attention_heads")
    if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 and d_model % n_heads:
        raise ValueError(
            f"hidden_size = {d_model} is not divisible by num_attention_heads = {n_heads}")
    d_head = d_model // n_heads
    bias = f.get("attention_bias", True)
    return ModelConfig(
        family="gpt_neox", n_layers=f.need("num_hidden_layers"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=n_heads, d_head=d_head, d_mlp=f.need("intermediate_size"),
        d_vocab=f.need("vocab_size"), n_ctx=None, norm="layernorm",
        norm_eps=f.get("layer_norm_eps", 1e-5), act=f.get("hidden_act", "gelu"), gated_mlp=False,
        positional="rope", rope=read_rope(f, d_head, rotary_dim(f, d_head, 0.25)),
        tie_embeddings=f.get("tie_word_embeddings", False), qkv_bias=bias, o_bias=bias,
        mlp_bias=True, norm_bias=True, parallel_residual=f.get("use_parallel_residual", True),
        bos_token_id=f.get("bos_token_id"), eos_token_id=f.get("eos_token_id"), prepend_bos=False,
        architecture=(f.get("architectures") or [None])[0],
    )


# model_type -> reader. A family is supported exactly when it is listed here and in weights.LAYOUTS.
FAMILY_READERS: dict[str, Callable[[_Fields], ModelConfig]] = {
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
