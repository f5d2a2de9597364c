"""Activation patching against a reference implementation, and golden cells on the real model.

1. TransformerLens 4.3.0 (`transformer_lens.patching`) patches the same random checkpoints:
   a GPT-2 and a Llama with grouped-query attention (4 query heads, 2 KV heads), written by
   transformers' `save_pretrained` (tests/factories.py) with a tokenizer, and booted from the
   local folder by `TransformerBridge.boot_transformers(folder)`, offline. The bridge runs the
   transformers model with hooks on its raw weights: no folded LayerNorm, no centred weights
   (only `enable_compatibility_mode()` would process them), so its numbers are transformers'.
   Compared grids, logit difference at the last position, float32 on both sides:
   - `get_act_patch_resid_pre` [layer, pos] against `activation_patching(key="resid_pre")`;
   - `get_act_patch_attn_head_out_by_pos` [layer, pos, head] against
     `activation_patching(key="z", by="head_position")` [layer, head, pos]. Both z include b_V.
   TransformerLens patches the clean cache into the corrupted run ("denoising"); called with the
   two runs swapped, it is minilens's "noising".
   Tolerance: 1e-4 of the grid's scale, max |ours - TL| / max(1, max |TL|). Both sides compute in
   float32 (eps 1.2e-7) with different summation orders (numpy's BLAS against torch, transformers'
   eager attention); over 3 layers that leaves differences near 1e-6, as for the logits in
   tests/test_parity.py. A wrong patch (the wrong position, head or layer, or a z without b_V)
   moves cells by O(1).
2. Golden cells on SmolLM2-135M-Instruct (Q4_1 GGUF, `minilens fetch smollm2`): the indirect
   object prompt pair of tests/benchmarks/patching.py, with values TransformerLens computed on
   transformers' own reading of the file (recorded below). The test itself needs neither torch
   nor TransformerLens.

TransformerLens is not in the test extra: `.ci/run` installs it with `--no-deps`, then the
modules it imports (pyproject.toml's `tl` extra). On a laptop without it the reference tests
skip; in CI (MINILENS_REQUIRE_TORCH=1) a missing TransformerLens fails them, like a missing torch.
"""

from __future__ import annotations

import numpy as np
import pytest

import minilens as ml
from _real_model import smollm2_path
from _torch import REQUIRE_TORCH
from minilens.analysis.patching import activation_patching

N_SEQ, D_VOCAB = 24, 101  # > 20 tokens: a wrong RoPE layout only shows later in a sequence
REFERENCE_TOL = 1e-4


def import_transformer_lens():
    """-> (torch, transformer_lens.patching, TransformerBridge); skip without them, fail in CI."""
    if not REQUIRE_TORCH:
        pytest.importorskip("torch")
        pytest.importorskip("transformer_lens", reason="TransformerLens 4.3.0 is not installed: "
                            "pip install --no-deps transformer-lens==4.3.0 && "
                            "pip install -e '.[tl]' torch==2.13.0")
    import torch  # in CI (MINILENS_REQUIRE_TORCH=1) an ImportError here fails the run
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge
    return torch, patching, TransformerBridge


# ----------------------------------------------------------------------------------------------
# 1. Agreement with TransformerLens on random checkpoints
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def pair(request, tmp_path_factory):
    """(minilens model, TransformerLens bridge, torch) on one random checkpoint folder."""
    torch, _, TransformerBridge = import_transformer_lens()
    from factories import WORDS, make_gpt2, make_llama, transformers, write_tokenizer

    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "gpt2":
        folder, _ = make_gpt2(tmp, n_layers=3, d_vocab=D_VOCAB)
    else:
        folder, _ = make_llama(tmp, n_layers=3, n_heads=4, n_kv_heads=2, d_vocab=D_VOCAB)
    # TransformerLens loads a tokenizer from the folder; one word per id keeps minilens's position
    # labels defined for every id. The patching itself only ever sees token ids.
    write_tokenizer(folder, WORDS + [f"w{i}" for i in range(len(WORDS), D_VOCAB)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), unk_token="<unk>", bos_token="<s>",
        eos_token="</s>").save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    bridge.eval()
    assert not bridge.compatibility_mode and not bridge._weights_processed, \
        "the bridge must run the raw weights: no folded LayerNorm, no centred weights"
    return ml.load(folder, dtype=np.float32), bridge, torch


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    clean = rng.integers(3, D_VOCAB, N_SEQ)
    corrupted = clean.copy()
    corrupted[[4, 11]] = (clean[[4, 11]] + 17) % (D_VOCAB - 3) + 3   # two tokens replaced
    return clean, corrupted


