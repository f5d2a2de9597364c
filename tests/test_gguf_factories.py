"""The GGUF factory is faithful: proven against gguf-py and transformers, never against minilens.

Each case is a random transformers checkpoint (``save_pretrained``, 2 layers, d_vocab 101),
converted with ``gguf_factories.hf_to_gguf``:

| case      | model_type -> arch  | what it exercises                                          |
|-----------|---------------------|------------------------------------------------------------|
| llama     | llama -> llama      | q/k row permutation with GQA (4/2 heads), untied output,   |
|           |                     | no tokenizer (only llama writes ``vocab_size``)            |
| llama_bias| llama -> llama      | the permutation of the q and k *biases*                    |
| mistral   | mistral -> llama    | a Mistral checkpoint written as plain llama                |
| qwen2     | qwen2 -> qwen2      | q/k/v biases, no permutation                               |
| qwen3     | qwen3 -> qwen3      | attn_q_norm/attn_k_norm; d_model 256, d_mlp 512 (K-quants) |
| gemma     | gemma -> gemma      | +1 on the norms, no output tensor (round trip only)        |
| gemma2    | gemma2 -> gemma2    | four norms per layer (+1), soft-caps, sliding window       |
| phi3      | phi3 -> phi3        | fused attn_qkv and ffn_up = [gate; up]                     |
| gpt2      | gpt2 -> gpt2        | Conv1D transposes, position_embd, LayerNorm biases, tied   |

The references, strongest first:
- logits: transformers' own GGUF loader (``from_pretrained(..., gguf_file=...)``) against the
  original checkpoint, on a 48-token prompt (a wrong rotary layout hides in short prompts).
  The F32 weights are bit-identical, so the tolerance, 1e-4 of max(1, max |logit|), only
  covers eps stored as float32 in GGUF and float reordering.
- tensors: transformers' reverse mapping (``load_gguf_checkpoint`` with its tensor processors)
  against the checkpoint's tensors (exactly; Gemma norms to one float32 rounding). It covers
  llama_bias, whose logits transformers cannot reproduce (its GGUF config has no
  ``attention_bias``, so it drops the biases).
- round trip: gguf-py's reader and dequantizer plus our inverse (``gguf_hf_tensors``) give back
  every tensor at F32, for all cases (gemma too, which transformers cannot read at all), and our
  GGUF names equal gguf-py's TensorNameMap for every HF name.
- quantized files: transformers from the GGUF file against transformers from its dequantized
  HF twin (``write_hf_twin``): Q8_0 (llama), Q4_1 (qwen2), and every K-quant at once (qwen3).
  The non-K types must also stay close to the checkpoint's own weights, which a wrong
  orientation or permutation would not.
Besides: metadata spot checks against the converter's set_gguf_parameters (which keys, which
are absent, F32 norms and position_embd in a Q8_0 file), linear and llama3 rope, inputs from
random_checkpoints (no transformers) and bf16 shards, refused types and block sizes. What
transformers cannot check is listed in test_transformers_limits_are_known. About 10 s.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _torch import REQUIRE_TORCH, import_torch

torch, transformers = import_torch()
if not REQUIRE_TORCH:
    pytest.importorskip("gguf")
import gguf  # noqa: E402  (after the skip above)
from transformers.modeling_gguf_pytorch_utils import (  # noqa: E402
    GGUF_SUPPORTED_ARCHITECTURES,
    load_gguf_checkpoint,
)

from factories import prompt, randomize  # noqa: E402
from gguf_factories import (  # noqa: E402
    ARCH,
    gguf_hf_tensors,
    gguf_tensor_name,
    hf_to_gguf,
    read_safetensors,
    write_hf_twin,
)

D_VOCAB = 101
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=D_VOCAB, bos_token_id=1, eos_token_id=2)
CASES = {
    "llama": ("llama", dict(SMALL, max_position_embeddings=256), False),
    "llama_bias": ("llama", dict(SMALL, max_position_embeddings=256, attention_bias=True), False),
    "mistral": ("mistral", dict(SMALL, max_position_embeddings=256), True),
    "qwen2": ("qwen2", dict(SMALL), True),
    # transformers' GGUF config for qwen3 has no head_dim, so it takes Qwen3Config's 128.
    "qwen3": ("qwen3", dict(SMALL, hidden_size=256, intermediate_size=512, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=128), True),
    "gemma": ("gemma", dict(SMALL, head_dim=16, pad_token_id=0), True),
    # GGUF carries no query_pre_attn_scalar: keep transformers' default (256), which it assumes.
    "gemma2": ("gemma2", dict(SMALL, head_dim=16, pad_token_id=0), True),
    "phi3": ("phi3", dict(SMALL, pad_token_id=0), True),
    # transformers maps GGUF context_length to n_ctx, not n_positions: keep the default 1024.
    "gpt2": ("gpt2", dict(n_layer=2, n_embd=64, n_head=4, vocab_size=D_VOCAB, bos_token_id=0,
                          eos_token_id=0), True),
}
# Logits and transformers' tensors: the cases whose arch transformers reads, minus llama_bias.
LOADABLE = [c for c in CASES if ARCH[CASES[c][0]] in GGUF_SUPPORTED_ARCHITECTURES]

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """case -> the folder of a random checkpoint, made once per module."""
    _sources = {}

    def get(case: str):
        if case not in _sources:
            model_type, kwargs, _ = CASES[case]
            cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
            model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64)
            randomize(model, seed=len(_sources))
            # general.name is the folder's name, and transformers reads a file named exactly
            # "mistral" as arch mistral, which gguf-py does not know: keep the names apart.
            folder = tmp_path_factory.mktemp("hf") / f"{case}-checkpoint"
            model.to(torch.float32).save_pretrained(folder)
            _sources[case] = folder
        return _sources[case]
    return get


def convert(folder, tmp_path, case: str, **kwargs):
    """hf_to_gguf into its own folder (transformers reads a folder plus a file name)."""
    kwargs.setdefault("tokenizer", CASES[case][2])
    return hf_to_gguf(folder, tmp_path / "gguf" / f"{case}.gguf", **kwargs)


def logits_of(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids)[None]).logits[0].double().numpy()


def relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max()) / max(1.0, float(np.abs(ref).max()))


def from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def from_folder(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


# --- round trip, names ---------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_f32_round_trip_and_names(case, source, tmp_path):
    folder = source(case)
    path = convert(folder, tmp_path, case)
    ours = read_safetensors(folder)
    back = gguf_hf_tensors(path)
    arch = ARCH[CASES[case][0]]
    assert sorted(back) == sorted(ours), f"{case}: the file lost or invented tensors"
    for name, w in ours.items():
        # Gemma's norms pass through 1 + gamma and back: one float32 rounding of ~1.
        tol = 2e-7 if arch.startswith("gemma") and name.endswith("norm.weight") else 0.0
        assert np.abs(back[name] - w).max() <= tol, f"{case}: {name} changed in the round trip"

    n_layers = json.loads((folder / "config.json").read_text()).get("num_hidden_layers", 2)
    name_map = gguf.get_tensor_name_map(
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), n_layers)
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    for hf_name, w in ours.items():
        stem, suffix = hf_name.rsplit(".", 1)
        expected = f"{name_map.get_name(stem)}.{suffix}"
        assert gguf_tensor_name(arch, hf_name) == expected, f"{hf_name}: gguf-py says {expected}"
        t = stored[expected]
        # GGUF lists dims fastest-first; the numpy shape is their reverse ([d_out, d_in]).
        conv1d = arch == "gpt2" and w.ndim == 2 and ".c_" in hf_name     # stored transposed
        shape = w.shape[::-1] if conv1d else w.shape
        assert [int(n) for n in reversed(t.shape)] == list(shape), f"{expected}: dims order"
        assert t.tensor_type == gguf.GGMLQuantizationType.F32


# --- transformers: tensors and logits --------------------------------------------------------

@pytest.mark.parametrize("case", LOADABLE)
def test_transformers_reads_the_same_tensors(case, source, tmp_path):
    """transformers' reverse mapping (tensor processors: un-permute, -1, transpose) gives back
    the checkpoint exactly. The model it maps onto is built from the source config, so even
    tensors its own GGUF config would drop (llama's biases) are compared."""
    folder = source(case)
    path = convert(folder, tmp_path, case)
    config = transformers.AutoConfig.from_pretrained(folder)
    arch = ARCH[config.model_type]
    if config.model_type != arch:               # Mistral: transformers reads the file as llama
        fields_ = {k: v for k, v in config.to_dict().items() if k != "model_type"}
        config = transformers.AutoConfig.for_model(arch, **fields_)
    model = transformers.AutoModelForCausalLM.from_config(config)
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    ours = read_safetensors(folder)
    assert sorted(parsed) == sorted(ours), f"{case}: transformers maps other names"
    for name, w in ours.items():
        err = float(np.abs(parsed[name].double().numpy() - w).max())
        assert err <= 2e-7, f"{case}: transformers reads {name} differently (max err {err:.3g})"


@pytest.mark.parametrize("case", [c for c in LOADABLE if c != "llama_bias"])
def test_transformers_logits_from_gguf_match_the_checkpoint(case, source, tmp_path):
    folder = source(case)
    path = convert(folder, tmp_path, case)
    ids = prompt(48, D_VOCAB)
    ours, ref = logits_of(from_gguf(path), ids), logits_of(from_folder(folder), ids)
    err = relative(ours, ref)
    assert err <= 1e-4, (f"{case}: transformers-from-GGUF logits differ by {err:.3g} (relative). "
                         "Is a metadata key missing, or a transform (permute, +1, .T) wrong?")


# --- quantized files -----------------------------------------------------------------------

K_MIX = {"token_embd": "Q8_0", "output": "Q6_K", "attn_q": "Q2_K", "attn_k": "Q3_K",
         "attn_v": "Q4_K", "attn_output": "Q5_K", "ffn_gate": "Q6_K", "ffn_up": "Q4_K",
         "ffn_down": "Q5_K"}


@pytest.mark.parametrize("case, types", [("llama", "Q8_0"), ("qwen2", "Q4_1"), ("qwen3", K_MIX)],
                         ids=["llama-Q8_0", "qwen2-Q4_1", "qwen3-K-quants"])
def test_quantized_file_matches_its_twin(case, types, source, tmp_path):
    """The twin holds exactly what the file holds: same logits through transformers."""
    folder = source(case)
    path = convert(folder, tmp_path, case, types=types)
    twin = write_hf_twin(path, folder, tmp_path / "twin")
    ids = prompt(48, D_VOCAB)
    ours, ref = logits_of(from_gguf(path), ids), logits_of(from_folder(twin), ids)
    err = relative(ours, ref)
    assert err <= 1e-4, f"{case} {types}: GGUF and its twin differ by {err:.3g} (relative)"
    original = read_safetensors(folder)
    effective = read_safetensors(twin)
    assert any(not np.array_equal(effective[n], original[n]) for n in original), \
        "the quantized file holds the original weights: nothing was quantized"
    if isinstance(types, dict):         # the random K-quant blocks: finite, zero mean, same scale
        for name, w in effective.items():
            if w.ndim == 2 and "embed" not in name:
                assert np.isfinite(w).all(), name
                assert abs(float(w.mean())) < 0.05 * float(w.std()), f"{name}: not zero-mean"
                assert abs(float(w.std()) / float(original[name].std()) - 1) < 0.05, name


# Relative RMS error of a quantized tensor, measured on these Gaussian weights: F16 2e-4,
# BF16 1.7e-3, Q8_0 5.5e-3, Q5_1 0.039, Q5_0 0.044, Q4_1 0.080, Q4_0 0.088. Bounds are ~1.5x.
BOUNDS = {"F16": 5e-4, "BF16": 4e-3, "Q8_0": 0.01, "Q5_1": 0.06, "Q5_0": 0.07, "Q4_1": 0.12,
          "Q4_0": 0.13}


@pytest.mark.parametrize("qtype", list(BOUNDS))
def test_quantized_weights_stay_close_to_the_checkpoint(qtype, source, tmp_path):
    """Quantization error only: a tensor read back in the wrong orientation or with q/k rows
    still interleaved would be off by about sqrt(2), not by a few per cent."""
    folder = source("llama")
    effective = gguf_hf_tensors(convert(folder, tmp_path, "llama", types=qtype))
    for name, w in read_safetensors(folder).items():
        err = float(np.sqrt(np.mean((effective[name] - w) ** 2) / np.mean(w ** 2)))
        bound = 0.0 if w.ndim == 1 else BOUNDS[qtype]      # norms and biases stay F32
        assert err <= bound, f"{qtype}: {name} has relative error {err:.3g} > {bound}"


# --- metadata ------------------------------------------------------------------------------

def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def types_of(path) -> dict:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_metadata_follows_the_converter(source, tmp_path):
    llama = fields(convert(source("llama"), tmp_path / "a", "llama"))
    assert llama["general.architecture"] == "llama"
    assert (llama["llama.vocab_size"], llama["llama.rope.dimension_count"]) == (D_VOCAB, 16)
    assert (llama["llama.attention.key_length"], llama["llama.attention.head_count_kv"]) == (16, 2)
    assert not any(k.startswith("tokenizer.") for k in llama), "tokenizer=False writes no vocab"

    mistral = fields(convert(source("mistral"), tmp_path / "b", "mistral"))
    assert mistral["general.architecture"] == "llama"
    assert "llama.attention.sliding_window" not in mistral, "the converter drops Mistral's window"
    assert len(mistral["tokenizer.ggml.tokens"]) == D_VOCAB

    gemma2_path = convert(source("gemma2"), tmp_path / "c", "gemma2")
    gemma2 = fields(gemma2_path)
    assert "gemma2.rope.freq_base" not in gemma2 and "gemma2.vocab_size" not in gemma2
    assert (gemma2["gemma2.attn_logit_softcapping"], gemma2["gemma2.final_logit_softcapping"],
            gemma2["gemma2.attention.sliding_window"]) == (50.0, 30.0, 4096)
    raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(gemma2_path)).tensors}
    src = read_safetensors(source("gemma2"))
    assert np.allclose(raw["blk.1.post_ffw_norm.weight"],
                       src["model.layers.1.post_feedforward_layernorm.weight"] + 1, atol=1e-7)
    assert "output.weight" not in raw

    phi3 = fields(convert(source("phi3"), tmp_path / "d", "phi3"))
    assert (phi3["phi3.rope.dimension_count"], phi3["phi3.attention.sliding_window"]) == (16, 0)
    assert phi3["phi3.rope.scaling.original_context_length"] == 4096

    gpt2_path = convert(source("gpt2"), tmp_path / "e", "gpt2", types="Q8_0")
    stored = types_of(gpt2_path)
    assert stored["token_embd.weight"] == stored["blk.0.attn_qkv.weight"] == "Q8_0"
    assert stored["position_embd.weight"] == "F32", "the converter keeps position_embd in F32"
    assert stored["blk.0.attn_norm.weight"] == stored["blk.0.attn_qkv.bias"] == "F32"
    assert "output.weight" not in stored
    assert fields(gpt2_path)["gpt2.feed_forward_length"] == 256
    tied = types_of(convert(source("gpt2"), tmp_path / "f", "gpt2", tied_output=True))
    assert "output.weight" in tied


