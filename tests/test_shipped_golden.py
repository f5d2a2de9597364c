"""Golden outputs of the shipped Shakespeare models: no torch needed.

The golden values in tests/golden/shipped_<name>.json were computed by
`python weights/make_golden.py` with transformers in float32, independently of minilens: the
prompt's token ids, the top-5 next-token ids (and logits) at the last position, and the logit-lens
top-1 id per row at the last position (row "{l}_pre" = lm_head(final_norm(hidden_states[l])), row
"final_post" = the model's logits). make_golden.py only accepts a prompt whose rankings are
separated by more than 1e-3 in logit, so float32 rounding cannot reorder them.

The values belong to one set of trained weights: regenerate them with make_golden.py whenever the
weights in weights/ are retrained (and commit both together).
"""
import json
import os

import numpy as np
import pytest

import minilens as ml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["shakespeare-llama", "shakespeare-gpt2"]


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    with open(os.path.join(ROOT, "tests", "golden", f"shipped_{request.param}.json")) as f:
        golden = json.load(f)
    model = ml.load(os.path.join(ROOT, "weights", request.param))
    return model, golden, model.run(model.to_tokens(golden["prompt"]))


def test_tokenizer_matches_golden_ids(case):
    model, golden, _ = case
    assert model.to_tokens(golden["prompt"]).tolist() == golden["ids"], (
        "tokenization differs from the reference: "
        "does to_tokens prepend BOS exactly when the family does?")


def test_top5_next_tokens(case):
    _, golden, trace = case
    last = trace.logits[-1]  # [d_vocab]
    top5 = np.argsort(-last, kind="stable")[:5]
    assert top5.tolist() == golden["top5_ids"], (
        f"top-5 {top5.tolist()} != golden {golden['top5_ids']}")
    # The stored logits are float32 reference values; 1e-3 covers float32 rounding through the
    # layers.
    np.testing.assert_allclose(last[top5], golden["top5_logits"], atol=1e-3)


def test_lens_top1_per_row(case):
    _, golden, trace = case
    lens = ml.logit_lens(trace, top_k=5)
    assert list(lens.labels) == golden["lens_labels"]
    top1 = np.asarray(lens.top_ids)[:, -1, 0]  # [row]: top-1 at the last position
    assert top1.tolist() == golden["lens_top1_ids"], (
        "lens top-1 differs from lm_head(final_norm(hidden_states[l])): "
        "is the final norm recomputed on each layer's residual stream?")
