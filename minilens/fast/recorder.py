"""The fast forward pass's recorder: the trace's Recorder, plus recycled memory and deferred
values."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..trace import Derived, Recorder
from .memory import ArrayPool


class PooledRecorder(Recorder):
    """``rec.empty(shape, dtype)`` gives the forward pass recycled memory to write its values into;
    ``rec.derived(...)`` records a value the trace computes when it is first read."""

    def __init__(self, names: Iterable[str] | None, pool: ArrayPool | None = None):
        super().__init__(names)
        self.pool = pool
        if pool is not None:
            pool.begin_run()                            # one recorder per forward pass

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        """Memory from the model's pool (memory.py) for the forward pass to write one of its values
        into: every value a trace can keep, and the keys and values in attention's layouts. It goes
        back to the pool when the value is dropped: with the trace if the trace keeps it, else as
        soon as the forward pass is done with it. So ``model(ids)``, which keeps only the logits,
        recycles its memory too. Without a pool (``model.pool = None``), fresh memory."""
        return np.empty(shape, dtype) if self.pool is None else self.pool.empty(shape, dtype)

    def derived(self, name: str, layer: int | None, fn, arrays: tuple, *args) -> None:
        """Record ``fn(*arrays, *args)`` without computing it now: the trace computes it when
        first read."""
        if self.wants(name):
            self.store[(name, layer)] = Derived(fn, arrays, *args)
