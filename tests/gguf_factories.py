"""Small GGUF files written the way llama.cpp's converter writes them, plus what they mean.

    from gguf_factories import hf_to_gguf, gguf_hf_tensors, write_hf_twin
    path = hf_to_gguf(hf_folder, tmp_path / "gguf" / "m.gguf", types="Q8_0", tokenizer=True)
    twin = write_hf_twin(path, hf_folder, tmp_path / "twin")   # config.json + model.safetensors

``hf_to_gguf`` reads a Hugging Face folder (config.json plus safetensors, as written by
random_checkpoints.write_checkpoint or by ``save_pretrained``) and writes a GGUF v3 file with the
metadata keys, tensor names and tensor transforms of llama.cpp's ``convert_hf_to_gguf.py``
(read at ggml-org/llama.cpp, conversion/{base,llama,qwen,gemma,phi,gpt2}.py, 2025-26):

| model_type        | arch    | what the converter does to the tensors                           |
|-------------------|---------|------------------------------------------------------------------|
| llama, mistral    | llama   | permutes attn_q / attn_k rows (weight and bias) into interleaved |
|                   |         | rotary pairs; llama3 rope becomes a ``rope_freqs`` tensor        |
| qwen2, qwen3      | qwen2/3 | nothing (rotate-half kept); qwen3 adds attn_q_norm/attn_k_norm   |
| gemma, gemma2     | gemma/2 | adds 1 to every ``*norm.weight``; never writes ``output``        |
| phi3              | phi3    | nothing: attn_qkv and ffn_up (= [gate; up]) stay fused           |
| gpt2              | gpt2    | transposes the Conv1D weights to [out, in]                       |

Metadata follows the converter key by key, including what it leaves out: gemma/gemma2 files
carry no ``rope.freq_base`` (llama.cpp assumes 10000) and no ``query_pre_attn_scalar``; only
llama writes ``vocab_size`` (the others rely on the token list, so pass ``tokenizer=True`` for
loaders that need the vocabulary size); gpt2's feed_forward_length is always 4 * n_embd; a
mistral checkpoint becomes plain ``llama`` without its sliding window; llama3 rope factors use
a *top-level* ``original_max_position_embeddings`` or 8192, never the one inside
``rope_parameters`` (a converter quirk, mirrored: use 8192 in tests that want the file and the
config to agree). A tied checkpoint has no ``lm_head.weight``, so the file has no ``output``
(pass ``tied_output=True`` for the older converters that copied token_embd into output for GPT-2).

``types`` is the ggml type of the 2-D weights: one name for all of them, or a dict by GGUF
tensor leaf (``{"token_embd": "Q8_0", "attn_q": "Q4_K", "*": "F16"}``; unlisted -> "*" or F32).
Norms, biases, ``rope_freqs`` and gpt2's ``position_embd`` stay F32, as the converter keeps
them. F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 quantize the real weights with gguf-py.
gguf-py cannot quantize K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), so those tensors are RANDOM
valid blocks with finite f16 scales, scaled to the original tensor's standard deviation and
zero mean. A quantized block runs along a row's fastest dim, d_in, which must be a multiple of
32 (256 for K-quants); a tensor that does not fit raises ValueError instead of falling back.

Because the stored weights are not the folder's weights, ``gguf_hf_tensors`` reads a written
file back (gguf-py's reader and dequantizers), undoes the transforms and returns the effective
tensors under their Hugging Face names; ``write_hf_twin`` saves them with the original
config.json, so transformers can load exactly the weights the GGUF file holds.

This module needs numpy, safetensors and gguf, never torch: tests without torch can use it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import zlib
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType

# HF model_type -> the GGUF architecture the converter writes.
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
        "gemma": "gemma", "gemma2": "gemma2", "phi3": "phi3", "gpt2": "gpt2"}

# Per-layer names, HF leaf (after "model.layers.N.") -> GGUF leaf (after "blk.N.").
_DECODER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_LAYER_NAMES = {
    "llama": _DECODER,
    "qwen2": _DECODER,
    "qwen3": {**_DECODER, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"},
    "gemma": _DECODER,
    # Gemma 2 norms both sides of each sublayer: its "post_attention_layernorm" is not the ffn norm.
    "gemma2": {**_DECODER, "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm"},
    # Phi-3 keeps q, k, v fused and gate, up fused: the converter writes them as they are.
    "phi3": {"input_layernorm": "attn_norm", "self_attn.qkv_proj": "attn_qkv",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"},
    "gpt2": {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"},
}
_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
                 "lm_head": "output"}
_GPT2_GLOBAL_NAMES = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd",
                      "transformer.ln_f": "output_norm", "lm_head": "output"}

K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1") + K_QUANTS

# Byte offsets of each K-quant super-block's f16 scale d and min scale dmin (ggml's block_qN_K).
_K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2),
             "Q6_K": (208, None)}

# general.file_type, as llama.cpp names a file by its main weight type.
_FILE_TYPE = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
              "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0",
              "Q5_1": "MOSTLY_Q5_1", "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M",
              "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M", "Q6_K": "MOSTLY_Q6_K"}


# ---------------------------------------------------------------------------------------------
# HF -> GGUF
# ---------------------------------------------------------------------------------------------

def hf_to_gguf(hf_folder: Path, out_path: Path, *, types: dict[str, str] | str = "F32",
               tokenizer: bool = False, seed=0, tied_output: bool = False) -> Path:
    """Write ``hf_folder``'s model as the GGUF file ``out_path``, as convert_hf_to_gguf.py would.

    ``seed`` draws the K-quant blocks (the other types are deterministic). Returns ``out_path``.
    """
    hf_folder, out_path = Path(hf_folder), Path(out_path)
    hf = json.loads((hf_folder / "config.json").read_text())
    model_type = hf.get("model_type")
    if model_type not in ARCH:
        raise NotImplementedError(f"{hf_folder}: model_type {model_type!r}; this factory writes "
                                  f"{', '.join(sorted(ARCH))}")
    arch = ARCH[model_type]
    for qtype in [types] if isinstance(types, str) else types.values():
        if qtype not in TYPES:
            raise ValueError(f"type {qtype!r} is not one of {', '.join(TYPES)}")
    if isinstance(types, dict):
        leaves = {*_LAYER_NAMES[arch].values(), *(_GPT2_GLOBAL_NAMES if arch == "gpt2"
                                                  else _GLOBAL_NAMES).values(), "*"}
        if unknown := sorted(set(types) - leaves):
            raise ValueError(f"types names {unknown}, which arch {arch!r} does not have; "
                             f"its tensors are {', '.join(sorted(leaves - {'*'}))}")
    tensors = read_safetensors(hf_folder)
    if tied_output and "lm_head.weight" not in tensors:
        embed = "transformer.wte.weight" if arch == "gpt2" else "model.embed_tokens.weight"
        tensors["lm_head.weight"] = next(w for n, w in tensors.items()
                                         if _canonical(arch, n) == embed)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(hf_folder.name)              # the converter falls back to the folder's name
    extra = _write_hparams(writer, arch, model_type, hf, _file_type(types))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer:
        _write_tokenizer(writer, hf)

    for gguf_name, values in extra.items():      # generated tensors (rope_freqs) come first
        writer.add_tensor(gguf_name, values.astype(np.float32))
    for hf_name, values in tensors.items():
        gguf_name = gguf_tensor_name(arch, hf_name)
        if gguf_name is None:
            continue
        values = _to_gguf_layout(arch, hf, hf_name, values)
        qtype = _storage_type(types, gguf_name, values)
        data = _encode(values, qtype, gguf_name, seed)
        raw_dtype = None if qtype in ("F32", "F16") else QType[qtype]   # F32/F16: numpy dtype
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def gguf_tensor_name(arch: str, hf_name: str) -> str | None:
    """The GGUF name the converter gives an HF tensor; None for tensors it drops."""
    hf_name = _canonical(arch, hf_name)
    if arch in ("gemma", "gemma2") and hf_name == "lm_head.weight":
        return None                              # Gemma is always tied; llama.cpp has no output
    if hf_name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
        return None                              # buffers, not weights: prepare_tensors skips them
    if arch == "gpt2" and hf_name.endswith((".attn.bias", ".attn.masked_bias")):
        return None                              # causal-mask buffers of old GPT-2 checkpoints
    stem, _, suffix = hf_name.rpartition(".")
    globals_ = _GPT2_GLOBAL_NAMES if arch == "gpt2" else _GLOBAL_NAMES
    if stem in globals_:
        return f"{globals_[stem]}.{suffix}"
    prefix = r"transformer\.h" if arch == "gpt2" else r"model\.layers"
    match = re.fullmatch(prefix + r"\.(\d+)\.(.+)", stem)
    if match and match.group(2) in _LAYER_NAMES[arch]:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[arch][match.group(2)]}.{suffix}"
    raise ValueError(f"the converter cannot map tensor {hf_name!r} for arch {arch!r}")


def _canonical(arch: str, hf_name: str) -> str:
    """GPT-2 hub checkpoints drop the "transformer." prefix; the converter accepts both."""
    if arch == "gpt2" and not hf_name.startswith(("transformer.", "lm_head.")):
        return "transformer." + hf_name
    return hf_name


def _to_gguf_layout(arch: str, hf: dict, hf_name: str, w: np.ndarray) -> np.ndarray:
    """The converter's per-tensor transform (in the source dtype, as it does)."""
    if w.dtype not in (np.float16, np.float32):
        w = w.astype(np.float32)                 # bf16, f64 -> f32 first, as prepare_tensors does
    if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return rotary_interleave(w, hf["num_attention_heads"])
    if arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return rotary_interleave(w, _n_kv_heads(hf))
    if arch in ("gemma", "gemma2") and hf_name.endswith("norm.weight"):
        return w + w.dtype.type(1)               # GGUF stores Gemma's (1 + gamma)
    if arch == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        return np.ascontiguousarray(w.T)         # Conv1D [in, out] -> [out, in]
    return w


