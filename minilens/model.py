"""The Model: a loaded checkpoint that runs token ids, records traces and generates; and load().

The forward pass itself is forward.py (the one to read) and fast/forward.py (the same equations,
reordered for speed; the default). ``Model.run`` chooses between them in one place, ``_forward``.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
import weakref
from itertools import islice
from pathlib import Path
from typing import Iterable

import numpy as np

from . import checks
from .config import ModelConfig
from .errors import CheckpointError, CheckpointNotFoundError, InputError, TokenizerMissingError
from .fast import workers
from .fast.forward import forward as fast_forward
from .fast.memory import ArrayPool
from .fast.recorder import PooledRecorder
from .forward import forward as textbook_forward
from .generate import can_extrapolate, context_limit, greedy
from .loading.checkpoint import (
    LAYOUTS,
    Checkpoint,
    GlobalParams,
    LazyLayers,
    blas_ready,
    find_safetensors,
    resolve,
)
from .loading.gguf_checkpoint import find_gguf, gguf_tokenizer, open_gguf, rope_freq_factors
from .loading.tokenizer import Tokenizer
from .trace import INTERVENABLE, LAYER_KEYS, Recorder, Trace, record_names

# ------------------------------------------------------------------------------------------
# The model object: weights, tokenizer, input checks
# ------------------------------------------------------------------------------------------

class Model:
    """A loaded checkpoint. ``run`` returns a Trace; the model itself holds no state between
    runs."""

    def __init__(self, cfg: ModelConfig, params: GlobalParams, layers, dtype=np.float32,
                 tokenizer: Tokenizer | None = None, folder: Path | None = None, files: tuple = ()):
        self.cfg = cfg
        self.params = params              # global weights: W_E, W_pos, lnf_w, lnf_b, W_U, b_U
        self.layers = layers              # a Sequence of LayerParams, widened lazily
        self.dtype = np.dtype(dtype)
        self.tokenizer = tokenizer
        self.tokenizer_problem: str | None = None   # why a GGUF file's tokenizer could not be built
        self._make_tokenizer = None                 # set by load() for a GGUF file: see tokenizer
        self.checkpoint = None                      # set by load(): the stored tensors by name
        self.folder = folder
        self.files = files
        # the memory of dropped traces, for the next run (fast/memory.py)
        self.pool = ArrayPool()
        self.fast = True            # run fast/forward.py; False runs forward.py, the textbook pass

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Model({c.family}: {c.n_layers} layers, d_model={c.d_model}, "
                f"heads={c.n_heads}/{c.n_kv_heads}, "
                f"d_vocab={c.d_vocab}, dtype={self.dtype.name}, from {self.folder})")

    # ---- tokens ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, or None. A GGUF file's is built from its vocabulary and merges
        on first use, not at load: a model that only ever sees token ids never builds it. If it
        cannot be built, this is None and ``tokenizer_problem`` says why."""
        if self._make_tokenizer is not None:
            make, self._make_tokenizer = self._make_tokenizer, None
            try:
                self._tokenizer = make()
            except CheckpointError as e:  # an uncovered tokenizer type: the model runs on ids
                self._tokenizer, self.tokenizer_problem = None, str(e)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Tokenizer | None) -> None:
        self._tokenizer, self._make_tokenizer = tokenizer, None

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            if self.tokenizer_problem:  # a GGUF file whose tokenizer minilens cannot build
                raise TokenizerMissingError(f"{self.tokenizer_problem} "
                                            f"The model still runs on token ids: "
                                            f"pass a list or array of ints instead of text.")
            raise TokenizerMissingError(
                f"this model ({self.folder}) has no tokenizer.json, so it cannot read text. "
                f"Pass token ids (a list or array of ints) instead, "
                f"or put the tokenizer.json beside config.json."
            )
        return self.tokenizer

    def to_tokens(self, text: str, prepend_bos: bool | None = None) -> np.ndarray:
        """Text -> ids [n_seq] int64. Llama-style families prepend BOS; override with
        prepend_bos."""
        if not isinstance(text, str):
            raise InputError(f"to_tokens takes a str, got {checks.shown(text)}.")
        if prepend_bos is not None:
            checks.flag(prepend_bos, "prepend_bos")
        tokenizer = self._need_tokenizer()
        bos = self.cfg.bos_token_id
        if (tokenizer.prepend_bos if prepend_bos is None else prepend_bos) and bos is not None \
                and bos >= self.cfg.d_vocab:
            # the fault is the checkpoint's, not the user's ids
            raise CheckpointError(
                f"{self.folder}: config.json's bos_token_id = {bos} is not a "
                f"token of this model (vocab_size = {self.cfg.d_vocab}), so BOS cannot be "
                f"prepended. Fix bos_token_id in config.json, or pass prepend_bos=False.")
        return tokenizer.encode(checks.text(text), prepend_bos)

    def to_str_tokens(self, ids) -> list[str]:
        if isinstance(ids, str):
            ids = self.to_tokens(ids)
        return self._need_tokenizer().str_tokens(self.check_ids(ids))

    def token_strings(self, ids) -> list[str]:
        """Each id as its token string, or "#id" when the model has no tokenizer: for labels and
        tables. A token that holds only part of a character's UTF-8 bytes (byte-level BPE splits
        rare characters and emoji into such pieces) decodes on its own to "�"; it is shown by its
        bytes instead, "<0xNN>" each (SentencePiece's own spelling of a byte token), beside any
        whole characters it also holds."""
        ids = np.asarray(ids).reshape(-1)
        if self.tokenizer is None:
            return [f"#{int(i)}" for i in ids]
        strs = self.tokenizer.str_tokens(ids)
        return [self._token_bytes(int(i), s) if "\ufffd" in s else s for i, s in zip(ids, strs)]

    def _token_bytes(self, token_id: int, decoded: str) -> str:
        """A token that decodes to "�", spelled from its vocabulary entry: a SentencePiece byte
        token "<0xNN>" as it stands; a byte-level BPE entry (one printable character per byte,
        GPT-2's bytes_to_unicode) read back into bytes, the undecodable ones as "<0xNN>". Anything
        else (a real "�" in the vocabulary) is left as decoded."""
        piece = self.tokenizer.hf.id_to_token(token_id) or ""
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return f"<0x{piece[3:5].upper()}>"
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                     *range(ord("®"), ord("ÿ") + 1)]
        others = [b for b in range(256) if b not in printable]
        alphabet = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
        if not piece or any(c not in alphabet for c in piece):
            return decoded
        text = bytes(alphabet[c] for c in piece).decode("utf-8", errors="surrogateescape")
        return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if "\udc80" <= c <= "\udcff" else c
                       for c in text)

    def decode(self, ids) -> str:
        return self._need_tokenizer().decode(self.check_ids(ids))

    def to_single_token(self, token: str | int) -> int:
        """A token given as a string (which must be exactly one token) or an id (an int, or a
        0-d array or tensor holding one), as a checked id."""
        token = checks.as_numpy(token)
        if isinstance(token, np.ndarray) and token.ndim == 0 and token.dtype.kind in "iu":
            token = token.item()
        if isinstance(token, str):
            token_id = self._need_tokenizer().single_token(checks.text(token, "the token"))
            if not 0 <= token_id < self.cfg.d_vocab:  # a tokenizer.json from another model
                raise InputError(f"{token!r} tokenizes to id {token_id}, "
                                 f"beyond this model's vocabulary 0..{self.cfg.d_vocab - 1}: "
                                 f"tokenizer.json does not belong to this checkpoint.")
            return token_id
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise InputError(f"a token must be a string (exactly one token) or an int id, "
                             f"got {token!r} ({type(token).__name__}).")
        if not 0 <= token < self.cfg.d_vocab:
            raise InputError(f"token id {token} is out of range: "
                             f"this model's vocabulary is 0..{self.cfg.d_vocab - 1}.")
        return int(token)

    def check_ids(self, ids, allow_batch: bool = False) -> np.ndarray:
        """Any array-like of token ids (a list, numpy, or a torch tensor, which is detached and
        read on the CPU) -> checked int64 array.

        [n_seq] or [1, n_seq] -> [n_seq]; with allow_batch, [batch, n_seq] stays 2-D.
        """
        if isinstance(ids, str):
            ids = self.to_tokens(ids)  # then checked like any ids: text can be empty, or too long
        try:
            arr = np.asarray(checks.as_numpy(ids))
        except (ValueError, TypeError):
            raise InputError("token ids must be a rectangular array; "
                             "a batch needs sequences of equal length "
                             "(pad them, or run them one at a time).") from None
        if arr.dtype == object:
            arr = self._object_ids(arr)
        if arr.ndim == 2 and arr.shape[0] == 1 and not allow_batch:
            arr = arr[0]
        if arr.ndim != (2 if allow_batch and arr.ndim == 2 else 1):
            raise InputError(f"token ids must have shape [n_seq]"
                             f"{' or [batch, n_seq]' if allow_batch else ' or [1, n_seq]'},"
                             f" got shape {list(arr.shape)[:8]}{'...' if arr.ndim > 8 else ''}."
                             + (" Wrap a single id in a list: [id]." if arr.ndim == 0 else "")
                             + (" For several sequences use model.run_batch(ids)."
                                if arr.ndim == 2 else ""))
        if arr.size == 0 or arr.shape[-1] == 0:
            raise InputError("the input is empty: give at least one token.")
        if arr.dtype.kind in "USO":
            raise InputError(f"token ids must be ints, "
                             f"got strings such as {str(arr.reshape(-1)[0])[:60]!r}. "
                             f"To run text, pass one str (model.run('some text')), "
                             f"not a list of strings.")
        if arr.dtype.kind not in "iu":
            raise InputError(f"token ids must be integers, got dtype {arr.dtype}. "
                             f"If they are whole numbers, cast them: ids.astype(int).")
        bad = (arr < 0) | (arr >= self.cfg.d_vocab)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise self._out_of_range(arr.reshape(-1)[first],
                                     np.unravel_index(first, arr.shape)[-1])
        if self.cfg.n_ctx is not None and arr.shape[-1] > self.cfg.n_ctx:
            raise InputError(f"the input has {arr.shape[-1]} tokens, "
                             f"but this {self.cfg.family} model has learned "
                             f"positions for only {self.cfg.n_ctx} (n_positions). "
                             f"Shorten the input.")
        return arr.astype(np.int64)

    def _object_ids(self, arr: np.ndarray) -> np.ndarray:
        """Ids numpy could only hold as objects: numpy integers in an object array, or Python ints
        beyond int64 (``[1, 2**64]``). -> int64, once every element is an int in the
        vocabulary."""
        flat = arr.reshape(-1)
        odd = next((i for i, x in enumerate(flat) if not checks.is_int(x)), None)
        if odd is not None:
            raise InputError(f"token ids must be ints, "
                             f"but the input holds {checks.shown(flat[odd])}. "
                             f"Pass a list or array of ints, or a str to tokenize.")
        beyond = next((i for i, x in enumerate(flat) if not 0 <= x < self.cfg.d_vocab), None)
        if beyond is not None:
            raise self._out_of_range(flat[beyond], np.unravel_index(beyond, arr.shape)[-1])
        return arr.astype(np.int64)

    def _out_of_range(self, token_id, position) -> InputError:
        return InputError(f"token id {token_id} at position {position} is out of range:"
                          f" this model's vocabulary is 0..{self.cfg.d_vocab - 1}. "
                          f"Were the ids made by another "
                          f"model's tokenizer? Use model.to_tokens(text).")

    # ---- running --------------------------------------------------------------------------
    def run(self, ids, names: Iterable[str] | None = None,
            interventions: dict | None = None, record: str | None = None) -> Trace:
        """Run one sequence (text, a list of ints, or ids [n_seq] / [1, n_seq]) and record its
        stream.

        ``names`` limits what is kept (e.g. ``{"resid_pre"}``) when memory matters; logits are
        always kept. ``record`` names a preset of keys (trace.RECORD_PRESETS): "stream" keeps the
        residual stream the logit lens reads, "sublayers" adds what attention and the MLP write
        (layer attribution), "all" everything; with ``names`` too, both are kept.
        ``interventions`` replaces values as the pass makes them, and the rest of the
        pass uses the replacement: ``{("resid_pre", 5): fn, ("z", 3): array, "embed": fn}``, each a
        function of the value (returning its replacement, same shape and dtype) or an array. The
        keys are those of trace.INTERVENABLE; ``trace.intervened`` lists the ones replaced. A run
        with interventions goes through forward.py, where each ``rec(...)`` is a place it can
        happen.
        """
        ids = self.check_ids(ids)
        rec, logits = self._forward(ids, record_names(record, names), interventions)
        return Trace(self, ids, rec.store, logits, frozenset(rec.intervened))

    def _forward(self, ids: np.ndarray, names, interventions=None, start: int = 0,
                 resid: np.ndarray | None = None,
                 read: slice = slice(None)) -> tuple[Recorder, np.ndarray]:
        """The one place that chooses the forward pass: fast/forward.py, or forward.py (the textbook
        pass, also for every run with interventions or a restart at block ``start``)."""
        if self.fast and not interventions and resid is None:
            rec = PooledRecorder(names, self.pool)
            return rec, fast_forward(ids, self.params, self.layers, self.cfg, rec, read)
        rec = Recorder(names, self.check_interventions(interventions))
        return rec, textbook_forward(ids, self.params, self.layers, self.cfg, rec, start, resid,
                                     read)

    def check_interventions(self, interventions) -> dict:
        """{key or (key, layer): fn or array} -> {(key, layer): fn or array}, every key checked."""
        if interventions is None:
            return {}
        if not isinstance(interventions, dict):
            raise InputError(f"interventions must be a dict such as {{('resid_pre', 3): fn}}, "
                             f"got {type(interventions).__name__}.")
        out = {}
        for key, what in interventions.items():
            name, layer = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
            if name not in INTERVENABLE:
                raise InputError(f"cannot intervene on {key!r}: the forward pass computes and uses "
                                 f"{', '.join(INTERVENABLE)}.")
            per_layer = name in LAYER_KEYS
            if per_layer and layer is None:
                raise InputError(f"{name!r} is per layer: give ({name!r}, layer).")
            if not per_layer and layer is not None:
                raise InputError(f"{name!r} is not per layer: "
                                 f"give {name!r} alone, not ({name!r}, {layer!r}).")
            if per_layer:
                L = self.cfg.n_layers
                if (not isinstance(layer, (int, np.integer)) or isinstance(layer, bool)
                        or not -L <= layer < L):
                    raise InputError(f"intervention layer {layer!r} is out of range: "
                                     f"this model has {L} layers.")
                layer = int(layer) % L
            if not callable(what) and not isinstance(what, np.ndarray):
                raise InputError(f"the intervention on {key!r} "
                                 f"must be a function of the value or an array, "
                                 f"got {type(what).__name__}.")
            out[(name, layer)] = what
        return out

    def run_batch(self, ids, names: Iterable[str] | None = None,
                  interventions: dict | None = None, record: str | None = None) -> list[Trace]:
        """Run several equal-length sequences at once ([batch, n_seq]); one Trace per sequence.

        The matrix products see batch * n_seq rows at once, which helps short sequences; the
        numbers equal running each sequence alone. Interventions see the whole batch: [batch, ...]
        values.
        """
        ids = self.check_ids(ids, allow_batch=True)
        ids = ids[None] if ids.ndim == 1 else ids
        rec, logits = self._forward(ids, record_names(record, names), interventions)
        return [Trace(self, ids[b], {key: value[b] for key, value in rec.store.items()}, logits[b],
                      frozenset(rec.intervened)) for b in range(len(ids))]

    def free_memory(self) -> None:
        """Give the memory of dropped traces back to the operating system (see
        minilens/fast/memory.py).

        A model keeps as much as its last run asked for (at most 1 GiB), so that a run like the last
        one does not have to fault in new memory. ``model.pool = None`` switches the recycling off.
        """
        if self.pool is not None:                       # None: recycling switched off by the user
            self.pool.clear()

    # ---- pickle and deepcopy (issue 18) -------------------------------------------------------
    def __reduce__(self):
        """How pickle sees a model. A loaded model is a reference to its files, its dtype and its
        options: unpickling reopens them memory-mapped, as ``load`` does, so a model (or a trace,
        which holds one) crosses to a multiprocessing worker for a few hundred bytes. Within one
        process, unpickling returns a model already open on the same files with the same dtype and
        options, so a thousand traces from workers share one model. The files must be where they
        were and unchanged (same size and modification time), or unpickling raises rather than
        pair a trace with other weights. A model built in memory (bench.HookedAutoModel, tests) has
        no files and travels with its arrays."""
        recycles = self.pool is not None
        if not self.files:
            return _rebuild, (type(self), dict(vars(self), layers=list(self.layers), pool=None),
                              recycles)
        source = self.files[0] if Path(self.files[0]).suffix.lower() == ".gguf" else self.folder
        options = dict(fast=self.fast, pool=recycles,
                       cache_layers=getattr(self.layers, "cache", None),
                       files=[file_stamp(f) for f in self.files])
        return _reopen, (os.path.abspath(source), self.dtype.name, options)

    def __deepcopy__(self, memo: dict) -> "Model":
        """copy.deepcopy: a new model of the same files, dtype and options, reopened; one built in
        memory gets copies of its arrays."""
        rebuild, args = self.__reduce__()
        if rebuild is _reopen:
            return _reopen(*args, shared=False)
        return _rebuild(args[0], copy.deepcopy(args[1], memo), args[2])

    def __call__(self, ids) -> np.ndarray:
        """The logits only.  -> [n_seq, d_vocab]"""
        return self.run(ids, names=()).logits

    def generate(self, ids, n_new: int = 20, past_context: bool = False,
                 kv_cache: bool = True) -> np.ndarray:
        """Greedy decoding: ``n_new`` tokens, each the argmax of the logits at the last position.
        -> ids [n_seq + n_new], the input first

        It stops early, with a warning, where the sequence fills the model's context
        (generate.context_limit: GPT-2's n_positions, a rotary model's max_position_embeddings).
        ``past_context=True`` lets a rotary model go on past it; RoPE extrapolates there, usually
        into nonsense, and learned positions end there whatever is asked. ``kv_cache=False``
        re-runs the whole sequence at every step instead of reading the earlier tokens' keys and
        values from a cache (generate.py): the same tokens, slower.
        """
        n_new = checks.count(n_new, "n_new", minimum=0)
        past_context = checks.flag(past_context, "past_context")
        ids = self.check_ids(ids)
        new = list(islice(greedy(self, ids, past_context, checks.flag(kv_cache, "kv_cache")),
                          n_new))
        if len(new) < n_new:
            limit = context_limit(self.cfg)
            go_on = ("pass past_context=True to go on (RoPE extrapolates past it, usually into "
                     "nonsense)" if can_extrapolate(self.cfg)
                     else "its learned positions end there")
            warnings.warn(f"generate stopped after {len(new)} of {n_new} new tokens: the sequence "
                          f"fills this {self.cfg.family} model's context of {limit} positions; "
                          f"{go_on}.", stacklevel=2)
        return np.concatenate([ids, np.array(new, dtype=np.int64)])


