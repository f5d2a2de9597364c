"""The grader of the second assignment, tutorials/assignment_patching.py: activation patching, and
direct against total effect, written by the student on top of ``model.run(...,
interventions=...)``.

It grades on a real model: SmolLM2-135M on the indirect-object task (Wang et al. 2022) when it has
been fetched (``minilens fetch smollm2``), otherwise the shipped Shakespeare Llama on a pronoun
pair, the same fallback as tutorials/08_patching.py. The student's answers are compared with
minilens's own ``activation_patching``, ``layer_attribution`` and ``ablation`` (the pieces of
``direct_and_total_effects``).
The wrong answers that name a mistake (noising instead of denoising, the wrong sign, zero instead
of mean ablation, ...) are computed only when an answer is wrong: some of them cost a whole
patching grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.attribution import layer_attribution
from ..analysis.patching import ablation, activation_patching, make_metric
from ..loading.fetch import fetched_path
from ..model import load
from .grading import call, judge

NAME = "patching"
TEMPLATE = "tutorials/assignment_patching.py"
FUNCTIONS = ("logit_diff", "patch_position", "patching_grid", "direct_effect", "mean_activation",
             "total_effect")

# The task on each model. SmolLM2: which name is not repeated (tutorial 08); the shipped Llama is
# too small for names, but tells "thou" from "you" by the pronoun it has seen.
TASKS = {
    "smollm2": dict(
        clean="When Mary and John went to the store, John gave a drink to",
        corrupted="When Mary and John went to the store, Mary gave a drink to",
        target=" Mary", contrast=" John",
        references=["When Anna and Paul went to the store, Paul gave a drink to",
                    "When Lisa and Mark went to the store, Lisa gave a drink to",
                    "When Emma and Peter went to the store, Peter gave a drink to"]),
    "shakespeare-llama": dict(
        clean="For thou, sweet lord, that", corrupted="For you, sweet lord, that",
        target=" thou", contrast=" you",
        references=["For I, sweet lord, that", "For we, sweet lord, that",
                    "For he, sweet lord, that"]),
}
COMPONENTS = {"attn_out": "attn", "mlp_out": "mlp"}   # the key patched -> attribution's label
# The grid is normalised (corrupted 0, clean 1), so one absolute tolerance fits every cell: a
# student's run and minilens's may take different forward passes (fast/ and forward.py), which
# round differently by about 1e-6.
GRID_ATOL = 1e-3


@dataclass
class Case:
    """One model and its task: aligned clean and corrupted ids, the two tokens, reference prompts
    for mean ablation, and the two unpatched runs."""
    name: str
    model: object
    clean: np.ndarray                 # [n_seq] token ids
    corrupted: np.ndarray             # [n_seq]
    target: int
    contrast: int
    references: list[np.ndarray]      # each [n_ref_seq]
    clean_trace: object
    corrupted_trace: object

    @property
    def grid_layers(self) -> list[int]:
        """The first, middle and last layer (every patched cell is a whole run of the model, so
        not all of them; on SmolLM2 the name moves to the last position between the last two)."""
        L = self.model.cfg.n_layers
        return sorted({0, L // 2, L - 1})

    @property
    def components(self) -> list[tuple[str, int]]:
        """(key, layer) of the components whose direct and total effects are graded: attention
        two thirds of the way up, the last MLP (both keys, so that neither can be hard-wired)."""
        L = self.model.cfg.n_layers
        return [("attn_out", 2 * L // 3), ("mlp_out", L - 1)]

    def metric(self, logits: np.ndarray) -> float:
        """logit[target] - logit[contrast] at the last position, as minilens computes it."""
        return make_metric(self.model, "logit_diff", self.target, self.contrast)(logits)


def default_models() -> list[str]:
    return ["smollm2"] if fetched_path("smollm2") is not None else ["shakespeare-llama"]


def build_cases(tmp: Path, models: list[str] | None = None) -> list[Case]:
    cases = []
    for name in models or default_models():
        task = TASKS[name]
        model = load(name)
        clean, corrupted = model.to_tokens(task["clean"]), model.to_tokens(task["corrupted"])
        t, c = model.to_single_token(task["target"]), model.to_single_token(task["contrast"])
        refs = [model.to_tokens(r) for r in task["references"]]
        cases.append(Case(name, model, clean, corrupted, t, c, refs, model.run(clean),
                          model.run(corrupted)))
    return cases


def describe(cases: list[Case]) -> str:
    """What the parts are graded on, said once before them."""
    return "; ".join(f"{c.name}, {TASKS[c.name]['clean']!r} against "
                     f"{TASKS[c.name]['corrupted']!r}" for c in cases)


def _logit_atol(case: Case) -> float:
    """Logit differences are compared to 1e-3 of the clean run's one (at least 1e-3 logits): the
    student's float32 sums round differently from minilens's float64 ones, by far less."""
    return 1e-3 * max(1.0, abs(case.metric(case.clean_trace.logits)))


# ------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------

def part_logit_diff(module, cases: list[Case]) -> str | None:
    rng = np.random.default_rng(3)
    for c in cases:
        n_seq, d_vocab = c.clean_trace.logits.shape
        inputs = [(c.clean_trace.logits, "the clean run's logits"),
                  (c.corrupted_trace.logits, "the corrupted run's logits"),
                  ((5 * rng.standard_normal((n_seq, d_vocab))).astype(np.float32),
                   "random logits")]
        for logits, what in inputs:
            t, k = c.target, c.contrast
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            diff = logits[:, t].astype(np.float64) - logits[:, k]
            got = call(module, "logit_diff", logits.copy(), t, k)
            msg = judge("logit_diff", got, c.metric(logits), {
                "The next token is predicted at the last position: read logits[-1], "
                "not logits[0].": diff[0],
                "It is logit[target] - logit[contrast]: positive when the model prefers the "
                "clean answer.": -diff[-1],
                "Read the last position only: the other positions predict other tokens, so an "
                "average over positions is not the answer's logit difference.": diff.mean(),
                "Use logits, not probabilities: a logit difference is a log-odds "
                "(log p_target - log p_contrast), which does not saturate near 0 and 1.":
                    probs[-1, t] - probs[-1, k],
            }, f"{c.name}, {what}", atol=_logit_atol(c))
            if msg:
                return msg
    return None


def part_patch_position(module, cases: list[Case]) -> str | None:
    rng = np.random.default_rng(4)
    n_seq, d = 7, 16
    for position in (0, 3, n_seq - 1):
        clean = rng.standard_normal((n_seq, d)).astype(np.float32)
        value = rng.standard_normal((n_seq, d)).astype(np.float32)
        what = f"a [{n_seq}, {d}] float32 value, position {position}"
        before = clean.copy()
        fn = call(module, "patch_position", clean, position)
        if not callable(fn):
            return (f"patch_position returned {type(fn).__name__}, not a function: return the "
                    f"intervention itself (def patch(value): ...; return patch), which "
                    f"model.run calls with the value it replaces ({what}).")
        got = fn(value.copy())
        if not np.array_equal(clean, before):
            return (f"patch_position wrote into clean_value: that is the clean run's record, and "
                    f"the next patched cell reads it again. Copy the value the intervention "
                    f"receives, and change the copy ({what}).")
        if isinstance(got, np.ndarray) and got.shape == value.shape and got.dtype != value.dtype:
            return (f"the intervention returned {got.dtype}, but the value it replaces is "
                    f"{value.dtype}: model.run refuses another dtype ({what}).")
        want = value.copy()
        want[position] = clean[position]
        from_on = value.copy()
        from_on[position:] = clean[position:]
        msg = judge("the intervention from patch_position", got, want, {
            "Patch one position only: every other row of the value stays as this run made it. "
            "Replacing every row replays the clean run.": clean,
            "Nothing was patched: put clean_value[position] into row `position` of the value.":
                value,
            "Patch position `position` only, not every position from it on.": from_on,
        }, what, shape_hints={(d,): "Return the whole value [n_seq, d_model] with one row "
                                     "replaced, not the row alone."})
        if msg:
            return msg
    return None


def part_patching_grid(module, cases: list[Case]) -> str | None:
    for c in cases:
        layers = c.grid_layers

        def reference(**kwargs) -> np.ndarray:
            options = dict(metric="logit_diff_normalized", key="resid_pre", by="position",
                           direction="denoising", target=c.target, contrast=c.contrast,
                           layers=layers) | kwargs
            return activation_patching(c.model, c.clean, c.corrupted, **options).values

        want = reference()
        n_seq = len(c.clean)
        shape_hints = {(n_seq, len(layers)): "Rows are layers (in the order of `layers`), "
                                              "columns positions."}
        if c.model.cfg.n_layers != len(layers):
            shape_hints[(c.model.cfg.n_layers, n_seq)] = (
                "One row per layer in `layers`, in that order, not one per layer of the model.")
        got = call(module, "patching_grid", c.model, c.clean.copy(), c.corrupted.copy(),
                   c.target, c.contrast, list(layers))
        msg = judge("patching_grid", got, want, {
            "This is noising: the clean prompt run with one corrupted activation. Denoising "
            "runs the corrupted prompt and patches in the clean activation, so that a cell near "
            "1 means 'this one vector restores the clean answer'.":
                lambda: reference(direction="noising"),
            "Normalise each cell: (value - corrupted) / (clean - corrupted), so that the "
            "corrupted run reads 0 and the clean run 1.":
                lambda: reference(metric="logit_diff"),
            "The normalisation is upside down: the corrupted run must read 0 and the clean run "
            "1, i.e. (value - corrupted) / (clean - corrupted).": 1 - want,
            "Every cell reads 0, the corrupted run itself: the patched vector must come from "
            "the clean run's trace (clean_trace['resid_pre', l]), not from the run being "
            "patched.": np.zeros_like(want),
            "Every cell reads 1, the clean run: at layer l, patch one position at a time "
            "(Part 2). Replacing the whole stream replays the clean run.": np.ones_like(want),
            "Patch 'resid_pre', the stream entering block l. 'resid_post' of layer l is "
            "resid_pre of layer l + 1, so your rows are one layer late.":
                lambda: reference(key="resid_post"),
        }, f"{c.name}, layers {layers}", shape_hints=shape_hints, atol=GRID_ATOL,
            nan_hint="Is the denominator logit_diff(clean) - logit_diff(corrupted) zero? The "
                     "two prompts differ only from the changed word on, so read the metric at "
                     "the last position.")
        if msg:
            return msg
    return None


def part_direct_effect(module, cases: list[Case]) -> str | None:
    for c in cases:
        attr = layer_attribution(c.clean_trace, target=c.target, contrast=c.contrast, by="layer")
        g, eps = c.model.params, c.model.cfg.norm_eps
        gamma = g.lnf_w.astype(np.float64)
        u = g.W_U[:, c.target].astype(np.float64) - g.W_U[:, c.contrast]
        x_final = c.clean_trace["resid_final"].astype(np.float64)              # [n_seq, d_model]
        s = np.sqrt((x_final * x_final).mean(-1, keepdims=True) + eps)          # [n_seq, 1]
        for key, l in c.components:
            label = f"{l}_{COMPONENTS[key]}"
            comp = c.clean_trace[key, l].astype(np.float64)                     # [n_seq, d_model]
            own_s = np.sqrt((comp[-1] ** 2).mean() + eps)
            got = call(module, "direct_effect", c.model.run(c.clean), key, l, c.target,
                       c.contrast)
            msg = judge("direct_effect", got, attr[label], {
                "The unembedding reads the normalised stream: divide the component by the final "
                "norm's divisor s (frozen at its value on x_final) and multiply by gamma, as in "
                "the first assignment's Part 4.": comp[-1] @ u,
                "Freeze the divisor at its value on the final residual x_final: the norm of the "
                "component alone is not what the model divided by.":
                    (comp[-1] / own_s * gamma) @ u,
                "Did you multiply by the final norm's gamma?": (comp[-1] / s[-1]) @ u,
                "The metric is a difference: read the component through W_U[:, target] - "
                "W_U[:, contrast], not W_U[:, target] alone.":
                    (comp[-1] / s[-1] * gamma) @ g.W_U[:, c.target],
                "Read the last position, where the metric is read, not position 0.":
                    (comp[0] / s[0] * gamma) @ u,
                "Read the last position only: what the component writes elsewhere reaches the "
                "answer only through later attention, which is not a direct effect.":
                    float(((comp / s * gamma) @ u).sum()),
            }, f"{c.name}, {label}", atol=_logit_atol(c))
            if msg:
                return msg
    return None


def part_total_effect(module, cases: list[Case]) -> str | None:
    for c in cases:
        keys = {key for key, _ in c.components}
        reference_runs = [c.model.run(r, names=keys) for r in c.references]
        clean = c.metric(c.clean_trace.logits)
        for key, l in c.components:
            values = [run[key, l] for run in reference_runs]                     # [n_ref_seq, d]
            mean = np.concatenate(values).mean(0)                                # [d_model]
            what = f"{c.name}, {key} of layer {l}"
            n_pos = sum(len(v) for v in values)
            got = call(module, "mean_activation", c.model, [r.copy() for r in c.references],
                       key, l)
            msg = judge("mean_activation", got, mean, {
                "Average over every position of every reference prompt, not only the last "
                "position.": np.stack([v[-1] for v in values]).mean(0),
                "Average over all the reference prompts, not only the first.": values[0].mean(0),
                "The mean, not the sum.": np.concatenate(values).sum(0),
            }, what, shape_hints={
                (n_pos,): "Average over positions (axis 0), keeping the d_model axis.",
                (len(values), mean.shape[0]): "Average over the prompts too: one [d_model] "
                                              "vector for the whole reference set."})
            if msg:
                return msg

            def total(interventions) -> float:
                run = c.model.run(c.clean, names=(), interventions=interventions)
                return clean - c.metric(run.logits)

            def fill(value, positions=slice(None), key=key, l=l) -> dict:
                def ablate(x):
                    x = x.copy()
                    x[positions] = value
                    return x
                return {(key, l): ablate}

            want = total(ablation(c.model, COMPONENTS[key], l, kind="mean",
                                  reference=c.references))
            got = call(module, "total_effect", c.model, c.clean.copy(), key, l, c.target,
                       c.contrast, mean.copy())
            msg = judge("total_effect", got, want, {
                "The total effect is how much the metric drops when the component is ablated: "
                "clean - ablated, not ablated - clean.": -want,
                "Replace the output at every position: the component writes at all of them, "
                "and later attention reads them all.": lambda: total(fill(mean, positions=-1)),
                "Use mean_value: mean ablation puts in the component's average output, while a "
                "zero is an input the later layers never saw in training.":
                    lambda: total(fill(0.0)),
            }, what, atol=_logit_atol(c))
            if msg:
                return msg
    return None


PARTS = [
    ("Part 1", "logit_diff", part_logit_diff),
    ("Part 2", "patch_position", part_patch_position),
    ("Part 3", "patching_grid", part_patching_grid),
    ("Part 4", "direct_effect", part_direct_effect),
    ("Part 5", "mean_activation, total_effect", part_total_effect),
]
