"""A GGUF file as a minilens checkpoint: its metadata as a config, its tensors under HF names.

llama.cpp's converter (convert_hf_to_gguf.py) renames every tensor, changes a few of them, and
writes the config as `{arch}.*` metadata. This module undoes exactly that, and nothing more, so
that the rest of minilens (the family layouts in weights.py, the config readers in config.py)
serves GGUF files and Hugging Face folders alike:

- names:  `blk.3.attn_q.weight` -> `layers.3.self_attn.q_proj.weight`, per architecture;
- values: the converter permutes the rows of `attn_q`/`attn_k` for `llama` into interleaved rotary
  pairs, adds 1 to Gemma's norm weights, and transposes GPT-2's Conv1D weights. Each is undone here;
- config: `llama.block_count` -> `num_hidden_layers`, and so on, into a config.json dict.

Tensors are dequantized (quants.py) when the forward pass first asks for a layer, as bf16 is
widened for safetensors; the quantized bytes stay memory-mapped until then.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError, UnsupportedModelError
from ..fast import workers
from ..fast.pages import anonymous_map
from .checkpoint import LAYOUTS, Checkpoint, Getter, drop_resident_pages, lookup
from .gguf_file import GGUFFile
from .gguf_tokenizer import gguf_add_bos, gguf_bos_token_id, tokenizer_from_gguf
from .safetensors import TensorInfo
from .schema import GGUF, REQUIRED, Derived, by_family, check, short
from .tokenizer import Tokenizer

# Weights per job when blocks are widened (GGUFCheckpoint.widen): small enough that the workers'
# runs of jobs come out nearly even, large enough that a job's fixed costs stay small.
WIDEN_PIECE = 1 << 20

# ----------------------------------------------------------------------------------------------
# Names: GGUF tensor name -> Hugging Face name (without the "model." / "transformer." prefix)
# ----------------------------------------------------------------------------------------------

LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
LLAMA_GLOBALS = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}

BLOCK_NAMES: dict[str, dict[str, str]] = {
    "llama": LLAMA_BLOCK,
    "qwen2": LLAMA_BLOCK,
    "qwen3": {**LLAMA_BLOCK, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
    "gemma": LLAMA_BLOCK,
    # Gemma 2 names its four norms by position; "post_attention_layernorm" is the sandwich norm.
    "gemma2": {**LLAMA_BLOCK, "ffn_norm": "pre_feedforward_layernorm",
               "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
    # Phi-3 keeps its fused projections: attn_qkv = q | k | v, ffn_up = gate | up.
    "phi3": {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
             "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"},
    "gpt2": {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
             "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"},
}
GLOBAL_NAMES: dict[str, dict[str, str]] = {
    arch: LLAMA_GLOBALS for arch in ("llama", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
}
GLOBAL_NAMES["gpt2"] = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f",
                        "output": "lm_head"}
BLOCK_PREFIX = {"gpt2": "h."}  # GPT-2's blocks are "h.{l}.", the others' "layers.{l}."

ARCHITECTURES = tuple(BLOCK_NAMES)


def hf_name(arch: str, name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `layers.3.self_attn.q_proj.weight`; None for a name the arch
    lacks."""
    stem, dot, kind = name.rpartition(".")          # kind: "weight" or "bias"
    if not dot or kind not in ("weight", "bias"):
        return None
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2) if stem.count(".") >= 2 else (None, None, None)
        if layer is None or not layer.isdigit() or part not in BLOCK_NAMES[arch]:
            return None
        return f"{BLOCK_PREFIX.get(arch, 'layers.')}{int(layer)}.{BLOCK_NAMES[arch][part]}.{kind}"
    if stem in GLOBAL_NAMES[arch]:
        return f"{GLOBAL_NAMES[arch][stem]}.{kind}"
    return None


# ----------------------------------------------------------------------------------------------
# Values: undo what the converter did to a tensor
# ----------------------------------------------------------------------------------------------

