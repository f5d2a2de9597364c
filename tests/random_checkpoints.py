"""Random Hugging Face-format checkpoints written with numpy alone: no torch, no transformers.

    from random_checkpoints import write_checkpoint, gpt2_config, llama_config
    folder = write_checkpoint(tmp_path / "m", gpt2_config(n_layers=2, d_model=32, n_heads=4))

The tensor names and shapes come from minilens's own family layout, run against a recording
getter: whatever the layout asks for is written, with the layout's checkpoint prefix. So this
module follows every family minilens supports without knowing its names. That the names are
the ones transformers writes is proven elsewhere, by the parity tests on ``save_pretrained``
checkpoints; here the point is a valid checkpoint of any shape, fast, for the property and
error tests.

The values are random with scales that keep activations O(1): norm weights near 1, biases
small, matrices ~ 1/sqrt(fan_in), embeddings ~ 0.5. Nothing is zero, so every tensor shows up
in the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minilens.config import ModelConfig
from minilens.loading.checkpoint import LAYOUTS


def gpt2_config(*, n_layers=2, d_model=32, n_heads=4, d_mlp=None, d_vocab=101, n_ctx=64, tie=True,
                act="gelu_new", **extra) -> dict:
    """A GPT-2 config.json dict, as transformers writes it."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": n_layers,
            "n_embd": d_model, "n_head": n_heads, "n_inner": d_mlp, "vocab_size": d_vocab,
            "n_positions": n_ctx,
            "layer_norm_epsilon": 1e-5, "activation_function": act, "tie_word_embeddings": tie,
            "bos_token_id": 0, "eos_token_id": 0, **extra}


def llama_config(*, n_layers=2, d_model=32, n_heads=4, n_kv_heads=None, d_head=None, d_mlp=64,
                 d_vocab=101, tie=False, bias=False, mlp_bias=False, rope=None, model_type="llama",
                 **extra) -> dict:
    """A Llama-style config.json dict in transformers 5's dialect (``rope_parameters``)."""
    return {"model_type": model_type, "architectures": ["LlamaForCausalLM"],
            "num_hidden_layers": n_layers, "hidden_size": d_model, "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv_heads or n_heads, "head_dim": d_head or d_model // n_heads,
            "intermediate_size": d_mlp, "vocab_size": d_vocab, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": tie, "attention_bias": bias,
            "mlp_bias": mlp_bias, "max_position_embeddings": 256, "bos_token_id": 1,
            "eos_token_id": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **(rope or {})},
            **extra}


def tensor_shapes(hf: dict) -> dict[str, tuple]:
    """The checkpoint tensor names (with prefix) and shapes that minilens's layout expects for this
    config."""
    cfg = ModelConfig.from_hf(hf)
    layout = LAYOUTS[cfg.family]
    shapes: dict[str, tuple] = {}

    def get(name: str, shape: tuple) -> np.ndarray:
        shapes[name] = tuple(shape)
        return np.zeros(shape, np.float32)

    layout.globals(get, cfg)
    for l in range(cfg.n_layers):
        layout.layer(get, cfg, l)
    prefix = layout.prefixes[0] if layout.prefixes else ""
    return {(n if n.startswith("lm_head") else prefix + n): s for n, s in shapes.items()}


def random_tensors(hf: dict, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random values for every tensor of the config, at scales that keep activations O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in tensor_shapes(hf).items():
        noise = rng.standard_normal(shape)
        leaf = name.split(".")[-2] if "." in name else name
        if (len(shape) == 1 and name.endswith("weight")
                and ("norm" in name or leaf.startswith("ln"))):
            value = 1.0 + 0.2 * noise                        # norm gains
        elif len(shape) == 1:
            value = 0.2 * noise                              # biases
        elif any(k in name for k in ("wte", "wpe", "embed")):
            value = 0.5 * noise                              # embeddings
        else:
            # matrices: ~1/sqrt(fan_in) either layout
            value = noise / np.sqrt(np.sqrt(shape[0] * shape[1]))
        out[name] = np.ascontiguousarray(value.astype(dtype))
    return out


def write_checkpoint(folder, hf: dict, seed: int = 0, dtype=np.float32, n_shards: int = 1,
                     tensors: dict[str, np.ndarray] | None = None) -> Path:
    """config.json plus model.safetensors (or ``n_shards`` shards and an index) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    tensors = random_tensors(hf, seed, dtype) if tensors is None else tensors
    save_tensors(folder, tensors, n_shards)
    return folder


def edit_config(folder: Path, **changes) -> Path:
    """Rewrite folder's config.json with some fields changed (a value of ... deletes the field).
    -> the folder"""
    path = Path(folder) / "config.json"
    hf = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            hf.pop(key, None)
        else:
            hf[key] = value
    path.write_text(json.dumps(hf))
    return Path(folder)


def save_tensors(folder: Path, tensors: dict[str, np.ndarray], n_shards: int = 1) -> None:
    """Write tensors as one model.safetensors, or as shards named by
    model.safetensors.index.json."""
    if n_shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return
    names = sorted(tensors)
    groups = [names[i::n_shards] for i in range(n_shards)]
    weight_map = {}
    for i, group in enumerate(g for g in groups if g):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(folder / shard))
        weight_map.update({n: shard for n in group})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
