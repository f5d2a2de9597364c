"""Loading checkpoints, and every way it can go wrong: each error names the problem and its fix.

Each test breaks a good checkpoint in one way and checks the exception type (minilens's own,
which also subclasses the built-in a caller would catch) and a fragment of the message.
Also here: model names found in a local Hugging Face cache, and the tokenizer's BOS conventions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from _torch import import_torch

torch, transformers = import_torch()  # the factories save checkpoints with transformers

import minilens as ml  # noqa: E402
from factories import make_gpt2, make_llama, prompt, write_tokenizer  # noqa: E402


@pytest.fixture
def llama(tmp_path):
    return make_llama(tmp_path)[0]


@pytest.fixture
def gpt2(tmp_path):
    return make_gpt2(tmp_path, n_ctx=32)[0]


# ------------------------------------------------------------------------------------------
# Folders, configs and tensors
# ------------------------------------------------------------------------------------------

def test_folder_without_config_json(llama):
    (llama / "config.json").unlink()
    with pytest.raises(ml.CheckpointNotFoundError, match="no config.json") as e:
        ml.load(llama)
    assert isinstance(e.value, FileNotFoundError)


def test_unsupported_model_type_lists_the_supported_ones(llama):
    hf = json.loads((llama / "config.json").read_text())
    hf["model_type"] = "mamba"
    (llama / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ml.UnsupportedModelError, match="'mamba' is not supported") as e:
        ml.load(llama)
    assert "gpt2" in str(e.value) and "llama" in str(e.value), (
        "the message should list what is supported")


def test_unsupported_rope_type(llama):
    hf = json.loads((llama / "config.json").read_text())
    hf["rope_parameters"]["rope_type"] = "yarn-of-the-future"
    (llama / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ml.UnsupportedModelError, match="rope type 'yarn-of-the-future'"):
        ml.load(llama)


def test_required_config_field_missing(llama):
    hf = json.loads((llama / "config.json").read_text())
    del hf["hidden_size"]
    (llama / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ml.CheckpointError, match="'hidden_size'"):
        ml.load(llama)


def test_missing_tensor_is_named(llama):
    path = llama / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(ml.CheckpointError,
                       match=r"'layers\.1\.mlp\.down_proj\.weight' is missing") as e:
        ml.load(llama)
    assert "model.safetensors" in str(e.value), "the message should name the file"


def test_unexpected_tensor_is_named(llama):
    path = llama / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.7.self_attn.q_proj.weight"] = (
        tensors["model.layers.0.self_attn.q_proj.weight"])
    save_file(tensors, path)
    with pytest.raises(ml.CheckpointError,
                       match=r"unexpected tensor 'layers\.7\.self_attn\.q_proj\.weight'"):
        ml.load(llama)


def test_wrongly_shaped_tensor_is_named(llama):
    path = llama / "model.safetensors"
    tensors = load_file(path)
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].copy()
    save_file(tensors, path)
    with pytest.raises(ml.CheckpointError,
                       match=r"'norm\.weight' in .*model\.safetensors has shape \[31\]"):
        ml.load(llama)


@pytest.mark.parametrize("keep", [0.5, 4 / 1e9])
def test_truncated_safetensors_file(llama, keep):
    path = llama / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:max(4, int(len(data) * keep))])
    with pytest.raises(ml.CheckpointError, match="download it again") as e:
        ml.load(llama)
    assert str(path) in str(e.value)


def test_missing_shard(tmp_path):
    folder, _ = make_llama(tmp_path, shard=True)
    next(folder.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(ml.CheckpointNotFoundError, match="model-00002-of"):
        ml.load(folder)


def test_pickled_weights_are_refused(llama):
    (llama / "model.safetensors").rename(llama / "pytorch_model.bin")
    with pytest.raises(ml.CheckpointError, match="arbitrary code"):
        ml.load(llama)


def test_only_float32_and_float64_compute(llama):
    with pytest.raises(ml.InputError, match="float32 or float64"):
        ml.load(llama, dtype=np.float16)


# ------------------------------------------------------------------------------------------
# Token ids
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 101, 10**6])
def test_token_ids_out_of_range(gpt2, bad):
    model = ml.load(gpt2)
    ids = prompt(10)
    ids[3] = bad
    with pytest.raises(ml.InputError, match=f"token id {bad} at position 3 is out of range"):
        model.run(ids)
    with pytest.raises(ValueError):  # InputError is also a ValueError
        model.run_batch(np.stack([prompt(10), ids]))


def test_gpt2_input_longer_than_n_positions(gpt2):
    model = ml.load(gpt2)
    model.run(prompt(32))                                  # exactly n_positions is fine
    with pytest.raises(ml.InputError, match="33 tokens.*only 32 .*n_positions"):
        model.run(prompt(33))


@pytest.mark.parametrize("ids, fragment", [([], "empty"), ([[1, 2], [3]], "rectangular"),
                                           (np.zeros((2, 2, 2), int), "shape"),
                                           ([1.5, 2.0], "integers")])
def test_malformed_ids(gpt2, ids, fragment):
    with pytest.raises(ml.InputError, match=fragment):
        ml.load(gpt2).run(ids)


# ------------------------------------------------------------------------------------------
# Model names in the local Hugging Face cache (never the network)
# ------------------------------------------------------------------------------------------

def fake_cache(cache, folder, name: str, revision: str) -> None:
    """Lay out ``folder`` as huggingface_hub does: models--org--name/snapshots/<hash>/ plus
    refs/main.

    As in a real cache, each snapshot file is a relative symlink to blobs/<content hash>, and
    the snapshot's mtime is the source folder's (so the newest snapshot is the last one made).
    """
    import hashlib
    import os
    repo = cache / ("models--" + name.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in folder.iterdir():
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    stat = folder.stat()
    os.utime(snapshot, (stat.st_atime, stat.st_mtime))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


def test_model_name_not_in_cache_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ml.CheckpointNotFoundError,
                       match="hf download some-org/no-such-model") as e:
        ml.load("some-org/no-such-model")
    assert str(tmp_path) in str(e.value), "the message should say where it looked"


def test_model_name_resolved_in_cache_following_refs_main(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    a, _ = make_llama(tmp_path, seed=1)
    b, _ = make_llama(tmp_path, seed=2)
    fake_cache(cache, a, "tiny-org/tiny-llama", "a" * 40)
    fake_cache(cache, b, "tiny-org/tiny-llama", "b" * 40)
    repo = cache / "models--tiny-org--tiny-llama"
    # main is the older snapshot, not the newest
    (repo / "refs" / "main").write_text("a" * 40 + "\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    model = ml.load("tiny-org/tiny-llama")
    assert model.folder == repo / "snapshots" / ("a" * 40), "refs/main names the snapshot to use"
    ids = prompt(20)
    np.testing.assert_array_equal(model.run(ids).logits, ml.load(a).run(ids).logits)
    assert np.abs(ml.load(a).run(ids).logits - ml.load(b).run(ids).logits).max() > 0.1


def test_model_name_resolved_under_hf_home(tmp_path, monkeypatch):
    folder, _ = make_gpt2(tmp_path)
    fake_cache(tmp_path / "home" / "hub", folder, "gpt2", "c" * 40)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert ml.load("gpt2").cfg.family == "gpt2"


# ------------------------------------------------------------------------------------------
# Tokenizer: BOS conventions, string tokens, and models without a tokenizer
# ------------------------------------------------------------------------------------------

TEXT = "to be , or not to be"
WORD_IDS = [3, 4, 11, 5, 6, 3, 4]   # the factories' word list: to=3 be=4 or=5 not=6 ,=11


def test_llama_prepends_bos_and_gpt2_does_not(llama, gpt2):
    for folder in (llama, gpt2):
        write_tokenizer(folder)
    lm, g = ml.load(llama), ml.load(gpt2)
    assert lm.to_tokens(TEXT).tolist() == [lm.cfg.bos_token_id] + WORD_IDS == [1] + WORD_IDS
    assert g.to_tokens(TEXT).tolist() == WORD_IDS
    assert lm.to_tokens(TEXT, prepend_bos=False).tolist() == WORD_IDS
    assert g.to_tokens(TEXT, prepend_bos=True).tolist() == [0] + WORD_IDS
    assert lm.to_tokens(TEXT).dtype == np.int64


def test_str_tokens_and_decode(llama):
    write_tokenizer(llama)
    model = ml.load(llama)
    ids = model.to_tokens(TEXT)
    assert model.to_str_tokens(ids) == ["<s>", "to", "be", ",", "or", "not", "to", "be"]
    assert model.to_str_tokens(TEXT) == model.to_str_tokens(ids)
    assert model.decode(ids[1:]) == "to be, or not to be"
    assert model.to_single_token("question") == 10
    with pytest.raises(ml.InputError, match="2 tokens, not one"):
        model.to_single_token("to be")


def test_tokenizer_config_add_bos_token_overrides_the_family_default(llama):
    write_tokenizer(llama)
    (llama / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert ml.load(llama).to_tokens(TEXT).tolist() == WORD_IDS


def test_model_without_tokenizer_runs_on_ids_and_explains_text(llama):
    model = ml.load(llama)
    assert model.tokenizer is None
    assert model.run(prompt(12)).logits.shape == (12, model.cfg.d_vocab)
    with pytest.raises(ml.TokenizerMissingError, match="no tokenizer.json.*Pass token ids"):
        model.run("to be")
    with pytest.raises(ml.TokenizerMissingError):
        model.to_str_tokens([1, 2, 3])


def test_unknown_activation_is_refused_at_load(tmp_path):
    folder, _ = make_llama(tmp_path, hidden_act="gelu_fast")
    with pytest.raises(ml.UnsupportedModelError,
                       match="activation 'gelu_fast' is not supported.*silu"):
        ml.load(folder)


@pytest.mark.parametrize("switch", [{"scale_attn_by_inverse_layer_idx": True},
                                    {"scale_attn_weights": False}])
def test_gpt2_attention_rescaling_switches_are_refused(tmp_path, switch):
    """Both change the attention scores; running them with the standard scale gave logits off by
    0.3 to 3."""
    folder, _ = make_gpt2(tmp_path, **switch)
    with pytest.raises(ml.UnsupportedModelError, match=next(iter(switch))):
        ml.load(folder)


def test_sharded_model_in_cache_with_blob_symlinks(tmp_path, monkeypatch):
    """Shards are symlinks into blobs/, outside the snapshot folder: a real cache must still
    load."""
    folder, _ = make_llama(tmp_path, shard=True)
    fake_cache(tmp_path / "hub", folder, "tiny-org/sharded", "d" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    model = ml.load("tiny-org/sharded")
    assert len(model.files) > 1
    ids = prompt(20)
    np.testing.assert_array_equal(model.run(ids).logits, ml.load(folder).run(ids).logits)
