"""The Arrakis-compatible bench API (the LogitLens page of the Arrakis library), implemented on
minilens.

    config = HookedAutoConfig(name="llama")            # small, random weights, vocabulary 50257
    model = HookedAutoModel(config)                     # or HookedAutoModel.from_pretrained(folder)
    exp = BaseInterpretabilityBench(model)

    @exp.use_tools("logit_lens")
    def test_logit_lens(input_ids, target_idx, layer_idx, logit_lens):
        return logit_lens.logit_lens(input_ids, target_idx, layer_idx)

Arrakis's own LogitLens never projected onto the vocabulary, ignored the final norm and crashed on
the last two layers. Here ``LogitLens`` is a thin layer over minilens.logit_lens and
minilens.layer_attribution, which do the math exactly. No torch is imported: any array-like
with ``__array__`` (a torch tensor included) is read with numpy.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .. import checks
from ..analysis.attribution import Attribution, layer_attribution
from ..analysis.lens import LensResult, check_positions, lens_logits, run_lens
from ..config import ModelConfig
from ..errors import InputError
from ..loading.checkpoint import GlobalParams, LayerParams
from ..model import Model, load

INIT_STD = 0.02  # GPT-2's initialisation scale (Radford et al. 2019; nanoGPT uses the same)

# Small defaults, in Hugging Face field names. The vocabulary is GPT-2's, so that Arrakis's
# torch.randint(0, 50256, (1, 50)) ids are valid.
DEFAULTS = {
    "llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=172, vocab_size=50257,
                  max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                  hidden_act="silu", tie_word_embeddings=False, attention_bias=False,
                  mlp_bias=False, head_dim=None, rope_scaling=None, bos_token_id=50256,
                  eos_token_id=50256),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_inner=None, n_positions=1024,
                 vocab_size=50257, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                 tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256),
}


class HookedAutoConfig(dict):
    """A small random-model config: the family's defaults (above) with Hugging Face-named overrides.

    It is the Hugging Face config dict itself; ``.cfg`` is minilens's ModelConfig for it.
    """

    def __init__(self, name: str = "llama", **overrides):
        if not isinstance(name, str) or name not in DEFAULTS:
            raise InputError(f"HookedAutoConfig(name={name!r}): "
                             f"minilens builds {', '.join(map(repr, DEFAULTS))}.")
        unknown = sorted(set(overrides) - set(DEFAULTS[name]))
        if unknown:
            raise InputError(
                f"HookedAutoConfig({name!r}) has no field {', '.join(map(repr, unknown))}; "
                f"its Hugging Face fields are {', '.join(sorted(DEFAULTS[name]))}.")
        fields = {**DEFAULTS[name], **overrides}
        for key in ("bos_token_id", "eos_token_id"):
            # GPT-2's <|endoftext|> (50256) is the default; a smaller vocabulary ends at its last id
            if key not in overrides and fields[key] >= fields["vocab_size"]:
                fields[key] = fields["vocab_size"] - 1
        super().__init__(fields)
        self.name = name
        self.cfg = ModelConfig.from_hf(dict(self), source=f"HookedAutoConfig({name!r})")


class HookedAutoModel(Model):
    """A minilens Model with fixed-seed random weights (no torch), or real ones via
    from_pretrained."""

    def __init__(self, config: HookedAutoConfig, seed: int = 0, dtype=np.float32):
        if not isinstance(config, HookedAutoConfig):
            raise InputError(
                f"HookedAutoModel needs a HookedAutoConfig, got {type(config).__name__}. "
                f"For a checkpoint folder use HookedAutoModel.from_pretrained(path).")
        if not checks.is_int(seed):
            raise InputError(f"seed must be an int, got {checks.shown(seed)}.")
        if dtype not in (np.float32, np.float64, "float32", "float64"):
            raise InputError(f"dtype must be np.float32 or np.float64, got {checks.shown(dtype)}.")
        cfg = config.cfg
        params, layers = random_params(cfg, int(seed), np.dtype(dtype))
        super().__init__(cfg, params, layers, dtype=dtype)

    @staticmethod
    def from_pretrained(path, dtype=np.float32) -> Model:
        """Real weights from a Hugging Face folder (or cached model name): minilens.load."""
        return load(path, dtype=dtype)


def random_params(cfg: ModelConfig, seed: int,
                  dtype: np.dtype) -> tuple[GlobalParams, list[LayerParams]]:
    """GPT-2-style initialisation: N(0, 0.02) matrices and biases, norm weights 1 + N(0, 0.02).

    Biases and norm weights are random too (not 0 and 1), so that every bias and gamma term of
    the lens and the attribution is exercised. Drawn in float32, then widened: a float64 model
    has exactly the float32 model's weights.
    """
    rng = np.random.default_rng(seed)

    def normal(*shape, centre=0.0):
        return (centre + INIT_STD * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)

    def maybe(flag, *shape):
        return normal(*shape) if flag else None

    d, m, V = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    q, kv = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    W_E = normal(V, d)                                                 # [d_vocab, d_model]
    params = GlobalParams(
        W_E=W_E, W_pos=normal(cfg.n_ctx, d) if cfg.positional == "learned" else None,
        lnf_w=normal(d, centre=1.0), lnf_b=maybe(cfg.norm_bias, d),
        # [d_model, d_vocab]
        W_U=W_E.T if cfg.tie_embeddings else np.ascontiguousarray(normal(V, d).T),
        b_U=None)
    layers = [LayerParams(
        ln1_w=normal(d, centre=1.0), ln1_b=maybe(cfg.norm_bias, d),
        W_Q=normal(d, q), W_K=normal(d, kv), W_V=normal(d, kv),
        b_Q=maybe(cfg.qkv_bias, q), b_K=maybe(cfg.qkv_bias, kv), b_V=maybe(cfg.qkv_bias, kv),
        W_O=normal(q, d), b_O=maybe(cfg.o_bias, d),
        ln2_w=normal(d, centre=1.0), ln2_b=maybe(cfg.norm_bias, d),
        W_in=normal(d, m), b_in=maybe(cfg.mlp_bias, m),
        W_gate=maybe(cfg.gated_mlp, d, m), b_gate=maybe(cfg.gated_mlp and cfg.mlp_bias, m),
        W_out=normal(m, d), b_out=maybe(cfg.mlp_bias, d),
    ) for _ in range(cfg.n_layers)]
    return params, layers


# ------------------------------------------------------------------------------------------
# The tool
# ------------------------------------------------------------------------------------------

@dataclass
class LayerLens:
    """``LogitLens.logit_lens``'s answer for one layer: the stream *after* block ``layer``."""

    layer: int
    row: str                        # the lens row read: "{layer+1}_pre", or "final_post" for the
                                    # last layer
    target: int                     # vocabulary id
    logits: np.ndarray              # [n_seq, d_vocab] lens logits at this layer
    target_logit: np.ndarray        # [n_seq]
    target_prob: np.ndarray         # [n_seq]
    target_rank: np.ndarray         # [n_seq] 0 = top
    top_ids: np.ndarray             # [n_seq, k]
    top_probs: np.ndarray           # [n_seq, k]
    token_contributions: Attribution  # by="token" through this layer's attention, target logit
                                      # at the last position

    def to_dict(self) -> dict:
        """JSON-ready. The full [n_seq, d_vocab] logits are left out (millions of numbers); the
        rest is kept."""
        return dict(layer=self.layer, row=self.row, target=self.target,
                    logits=f"omitted: shape {list(self.logits.shape)}",
                    target_logit=self.target_logit.tolist(), target_prob=self.target_prob.tolist(),
                    target_rank=self.target_rank.tolist(), top_ids=self.top_ids.tolist(),
                    top_probs=self.top_probs.tolist(),
                    token_contributions=self.token_contributions.to_dict())


