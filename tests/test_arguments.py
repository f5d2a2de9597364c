"""Every public argument is checked at the boundary (issue 18, item 3, and two of its misleading
messages).

Each test is one finding of the issue's adversarial campaign, named in its docstring: a bad
argument that gave a Python exception from deep inside numpy (or, worse, an answer), or a valid
one that was refused. Each asserts the minilens error type, that the message names the argument,
and, where it matters, what the message must not say. The models are tiny random checkpoints
written with numpy (random_checkpoints.py); the torch tests skip without torch outside CI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import minilens as ml
from minilens import InputError, NotRecordedError
from minilens.course.bench import (
    BaseInterpretabilityBench,
    HookedAutoConfig,
    HookedAutoModel,
    LogitLens,
)
from random_checkpoints import gpt2_config, llama_config, write_checkpoint
from test_errors import expect

WORDS = ["[UNK]", "to", "be", "or", "not", "that", "is", "the", "question"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> ml.Model:
    folder = write_checkpoint(tmp_path_factory.mktemp("args") / "gpt2",
                              gpt2_config(n_layers=2, d_vocab=len(WORDS) + 4, n_ctx=32))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return ml.load(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> ml.Model:
    return ml.load(write_checkpoint(tmp_path_factory.mktemp("args") / "llama",
                                    llama_config(n_layers=2, n_kv_heads=2)))


IDS = [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------
# Counts: k, top_k, n_new
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k", [True, 0, -1, 2.5, "5", None])
def test_logit_lens_top_k_must_be_an_int_of_at_least_one(gpt2, top_k):
    """Finding: `logit_lens(top_k=True)` ran as top_k=1 (a bool is an int to Python)."""
    with expect(InputError, "top_k must be an int >= 1", repr(top_k)):
        ml.logit_lens(gpt2.run(IDS), top_k=top_k)


@pytest.mark.parametrize("k", [0, -3, 2.5, "5", None, True])
def test_direction_lens_k_is_checked(llama, k):
    """Finding: `direction_lens(k=0)` and `k=-3` returned 0 and 4093 tokens; k 2.5, "5" or None
    raised TypeError."""
    with expect(InputError, "k must be an int >= 1", repr(k)):
        ml.direction_lens(llama, np.ones(llama.cfg.d_model), k=k)


@pytest.mark.parametrize("n_new", [2.5, -1, "3", True])
def test_generate_n_new_is_checked(llama, n_new):
    """Finding: `generate(n_new=2.5)` raised TypeError from range()."""
    with expect(InputError, "n_new must be an int >= 0"):
        llama.generate(IDS, n_new=n_new)


def test_bench_logit_lens_top_k_is_checked():
    """Finding: `LogitLens(top_k=0)` in the bench API was accepted, and returned no top tokens."""
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=1, hidden_size=32))
    for top_k in (0, -2, 1.5):
        with expect(InputError, "top_k must be an int >= 1"):
            LogitLens(model, top_k=top_k)


def test_result_top_k_is_checked(gpt2):
    """Attribution.top(k) and PatchingResult.top(k) are public too: k=-1 listed all but one."""
    attr = ml.layer_attribution(gpt2.run(IDS), target=3)
    with expect(InputError, "k must be an int >= 1"):
        attr.top(-1)
    patched = ml.activation_patching(gpt2, [1, 2, 3], [1, 4, 3], target=5, contrast=6)
    with expect(InputError, "k must be an int >= 1"):
        patched.top(0)


# ------------------------------------------------------------------------------------------
# names= and trace keys
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("names", [[["x"]], [3], ["resid_pre", None]])
def test_names_must_be_strings(gpt2, names):
    """Finding: `run(names=[["x"]])` raised TypeError (unhashable type: 'list')."""
    with expect(InputError, "names must hold trace keys as strings"):
        gpt2.run(IDS, names=names)


@pytest.mark.parametrize("key", [np.array(["resid_pre", "z"]), np.array([0, 1]), 3,
                                 (np.array(["a"]), 0), ("resid_pre", 0, 1)])
def test_trace_keys_must_be_a_name_or_a_pair(gpt2, key):
    """Finding: `trace[np.array(...)]` raised numpy's "truth value of an array is ambiguous"."""
    trace = gpt2.run(IDS)
    with expect(InputError, "trace keys are a name", "('resid_pre', 3)"):
        trace[key]
    assert key not in trace


def test_pos_embed_on_a_rotary_model_says_the_family_has_no_learned_positions(llama):
    """Misleading message: `trace["pos_embed"]` on a rotary model advised re-running without
    names= (issue 17, item 6, asks the same)."""
    trace = llama.run(IDS)
    with expect(NotRecordedError, "'pos_embed' does not exist in a llama model", "rotary",
                absent=("names", "not recorded")):
        trace["pos_embed"]
    assert "pos_embed" not in trace
    with expect(NotRecordedError, "'logits_precap' does not exist", "soft-capped",
                absent=("names",)):
        trace["logits_precap"]
    with expect(NotRecordedError, "does not exist", "Gemma 2", absent=("names",)):
        trace["scale_ln1_post", 0]


