"""minilens on GGUF files of every covered architecture and every covered type, against
transformers.

Each case is a random transformers checkpoint, converted the way llama.cpp's converter does it
(tests/gguf_factories.py, whose faithfulness tests/test_gguf_factories.py proves against gguf-py
and transformers). The storage types are spread over the cases so that all 13 types minilens
reads appear: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, and the K-quants Q2_K..Q6_K (random
valid blocks with finite scales, since gguf-py cannot quantize K-quants).

The reference, for each case:
- transformers' own GGUF loader on the same file, where it reads that architecture (it
  dequantizes with gguf-py and undoes the converter's transforms with its own code);
- otherwise (gemma, and llama with q/k biases, which transformers' GGUF config drops),
  transformers on the file's "HF twin": the original config.json with the file's dequantized
  tensors (gguf_factories.write_hf_twin).
Tolerance: float32 logits within 1e-4 * max(1, max |ref|), on 48 tokens (a wrong rotary layout
hides in short prompts). minilens on the file must also equal minilens on the twin to 1e-5:
both hold the same float32 weights (Gemma's norms round once through 1 + gamma).
"""

from __future__ import annotations

import numpy as np
import pytest

import minilens as ml
from _torch import REQUIRE_TORCH, import_torch

torch, transformers = import_torch()
if not REQUIRE_TORCH:
    pytest.importorskip("gguf")

from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES  # noqa: E402

from factories import randomize  # noqa: E402
from gguf_factories import ARCH, hf_to_gguf, write_hf_twin  # noqa: E402

D_VOCAB = 101
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=D_VOCAB, bos_token_id=1, eos_token_id=2,
             max_position_embeddings=256)
WIDE = dict(SMALL, hidden_size=256, intermediate_size=512)  # K-quant rows hold 256 numbers

# case -> (model_type, config overrides, ggml types by GGUF tensor leaf, reference)
CASES = {
    "llama-f32": ("llama", SMALL, "F32", "gguf"),
    "llama-q8_0": ("llama", SMALL, {"token_embd": "Q8_0", "*": "Q8_0"}, "gguf"),
    "llama-bias-f16": ("llama", dict(SMALL, attention_bias=True), "F16", "twin"),
    "llama-kquants": ("llama", dict(WIDE, num_attention_heads=2, num_key_value_heads=1),
                      {"attn_q": "Q2_K", "attn_k": "Q3_K", "attn_v": "Q4_K", "attn_output": "Q5_K",
                       "ffn_gate": "Q6_K", "ffn_up": "Q4_K", "ffn_down": "Q6_K", "*": "Q6_K"},
                      "gguf"),
    # Llama 3 rope: the converter writes it as the rope_freqs tensor, which transformers' GGUF
    # loader ignores; the twin keeps the llama3 config. The middle band is populated (d_head 16).
    "llama3-rope": ("llama", dict(SMALL, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=8192)), "F32", "twin"),
    "mistral-q4_0": ("mistral", SMALL, "Q4_0", "gguf"),
    "qwen2-q4_1": ("qwen2", SMALL, "Q4_1", "gguf"),
    # transformers' GGUF config for qwen3 has no head_dim, so it assumes Qwen3Config's 128.
    "qwen3-kquants": ("qwen3", dict(WIDE, num_attention_heads=2, num_key_value_heads=1,
                                    head_dim=128),
                      {"attn_q": "Q4_K", "attn_k": "Q5_K", "attn_v": "Q6_K", "attn_output": "Q2_K",
                       "*": "Q3_K"}, "gguf"),
    "gemma-bf16": ("gemma", dict(SMALL, head_dim=16, pad_token_id=0), "BF16", "twin"),
    # GGUF carries no query_pre_attn_scalar: llama.cpp (and minilens) use d_head, so the
    # checkpoint is made with that value. transformers' GGUF loader ignores the file's soft-caps
    # (it keeps 50 and 30), so the reference is the twin, whose config.json has the real caps.
    "gemma2-q5_0": ("gemma2", dict(SMALL, head_dim=16, pad_token_id=0, query_pre_attn_scalar=16,
                                   attn_logit_softcapping=3.0, final_logit_softcapping=5.0,
                                   sliding_window=8), "Q5_0", "twin"),
    "phi3-q5_1": ("phi3", dict(SMALL, pad_token_id=0), "Q5_1", "gguf"),
    "gpt2-q8_0": ("gpt2", dict(n_layer=2, n_embd=64, n_head=4, vocab_size=D_VOCAB, bos_token_id=0,
                               eos_token_id=0), {"token_embd": "F16", "*": "Q8_0"}, "gguf"),
}
ALL_TYPES = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
             "Q5_K", "Q6_K"}


def test_the_cases_cover_every_type_and_architecture():
    used = set()
    for _, _, types, _ in CASES.values():
        used |= {types} if isinstance(types, str) else set(types.values())
    assert used == ALL_TYPES, f"types not covered: {ALL_TYPES - used}"
    from minilens.loading.gguf_checkpoint import ARCHITECTURES
    assert {ARCH[c[0]] for c in CASES.values()} == set(ARCHITECTURES)


def ids(n: int = 48) -> np.ndarray:
    return np.random.default_rng(1).integers(3, D_VOCAB, size=n, dtype=np.int64)


def logits_of(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)[None]).logits[0].double().numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_gguf_matches_transformers(case, tmp_path):
    model_type, overrides, types, reference = CASES[case]
    cfg = transformers.AutoConfig.for_model(model_type, **overrides)
    hf_model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64)
    randomize(hf_model, seed=3)
    folder = tmp_path / "hf"
    hf_model.to(torch.float32).save_pretrained(folder)
    path = hf_to_gguf(folder, tmp_path / "gguf" / "model.gguf", types=types, tokenizer=True)
    twin = write_hf_twin(path, folder, tmp_path / "twin")

    ours = ml.load(path)(ids())
    if reference == "gguf":
        assert ARCH[model_type] in GGUF_SUPPORTED_ARCHITECTURES
        ref_model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32)
    else:
        ref_model = transformers.AutoModelForCausalLM.from_pretrained(twin, dtype=torch.float32)
    ref = logits_of(ref_model.eval(), ids())
    err = float(np.abs(ours - ref).max()) / max(1.0, float(np.abs(ref).max()))
    assert err <= 1e-4, (f"{case}: logits differ from transformers ({reference}) "
                         f"by {err:.3g} relative. "
                         f"If only later positions drift, suspect the Q/K un-permutation; "
                         f"if all do, the dequantizer or a transposed weight.")
    twin_logits = ml.load(twin)(ids())
    err_twin = float(np.abs(ours - twin_logits).max()) / max(1.0, float(np.abs(twin_logits).max()))
    assert err_twin <= 1e-5, (
        f"{case}: minilens on the GGUF and on its HF twin differ by {err_twin:.3g}")
