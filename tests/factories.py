"""Tiny checkpoints for tests, made by transformers itself with ``save_pretrained``.

Every factory returns ``(folder, torch_model)``: a Hugging Face folder (config.json plus
safetensors, no tokenizer) written under ``tmp_path``, and the transformers model that wrote it
(in eval mode, in the dtype it was saved in). Two calls in one test get two folders.

    from factories import make_gpt2, make_llama, load_reference
    folder, hf = make_gpt2(tmp_path)                                 # GPT-2, float32
    folder, hf = make_llama(tmp_path, n_kv_heads=2)                  # Llama with GQA
    folder, hf = make_llama(tmp_path, dtype="bfloat16", shard=True)  # bf16 weights, several shards
    folder, hf = make_llama(tmp_path, dialect="rope_scaling",
                            rope={"rope_type": "linear", "factor": 2.0})
    ref = load_reference(folder, "float64")          # transformers, from the saved bytes

Keyword arguments (all optional):
- ``n_layers, d_model, n_heads, n_kv_heads (llama), d_head (llama), d_mlp, d_vocab, n_ctx``: sizes,
  in minilens's vocabulary. Defaults are tiny: 2 layers, d_model 32, 4 heads, d_vocab 101.
- ``rope`` (llama): a dict merged into ``rope_parameters``, e.g. ``{"rope_type": "llama3",
  "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_max_position_embeddings": 64}``. ``rope_theta`` defaults to 10000.
- ``dtype``: "float32" (default), "float16", "bfloat16" or "float64": the dtype of the stored
  tensors.
- ``shard``: save with ``max_shard_size="20KB"``, so an index file and several shards appear.
- ``dialect`` (llama): how config.json spells rotary settings. "rope_parameters" is what
  transformers >= 5 writes. "rope_scaling" and "rope_scaling_type" rewrite it in the hub dialect
  (top-level ``rope_theta``, ``rope_scaling`` keyed by ``rope_type`` or by ``type``,
  ``head_dim: null``).
- ``seed``: the weights are random, but reproducible.
- any other keyword goes to the transformers config unchanged (``tie_word_embeddings``,
  ``attention_bias``, ``mlp_bias``, ``max_position_embeddings``, ...).

The weights are not transformers' initialisation: that one sets norm weights to 1 and biases to
0, which would hide a missing gamma or bias. Every parameter is drawn at random instead, with
scales that keep activations O(1), so each tensor visibly affects the logits.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from _torch import import_torch

torch, transformers = import_torch()

_counter = itertools.count()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def randomize(model, seed: int = 0) -> None:
    """Draw every parameter at random: norm weights near 1, biases and matrices
    O(1/sqrt(fan_in))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if "norm" in name or name.split(".")[-2].startswith("ln"):
                # LayerNorm/RMSNorm gamma and beta
                value = (1.0 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise
            elif p.ndim == 1:
                # biases
                value = 0.2 * noise
            else:
                # matrices and embeddings
                value = (noise / p.shape[-1] ** 0.5 if "wte" not in name and "embed" not in name
                         else noise * 0.5)
            p.copy_(value.to(p.dtype))


def _save(model, tmp_path, family: str, dtype: str, shard: bool) -> Path:
    folder = Path(tmp_path) / f"{family}-{next(_counter)}"
    model = model.to(DTYPES[dtype]).eval()
    kwargs = {"max_shard_size": "20KB"} if shard else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def make_gpt2(tmp_path, *, n_layers=2, d_model=32, n_heads=4, d_mlp=None, d_vocab=101, n_ctx=64,
              dtype="float32", shard=False, seed=0, **overrides):
    """A random GPT-2 saved under tmp_path.  -> (folder, transformers GPT2LMHeadModel)"""
    cfg = transformers.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp,
                                  vocab_size=d_vocab, n_positions=n_ctx, bos_token_id=0,
                                  eos_token_id=0, **overrides)
    model = transformers.GPT2LMHeadModel(cfg).to(torch.float64)
    randomize(model, seed)
    folder = _save(model, tmp_path, "gpt2", dtype, shard)
    return folder, model


