"""The shipped Shakespeare models: minilens against transformers, end to end.

For each model in weights/, transformers (loaded in float32 from the same folder) and minilens
must give the same logits at every position of a 40+ token prompt, and the same 20 greedy tokens.
"""
import os

import pytest

if os.environ.get("MINILENS_REQUIRE_TORCH"):
    # in CI a missing torch is a failure, not a skip
    import torch
    import transformers
else:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

import numpy as np

import minilens as ml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["shakespeare-llama", "shakespeare-gpt2"]
PROMPT = ("KING HENRY.\nOnce more unto the breach, dear friends, once more;\n"
          "Or close the wall up with our English dead.\nIn peace there's nothing so becomes a man\n"
          "As modest stillness and humility:")
GREEDY_PROMPT = "ROMEO.\nO, she doth teach the torches to burn bright!"
N_GREEDY = 20


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    """(minilens model, transformers model), both float32, from the same folder."""
    path = os.path.join(ROOT, "weights", request.param)
    torch.set_num_threads(2)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return ml.load(path), ref


def test_prompt_is_long_enough(pair):
    model, _ = pair
    assert len(model.to_tokens(PROMPT)) >= 40, "a RoPE layout error only shows after ~20 tokens"


def test_logits_match_transformers(pair):
    model, ref = pair
    ids = model.to_tokens(PROMPT)
    ours = model.run(ids).logits  # [n_seq, d_vocab]
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids[None])).logits[0].numpy()
    # float32 on both sides: the two sides sum in different orders, and torch's threaded matmuls
    # are not deterministic, so the rounding differs at about 1e-6 relative per op, and it grows
    # through 6-8 layers. 1e-4 of the logits' scale leaves room for that and nothing else: a wrong
    # norm, RoPE layout or GQA grouping moves logits by 1e-1 or more. (The Llama weights are stored
    # in bfloat16; both sides widen them exactly to float32, so storage adds no difference.)
    tol = 1e-4 * max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max())
    assert ours.shape == theirs.shape, (
        f"logits {ours.shape} vs transformers' {theirs.shape}: is d_vocab the checkpoint's "
        "(lm_head rows), and one row per prompt token?")
    assert err <= tol, (
        f"max |logit difference| {err:.2e} > {tol:.2e}: compare resid_pre layer by layer")


def test_greedy_tokens_match_transformers(pair):
    model, ref = pair
    ids = model.to_tokens(GREEDY_PROMPT)  # Llama: starts with BOS; transformers gets the same ids
    ours = ids.copy()
    for _ in range(N_GREEDY):
        nxt = int(model.run(ours).logits[-1].argmax())
        ours = np.append(ours, nxt)
    x = torch.tensor(ids[None])
    with torch.no_grad():
        theirs = ref.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                              max_new_tokens=N_GREEDY,
                              pad_token_id=ref.config.eos_token_id)[0].numpy()
    # generate stops early only if it emits EOS; then the tokens up to that EOS must still agree.
    n = len(theirs)
    assert ours[len(ids):n].tolist() == theirs[len(ids):].tolist(), (
        f"greedy continuations differ:\n ours   {model.decode(ours[len(ids):])!r}\n"
        f" theirs {model.decode(theirs[len(ids):])!r}")
