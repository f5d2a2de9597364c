"""The lens never builds a [rows, n_seq, d_vocab] array: its extra memory is bounded by the chunk
size.

4,000 positions on a 50257-token vocabulary with 2 layers: 3 rows of logits would take
3 * 4000 * 50257 * 4 bytes = 2.4 GB in float32. The lens works on chunks: each worker one buffer
of at most CHUNK_ELEMENTS logits (128 MB), reused by every chunk, plus small per-piece
temporaries. With two workers the measured peak is about 285 MB: their two chunk buffers (268 MB)
and exp pieces (12 MB). The bound asserted is 2.5 x 128 MB = 335 MB, a seventh of the full array;
it also catches a copy of a chunk's final_post row (45 MB per worker), which np.take with its
default mode made. No timing is measured.
"""
import tracemalloc

import numpy as np

import minilens as ml
from minilens.analysis import lens
from minilens.course.bench import HookedAutoConfig, HookedAutoModel


def test_lens_memory_is_bounded_by_the_chunk_not_the_sequence(monkeypatch):
    monkeypatch.setattr(lens, "WORKERS", 2)
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=2, hidden_size=16,
                                             num_attention_heads=2, num_key_value_heads=1,
                                             intermediate_size=16))
    n_seq, d_vocab = 4000, model.cfg.d_vocab
    trace = model.run(np.random.default_rng(0).integers(0, d_vocab, n_seq),
                      names={"resid_pre", "resid_final"})
    full_bytes = 3 * n_seq * d_vocab * 4
    bound = 2.5 * lens.CHUNK_ELEMENTS * 4
    tracemalloc.start()
    result = ml.logit_lens(trace)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.entropy.shape == (3, n_seq)
    assert peak < bound < full_bytes / 5, (f"the lens peaked at {peak / 1e6:.0f} MB; "
                                           f"a [rows, n_seq, d_vocab] array is "
                                           f"{full_bytes / 1e6:.0f} MB. "
                                           f"Is it chunked over positions, with no copy of "
                                           f"a chunk's logits?")