class LogitLens:
    """Arrakis's tool: ``layer_attribution(input_ids, target_idx)`` and
    ``logit_lens(input_ids, target_idx, layer_idx)``."""

    def __init__(self, model: Model, top_k: int = 5):
        self.model = _check_model(model, "LogitLens")
        self.top_k = checks.count(top_k, "top_k")

    def layer_attribution(self, input_ids, target_idx: int) -> Attribution:
        """How much each layer's attn and mlp (and the embedding) add to vocabulary id
        ``target_idx``'s logit at the last position (direct logit attribution; sums to the
        logit)."""
        trace = self.model.run(input_ids)
        return layer_attribution(trace, _vocab_id(target_idx), position=-1, by="layer")

    layer_attributions = layer_attribution  # the seed spells it both ways

    def logit_lens(self, input_ids, target_idx: int, layer_idx: int) -> LayerLens:
        """The lens after block ``layer_idx`` (any layer, the last two included): its logits, the
        target's logit, probability and rank at every position, the top tokens, and each source
        token's contribution through that layer's attention to the target's logit at the last
        position."""
        target = _vocab_id(target_idx)
        trace = self.model.run(input_ids)
        l = trace.layer_index(layer_idx)
        L = trace.n_layers
        row = (("final_post", "resid_final") if l == L - 1
               else (f"{l + 1}_pre", ("resid_pre", l + 1)))
        pos = check_positions(trace, None)
        targets = np.full(trace.n_seq, self.model.to_single_token(target), dtype=np.int64)
        lens = run_lens(trace, [row, ("final_post", "resid_final")], pos, targets, self.top_k)
        return LayerLens(layer=l, row=row[0], target=target,
                         logits=lens_logits(self.model, trace[row[1]]),
                         target_logit=lens.target_logit[0], target_prob=lens.target_prob[0],
                         target_rank=lens.target_rank[0], top_ids=lens.top_ids[0],
                         top_probs=lens.top_probs[0],
                         token_contributions=layer_attribution(trace, target, position=-1,
                                                               by="token", layer=l))


def _check_model(model, tool: str) -> Model:
    if not isinstance(model, Model):
        raise InputError(f"{tool} needs a minilens Model (HookedAutoModel(config), or "
                         f"HookedAutoModel.from_pretrained(folder)), got {checks.shown(model)}.")
    return model