def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved rotary pairs -> rotate-half, along the rows (the output dim) of attn_q/attn_k.

    Hugging Face's Llama rotates dim i of each head with dim i + d_head/2 ("rotate_half"). Meta's
    original code, and llama.cpp, rotate dims 2i and 2i+1. So llama.cpp's converter reorders each
    head's rows from [first half | second half] to [pair 0 | pair 1 | ...]; this is its inverse.
    """
    rows = w.shape[0]                                          # n_heads * d_head
    w = w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])  # [n_heads, d_head/2, 2, ...]
    # [n_heads, 2, d_head/2, ...] -> [rows, ...]
    return w.swapaxes(1, 2).reshape(rows, *w.shape[3:])


def row_order(arch: str, name: str, hf: dict, n_rows: int) -> np.ndarray | None:
    """The order in which to read the rows of tensor ``name`` (an HF name), to undo the
    converter's reordering of them; None to read them as stored.

    GGUFFile.dequantize moves the rows while they are still quantized: undoing the permutation
    then copies the quantized bytes (0.625 a weight at Q4_1), not the float32 weights (4)."""
    for proj, heads in (("q_proj", "num_attention_heads"), ("k_proj", "num_key_value_heads")):
        if arch == "llama" and name.endswith((f"{proj}.weight", f"{proj}.bias")):
            return unpermute_rows(np.arange(n_rows), hf[heads])
    return None


def value_transform(arch: str, name: str, hf: dict) -> Callable[[np.ndarray], np.ndarray] | None:
    """What to apply to tensor ``name`` (an HF name) after dequantizing it, or None (the rows'
    order is ``row_order``'s)."""
    if arch in ("gemma", "gemma2") and name.endswith("norm.weight"):
        # The converter stores Gemma's (1 + gamma) as llama.cpp multiplies by it; HF stores gamma.
        return lambda w: w - np.float32(1)
    if (arch == "gpt2" and name.endswith(".weight")
            and name.split(".")[-2] in ("c_attn", "c_proj", "c_fc")):
        return lambda w: w.T                                   # back to Conv1D's [in, out]
    return None


# ----------------------------------------------------------------------------------------------
# Config: GGUF metadata -> a config.json dict
# ----------------------------------------------------------------------------------------------

GGUF_FIX = "The file was written by a broken converter, or is damaged."


class _Meta:
    """`{arch}.*` metadata read through the schema's GGUF table (loading/schema.py): a value is
    checked by the rule of the config field it becomes, and a bad one is named by its GGUF key."""

    def __init__(self, gguf: GGUFFile, arch: str):
        self.meta, self.arch, self.path = gguf.metadata, arch, gguf.path
        self.names: dict[str, str] = {}     # config field -> the GGUF key it came from

    def shown(self, key: str) -> str:
        return f"metadata {self.arch + '.' + key!r}"

    def get(self, key: str, derived: Any = None) -> Any:
        """The checked value of `{arch}.{key}`; its default (the schema's) when absent."""
        entry, full = GGUF[key], f"{self.arch}.{key}"
        if full not in self.meta:
            default = by_family(entry.default, self.arch)
            if default is REQUIRED:
                raise CheckpointError(
                    f"{self.path}: the GGUF metadata has no {full!r}, "
                    f"which minilens needs to build the model. "
                    f"The file is incomplete or not a language model.")
            return derived if isinstance(default, Derived) else default
        return check(entry.field, self.meta[full], str(self.path), self.shown(key), GGUF_FIX)

    def put(self, hf: dict, field: str, key: str, derived: Any = None) -> Any:
        """hf[field] = the value of `{arch}.{key}`, remembering where it came from."""
        hf[field] = self.get(key, derived)
        self.names[field] = self.shown(key)
        return hf[field]


def hf_config(gguf: GGUFFile) -> tuple[dict, dict[str, str]]:
    """The config.json that describes this GGUF file, in Hugging Face's own field names, and the
    GGUF key each field came from (for messages)."""
    arch = gguf.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{gguf.path}: GGUF architecture {short(arch)} is not supported; minilens reads "
            f"{', '.join(ARCHITECTURES)} (Mistral-style models are written as 'llama')."
        )
    m = _Meta(gguf, arch)
    hf: dict[str, Any] = {"model_type": arch}
    n_heads = m.put(hf, "num_attention_heads", "attention.head_count")
    d_model = m.put(hf, "hidden_size", "embedding_length")
    d_head = m.get("attention.key_length", d_model // n_heads)
    if f"{arch}.attention.key_length" in gguf.metadata:
        m.put(hf, "head_dim", "attention.key_length")
    n_vocab = (gguf.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in gguf.tensors
               else None)
    m.put(hf, "num_hidden_layers", "block_count")
    m.put(hf, "intermediate_size", "feed_forward_length")
    m.put(hf, "num_key_value_heads", "attention.head_count_kv", n_heads)
    m.put(hf, "vocab_size", "vocab_size", n_vocab)
    m.put(hf, "max_position_embeddings", "context_length")
    hf["tie_word_embeddings"] = "output.weight" not in gguf.tensors
    hf["bos_token_id"] = gguf_bos_token_id(gguf.metadata, str(gguf.path))
    hf["eos_token_id"] = gguf.metadata.get("tokenizer.ggml.eos_token_id")
    m.names.update(bos_token_id="metadata 'tokenizer.ggml.bos_token_id'",
                   eos_token_id="metadata 'tokenizer.ggml.eos_token_id'")
    if arch == "gpt2":
        gpt2 = {"model_type": "gpt2", "n_layer": hf["num_hidden_layers"], "n_embd": d_model,
                "n_head": n_heads, "n_inner": hf["intermediate_size"],
                "vocab_size": hf["vocab_size"], "activation_function": "gelu_new",
                "tie_word_embeddings": hf["tie_word_embeddings"],
                "bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"]}
        m.put(gpt2, "n_positions", "context_length")
        m.put(gpt2, "layer_norm_epsilon", "attention.layer_norm_epsilon")
        m.names.update(n_layer=m.names["num_hidden_layers"], n_embd=m.names["hidden_size"],
                       n_head=m.names["num_attention_heads"],
                       n_inner=m.names["intermediate_size"])
        return gpt2, m.names
    m.put(hf, "rms_norm_eps", "attention.layer_norm_rms_epsilon")
    m.put(hf, "rope_theta", "rope.freq_base")
    hf["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    hf["mlp_bias"] = "blk.0.ffn_up.bias" in gguf.tensors
    if m.get("rope.scaling.type") == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": m.get("rope.scaling.factor")}
        m.names["rope_scaling.factor"] = m.shown("rope.scaling.factor")
    if arch == "qwen2":
        hf["use_sliding_window"] = False
    if arch in ("gemma", "gemma2"):
        hf["hidden_activation"] = "gelu_pytorch_tanh"
    if arch == "gemma2":
        m.put(hf, "attn_logit_softcapping", "attn_logit_softcapping")
        m.put(hf, "final_logit_softcapping", "final_logit_softcapping")
        m.put(hf, "sliding_window", "attention.sliding_window")
        # llama.cpp scales Gemma 2's queries by 1/sqrt(d_head), except for the 27B (46 layers),
        # whose query_pre_attn_scalar is d_model / n_heads; GGUF stores no field for it.
        hf["query_pre_attn_scalar"] = (d_model // n_heads if hf["num_hidden_layers"] == 46
                                       else d_head)
    rotary = m.get("rope.dimension_count", d_head)
    if arch == "phi3":
        if not 0 < rotary <= d_head:
            raise CheckpointError(f"{gguf.path}: {m.shown('rope.dimension_count')} = {rotary} "
                                  f"is not allowed: it must be at most the head width {d_head}. "
                                  f"{GGUF_FIX}")
        hf["partial_rotary_factor"] = rotary / d_head
        window = m.get("attention.sliding_window")   # the converter writes 0 for none
        hf["sliding_window"] = window if window > 0 else None
        m.names["sliding_window"] = m.shown("attention.sliding_window")
        if "rope_factors_long.weight" in gguf.tensors:
            raise UnsupportedModelError(
                f"{gguf.path}: a Phi-3 with LongRoPE ('rope_factors_long.weight'); "
                f"minilens implements the 4k-context Phi-3 only.")
    elif rotary != d_head:
        raise UnsupportedModelError(f"{gguf.path}: {arch}.rope.dimension_count is "
                                    f"{rotary}, not d_head = {d_head}; "
                                    f"partial rotary embeddings are supported for phi3 only.")
    return hf, m.names


# ----------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------

def rope_freq_factors(gguf: GGUFFile, cfg):
    """Llama 3's rope scaling, which llama.cpp stores as per-frequency divisors (the `rope_freqs`
    tensor) rather than as metadata: ``cfg`` with its rope set to divide by them."""
    if "rope_freqs.weight" not in gguf.tensors:
        return cfg
    factors = gguf.dequantize("rope_freqs.weight")
    if (factors.shape != (cfg.rope.rotary_dim // 2,)
            or not (np.isfinite(factors).all() and (factors > 0).all())):
        raise CheckpointError(
            f"{gguf.path}: tensor 'rope_freqs.weight' must hold {cfg.rope.rotary_dim // 2} "
            f"positive finite numbers (one per rotary frequency); it does not.")
    rope = dataclasses.replace(cfg.rope, kind="factors",
                               freq_factors=tuple(float(f) for f in factors))
    return cfg.replace(rope=rope)


class GGUFCheckpoint(Checkpoint):
    """The tensors of one GGUF file under Hugging Face names, dequantized when asked for."""

    def __init__(self, gguf: GGUFFile, hf: dict):
        arch = gguf.metadata["general.architecture"]
        self.gguf, self.hf, self.arch = gguf, hf, arch
        self.layout = LAYOUTS[hf["model_type"]]
        self.infos: dict[str, TensorInfo] = {}
        self.gguf_names: dict[str, str] = {}
        for name, t in gguf.tensors.items():
            if name == "rope_freqs.weight":   # part of the config (rope_freq_factors), not a weight
                continue
            hf_n = hf_name(arch, name)
            if hf_n is None:
                raise CheckpointError(
                    f"{gguf.path}: unexpected tensor {name!r} for architecture {arch!r}. "
                    f"The file's architecture and its tensors do not belong together.")
            transposed = arch == "gpt2" and value_transform(arch, hf_n, hf) is not None
            shape = t.shape[::-1] if transposed else t.shape
            self.infos[hf_n] = TensorInfo(hf_n, t.qtype.name, tuple(shape), t.offset,
                                          t.offset + t.n_bytes, gguf.path)
            self.gguf_names[hf_n] = name
        # HF name -> the HF names of its block (blk.{l}.*), which are widened together
        by_layer: dict[str, list[str]] = {}
        for hf_n, name in self.gguf_names.items():
            if name.startswith("blk."):
                by_layer.setdefault(name.split(".", 2)[1], []).append(hf_n)
        self.blocks = {hf_n: members for members in by_layer.values() for hf_n in members}
        self.layer_blocks = {int(l): members for l, members in by_layer.items()}

    def _info(self, name: str, shape: tuple) -> TensorInfo:
        if name not in self.infos:
            raise CheckpointError(
                f"{self.gguf.path}: tensor {_gguf_name_of(self.arch, name)!r} is missing. "
                f"The file is incomplete, "
                f"or its metadata does not describe it (block_count, biases).")
        info = self.infos[name]
        if info.shape != tuple(shape):
            raise CheckpointError(
                f"{self.gguf.path}: tensor {self.gguf_names[name]!r} "
                f"has shape {list(info.shape)} (numpy order), "
                f"but the GGUF metadata implies {list(shape)}. "
                f"The metadata and the tensors do not belong together."
            )
        return info

    def getter(self, dtype: np.dtype) -> Getter:
        """get(name, shape): one tensor, widened to dtype. The first tensor asked for from a block
        widens the whole block (``widen``), and the others wait here until they are asked for.

        ``get.ahead(layers)`` widens those layers' blocks now, all at once, and keeps them here
        until asked for (LazyLayers.widen_all): the workers then share every block's pieces in
        one go, and wait for each other once instead of once per block."""
        ready: dict[str, np.ndarray] = {}

        def get(name: str, shape: tuple) -> np.ndarray:
            self._info(name, shape)
            w = ready.pop(name, None)      # (pop, not test-then-pop: two threads may share it)
            if w is None:
                block = self.widen([self.blocks.get(name, [name])], dtype)
                w = block.pop(name)
                ready.clear()
                ready.update(block)
            return w

        def ahead(layers: list[int]) -> None:
            ready.update(self.widen([self.layer_blocks[l] for l in layers
                                     if l in self.layer_blocks], dtype))
        get.ahead = ahead                                       # type: ignore[attr-defined]
        return get

    def widen(self, blocks: list[list[str]], dtype: np.dtype) -> dict[str, np.ndarray]:
        """The tensors of ``blocks`` (lists of HF names) dequantized, with the converter's changes
        undone, in dtype.

        Each tensor is cut into pieces of at most WIDEN_PIECE weights, and the workers
        (fast/workers.py) share all the pieces out in runs (workers.in_runs): each worker does
        nearly the same work, and writes its own part of the blocks' buffers.

        A block's tensors are dequantized into one buffer, each on a 64-byte boundary, and
        W_gate and W_in (ffn_gate and ffn_up) one right after the other, so that
        checkpoint.gate_beside_in finds them side by side and need not copy them. The buffer is
        an anonymous memory map in ordinary 4 KiB pages, not an array from np.empty, for which
        numpy asks the kernel for huge pages from 4 MiB. On the machine the benchmarks run on,
        a virtual machine whose host takes back its free memory, huge pages made the first use
        of a model far slower once the machine had idled a few seconds (tests/benchmarks/
        README.md, "first use"). Weights are written once, so huge pages would save little later.
        """
        into: dict[str, np.ndarray] = {}
        for names in blocks:
            into.update(self._block_buffer(names))
        jobs = [job for n, out in into.items() for job in self.gguf.pieces(
            self.gguf_names[n], out, row_order(self.arch, n, self.hf, self.infos[n].shape[0]),
            WIDEN_PIECE)]
        n_workers = workers.n_workers() if len(jobs) > 1 else 1
        mine = workers.in_runs([weights for weights, _ in jobs], n_workers)
        workers.split(lambda w: [jobs[i][1]() for i in mine[w]], n_workers)
        out: dict[str, np.ndarray] = {}
        for n, flat in into.items():
            w = flat.reshape(self.gguf.tensors[self.gguf_names[n]].shape)
            transform = value_transform(self.arch, n, self.hf)
            out[n] = (w if transform is None else transform(w)).astype(dtype, copy=False)
        return out

    def _block_buffer(self, names: list[str]) -> dict[str, np.ndarray]:
        """One float32 buffer for a block's tensors, cut into a flat array for each (``widen``),
        W_gate's and W_in's first, side by side."""
        sizes = {n: math.prod(self.infos[n].shape) for n in names}
        first = [n for n in names if n.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight"))]
        starts, end = {}, 0
        order = sorted(first) + [n for n in names if n not in first]   # gate_proj < up_proj
        for n in order:
            starts[n], end = end, end + sizes[n]
            if not (len(first) == 2 and n == order[0]):
                end = -(-end // 16) * 16
        buffer = np.frombuffer(anonymous_map(max(1, end) * 4), dtype=np.float32)[:end]
        return {n: buffer[starts[n]:starts[n] + sizes[n]] for n in order}

    def globals_finite(self) -> bool:
        """No NaN or inf in the global tensors (token_embd, output_norm, ...), read from their
        quantized blocks' scales (GGUFFile.all_finite): for SmolLM2's Q8_0 embedding, a 16th of
        its stored bytes, where checking the widened weights reads 113 MB."""
        return all(self.gguf.all_finite(self.gguf_names[n]) for n in self.infos
                   if n not in self.blocks)

    def release_pages(self) -> None:
        """Give back this process's resident pages of the file (Checkpoint.release_pages)."""
        drop_resident_pages(self.gguf._mm)

    def unexpected_error(self, names: list[str]) -> CheckpointError:
        return CheckpointError(f"{self.gguf.path}: unexpected tensor {self.gguf_names[names[0]]!r} "
                               f"({len(names)} unexpected in all): "
                               f"the GGUF metadata does not describe it "
                               f"(check block_count and the architecture).")


def _gguf_name_of(arch: str, hf_n: str) -> str:
    """The GGUF name of an HF name, for messages: the inverse of hf_name."""
    for prefix in (BLOCK_PREFIX.get(arch, "layers."),):
        if hf_n.startswith(prefix):
            layer, rest = hf_n[len(prefix):].split(".", 1)
            stem, kind = rest.rsplit(".", 1)
            part = next((g for g, h in BLOCK_NAMES[arch].items() if h == stem), stem)
            return f"blk.{layer}.{part}.{kind}"
    stem, kind = hf_n.rsplit(".", 1)
    part = next((g for g, h in GLOBAL_NAMES[arch].items() if h == stem), stem)
    return f"{part}.{kind}"


def open_gguf(path: Path) -> tuple[dict, GGUFCheckpoint]:
    """(config.json dict, checkpoint) for one GGUF file. The dict is read once here through the
    config readers, so that an error in it names the GGUF key it came from."""
    gguf = GGUFFile(path)
    hf, names = hf_config(gguf)
    ModelConfig.from_hf(hf, source=f"{path} (its GGUF metadata)", fix=GGUF_FIX, names=names)
    return hf, GGUFCheckpoint(gguf, hf)


def find_gguf(path: Path) -> Path | None:
    """The GGUF file to load: ``path`` itself, or the one .gguf in a folder without config.json."""
    if lookup(path) == "file":
        return path
    if lookup(path / "config.json") == "file":   # (a folder that cannot be searched says so)
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise CheckpointError(
            f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found[:5])}); "
            f"pass the one you want: minilens.load({str(found[0])!r}).")
    return found[0] if found else None


def gguf_tokenizer(gguf: GGUFFile) -> "Tokenizer | None":
    """The tokenizer the file's `tokenizer.ggml.*` metadata describes; None without that metadata.
    A tokenizer type minilens does not cover raises CheckpointError (load then runs on ids)."""
    if "tokenizer.ggml.model" not in gguf.metadata:
        return None
    hf_tok = tokenizer_from_gguf(gguf.metadata, str(gguf.path))
    source = str(gguf.path)
    return Tokenizer.from_hf_tokenizer(hf_tok, gguf_bos_token_id(gguf.metadata, source),
                                       gguf_add_bos(gguf.metadata, source), source)
