"""The lens never builds a [rows, n_seq, d_vocab] array: its extra memory is bounded by the chunk
size.

4,000 positions on a 50257-token vocabulary with 2 layers: 3 rows of logits would take
3 * 4000 * 50257 * 4 bytes = 2.4 GB in float32. The lens works on chunks: each worker one buffer
of at most CHUNK_ELEMENTS logits (128 MB), reused by every chunk, plus small per-piece
temporaries; measured peak with two workers: about 285 MB. The bound asserted is 3 x 128 MB =
403 MB, a sixth of the full array. No timing is measured.
"""
import tracemalloc

import numpy as np

import minilens as ml
from minilens.analysis import lens
from minilens.course.bench import HookedAutoConfig, HookedAutoModel


def test_lens_memory_is_bounded_by_the_chunk_not_the_sequence():
    model = HookedAutoModel(HookedAutoConfig("llama", num_hidden_layers=2, hidden_size=16,
                                             num_attention_heads=2, num_key_value_heads=1,
                                             intermediate_size=16))
    n_seq, d_vocab = 4000, model.cfg.d_vocab
    trace = model.run(np.random.default_rng(0).integers(0, d_vocab, n_seq),
                      names={"resid_pre", "resid_final"})
    full_bytes = 3 * n_seq * d_vocab * 4
    bound = 3 * lens.CHUNK_ELEMENTS * 4
    tracemalloc.start()
    result = ml.logit_lens(trace)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.entropy.shape == (3, n_seq)
    assert peak < bound < full_bytes / 5, (f"the lens peaked at {peak / 1e6:.0f} MB; "
                                           f"a [rows, n_seq, d_vocab] array is "
                                           f"{full_bytes / 1e6:.0f} MB. "
                                           f"Is it chunked over positions?")
