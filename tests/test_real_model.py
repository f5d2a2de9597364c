"""A real pretrained model: SmolLM2-135M-Instruct, read from its GGUF file (Q4_1/Q8_0/F32).

The reference is transformers loading the same GGUF file (`from_pretrained(folder,
gguf_file=...)`). It dequantizes with gguf-py and undoes llama.cpp's Q/K row permutation with its
own code, so it checks minilens's reader, dequantizers and un-permutation end to end. A second
route goes through `minilens convert` (a Hugging Face folder that transformers loads as usual).

Tolerance: float32 on both sides, |ours - ref| <= 1e-4 * max(1, |ref|) element by element. The
prompts are 40 tokens or more, because a wrong RoPE layout only shows later in a sequence.
Without the model (`minilens fetch smollm2`) these tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

import numpy as np
import pytest

import minilens as ml
from _real_model import smollm2_path
from _torch import import_torch

torch, transformers = import_torch()

PROMPTS = [
    ("The Eiffel Tower is located in the city of Paris, which is the capital of France. "
     "It was built for the 1889 World's Fair and was at first criticised by some of the leading "
     "artists of the day."),
    ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
     "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
     "print(fibonacci(10))"),
    ("Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
     "to make glucose and oxygen. It takes place mainly in the leaves, inside the chloroplasts, "
     "which hold the green pigment chlorophyll."),
]
GENERATE_PROMPTS = ["The capital of France is", "Once upon a time, there was a",
                    "The Eiffel Tower is located in the city of", "def add(a, b):\n   ",
                    "Water boils at a temperature of"]



@pytest.fixture(scope="module")
def path():
    return smollm2_path()


@pytest.fixture(scope="module")
def model(path):
    return ml.load(path)


@pytest.fixture(scope="module")
def reference(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def reference_run(reference, ids):
    with torch.no_grad():
        out = reference(torch.tensor(ids)[None], output_hidden_states=True)
    return out.logits[0].numpy(), [h[0].numpy() for h in out.hidden_states]


def assert_close(ours, ref, what, hint):
    """|ours - ref| <= 1e-4 * max(1, |ref|) at every position, |ref| being the position's largest
    value.

    Per position, not per element: SmolLM2's stream carries massive activations (about 22,000 in
    one dim from layer 20 on), and float32 rounds every element of a position on that scale.
    Measured: at layer 20 minilens float32 and transformers float32 each differ from minilens
    float64 by 0.026 and 0.008 there, 1e-6 of the scale; an element-wise bound would fail both.
    """
    scale = np.maximum(1.0, np.abs(ref).max(axis=-1, keepdims=True))           # [n_seq, 1]
    excess = np.abs(ours.astype(np.float64) - ref) / scale
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 1e-4, (f"{what}: position {worst[0]} differs by {excess[worst]:.3g} "
                                  f"of the position's scale {scale[worst[0], 0]:.3g}, "
                                  f"beyond 1e-4. {hint}")


def test_prompts_are_long_enough(model):
    for text in PROMPTS:
        assert len(model.to_tokens(text)) >= 40, (
            "parity prompts must be >= 40 tokens: RoPE bugs hide in short ones")


@pytest.mark.parametrize("i, fast", [(0, True), (1, True), (2, True), (0, False)])
def test_logits_and_every_resid_pre_match_transformers(model, reference, i, fast):
    """Through the fast pass on all three prompts, and the textbook pass (forward.py) on one."""
    ids = model.to_tokens(PROMPTS[i])
    model.fast = fast
    try:
        trace = model.run(ids)
    finally:
        model.fast = True
    ref_logits, hidden = reference_run(reference, ids)
    for l in range(model.cfg.n_layers):
        assert_close(trace["resid_pre", l], hidden[l], f"resid_pre {l}",
                     "If layer 0 matches and later ones drift with position, suspect the Q/K "
                     "un-permutation (interleaved pairs vs rotate-half).")
    assert_close(trace.logits, ref_logits, "logits",
                 "Check the final norm and the tied unembedding.")


def test_greedy_tokens_equal_transformers_generate(model, reference):
    # minilens's generate does not stop at EOS either
    reference.generation_config.eos_token_id = None
    for text in GENERATE_PROMPTS:
        ids = model.to_tokens(text)
        ours = model.generate(ids, n_new=20)
        with torch.no_grad():
            ref = reference.generate(torch.tensor(ids)[None], max_new_tokens=20,
                                     do_sample=False)[0].numpy()
        assert ours.tolist() == ref.tolist(), (f"greedy continuation of {text!r} differs:\n"
                                               f"minilens:     {model.decode(ours[len(ids):])!r}\n"
                                               f"transformers: {model.decode(ref[len(ids):])!r}")


def test_the_capital_of_france_is_paris(model):
    trace = model.run("The capital of France is")
    top = int(trace.logits[-1].argmax())
    assert model.to_str_tokens([top]) == [" Paris"], (
        f"top-1 is {model.to_str_tokens([top])}, not ' Paris'")


def test_attribution_parts_sum_to_the_logit(model):
    trace = model.run("The capital of France is")
    for by, layer in (("layer", None), ("head", None), ("neuron", 20), ("token", 20)):
        attr = ml.layer_attribution(trace, target=" Paris", position=-1, by=by, layer=layer)
        total = float(np.sum(attr.values))  # the constant (bias, norm offset) is one of the parts
        assert abs(total - attr.logit) <= 1e-4 * max(1.0, abs(attr.logit)), (
            f"by={by}: parts sum to {total:.6f}, the logit is {attr.logit:.6f}")


def test_convert_route_gives_the_same_numbers(model, path, tmp_path_factory):
    """minilens convert -> a Hugging Face folder -> transformers, and minilens on that folder."""
    from minilens.loading.convert import gguf_to_hf

    folder = gguf_to_hf(path, tmp_path_factory.mktemp("smollm2-hf") / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = model.to_tokens(PROMPTS[0])
    ref_logits, hidden = reference_run(ref, ids)
    trace = model.run(ids)
    for l in range(model.cfg.n_layers):
        assert_close(trace["resid_pre", l], hidden[l], f"converted folder, resid_pre {l}",
                     "The converted folder's weights or config differ from the GGUF's.")
    assert_close(trace.logits, ref_logits, "converted folder, logits",
                 "Check config.json's rope and eps.")
    again = ml.load(folder)
    assert np.array_equal(again(ids), trace.logits), (
        "minilens on the converted folder differs from the GGUF")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for text in PROMPTS + GENERATE_PROMPTS:
        assert hf_tok(text).input_ids == model.to_tokens(text).tolist(), (
            f"converted tokenizer differs on {text!r}")


# Golden values: the first lens row whose top-1 is " Paris", and the ranks of " Paris" in the last
# rows. Measured on 2026-12-06 (float32, incl_mid=True) with:
#   python -c "import minilens as ml; m = ml.load('smollm2'); t = m.run(TEXT); l = ml.logit_lens(t,
#   target=' Paris', top_k=1, incl_mid=True); print(list(zip(l.labels, l.target_rank[:, -1])))"
PARIS_GOLDEN = {
    "The capital of France is":
        ("final_post", {"27_pre": 33, "28_pre": 6, "29_pre": 2, "29_mid": 2}),
    "The Eiffel Tower is located in the city of":
        ("28_pre", {"26_pre": 16, "27_pre": 2, "27_mid": 2}),
}


@pytest.mark.parametrize("text", list(PARIS_GOLDEN))
def test_where_paris_forms(model, text):
    """' Paris' is nowhere in the early layers and rises to the top only in the last few."""
    first_row, ranks = PARIS_GOLDEN[text]
    lens = ml.logit_lens(model.run(text), target=" Paris", top_k=1, incl_mid=True)
    paris = model.to_single_token(" Paris")
    top1 = [str(label) for i, label in enumerate(lens.labels) if lens.top_ids[i, -1, 0] == paris]
    assert top1 and top1[0] == first_row, (
        f"' Paris' is first top-1 at {top1[:1]}, the golden row is {first_row}")
    measured = {str(lab): int(r) for lab, r in zip(lens.labels, lens.target_rank[:, -1])}
    assert {k: measured[k] for k in ranks} == ranks, f"ranks of ' Paris' changed: {measured}"
    assert min(measured[f"{l}_pre"] for l in range(20)) > 1000, (
        "' Paris' should be far down in layers 0-19")


def run_cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "minilens", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_info_lens_and_convert_on_the_gguf(path, tmp_path):
    info = run_cli("info", "--model", "smollm2")
    assert info.returncode == 0 and "Q4_1 (210 tensors)" in info.stdout, info.stdout + info.stderr
    lens = run_cli("lens", "The capital of France is", "--model", "smollm2", "--target", " Paris")
    assert (lens.returncode == 0 and "final_post" in lens.stdout
            and "Paris 0.77" in lens.stdout), lens.stdout
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    refused = run_cli("convert", str(path), str(taken))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "OUT_DIR" in refused.stderr and "out_dir" not in refused.stderr, (
        "errors name the command's words")
    assert (taken / "keep.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1
    into_weights = run_cli("convert", str(path), str(path.parent))
    assert into_weights.returncode == 2, into_weights.stderr
