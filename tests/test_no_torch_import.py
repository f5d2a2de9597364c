"""minilens never imports torch or transformers: they are the tests' reference, not a dependency.

Two checks. Dynamic: a fresh interpreter in which importing torch or transformers is impossible
imports every minilens module, loads tiny GPT-2 and Llama checkpoints written with
safetensors.numpy, runs them, and finds neither library in ``sys.modules``. Static: no import
statement under minilens/ names them, even inside a function that the dynamic check never calls.

This file needs neither torch nor transformers itself.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import minilens

PACKAGE = Path(minilens.__file__).parent
FORBIDDEN = ("torch", "transformers")


def write_tiny_llama(folder: Path, d=16, n_heads=2, d_mlp=32, d_vocab=50, n_layers=1) -> Path:
    """A random Llama checkpoint in the Hugging Face layout, written without torch."""
    rng = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": (d_vocab, d), "model.norm.weight": (d,),
         "lm_head.weight": (d_vocab, d)}
    for l in range(n_layers):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                  p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (d, d),
                  p + "self_attn.v_proj.weight": (d, d), p + "self_attn.o_proj.weight": (d, d),
                  p + "mlp.gate_proj.weight": (d_mlp, d), p + "mlp.up_proj.weight": (d_mlp, d),
                  p + "mlp.down_proj.weight": (d, d_mlp)})
    folder.mkdir(parents=True)
    save_file({name: rng.standard_normal(shape).astype(np.float32) for name, shape in t.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": d, "num_attention_heads": n_heads,
        "num_key_value_heads": n_heads, "intermediate_size": d_mlp, "num_hidden_layers": n_layers,
        "vocab_size": d_vocab, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": False, "bos_token_id": 1}))
    return folder


def write_tiny_gpt2(folder: Path, d=16, n_heads=2, d_vocab=50, n_ctx=32, n_layers=1) -> Path:
    """A random GPT-2 checkpoint (Conv1D weights are [in, out]), written without torch."""
    rng = np.random.default_rng(0)
    t = {"transformer.wte.weight": (d_vocab, d), "transformer.wpe.weight": (n_ctx, d),
         "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    for l in range(n_layers):
        p = f"transformer.h.{l}."
        t.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
                  p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                  p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
                  p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                  p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
                  p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,)})
    folder.mkdir(parents=True)
    save_file({name: rng.standard_normal(shape).astype(np.float32) for name, shape in t.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": d, "n_head": n_heads, "n_layer": n_layers,
        "vocab_size": d_vocab, "n_positions": n_ctx}))
    return folder


CHILD = r"""
import importlib, importlib.abc, pkgutil, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"minilens tried to import {name}")
sys.meta_path.insert(0, Refuse())

import numpy as np
import minilens
for mod in pkgutil.walk_packages(minilens.__path__, "minilens."):
    importlib.import_module(mod.name)
for folder in FOLDERS:
    model = minilens.load(folder)
    trace = model.run([1, 2, 3, 4, 5])
    assert np.isfinite(trace.logits).all() and trace.logits.shape == (5, model.cfg.d_vocab)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print("LOADED", loaded)
sys.exit(1 if loaded else 0)
"""


def test_fresh_interpreter_runs_minilens_without_torch(tmp_path):
    folders = [str(write_tiny_llama(tmp_path / "llama")), str(write_tiny_gpt2(tmp_path / "gpt2"))]
    code = f"FORBIDDEN = {FORBIDDEN!r}\nFOLDERS = {folders!r}\n" + CHILD
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, (
        f"minilens needed torch/transformers, or failed without them:\n"
        f"{result.stdout}\n{result.stderr}")
    assert "LOADED []" in result.stdout


def test_no_import_statement_names_torch_or_transformers():
    offenders = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 8, f"expected the minilens sources under {PACKAGE}"
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif (isinstance(node, ast.Call) and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and getattr(node.func, "attr", getattr(node.func, "id", ""))
                  in ("import_module", "__import__")):
                names = [str(node.args[0].value)]
            else:
                continue
            offenders += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {n}"
                          for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, ("minilens/ must not import torch or transformers:\n"
                           + "\n".join(offenders))
