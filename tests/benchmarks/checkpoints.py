"""Random-weight checkpoints for the benchmarks, built once into a cache folder outside the repo.

The benchmarks time shapes, not knowledge, so random weights do: GPT-2-small and a Llama of
similar size are made by transformers itself (``save_pretrained``); the TinyLlama-1.1B-shaped
bf16 checkpoint (2.2 GB) is written straight as safetensors from random bf16 bits, which takes
seconds and a few hundred MB instead of building a 4.4 GB float32 torch model first.

The folder is ``$MINILENS_BENCH_CACHE`` or ``~/.cache/minilens-bench``; nothing here is committed.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("MINILENS_BENCH_CACHE", Path.home() / ".cache" / "minilens-bench"))

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
LLAMA_SMALL = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=12, num_key_value_heads=4, vocab_size=32000,
                   max_position_embeddings=2048, tie_word_embeddings=False)
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


def _done(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _random_hf(name: str, model_class: str, config_class: str, config: dict) -> Path:
    """A transformers model with its own seeded random init, saved once into the cache as
    ``name``."""
    folder = CACHE / name
    if not _done(folder):
        import torch
        import transformers
        torch.manual_seed(0)
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        model.save_pretrained(folder, safe_serialization=True)
    return folder


def gpt2_small() -> Path:
    """GPT-2-small shapes (124M parameters), float32, transformers' own random init."""
    return _random_hf("gpt2-small", "GPT2LMHeadModel", "GPT2Config", GPT2_SMALL)


def llama_small() -> Path:
    """A Llama of GPT-2-small's size (12 layers, d_model 768, GQA 12/4, vocab 32000), float32."""
    return _random_hf("llama-small", "LlamaForCausalLM", "LlamaConfig", LLAMA_SMALL)


def tinyllama_bf16() -> Path:
    """TinyLlama-1.1B shapes in bfloat16 (~2.2 GB), random N(0, 0.02) matrices, norms near 1."""
    folder = CACHE / "tinyllama-1.1b-bf16"
    if _done(folder):
        return folder
    import transformers
    cfg = transformers.LlamaConfig(**TINYLLAMA)
    folder.mkdir(parents=True, exist_ok=True)
    d, m, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    d_kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,),
              "lm_head.weight": (V, d)}
    for l in range(L):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (d, d),
                       p + "self_attn.k_proj.weight": (d_kv, d),
                       p + "self_attn.v_proj.weight": (d_kv, d),
                       p + "self_attn.o_proj.weight": (d, d),
                       p + "mlp.gate_proj.weight": (m, d), p + "mlp.up_proj.weight": (m, d),
                       p + "mlp.down_proj.weight": (d, m)})
    header, offset = {}, 0
    for name, shape in shapes.items():
        n_bytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    tmp = folder / "model.safetensors.partial"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            if len(shape) == 1:
                values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            else:
                values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
            # round-to-nearest-even float32 -> bfloat16 bits (the top 16 bits after rounding)
            bits = values.view(np.uint32)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            fh.write(bits.astype("<u2").tobytes())
    tmp.rename(folder / "model.safetensors")
    cfg.dtype = "bfloat16"
    cfg.save_pretrained(folder)
    return folder