def _vocab_id(target_idx) -> int:
    """target_idx is a vocabulary id (an int, or a 0-d array/tensor holding one)."""
    arr = np.asarray(checks.as_numpy(target_idx))
    if arr.ndim != 0 or arr.dtype.kind not in "iu":
        raise InputError(f"target_idx must be one vocabulary id (an int), got {target_idx!r}.")
    return int(arr)


TOOLS = {"logit_lens": LogitLens}


# ------------------------------------------------------------------------------------------
# The bench
# ------------------------------------------------------------------------------------------

class BaseInterpretabilityBench:
    """Runs experiments with tools injected, and logs every run as JSON in ``save_dir``."""

    def __init__(self, model: Model, save_dir: str | os.PathLike = "experiments"):
        self.model = _check_model(model, "BaseInterpretabilityBench")
        self.save_dir = Path(checks.path(save_dir, "save_dir"))
        self._tools: dict[str, object] = {}

    def tool(self, name: str):
        if not isinstance(name, str) or name not in TOOLS:
            raise InputError(f"unknown tool {name!r}; available tools: {', '.join(sorted(TOOLS))}.")
        if name not in self._tools:
            self._tools[name] = TOOLS[name](self.model)
        return self._tools[name]

    def use_tools(self, *names: str):
        """Decorator: call the function with each tool passed as a keyword argument named like the
        tool."""
        unknown = [n for n in names if not isinstance(n, str) or n not in TOOLS]
        if unknown:
            raise InputError(f"unknown tool {unknown[0]!r}; "
                             f"available tools: {', '.join(sorted(TOOLS))}.")

        def decorate(fn):
            @functools.wraps(fn)
            def run(*args, **kwargs):
                self._check_save_dir()
                tools = {name: self.tool(name) for name in names}
                start = time.perf_counter()
                result = fn(*args, **kwargs, **tools)
                seconds = time.perf_counter() - start
                self.log_experiment(fn, args, kwargs, result, seconds)
                return result
            return run
        return decorate

    def _check_save_dir(self) -> None:
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create save_dir {str(self.save_dir)!r} ({e.strerror}). "
                             f"Pass save_dir= a folder you can write to.") from None
        if not os.access(self.save_dir, os.W_OK | os.X_OK):
            raise InputError(f"save_dir {str(self.save_dir)!r} is not writable. "
                             f"Pass save_dir= a folder you can write to.")

    def log_experiment(self, fn, args: tuple, kwargs: dict, result, seconds: float) -> Path:
        """Write one run (arguments, result, time, source) to a new JSON file; earlier runs are
        never overwritten."""
        self._check_save_dir()
        try:
            bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = {"args": list(args), **kwargs}
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            source = None
        record = dict(function=fn.__name__, time=datetime.now().isoformat(timespec="seconds"),
                      seconds=seconds, arguments=to_jsonable(dict(bound)),
                      result=to_jsonable(result), source=source, model=repr(self.model))
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in range(1, 100_000):
            path = self.save_dir / f"{fn.__name__}-{stamp}-{n:03d}.json"
            try:
                with open(path, "x", encoding="utf-8") as fh:   # "x": fails instead of overwriting
                    json.dump(record, fh, indent=1)
                return path
            except FileExistsError:
                continue
            except OSError as e:
                raise InputError(f"cannot write {path} ({e.strerror}). "
                                 f"Pass save_dir= a folder you can write to.") from None
        raise InputError(f"{self.save_dir} holds too many runs of {fn.__name__} this second.")


# Containers nested deeper than this are logged as their shortened repr.
MAX_DEPTH = 100


def to_jsonable(x, _inside: tuple = ()):
    """numpy arrays and scalars -> lists and numbers; minilens results -> dicts;
    anything else -> repr.

    The log must not fail on the result it records: a container that holds itself is written as
    "[...]", as repr writes it, one nested deeper than MAX_DEPTH as its shortened repr, and an int
    too long for Python to print (4300 digits) by its size. ``_inside``: the ids of the containers
    being written, outermost first."""
    if isinstance(x, int) and not isinstance(x, bool):
        try:
            return x if abs(x) < 2 ** 63 else str(x)
        except ValueError:                       # sys.get_int_max_str_digits
            return f"<an int of {x.bit_length()} bits>"
    if isinstance(x, (str, bool, float)) or x is None:
        return x
    if isinstance(x, np.generic):
        return to_jsonable(x.item(), _inside)
    if id(x) in _inside:
        return "[...]"
    if len(_inside) >= MAX_DEPTH:
        return checks.shown(x)
    inside = (*_inside, id(x))
    if hasattr(x, "to_dict"):
        return to_jsonable(x.to_dict(), inside)
    if isinstance(x, dict):
        return {str(k): to_jsonable(v, inside) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v, inside) for v in x]
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") or callable(getattr(x, "detach",
                                                                                  None)):
        arr = np.asarray(checks.as_numpy(x))
        return arr.tolist() if arr.dtype.kind in "biuf" else to_jsonable(arr.tolist(), inside)
    return checks.shown(x)


__all__ = ["HookedAutoConfig", "HookedAutoModel", "BaseInterpretabilityBench", "LogitLens",
           "LayerLens", "LensResult", "Attribution"]