def make_llama(tmp_path, *, n_layers=2, d_model=32, n_heads=4, n_kv_heads=None, d_head=None,
               d_mlp=64, d_vocab=101, rope=None, dtype="float32", shard=False,
               dialect="rope_parameters", seed=0, **overrides):
    """A random Llama saved under tmp_path.  -> (folder, transformers LlamaForCausalLM)"""
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, **(rope or {})}
    overrides.setdefault("max_position_embeddings", 256)
    cfg = transformers.LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                                   num_attention_heads=n_heads,
                                   num_key_value_heads=n_kv_heads or n_heads,
                                   head_dim=d_head or d_model // n_heads,
                                   intermediate_size=d_mlp, vocab_size=d_vocab,
                                   rope_parameters=rope_parameters,
                                   bos_token_id=1, eos_token_id=2, **overrides)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float64)
    randomize(model, seed)
    folder = _save(model, tmp_path, "llama", dtype, shard)
    if dialect != "rope_parameters":
        to_hub_dialect(folder, type_key="type" if dialect == "rope_scaling_type" else "rope_type")
    return folder, model


def to_hub_dialect(folder: Path, type_key: str = "rope_type") -> dict:
    """Rewrite config.json from transformers 5's ``rope_parameters`` into the hub dialect, in place.

    Top-level ``rope_theta``; ``rope_scaling`` holding the rest, its type under ``type_key``
    ("rope_type" or the older "type"), or null for default rope; and ``head_dim: null``.
    """
    path = Path(folder) / "config.json"
    hf = json.loads(path.read_text())
    params = dict(hf.pop("rope_parameters"))
    hf["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type", "default")
    hf["rope_scaling"] = None if kind == "default" else {type_key: kind, **params}
    if hf.get("head_dim") == hf["hidden_size"] // hf["num_attention_heads"]:
        hf["head_dim"] = None
    path.write_text(json.dumps(hf, indent=2))
    return hf


def load_reference(folder, dtype="float64", attn_implementation="sdpa"):
    """transformers' model loaded from the saved folder, in ``dtype``: the reference for parity.

    Loading from the folder (rather than reusing the model that saved it) means the reference sees
    exactly the stored bits, e.g. bfloat16 weights widened to float64. SDPA (transformers' default)
    computes in the model's dtype; Llama's "eager" attention runs its softmax in float32 even in a
    float64 model, so ask for "eager" only when you need ``output_attentions``.
    """
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=DTYPES[dtype], attn_implementation=attn_implementation).eval()


def prompt(n_seq: int = 48, d_vocab: int = 101, seed: int = 0):
    """Random token ids [n_seq] (int64 numpy), >= 40 long by default: RoPE layout bugs hide in short
    prompts."""
    import numpy as np
    return np.random.default_rng(seed).integers(0, d_vocab, size=n_seq, dtype=np.int64)


WORDS = ["<unk>", "<s>", "</s>", "to", "be", "or", "not", "that", "is", "the", "question", ","]


def write_tokenizer(folder, words=WORDS) -> dict[str, int]:
    """Write a tiny word-level tokenizer.json into ``folder``: id i is ``words[i]``.  -> the vocab

    Ids 0, 1, 2 are <unk>, <s>, </s>: the Llama factory's BOS is 1, GPT-2's is 0. Words split on
    whitespace and punctuation, and decode joins them with spaces.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")   # joins words with spaces
    tok.save(str(Path(folder) / "tokenizer.json"))
    return vocab


def parity_errors(trace, ref: dict, relative: bool = False) -> dict:
    """Max abs error per compared quantity (divided by max(1, max |ref|) when relative).

    With a final soft-cap the rounding happened before the cap, on the larger pre-cap logits, so
    the logits' relative scale is the largest pre-cap logit.
    """
    def err(ours, theirs, scale=None):
        e = float(np.abs(ours.astype(np.float64) - theirs).max())
        return (e / max(1.0, float(np.abs(theirs).max()) if scale is None else scale)
                if relative else e)
    n_layers = trace.model.cfg.n_layers
    assert len(ref["resid_pre"]) == n_layers, "transformers returned a different number of layers"
    out = {f"resid_pre {l}": err(trace["resid_pre", l], ref["resid_pre"][l])
           for l in range(n_layers)}
    out["normalized"] = err(trace["normalized"], ref["normalized"])
    precap = float(np.abs(trace["logits_precap"]).max()) if "logits_precap" in trace else None
    out["logits"] = err(trace.logits, ref["logits"], precap)
    return out


def assert_within(errs: dict, tol: float, what: str, hint: str) -> None:
    """Fail with the worst quantity, every error, and a hint at where to look."""
    worst = max(errs, key=errs.get)
    assert errs[worst] <= tol, (
        f"{what}: {worst} differs by {errs[worst]:.3g} > {tol:g}. All errors: "
        + ", ".join(f"{k}={v:.2g}" for k, v in errs.items()) + ". " + hint
    )