def file_stamp(path) -> tuple[str, int, int]:
    """(path, size, modification time): what must not have changed when a model is reopened."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


# The models open in this process, for unpickling to find (Model.__reduce__). Weak: it keeps no
# model alive.
_OPEN: weakref.WeakSet = weakref.WeakSet()


def _reopen(source: str, dtype: str, options: dict, shared: bool = True) -> Model:
    """Unpickling a loaded model (Model.__reduce__): an open model of the same files, dtype and
    options (``shared``), or the files loaded again, memory-mapped."""
    if shared:
        for model in list(_OPEN):
            try:
                if model.__reduce__()[1] == (source, dtype, options):
                    return model
            except OSError:                 # that model's files are gone: not a match
                continue
    for path, size, mtime in options["files"]:
        try:
            same = file_stamp(path)[1:] == (size, mtime)
        except OSError:
            raise CheckpointNotFoundError(
                f"cannot reopen the pickled model: {path} is gone. A pickled model (or trace) "
                f"refers to its checkpoint files; unpickle it where they are.") from None
        if not same:
            raise CheckpointError(
                f"cannot reopen the pickled model: {path} has changed since it was pickled "
                f"(its size or modification time differ), so its weights may not be the ones "
                f"the model (or trace) was made with. Load the model afresh.")
    model = load(source, dtype=dtype, cache_layers=options["cache_layers"],
                 fast=options["fast"])
    if not options["pool"]:
        model.pool = None
    return model


def _rebuild(cls: type, state: dict, recycles: bool) -> Model:
    """Unpickling a model built in memory (Model.__reduce__): its arrays as they were."""
    model = cls.__new__(cls)
    vars(model).update(state)
    model.pool = ArrayPool() if recycles else None
    return model


# Widened layers are kept (cached) when, all together, they fit in this many bytes.
CACHE_LAYERS_MAX_BYTES = 2 << 30
# all_finite sums an array this large in parts, side by side (a 28M-number embedding at load).
PARALLEL_SUM = 1 << 22


def load(path_or_name, dtype=np.float32, check_finite: bool = False,
         cache_layers: bool | None = None, fast: bool = True) -> Model:
    """Load a Hugging Face checkpoint folder (or a model name from the local HF cache).

    ``dtype`` is the compute dtype: float32 by default, float64 as a reference mode. Stored
    F16/BF16/F32 weights are widened exactly. Tensors are memory-mapped read-only and the layers
    are widened on first use (the fast pass widens all of a cached model's layers before its first
    product), so loading is quick and nothing is ever written to the folder.
    ``check_finite=True`` reads every weight once and names any tensor holding NaN or inf.
    ``fast=False`` runs the textbook forward pass (forward.py) instead of fast/forward.py: the same
    numbers to rounding, slower, and every value made exactly where forward.py's code says.

    ``cache_layers``: keep each layer once widened (fast repeated runs), or widen it afresh on every
    use and drop it after (peak memory: the stored checkpoint plus one widened layer). The default,
    None, decides by size: layers are cached when their widened bytes total at most
    CACHE_LAYERS_MAX_BYTES (2 GiB), so small models run fastest and a bf16 1B model does not
    need twice its stored size in RAM (issue 6).
    """
    checks.path(path_or_name, "path_or_name")
    checks.flag(check_finite, "check_finite")
    checks.flag(fast, "fast")
    if cache_layers is not None:
        checks.flag(cache_layers, "cache_layers")
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError):
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise InputError(f"dtype must be float32 or float64 (np.float32, np.float64), "
                         f"got {dtype or 'something else'}.")
    folder = resolve(path_or_name)
    gguf_path = find_gguf(folder)
    if gguf_path is not None:
        hf, ckpt = open_gguf(gguf_path)
        cfg = rope_freq_factors(ckpt.gguf,
                                ModelConfig.from_hf(hf, source=f"{gguf_path} (its GGUF metadata)"))
        folder, files = gguf_path.parent, [gguf_path]
    else:
        cfg = ModelConfig.from_file(folder / "config.json")
        files = find_safetensors(folder)
        ckpt = Checkpoint(files, LAYOUTS[cfg.family])
    ckpt.validate(cfg)
    if check_finite:
        check_weights_finite(ckpt)
    params = blas_ready(ckpt.layout.globals(ckpt.getter(dtype), cfg))
    # A cheap default check of the global weights: from the stored bytes where the format allows
    # (a GGUF file's block scales), or one pass over the weights just widened. If they hold NaN
    # or inf, scan the whole checkpoint to name the first bad tensor.
    if not check_finite:
        finite = ckpt.globals_finite()
        if finite is None:
            finite = all_finite(*(a for a in vars(params).values() if a is not None))
        if not finite:
            check_weights_finite(ckpt)
    if cache_layers is None:
        cache_layers = ckpt.layer_elements(cfg) * dtype.itemsize <= CACHE_LAYERS_MAX_BYTES
    layers = LazyLayers(ckpt, cfg, dtype, cache=cache_layers)
    tokenizer = None
    if gguf_path is None:
        tok_path = folder / "tokenizer.json"
        tokenizer = (Tokenizer(tok_path, cfg.bos_token_id, cfg.prepend_bos) if tok_path.is_file()
                     else None)
    model = Model(cfg, params, layers, dtype, tokenizer, folder, tuple(files))
    if gguf_path is not None:                       # built on first use (Model.tokenizer)
        model._make_tokenizer = functools.partial(gguf_tokenizer, ckpt.gguf)
    model.checkpoint = ckpt             # the stored tensors, by name (their dtypes, files, shapes)
    model.fast = bool(fast)
    _OPEN.add(model)
    return model


def all_finite(*arrays: np.ndarray) -> bool:
    """No NaN or inf in any of ``arrays``; an array seen before (W_U tied to W_E) is skipped.

    One pass each: the sum is NaN or infinite if any element is. A finite array's sum can still
    overflow, so an infinite sum is confirmed with min and max (NaN if any element is, infinite if
    any is). Neither needs a boolean temporary of the array's size (a tenth of a second on a 1B
    model's embeddings; issue 6)."""
    seen: list[np.ndarray] = []
    for a in arrays:
        if a.size == 0 or any(np.may_share_memory(a, b) and a.size == b.size for b in seen):
            continue
        seen.append(a)
        with np.errstate(over="ignore", invalid="ignore"):
            total = _sum(a)
        if not np.isfinite(total) and not (np.isfinite(a.min()) and np.isfinite(a.max())):
            return False
    return True


def _sum(a: np.ndarray) -> np.floating:
    """a.sum(); a contiguous array of PARALLEL_SUM numbers or more is summed in parts, one per
    worker (fast/workers.py), and the parts' sums added (NaN or inf if any part's is)."""
    n = workers.n_workers() if a.size >= PARALLEL_SUM and a.flags.forc else 1
    if n == 1:
        return a.sum()
    flat, parts, sums = a.ravel(order="K"), workers.shares(a.size, n), [np.float32(0)] * n

    def part(w: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):    # (np.errstate is per thread)
            sums[w] = flat[parts[w]].sum()
    workers.split(part, n)
    return np.sum(sums)


def check_weights_finite(ckpt: Checkpoint) -> None:
    """Read every tensor once (in float32) and name the first that holds NaN or inf."""
    get = ckpt.getter(np.float32)
    for name, info in ckpt.infos.items():
        if not all_finite(get(name, info.shape)):
            raise CheckpointError(f"tensor {name!r} in {info.file} holds NaN or inf values. "
                                  f"The checkpoint is corrupt or diverged in training; "
                                  f"use another one.")