def rotary_interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """LlamaModel.permute: each head's rows [x_0..x_{h-1}, y_0..y_{h-1}] -> [x_0, y_0, x_1, ...].

    HF Llama rotates the half-split pairs (i, i + d_head/2); Meta's and llama.cpp's kernels
    rotate adjacent pairs (2i, 2i+1), so the converter reorders the q and k rows to match.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rotary_deinterleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of rotary_interleave: back to HF's half-split rows."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _n_kv_heads(hf: dict) -> int:
    return hf.get("num_key_value_heads") or hf["num_attention_heads"]


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------

def _write_hparams(w: gguf.GGUFWriter, arch: str, model_type: str, hf: dict,
                   file_type: int) -> dict[str, np.ndarray]:
    """The converter's set_gguf_parameters for this arch.  -> generated tensors (rope_freqs)."""
    if arch == "gpt2":
        w.add_block_count(hf["n_layer"])
        # convert reads hparams["n_ctx"], which transformers 5 no longer saves: n_positions then.
        w.add_context_length(hf.get("n_ctx") or hf["n_positions"])
        w.add_embedding_length(hf["n_embd"])
        w.add_feed_forward_length(4 * hf["n_embd"])          # whatever n_inner says
        w.add_head_count(hf["n_head"])
        w.add_layer_norm_eps(hf["layer_norm_epsilon"])
        w.add_file_type(file_type)
        return {}
    n_heads, d_model = hf["num_attention_heads"], hf["hidden_size"]
    if arch in ("gemma", "gemma2"):                          # no super(): no rope keys at all
        head_dim = hf.get("head_dim") or 256
        w.add_context_length(hf["max_position_embeddings"])
        w.add_embedding_length(d_model)
        w.add_block_count(hf["num_hidden_layers"])
        w.add_feed_forward_length(hf["intermediate_size"])
        w.add_head_count(n_heads)
        w.add_head_count_kv(_n_kv_heads(hf))
        w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_file_type(file_type)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(hf["attn_logit_softcapping"])
            w.add_final_logit_softcapping(hf["final_logit_softcapping"])
            w.add_sliding_window(hf["sliding_window"])
        return {}
    rope = _rope(hf)
    if arch == "phi3":
        if rope["rope_type"] not in ("default", None):
            raise NotImplementedError(f"phi3 rope {rope['rope_type']!r} (long-rope factors)")
        partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        original = rope.get("original_max_position_embeddings") or hf.get(
            "original_max_position_embeddings", hf["max_position_embeddings"])
        w.add_context_length(hf["max_position_embeddings"])
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_embedding_length(d_model)
        w.add_feed_forward_length(hf["intermediate_size"])
        w.add_block_count(hf["num_hidden_layers"])
        w.add_head_count(n_heads)
        w.add_head_count_kv(_n_kv_heads(hf))
        w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
        w.add_rope_dimension_count(int(partial * d_model) // n_heads)
        w.add_rope_freq_base(rope["rope_theta"])
        w.add_file_type(file_type)
        w.add_sliding_window(hf.get("sliding_window") or 0)  # 0 tells Phi-4 apart
        return {}

    # llama (and mistral), qwen2, qwen3: TextModel.set_gguf_parameters, then the subclass.
    w.add_block_count(hf["num_hidden_layers"])
    w.add_context_length(hf["max_position_embeddings"])
    w.add_embedding_length(d_model)
    w.add_feed_forward_length(hf["intermediate_size"])
    w.add_head_count(n_heads)
    w.add_head_count_kv(_n_kv_heads(hf))
    if rope["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif rope["rope_type"] not in ("default", "llama3", None):
        raise NotImplementedError(f"rope_type {rope['rope_type']!r}: this factory writes default, "
                                  "linear and llama3 rope")
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    # key/value_length come from hparams["head_dim"], which LlamaConfig, MistralConfig and
    # Qwen3Config always fill in and Qwen2Config does not have.
    head_dim = hf.get("head_dim")
    if head_dim is None and model_type != "qwen2":
        head_dim = d_model // n_heads
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(file_type)
    if arch != "llama":
        return {}
    w.add_vocab_size(hf["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if rope["rope_type"] == "llama3":
        return {"rope_freqs.weight": _llama3_rope_factors(hf, rope, head_dim)}
    return {}


def _rope(hf: dict) -> dict:
    """rope settings in either dialect (transformers 5's rope_parameters, or the hub's)."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    return params


def _llama3_rope_factors(hf: dict, rope: dict, head_dim: int) -> np.ndarray:
    """LlamaModel.generate_extra_tensors: the divisor of each rotary frequency, [head_dim/2]."""
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    # The converter reads the top-level key only; transformers 5 keeps it in rope_parameters.
    old_context = hf.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _write_tokenizer(w: gguf.GGUFWriter, hf: dict) -> None:
    """A tiny byte-level BPE vocabulary of exactly vocab_size tokens, in tokenizer.ggml.* keys."""
    n_vocab = hf["vocab_size"]
    tokens, merges = tiny_bpe_vocab(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (n_vocab - 1))
    w.add_token_merges(merges)

    def special(key: str) -> int:
        value = hf.get(key)
        value = value[0] if isinstance(value, list) and value else value
        return value if isinstance(value, int) and 0 <= value < n_vocab else 0
    w.add_bos_token_id(special("bos_token_id"))
    w.add_eos_token_id(special("eos_token_id"))
    if hf.get("pad_token_id") is not None:
        w.add_pad_token_id(special("pad_token_id"))
    w.add_add_bos_token(False)


def tiny_bpe_vocab(n_vocab: int) -> tuple[list[str], list[str]]:
    """n_vocab tokens: "<|endoftext|>", the printable bytes (GPT-2 shows space as "Ġ"), then
    merged letter strings, each with the merge that builds it.  -> (tokens, merges)"""
    tokens = (["<|endoftext|>", "Ġ"] + [chr(c) for c in range(33, 127)])[:n_vocab]
    merges: list[str] = []
    seen = set(tokens)
    letters = [c for c in "etaoinshrdlu" if c in seen]
    i = 1
    while len(tokens) < n_vocab and letters and i < len(tokens):
        for right in letters:
            new = tokens[i] + right
            if len(tokens) < n_vocab and new not in seen:
                tokens.append(new)
                merges.append(f"{tokens[i]} {right}")
                seen.add(new)
        i += 1
    if len(tokens) < n_vocab:
        raise ValueError(f"cannot build a BPE vocabulary of {n_vocab} tokens")
    return tokens, merges


# ---------------------------------------------------------------------------------------------
# storage types
# ---------------------------------------------------------------------------------------------

def _storage_type(types: dict[str, str] | str, gguf_name: str, values: np.ndarray) -> str:
    """The converter keeps 1-D tensors, norms and gpt2's position_embd in F32."""
    leaf = re.sub(r"^blk\.\d+\.", "", gguf_name).rsplit(".", 1)[0]
    if values.ndim <= 1 or gguf_name.endswith("_norm.weight"):
        return "F32"
    if isinstance(types, str):
        qtype = "F32" if leaf == "position_embd" else types
    else:
        qtype = types.get(leaf, "F32" if leaf == "position_embd" else types.get("*", "F32"))
    block = gguf.GGML_QUANT_SIZES[QType[qtype]][0]
    if values.shape[-1] % block:
        raise ValueError(f"{gguf_name}: {qtype} blocks run along d_in, which must be a multiple "
                         f"of {block}; this tensor is {list(values.shape)} ([d_out, d_in])")
    return qtype


def _file_type(types: dict[str, str] | str) -> int:
    if isinstance(types, str):
        main = types
    else:
        named = [t for k, t in types.items() if k != "*"]
        main = types.get("*") or max(set(named), key=named.count, default="F32")
    return gguf.LlamaFileType[_FILE_TYPE[main]]


def _encode(values: np.ndarray, qtype: str, gguf_name: str, seed) -> np.ndarray:
    """The bytes (or float array) GGUFWriter stores for one tensor of type qtype."""
    if qtype == "F32":
        return values.astype(np.float32)
    if qtype == "F16":
        return values.astype(np.float16)
    if qtype in K_QUANTS:
        rng = np.random.default_rng([seed, zlib.crc32(gguf_name.encode())])
        return random_k_blocks(values.shape, qtype, float(values.std()) or 1e-3, rng)
    return gguf.quants.quantize(values.astype(np.float32), QType[qtype])


def random_k_blocks(shape: tuple, qtype: str, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random but valid K-quant super-blocks, uint8 [d_out, d_in / 256 * block_bytes].

    Every quant and sub-block scale byte is random; the f16 super-block scale d is set so the
    dequantized values have standard deviation ``std``, and the f16 min scale dmin (Q2_K, Q4_K,
    Q5_K) so each block's mean is about zero. Both are finite, normal f16 numbers.
    """
    qt = QType[qtype]
    block, n_bytes = gguf.GGML_QUANT_SIZES[qt]
    *rows, d_in = shape
    n_blocks = int(np.prod(rows, dtype=np.int64)) * d_in // block
    raw = rng.integers(0, 256, size=(n_blocks, n_bytes), dtype=np.uint8)
    d_at, dmin_at = _K_SCALES[qtype]

    def decode(d: np.ndarray, dmin: np.ndarray | None) -> np.ndarray:
        raw[:, d_at:d_at + 2] = d.astype(np.float16).reshape(-1, 1).view(np.uint8)
        if dmin_at is not None:
            raw[:, dmin_at:dmin_at + 2] = dmin.astype(np.float16).reshape(-1, 1).view(np.uint8)
        return gguf.quants.dequantize(raw, qt).astype(np.float64)     # [n_blocks, 256]

    # A value is d * (scale * q) - dmin * min: linear in (d, dmin), so decode each part once.
    ones, zeros = np.ones(n_blocks), np.zeros(n_blocks)
    scaled = decode(ones, zeros)                                  # the part d multiplies
    offset = -decode(zeros, ones) if dmin_at is not None else np.zeros_like(scaled)
    total = offset.sum(axis=1)
    ratio = np.divide(scaled.sum(axis=1), total, out=np.zeros(n_blocks), where=total > 0)
    d = std / float((scaled - ratio[:, None] * offset).std())     # dmin = d * ratio: mean 0
    decode(np.full(n_blocks, d), np.minimum(d * ratio, 6e4))
    return raw.reshape(*rows, d_in // block * n_bytes)


# ---------------------------------------------------------------------------------------------
# GGUF -> HF: what a written file means
# ---------------------------------------------------------------------------------------------

def gguf_hf_tensors(gguf_path: Path) -> dict[str, np.ndarray]:
    """The effective float32 tensors of a GGUF file under transformers' names (``model.*``,
    ``transformer.*``, ``lm_head.weight``): dequantized with gguf-py, the converter's transforms
    undone. Generated tensors (rope_freqs) are left out; a file without ``output`` gives no
    ``lm_head.weight``, like a tied checkpoint."""
    reader = gguf.GGUFReader(str(gguf_path))
    arch = reader.get_field("general.architecture").contents()
    inverse = {v: k for k, v in (_GPT2_GLOBAL_NAMES if arch == "gpt2" else _GLOBAL_NAMES).items()}
    layer_inverse = {v: k for k, v in _LAYER_NAMES[arch].items()}
    layer_prefix = "transformer.h" if arch == "gpt2" else "model.layers"
    n_heads = n_kv = None
    if arch == "llama":
        n_heads = int(reader.get_field("llama.attention.head_count").contents())
        n_kv = int(reader.get_field("llama.attention.head_count_kv").contents())
    out = {}
    for t in reader.tensors:
        stem, _, suffix = t.name.rpartition(".")
        if stem == "rope_freqs":
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])   # GGUF lists dims fastest-first
        block = re.fullmatch(r"blk\.(\d+)\.(.+)", stem)
        if block:
            leaf = block.group(2)
            hf_name = f"{layer_prefix}.{block.group(1)}.{layer_inverse[leaf]}.{suffix}"
        else:
            leaf = stem
            hf_name = f"{inverse[stem]}.{suffix}"
        if arch == "llama" and leaf in ("attn_q", "attn_k"):
            w = rotary_deinterleave(w, n_heads if leaf == "attn_q" else n_kv)
        if arch in ("gemma", "gemma2") and t.name.endswith("norm.weight"):
            w = w - np.float32(1)
        if arch == "gpt2" and suffix == "weight" and leaf in ("attn_qkv", "attn_output",
                                                              "ffn_up", "ffn_down"):
            w = w.T
        out[hf_name] = np.ascontiguousarray(w)
    return out


def write_hf_twin(gguf_path: Path, hf_folder: Path, out_folder: Path) -> Path:
    """An HF folder holding exactly the GGUF file's weights: hf_folder's config.json, plus
    gguf_hf_tensors(gguf_path) as model.safetensors (float32).  -> out_folder"""
    from safetensors.numpy import save_file
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(hf_folder) / "config.json", out_folder / "config.json")
    save_file(gguf_hf_tensors(gguf_path), str(out_folder / "model.safetensors"))
    return out_folder


# ---------------------------------------------------------------------------------------------
# safetensors, read without torch (bf16 included)
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors (or of the shards its index names), in file order.

    bf16 is widened exactly to float32 (its bits are the top half of a float32).
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
    else:
        files = {"model.safetensors": None}
    out: dict[str, np.ndarray] = {}
    for name in files:
        blob = (folder / name).read_bytes()
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        header.pop("__metadata__", None)
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            data = np.frombuffer(blob, dtype, offset=8 + n + start,
                                 count=(end - start) // dtype.itemsize)
            if info["dtype"] == "BF16":
                data = (data.astype(np.uint32) << 16).view(np.float32)
            out[key] = data.reshape(info["shape"]).copy()
    return out
