"""GGUF -> a Hugging Face folder (config.json, model.safetensors, tokenizer files).

`minilens convert MODEL.gguf OUT_DIR` lets a GGUF model go into any tool that reads Hugging Face
folders (transformers' `from_pretrained`, TransformerLens, nnsight), and gives the tests a second
route to the same numbers. The weights are written dequantized, in float32, under the names and
in the layouts that transformers expects: exactly the tensors minilens itself computes with.

The safetensors file is written one tensor at a time (the header first, from the shapes), so a
model never needs to be held in memory whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import InputError, UnsupportedModelError
from .checkpoint import resolve
from .gguf_checkpoint import find_gguf, gguf_tokenizer, open_gguf

# model_type -> (transformers class, prefix of every tensor but the untied head)
HF_CLASSES = {
    "llama": ("LlamaForCausalLM", "model."), "qwen2": ("Qwen2ForCausalLM", "model."),
    "qwen3": ("Qwen3ForCausalLM", "model."), "gemma": ("GemmaForCausalLM", "model."),
    "gemma2": ("Gemma2ForCausalLM", "model."), "phi3": ("Phi3ForCausalLM", "model."),
    "gpt2": ("GPT2LMHeadModel", "transformer."),
}


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, progress=None) -> Path:
    """Write the Hugging Face folder for one GGUF file into ``out_dir`` (new or empty).

    -> out_dir
    """
    found = find_gguf(resolve(gguf_path))
    if found is None:
        raise InputError(f"gguf_path {str(gguf_path)!r} is not a GGUF file, "
                         f"nor a folder holding one.")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"out_dir {str(out)!r} already exists and is not an empty folder; "
                         f"minilens never overwrites files. Choose a new folder.")
    if out.resolve() == found.parent.resolve():
        raise InputError("out_dir is the folder that holds the GGUF file; "
                         "minilens never writes into a weights folder. Choose a new folder.")
    hf, ckpt = open_gguf(found)
    if "rope_freqs.weight" in ckpt.gguf.tensors:
        raise UnsupportedModelError(
            f"{found}: its rope scaling is stored as per-frequency divisors "
            f"('rope_freqs.weight'), which config.json cannot express exactly; "
            f"minilens.load reads it, but convert does not.")
    cfg = ModelConfig.from_hf(hf, source=f"{found} (its GGUF metadata)")
    ckpt.validate(cfg)
    cls, prefix = HF_CLASSES[hf["model_type"]]
    out.mkdir(parents=True, exist_ok=True)

    names = sorted(ckpt.infos)
    shapes = {n: ckpt.infos[n].shape for n in names}
    stored = {n: (n if n == "lm_head.weight" else prefix + n) for n in names}
    get = ckpt.getter(np.float32)
    write_safetensors(out / "model.safetensors",
                      [(stored[n], shapes[n], lambda n=n: get(n, shapes[n])) for n in names],
                      progress)

    config = {**{k: v for k, v in hf.items() if v is not None}, "architectures": [cls],
              "torch_dtype": "float32", "converted_from": found.name}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer = gguf_tokenizer(ckpt.gguf)
    if tokenizer is not None:
        write_tokenizer(out, tokenizer, ckpt.gguf.metadata)
    return out


def write_tokenizer(out: Path, tokenizer, metadata: dict) -> None:
    """tokenizer.json and tokenizer_config.json, such that transformers' tokenizer gives
    minilens's ids.

    minilens prepends BOS itself; transformers' fast tokenizer does it in the post-processor, so
    the exported tokenizer.json gets one that adds BOS exactly when minilens would.
    """
    from tokenizers import processors

    hf_tok = tokenizer.hf
    bos = tokenizer.bos_token_id
    bos_str = hf_tok.id_to_token(bos) if bos is not None else None
    if tokenizer.prepend_bos and bos_str is not None:
        hf_tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_str} $A", pair=f"{bos_str} $A $B", special_tokens=[(bos_str, bos)])
    hf_tok.save(str(out / "tokenizer.json"))
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "add_bos_token": bool(tokenizer.prepend_bos), "bos_token": bos_str,
              "eos_token": hf_tok.id_to_token(eos) if isinstance(eos, int) else None,
              "chat_template": metadata.get("tokenizer.chat_template")}
    (out / "tokenizer_config.json").write_text(
        json.dumps({k: v for k, v in config.items() if v is not None}, indent=2) + "\n",
        encoding="utf-8")


def write_safetensors(path: Path, tensors: list[tuple[str, tuple, object]], progress=None) -> None:
    """Write float32 tensors [(name, shape, make_array)] to one safetensors file, one at a time."""
    header, offset = {}, 0
    for name, shape, _ in tensors:
        n_bytes = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # the data block starts 8-byte aligned, as the reference library writes
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for i, (name, shape, make) in enumerate(tensors):
            array = np.ascontiguousarray(make(), dtype="<f4")
            assert array.shape == tuple(shape), (name, array.shape, shape)
            fh.write(array.tobytes())
            if progress is not None:
                progress(f"writing {path.name}: {i + 1}/{len(tensors)} tensors")
