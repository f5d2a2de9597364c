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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError, CheckpointNotFoundError, UnsupportedModelError


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters (Su et al. 2021), as transformers computes them."""

    theta: float                                   # base of the geometric frequency ladder
    rotary_dim: int                                # how many of d_head's dims rotate (partial rotary)
    kind: str = "default"                          # default | linear | dynamic | llama3
    factor: float = 1.0                            # linear, dynamic, llama3
    low_freq_factor: float = 1.0                   # llama3
    high_freq_factor: float = 4.0                  # llama3
    original_max_position_embeddings: int | None = None  # llama3
    max_position_embeddings: int | None = None     # dynamic: the length beyond which theta grows


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of one transformer, in minilens's vocabulary.

    Shape names used across minilens: n_seq, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab.
    """

    family: str            # the checkpoint's model_type, e.g. "gpt2", "llama"
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int        # < n_heads for grouped-query attention; query head h reads kv head h // (n_heads // n_kv_heads)
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int | None      # a hard context limit (learned positions), or None where rotary positions extrapolate
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
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    prepend_bos: bool = False        # does this family's tokenizer convention start with BOS?
    architecture: str | None = None

    @property
    def n_params(self) -> int:
        """Parameter count from the shapes (the unembedding counted once when tied)."""
        d, q, kv, m = self.d_model, self.n_heads * self.d_head, self.n_kv_heads * self.d_head, self.d_mlp
        norm = d * (2 if self.norm_bias else 1)
        attn = d * (q + 2 * kv) + q * d + (q + 2 * kv if self.qkv_bias else 0) + (d if self.o_bias else 0)
        mlp = d * m * (3 if self.gated_mlp else 2) + ((m * (2 if self.gated_mlp else 1) + d) if self.mlp_bias else 0)
        embed = self.d_vocab * d + (self.n_ctx * d if self.positional == "learned" else 0)
        unembed = 0 if self.tie_embeddings else self.d_vocab * d
        return embed + unembed + self.n_layers * (2 * norm + attn + mlp) + norm

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "ModelConfig":
        """Read a Hugging Face config dict; ``source`` names the file in error messages."""
        model_type = hf.get("model_type")
        if model_type not in FAMILY_READERS:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported. "
                f"minilens supports: {', '.join(sorted(FAMILY_READERS))}."
            )
        try:
            return FAMILY_READERS[model_type](_Fields(hf, source))
        except KeyError as e:  # raised by _Fields.need
            raise CheckpointError(str(e.args[0])) from None

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
            raise CheckpointError(f"{path}: cannot be read as JSON ({e}). Re-download or re-save config.json.") from None
        if not isinstance(hf, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(hf).__name__}.")
        return cls.from_hf(hf, source=str(path))


class _Fields:
    """A config dict whose required fields fail with a message naming the field and the file."""

    def __init__(self, hf: dict, source: str):
        self.hf, self.source = hf, source

    def need(self, *names: str) -> Any:
        """The first of ``names`` present and not null; a KeyError with a clear message otherwise."""
        for name in names:
            if self.hf.get(name) is not None:
                return self.hf[name]
        raise KeyError(f"{self.source}: required field {' or '.join(map(repr, names))} is missing or null.")

    def get(self, name: str, default: Any = None) -> Any:
        value = self.hf.get(name)
        return default if value is None else value


def read_rope(f: _Fields, d_head: int, rotary_dim: int | None = None, default_theta: float = 10000.0) -> RopeConfig:
    """Rotary parameters from either config dialect (see the module docstring)."""
    params = dict(f.get("rope_parameters", {}) or {})
    scaling = dict(f.get("rope_scaling", {}) or {})
    merged = {**scaling, **params}  # transformers >= 5 puts everything in rope_parameters
    kind = merged.get("rope_type") or merged.get("type") or "default"
    theta = merged.get("rope_theta") or f.get("rope_theta") or f.get("rotary_emb_base") or default_theta
    if kind not in ("default", "linear", "dynamic", "llama3"):
        raise UnsupportedModelError(
            f"{f.source}: rope type {kind!r} is not supported; minilens implements default, linear, dynamic and llama3."
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
    act = f.get("activation_function", "gelu_new")
    return ModelConfig(
        family="gpt2", n_layers=f.need("n_layer"), d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads,
        d_head=d_model // n_heads, d_mlp=f.get("n_inner") or 4 * d_model, d_vocab=f.need("vocab_size"),
        n_ctx=f.need("n_positions"), norm="layernorm", norm_eps=f.get("layer_norm_epsilon", 1e-5),
        act={"gelu_pytorch_tanh": "gelu_new"}.get(act, act), gated_mlp=False, positional="learned", rope=None,
        tie_embeddings=f.get("tie_word_embeddings", True), qkv_bias=True, o_bias=True, mlp_bias=True,
        norm_bias=True, bos_token_id=f.get("bos_token_id"), eos_token_id=f.get("eos_token_id"),
        prepend_bos=False, architecture=(f.get("architectures") or [None])[0],
    )


def _llama(f: _Fields) -> ModelConfig:
    d_model, n_heads = f.need("hidden_size"), f.need("num_attention_heads")
    d_head = f.get("head_dim") or d_model // n_heads  # head_dim may be present but null
    return ModelConfig(
        family=f.hf["model_type"], n_layers=f.need("num_hidden_layers"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=f.get("num_key_value_heads", n_heads), d_head=d_head, d_mlp=f.need("intermediate_size"),
        d_vocab=f.need("vocab_size"), n_ctx=None, norm="rmsnorm", norm_eps=f.get("rms_norm_eps", 1e-6),
        act=f.get("hidden_act", "silu"), gated_mlp=True, positional="rope", rope=read_rope(f, d_head),
        tie_embeddings=f.get("tie_word_embeddings", False), qkv_bias=f.get("attention_bias", False),
        o_bias=f.get("attention_bias", False), mlp_bias=f.get("mlp_bias", False), norm_bias=False,
        bos_token_id=f.get("bos_token_id"), eos_token_id=f.get("eos_token_id"), prepend_bos=True,
        architecture=(f.get("architectures") or [None])[0],
    )


# model_type -> reader. A family is supported exactly when it is listed here and in weights.LAYOUTS.
FAMILY_READERS: dict[str, Callable[[_Fields], ModelConfig]] = {
    "gpt2": _gpt2,
    "llama": _llama,
}