def test_a_key_left_out_by_names_still_says_so(gpt2):
    """The family-specific message is for keys a family never makes; a GPT-2 trace recorded with
    names= still points at names=."""
    with expect(NotRecordedError, "'pos_embed' was not recorded", "names"):
        gpt2.run(IDS, names={"resid_pre"})["pos_embed"]


# ------------------------------------------------------------------------------------------
# Token ids and text
# ------------------------------------------------------------------------------------------

def test_an_id_beyond_int64_is_out_of_range_not_none(gpt2):
    """Misleading message: `run([1, 2**64])` said the input "holds None"."""
    with expect(InputError, f"token id {2**64} at position 1 is out of range",
                absent=("None",)):
        gpt2.run([1, 2**64])
    with expect(InputError, "token id -5 at position 0 is out of range"):
        gpt2.run(np.array([-5, 2**70], dtype=object))


def test_an_object_array_of_numpy_ints_is_accepted(gpt2):
    """Finding: a valid input was refused: an object array of `np.int64` ids."""
    ids = np.array([np.int64(i) for i in IDS], dtype=object)
    assert np.array_equal(gpt2.run(ids).logits, gpt2.run(IDS).logits)
    with expect(InputError, "holds None (NoneType)"):
        gpt2.run(np.array([1, None], dtype=object))


@pytest.mark.parametrize("text", ["to be \ud800 or", "\udcff"])
def test_text_with_a_lone_surrogate_is_an_input_error(gpt2, text):
    """Finding: text with a lone surrogate raised the tokenizer's UnicodeEncodeError."""
    with expect(InputError, "lone surrogate", "index"):
        gpt2.run(text)
    with expect(InputError, "lone surrogate"):
        gpt2.to_single_token(text)


# ------------------------------------------------------------------------------------------
# load()
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, fragment", [
    (5, "5 (int)"), (None, "None (NoneType)"), (b"weights", "(bytes)"),
    ("x" * 300, "too long"), ("a/" + "y" * 256 + "/b", "too long"), ("a\0b", "NUL byte"),
    ("", "empty"),
])
def test_load_checks_its_argument(arg, fragment):
    """Finding: `load(5)`, `load(None)` raised TypeError and a 300-character name OSError (file
    name too long)."""
    with expect(InputError, "path_or_name", fragment):
        ml.load(arg)


def test_load_checks_its_options(tmp_path):
    folder = write_checkpoint(tmp_path / "m", gpt2_config())
    with expect(InputError, "check_finite must be True or False"):
        ml.load(folder, check_finite="yes")
    with expect(InputError, "dtype must be float32 or float64"):
        ml.load(folder, dtype=[1, 2])


# ------------------------------------------------------------------------------------------
# Directions and SAE decoders
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vector", ["abc", [[1.0, 2.0], [3.0]], {"a": 1.0},
                                    ["x"] * 32, [1j] * 32, np.ones((2, 16))])
def test_direction_lens_refuses_what_is_not_a_vector(llama, vector):
    """Finding: `direction_lens` on strings, ragged lists or dicts raised ValueError/TypeError."""
    with expect(InputError, "the direction must"):
        ml.direction_lens(llama, vector)


def test_sae_decoder_rows_must_be_finite(llama, tmp_path):
    """Finding: an SAE `W_dec` holding NaN gave NaN scores, where direction_lens refuses NaN."""
    from safetensors.numpy import save_file
    W_dec = np.ones((4, llama.cfg.d_model), np.float32)
    W_dec[2, 5] = np.nan
    save_file({"W_dec": W_dec}, str(tmp_path / "sae.safetensors"))
    with expect(ml.CheckpointError, "W_dec row 2", "NaN or inf"):
        ml.sae_lens(llama, tmp_path / "sae.safetensors")
    assert len(ml.sae_lens(llama, tmp_path / "sae.safetensors", features=[0, 3])) == 2
    with expect(InputError, "k must be an int >= 1"):
        ml.sae_lens(llama, tmp_path / "sae.safetensors", features=[0], k=0)
    with expect(InputError, "features must be an int or a list of ints"):
        ml.sae_lens(llama, tmp_path / "sae.safetensors", features=[[0, 1], [2]])


# ------------------------------------------------------------------------------------------
# Torch tensors, read without torch in minilens
# ------------------------------------------------------------------------------------------