def target_and_contrast(model, clean, corrupted) -> tuple[int, int]:
    """The clean run's top token and the corrupted run's top other token."""
    t = int(np.argmax(model(clean)[-1]))
    order = np.argsort(-model(corrupted)[-1])
    return t, int(order[0] if order[0] != t else order[1])


def tl_grid(pair, fn, clean, corrupted, t, c, direction) -> np.ndarray:
    """A TransformerLens patching grid; its metric takes logits [batch, pos, d_vocab]."""
    _, bridge, torch = pair
    source, base = (clean, corrupted) if direction == "denoising" else (corrupted, clean)

    def logit_diff(logits):
        return logits[0, -1, t] - logits[0, -1, c]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor(source)[None])
        return fn(bridge, torch.tensor(base)[None], cache, logit_diff).numpy().astype(np.float64)


def assert_agrees(ours: np.ndarray, theirs: np.ndarray, what: str, hint: str) -> float:
    assert ours.shape == theirs.shape, f"{what}: grid shapes {ours.shape} and {theirs.shape}"
    err = float(np.abs(ours - theirs).max()) / max(1.0, float(np.abs(theirs).max()))
    worst = np.unravel_index(np.argmax(np.abs(ours - theirs)), ours.shape)
    assert err <= REFERENCE_TOL, (
        f"{what}: differs from TransformerLens by {err:.3g} of the grid's scale (tolerance "
        f"{REFERENCE_TOL:g}), worst at cell {worst}: {ours[worst]:+.6f} against "
        f"{theirs[worst]:+.6f}. {hint}")
    return err


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_resid_pre_by_position_agrees_with_transformer_lens(pair, prompts, direction):
    model, _, _ = pair
    _, patching, _ = import_transformer_lens()
    clean, corrupted = prompts
    t, c = target_and_contrast(model, clean, corrupted)
    ours = activation_patching(model, clean, corrupted, "logit_diff", key="resid_pre",
                               direction=direction, target=t, contrast=c)
    theirs = tl_grid(pair, patching.get_act_patch_resid_pre, clean, corrupted, t, c, direction)
    assert_agrees(ours.values, theirs, f"resid_pre [layer, pos], {direction}",
                  "Is the patched stream the one entering block l (resid_pre, before ln1), and "
                  "does the restart at block l keep the base run's stream at other positions?")
    base = ours.corrupted if direction == "denoising" else ours.clean
    assert np.abs(ours.values[0] - base).max() > 1e-3, "patching a differing token must matter"


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_z_by_head_and_position_agrees_with_transformer_lens(pair, prompts, direction):
    model, _, _ = pair
    _, patching, _ = import_transformer_lens()
    clean, corrupted = prompts
    t, c = target_and_contrast(model, clean, corrupted)
    ours = activation_patching(model, clean, corrupted, "logit_diff", key="z", by="head_position",
                               direction=direction, target=t, contrast=c)
    theirs = tl_grid(pair, patching.get_act_patch_attn_head_out_by_pos, clean, corrupted, t, c,
                     direction)                                    # [layer, pos, head]
    assert_agrees(ours.values, theirs.transpose(0, 2, 1), f"z [layer, head, pos], {direction}",
                  "minilens's grid is [layer, head, pos], TransformerLens's [layer, pos, head]. "
                  "z is pattern @ v per query head, v with its bias; under GQA, query head h reads "
                  "KV head h // (n_heads // n_kv_heads).")