def test_rope_scaling_metadata(tmp_path):
    from random_checkpoints import llama_config, write_checkpoint
    linear = write_checkpoint(tmp_path / "lin", llama_config(rope={"rope_type": "linear",
                                                                   "factor": 4.0}))
    meta = fields(hf_to_gguf(linear, tmp_path / "lin.gguf"))
    assert (meta["llama.rope.scaling.type"], meta["llama.rope.scaling.factor"]) == ("linear", 4.0)

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    l3 = write_checkpoint(tmp_path / "l3", llama_config(d_model=256, n_heads=2, rope=rope))
    path = hf_to_gguf(l3, tmp_path / "l3.gguf")
    assert "llama.rope.scaling.type" not in fields(path), "llama3 rope is a tensor, not keys"
    factors = next(np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors
                   if t.name == "rope_freqs.weight")
    # d_head 128, theta 5e5: short wavelengths keep factor 1, long ones get 8, a band between.
    assert factors.shape == (64,) and factors[0] == 1.0 and factors[-1] == 8.0
    assert ((factors > 1) & (factors < 8)).any(), "the interpolated middle band is empty"


def test_numpy_bf16_and_sharded_checkpoints(tmp_path):
    """The factory reads what random_checkpoints writes (no transformers), and bf16 shards."""
    from factories import make_llama
    from random_checkpoints import gpt2_config, write_checkpoint
    gpt2 = write_checkpoint(tmp_path / "gpt2", gpt2_config(d_model=32, n_heads=4))
    back = gguf_hf_tensors(hf_to_gguf(gpt2, tmp_path / "gpt2.gguf", tokenizer=True))
    for name, w in read_safetensors(gpt2).items():
        assert np.array_equal(back[name], w), name
    folder, model = make_llama(tmp_path, dtype="bfloat16", shard=True)
    assert (folder / "model.safetensors.index.json").exists()
    back = gguf_hf_tensors(hf_to_gguf(folder, tmp_path / "bf16.gguf"))
    for name, p in model.to(torch.bfloat16).state_dict().items():
        assert np.array_equal(back[name], p.float().numpy()), f"{name}: bf16 is widened exactly"


def test_bad_block_rows_are_refused(source, tmp_path):
    with pytest.raises(ValueError, match="multiple of 256"):
        convert(source("llama"), tmp_path, "llama", types="Q4_K")      # d_in 64
    with pytest.raises(ValueError, match="not one of"):
        convert(source("llama"), tmp_path, "llama", types="IQ2_XS")
    with pytest.raises(ValueError, match="does not have"):
        convert(source("llama"), tmp_path, "llama", types={"attn_qkv": "Q8_0"})


def test_transformers_limits_are_known():
    """What transformers' GGUF loader cannot check here; a failure means it learned something
    and the case above can be tightened."""
    assert "gemma" not in GGUF_SUPPORTED_ARCHITECTURES, (
        "transformers reads gemma GGUF now: "
        "add gemma to the logits test (today it is round trip only)")
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING as keys
    assert "attention.key_length" not in keys["qwen3"], "qwen3 head_dim can now differ from 128"
    assert "attn_logit_softcapping" not in keys["gemma2"], "gemma2 soft-caps are read now"
