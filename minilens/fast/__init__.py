"""The speed work, kept apart from the forward pass a student reads (forward.py).

forward.py here computes the same trace as minilens/forward.py with the work reordered; kernels.py
holds in-place forms of ops.py's equations; memory.py recycles the memory of dropped traces.
tests/test_fast_paths.py checks all of it against the textbook forms.
"""