# ----------------------------------------------------------------------------------------------
# 2. Golden cells on SmolLM2-135M-Instruct
# ----------------------------------------------------------------------------------------------
# The reference values: TransformerLens 4.3.0 (`get_act_patch_resid_pre`,
# `get_act_patch_attn_head_out_all_pos`) booted on a folder that transformers' own GGUF loader
# wrote from the same file (`from_pretrained(folder, gguf_file=...)`, float32), so neither
# minilens's dequantization nor its forward pass made them. Printed by
# `python tests/benchmarks/patching.py --only golden` on 2026-12-06 (21:58 UTC, torch 2.13.0,
# transformers 5.24.0), beside minilens's own values, which agreed to 6 decimals (logit
# differences 6.119591 and -5.485266 against these 6.119588 and -5.485271).
# Denoising, metric logit_diff_normalized (0 = corrupted, 1 = clean), resid_pre by position, all
# 30 layers x 14 positions; the top 5 cells by |value - corrupted|. Labels are the corrupted
# prompt's tokens (the base run of denoising): position 9 is the second name, " Mary" there.
# Tolerance 1e-3 on the normalized metric and 1e-3 relative on the logit differences: float32 sums
# in another order (another BLAS, thread count, torch against numpy) move them by about 1e-6. The
# ranking is stricter than that tolerance, but its closest gap (L16 against L15) is 3e-4, far
# above it.

IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
GOLDEN_CLEAN_LOGIT_DIFF = 6.119588           # logit[" Mary"] - logit[" John"], last position
GOLDEN_CORRUPTED_LOGIT_DIFF = -5.485271
GOLDEN_RESID_PRE_TOP5 = [
    ("L16 9: Mary", 1.012924),
    ("L15 9: Mary", 1.012606),
    ("L14 9: Mary", 1.010918),
    ("L18 9: Mary", 1.007495),
    ("L12 9: Mary", 1.006978),
]
GOLDEN_STRONGEST_HEAD = ("L23 H3", 0.583798)   # key="z", by="head": every position of one head
GOLDEN_TOL = 1e-3


@pytest.fixture(scope="module")
def smollm2():
    return ml.load(smollm2_path())


def test_smollm2_ioi_logit_difference_and_resid_pre_golden_cells(smollm2):
    mary, john = smollm2.to_single_token(" Mary"), smollm2.to_single_token(" John")
    for text, want in [(IOI_CLEAN, GOLDEN_CLEAN_LOGIT_DIFF),
                       (IOI_CORRUPTED, GOLDEN_CORRUPTED_LOGIT_DIFF)]:
        logits = smollm2(text)[-1]
        got = float(logits[mary]) - float(logits[john])
        assert abs(got - want) <= GOLDEN_TOL * abs(want), \
            f"logit[' Mary'] - logit[' John'] after {text!r} is {got:.6f}, recorded {want}"
    grid = activation_patching(smollm2, IOI_CLEAN, IOI_CORRUPTED, "logit_diff_normalized",
                               target=" Mary", contrast=" John")
    assert grid.values.shape == (30, 14), "30 layers x 14 positions"
    top = grid.top(5)
    assert [label for label, _ in top] == [label for label, _ in GOLDEN_RESID_PRE_TOP5], (
        f"the strongest resid_pre cells moved: {top}, recorded {GOLDEN_RESID_PRE_TOP5}. The "
        "second name (position 9) should carry the answer through the middle layers.")
    for (label, got), (_, want) in zip(top, GOLDEN_RESID_PRE_TOP5):
        assert abs(got - want) <= GOLDEN_TOL, f"{label}: {got:.6f}, recorded {want:.6f}"


def test_smollm2_ioi_strongest_head(smollm2):
    heads = activation_patching(smollm2, IOI_CLEAN, IOI_CORRUPTED, "logit_diff_normalized",
                                key="z", by="head", target=" Mary", contrast=" John")
    (label, value), = heads.top(1)
    want_label, want = GOLDEN_STRONGEST_HEAD
    assert label == want_label and abs(value - want) <= GOLDEN_TOL, \
        f"the strongest head is {label} ({value:.6f}), recorded {want_label} ({want})"
