"""minilens: a from-scratch, pure-NumPy forward pass for GPT-2 and Llama-family models.

It loads Hugging Face safetensors checkpoints and GGUF files, records every layer's residual
stream, and computes the logit lens and direct logit attribution on that record. The pipeline,
in folders: loading/ -> config -> forward (ops) -> trace -> model -> analysis/ -> show/.

    import minilens as ml
    model = ml.load("shakespeare-llama")
    trace = model.run("To be, or not to")
    trace["resid_pre", 3]          # [n_seq, d_model]
"""

from . import forward  # the forward pass to read: forward.forward, forward.block, ...
from .analysis.attribution import Attribution, layer_attribution
from .analysis.direction import DirectionLens, direction_lens, sae_lens
from .analysis.lens import LensResult, logit_lens
from .analysis.patching import (
    EffectsResult,
    PatchingResult,
    ablation,
    activation_patching,
    direct_and_total_effects,
    knockout,
    path_patching,
    steer,
)
from .analysis.tuned_lens import (
    LensEvaluation,
    Translators,
    evaluate_lens,
    fit_affine_lens,
    fit_tuned_lens,
    lens_corpus,
    load_translators,
    refine_lens,
)
from .config import ModelConfig, RopeConfig
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    InputError,
    MinilensError,
    NotRecordedError,
    TokenizerMissingError,
    UnsupportedModelError,
)
from .model import Model, load
from .show import render
from .trace import Trace

render.attach()   # results draw themselves (repr, Jupyter) without analysis/ importing show/

__version__ = "0.1.0"

__all__ = [
    "logit_lens", "LensResult", "layer_attribution", "Attribution",
    "direction_lens", "sae_lens", "DirectionLens",
    "activation_patching", "PatchingResult", "ablation", "knockout", "steer", "path_patching",
    "direct_and_total_effects", "EffectsResult",
    "fit_affine_lens", "refine_lens", "fit_tuned_lens", "evaluate_lens", "LensEvaluation",
    "Translators", "load_translators", "lens_corpus",
    "load", "Model", "Trace", "ModelConfig", "RopeConfig", "forward",
    "MinilensError", "CheckpointError", "CheckpointNotFoundError", "InputError",
    "TokenizerMissingError", "UnsupportedModelError", "NotRecordedError",
]