def test_torch_tensors_are_accepted_as_ids_and_directions(gpt2):
    """Finding: torch tensors that require grad were refused with torch's RuntimeError ("Can't
    call numpy() on Tensor that requires grad"); ids and directions are detached and read."""
    from _torch import import_torch
    torch, _ = import_torch()
    ids = torch.tensor([IDS])
    assert np.array_equal(gpt2.run(ids).logits, gpt2.run(IDS).logits)
    v = torch.randn(gpt2.cfg.d_model, dtype=torch.float64, requires_grad=True)
    got = ml.direction_lens(gpt2, v * 1.0, k=3)          # a non-leaf tensor that requires grad
    want = ml.direction_lens(gpt2, v.detach().numpy(), k=3)
    assert got.promoted_ids.tolist() == want.promoted_ids.tolist()
    bf16 = ml.direction_lens(gpt2, v.detach().to(torch.bfloat16), k=3)
    assert len(bf16.promoted_ids) == 3
    assert ml.layer_attribution(gpt2.run(IDS), target=torch.tensor(3)).target == 3


# ------------------------------------------------------------------------------------------
# The bench API
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("save_dir, fragment", [(None, "None (NoneType)"),
                                                ("runs\0x", "NUL byte"), (3.5, "3.5")])
def test_bench_save_dir_is_checked(save_dir, fragment):
    """Finding: bench `save_dir=None` and a NUL byte in it raised TypeError and ValueError."""
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=1, hidden_size=32))
    with expect(InputError, "save_dir", fragment):
        BaseInterpretabilityBench(model, save_dir=save_dir)


def test_bench_logs_a_self_referencing_result(tmp_path):
    """Finding: an experiment returning a self-referencing list raised RecursionError while its
    run was logged."""
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=1, hidden_size=32))
    exp = BaseInterpretabilityBench(model, save_dir=tmp_path)

    @exp.use_tools("logit_lens")
    def loop(logit_lens):
        result = [1, {"deep": 2}]
        result.append(result)
        return result

    returned = loop()
    assert returned[2] is returned
    (log,) = tmp_path.glob("loop-*.json")
    assert json.loads(log.read_text())["result"] == [1, {"deep": 2}, "[...]"]


def test_bench_logs_deep_and_huge_results(tmp_path):
    """Nesting 10,000 deep and an int of 5,000 digits (past Python's int-to-str limit) log too."""
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=1, hidden_size=32))
    exp = BaseInterpretabilityBench(model, save_dir=tmp_path)

    @exp.use_tools("logit_lens")
    def deep(logit_lens):
        nested: list = []
        for _ in range(10_000):
            nested = [nested]
        return [nested, 10 ** 5000]

    deep()
    (log,) = tmp_path.glob("deep-*.json")
    result = json.loads(log.read_text())["result"]
    assert result[1].startswith("<an int of ")


# ------------------------------------------------------------------------------------------
# Analysis functions: the trace, layers, heads and numbers
# ------------------------------------------------------------------------------------------

def test_analysis_functions_want_a_trace_not_a_model(gpt2):
    with expect(InputError, "logit_lens reads a Trace", "model.run(ids)"):
        ml.logit_lens(gpt2)
    with expect(InputError, "layer_attribution reads a Trace"):
        ml.layer_attribution(gpt2, target=3)


def test_patching_arguments_are_checked(gpt2):
    """Layers, heads, positions and pairs: each refused with its name, not a TypeError."""
    with expect(InputError, "layers entry 'a'"):
        ml.activation_patching(gpt2, [1, 2, 3], [1, 4, 3], target=5, contrast=6, layers=["a"])
    with expect(InputError, "heads must be an int or a list of ints"):
        ml.knockout(gpt2, 0, 2, [0], heads=["h"])
    with expect(InputError, "head index True is out of range"):
        ml.ablation(gpt2, "head", 0, True)
    with expect(InputError, "scale must be a finite number"):
        ml.steer(np.ones(gpt2.cfg.d_model), scale="x")
    with expect(InputError, "sender must be a (layer, head) pair"):
        ml.path_patching(gpt2, [1, 2, 3], [1, 4, 3], sender="L0H1", receivers=[(1, 0)],
                         target=5, contrast=6)
    with expect(InputError, "by=array"):
        ml.activation_patching(gpt2, [1, 2, 3], [1, 4, 3], target=5, contrast=6,
                               by=np.array(["head", "position"]))


def test_tuned_lens_arguments_are_checked(gpt2):
    from minilens.analysis import tuned_lens
    affine = tuned_lens.Translators.identity(gpt2)
    texts = [np.arange(1, 12)]
    for kwargs, fragment in [(dict(steps=True), "steps must be an int >= 0"),
                             (dict(lr=float("nan")), "lr must be a finite number"),
                             (dict(lr=-1.0), "lr must be a number > 0"),
                             (dict(batch=0), "batch must be an int >= 1"),
                             (dict(progress="loud"), "progress must be a function")]:
        with expect(InputError, fragment):
            tuned_lens.refine_lens(gpt2, affine, texts, **kwargs)
    with expect(InputError, "translators must be a Translators"):
        tuned_lens.refine_lens(gpt2, "affine.safetensors", texts)
    with expect(InputError, "ridge"):
        tuned_lens.fit_affine_lens(gpt2, texts, ridge=float("nan"))
    with expect(InputError, "texts[0] must be a str or a 1-D array of token ids"):
        tuned_lens.fit_affine_lens(gpt2, [3.5], ridge=0.0)
