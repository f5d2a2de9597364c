"""How a GGUF model's layers are widened (dequantized) on first use: a block's tensors shared among
the workers, W_gate and W_in written side by side, every layer widened before the first product.

On the real model (SmolLM2), which skips on a laptop without it and fails in CI when absent."""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest

import minilens as ml
from _real_model import smollm2_path
from minilens import CheckpointError
from minilens.fast import workers
from minilens.loading import checkpoint
from minilens.loading.gguf_file import GGUFFile


def layer_arrays(params) -> dict[str, np.ndarray]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
            if isinstance(getattr(params, f.name), np.ndarray)}


def test_a_block_widened_by_workers_equals_one_widened_alone(monkeypatch):
    """Three workers sharing layer 2's tensors (GGUFCheckpoint.widen) give the bits one worker
    gives. A worker that drops or swaps a tensor shows here."""
    path = smollm2_path()
    monkeypatch.setattr(workers, "n_workers", lambda: 1)
    alone = layer_arrays(ml.load(path).layers[2])
    monkeypatch.setattr(workers, "n_workers", lambda: 3)
    shared = layer_arrays(ml.load(path).layers[2])
    assert alone.keys() == shared.keys()
    for name in alone:
        assert np.array_equal(alone[name], shared[name]), (
            f"layer 2's {name} differs when its block is widened by 3 workers")


def test_gate_and_in_are_dequantized_side_by_side(monkeypatch):
    """The MLP's one product reads W_gate | W_in from one F-ordered matrix. The GGUF reader
    dequantizes them into one buffer, so gate_beside_in must take that buffer as it is: a copy
    would add a pass over half of every layer's weights, and hold them twice for a moment."""
    copies = []
    concatenate = np.concatenate
    monkeypatch.setattr(checkpoint.np, "concatenate",
                        lambda *a, **k: copies.append(1) or concatenate(*a, **k))
    w = ml.load(smollm2_path()).layers[0]
    assert not copies, "gate_beside_in copied W_gate and W_in, which were already side by side"
    assert w.W_gate_in.flags.f_contiguous and w.W_gate_in.shape == (576, 2 * 1536)
    assert np.shares_memory(w.W_gate_in, w.W_gate) and np.shares_memory(w.W_gate_in, w.W_in)
    assert np.array_equal(w.W_gate_in[:, :1536], w.W_gate), "W_gate must be the first half"
    assert np.array_equal(w.W_gate_in[:, 1536:], w.W_in), "W_in must be the second half"


def test_apart_gate_and_in_are_still_copied_side_by_side():
    """Two separate matrices (a safetensors checkpoint) are copied into one, as before."""
    rng = np.random.default_rng(0)
    W_gate, W_in = (rng.standard_normal((8, 6), dtype=np.float32) for _ in range(2))
    params = checkpoint.LayerParams(**{f.name: None for f in dataclasses.fields(
        checkpoint.LayerParams)})
    params = dataclasses.replace(params, W_gate=W_gate.T, W_in=W_in.T)
    both = checkpoint.gate_beside_in(params).W_gate_in
    assert np.array_equal(both, np.concatenate([W_gate.T, W_in.T], axis=1))
    assert not np.shares_memory(both, W_gate) and not np.shares_memory(both, W_in)


def test_the_first_forward_widens_every_layer_first(monkeypatch):
    """The fast pass widens all the layers of a cached model before its first product, and none
    of a streamed one (which widens each layer when it comes to it, and drops it)."""
    model = ml.load(smollm2_path())
    calls = []
    widen_all = checkpoint.LazyLayers.widen_all
    monkeypatch.setattr(checkpoint.LazyLayers, "widen_all",
                        lambda self: calls.append(len(self._cache)) or widen_all(self))
    model(np.arange(5))
    assert calls == [0] and len(model.layers._cache) == 30, (
        "the first forward should widen all 30 layers at once, before any")
    streamed = ml.load(smollm2_path(), cache_layers=False)
    streamed.layers.widen_all()
    assert not streamed.layers._cache, "a streamed model must not keep widened layers"



def test_widen_all_shares_out_a_group_of_layers_at_once(monkeypatch):
    """widen_all hands the workers a whole group of layers' tensors at once (AHEAD_WEIGHTS
    weights a group): they wait for each other once per group, not once per layer. The layers are
    bit for bit those widened one at a time."""
    path = smollm2_path()
    one_at_a_time = ml.load(path)
    alone = [layer_arrays(one_at_a_time.layers[l]) for l in range(30)]
    del one_at_a_time
    model = ml.load(path)
    per_layer = model.checkpoint.layer_elements(model.cfg) / 30
    monkeypatch.setattr(checkpoint, "AHEAD_WEIGHTS", int(7 * per_layer) + 1)   # 7 layers a group
    share_outs = []
    split = workers.split
    monkeypatch.setattr(workers, "split", lambda *a, **k: share_outs.append(1) or split(*a, **k))
    model.layers.widen_all()
    assert len(share_outs) == 5, (
        f"30 layers in groups of 7 should take 5 share-outs among the workers, not "
        f"{len(share_outs)}")
    for l in range(30):
        grouped = layer_arrays(model.layers[l])
        assert grouped.keys() == alone[l].keys()
        for name in grouped:
            assert np.array_equal(grouped[name], alone[l][name]), (
                f"layer {l}'s {name} differs when widened in a group")


def test_rows_are_reordered_while_still_quantized():
    """GGUFFile.dequantize(rows=) reorders a tensor's quantized rows (how the converter's rotary
    permutation of attn_q and attn_k is undone), and gives the bits w[rows] gives: on SmolLM2's
    Q4_1 attn_q, and on an F32 norm, whose rows are single numbers."""
    f = GGUFFile(smollm2_path())
    rng = np.random.default_rng(0)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_norm.weight"):
        w = f.dequantize(name)
        rows = rng.permutation(w.shape[0])
        assert np.array_equal(f.dequantize(name, rows=rows), w[rows]), name
        out = np.empty(w.size, dtype=np.float32)
        got = f.dequantize(name, out=out, rows=rows)
        assert np.shares_memory(got, out) and np.array_equal(got, w[rows]), name


def test_rows_that_are_not_whole_blocks_cannot_be_reordered(tmp_path):
    """A 1-D quantized tensor's rows (single numbers) are parts of blocks: refused by name."""
    path = tmp_path / "one.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.bias", np.zeros(34, dtype=np.uint8), raw_shape=(34,),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file,
                  writer.write_tensors_to_file):
        write()
    writer.close()
    with pytest.raises(CheckpointError, match=r"'blk.0.attn_q.bias' \(Q8_0.*not whole blocks"):
        GGUFFile(path).dequantize("blk.0.attn_q.bias", rows=np.arange(32))
