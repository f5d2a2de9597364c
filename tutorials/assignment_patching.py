# %% [markdown]
# # Assignment: activation patching, and direct against total effect
#
# The lens and attribution (the first assignment) say what each part of a model *writes* toward a
# prediction. Here you measure what the prediction *depends on*: run the model with one
# activation replaced, and see what changes. You will write six short functions on top of one
# minilens call,
#
#     model.run(ids, interventions={("resid_pre", l): fn})
#
# which runs the model and, where the stream entering block l is made, carries on with
# fn(value) instead of value (value: [n_seq, d_model]; fn returns an array of the same shape and
# dtype). Nothing else is hidden: minilens's own activation_patching is this loop, batched.
#
# Grade your work at any time (unfinished parts are reported as TODO, never as a crash):
#
#     python -m minilens.course.check tutorials/assignment_patching.py
#
# The grader runs on a real model: SmolLM2-135M on the indirect-object task (Wang et al. 2022)
# when `minilens fetch smollm2` has run, otherwise the shipped Shakespeare Llama on a pronoun
# pair. It compares your answers with minilens's `activation_patching`, `layer_attribution` and
# `direct_and_total_effects` (tutorials/08_patching.py shows them at work), and names the usual
# mistake when a part fails. The task on SmolLM2:
#
#     clean:      When Mary and John went to the store, John gave a drink to   -> " Mary"
#     corrupted:  When Mary and John went to the store, Mary gave a drink to   -> " John"
#
# What you can use (shapes in minilens's vocabulary: n_seq positions, d_model stream width):
# - `trace = model.run(ids)`: `trace.logits` [n_seq, d_vocab]; `trace["resid_pre", l]` (the
#   stream entering block l), `trace["attn_out", l]`, `trace["mlp_out", l]`, `trace["resid_final"]`
#   (the last residual), each [n_seq, d_model]. `model.run(ids, names={"resid_pre"})` keeps only
#   what you name.
# - `model.run(ids, interventions={(key, l): fn})`, for any of those keys.
# - `model.params.lnf_w` (the final norm's gamma, [d_model]), `model.params.W_U`
#   ([d_model, d_vocab]), `model.cfg.norm_eps`, `model.cfg.n_layers`. Both models here are
#   Llama-family: the final norm is RMSNorm, N(x) = gamma * x / sqrt(mean(x**2) + eps), and there
#   is no unembedding bias.

# %%
import numpy as np  # noqa: F401  (the numpy your functions will use)

# %% [markdown]
# ## Part 1: the metric
# One number says which answer the model prefers: the logit difference between the clean answer
# (the target) and the corrupted one (the contrast), at the last position, where the next token
# is predicted. It equals log p(target) - log p(contrast): the softmax's normaliser cancels.

# %%
def logit_diff(logits, target_id, contrast_id):
    """logit[target] - logit[contrast] at the last position.  logits [n_seq, d_vocab] -> float"""
    raise NotImplementedError("Part 1: write logit_diff")


# %% [markdown]
# ## Part 2: one patch
# An intervention is a function of the value the forward pass made. This one puts back one
# position of the clean run's activation and leaves the rest of the value as this run made it.

# %%
def patch_position(clean_value, position):
    """An intervention that patches one position.

    clean_value: [n_seq, d_model], the clean run's activation (e.g. clean_trace["resid_pre", l]).
    Returns a function value [n_seq, d_model] -> [n_seq, d_model]: a copy of value whose row
    `position` is clean_value[position]. clean_value itself stays unchanged: every cell of the
    grid reads it again.
    """
    raise NotImplementedError("Part 2: write patch_position")


# %% [markdown]
# ## Part 3: the patching grid
# Denoising: run the *corrupted* prompt, and at one layer and one position put back the *clean*
# stream. Normalise each result so that the corrupted run reads 0 and the clean run 1: a cell
# near 1 means that one vector carries everything the model needs to answer as in the clean run.

# %%
def patching_grid(model, clean_ids, corrupted_ids, target_id, contrast_id, layers):
    """Denoising activation patching of resid_pre, one layer and one position at a time.

    For each l in layers and each position p: run the corrupted prompt with resid_pre of layer
    l at position p taken from the clean run, and record the normalised metric
        (logit_diff(patched) - logit_diff(corrupted)) / (logit_diff(clean) - logit_diff(corrupted))
    -> [len(layers), n_seq]
    """
    raise NotImplementedError("Part 3: write patching_grid")


# %% [markdown]
# ## Part 4: direct effect
# A component's direct effect is what it writes into the metric itself: its output at the last
# position, read through the final norm with the divisor frozen at its value on the final
# residual (the first assignment's Part 4), and through the difference of the two unembedding
# columns.

# %%
def direct_effect(trace, key, layer, target_id, contrast_id):
    """The direct effect of one component on logit_diff at the last position.  -> float

    key: "attn_out" or "mlp_out"; trace: a run of the clean prompt (trace.model is its model).
        c = trace[key, layer][-1]
        s = sqrt(mean(x_final**2) + eps),  x_final = trace["resid_final"][-1]
        direct = (c / s * gamma) . (W_U[:, target] - W_U[:, contrast])
    """
    raise NotImplementedError("Part 4: write direct_effect")


# %% [markdown]
# ## Part 5: total effect, by mean ablation
# A component's total effect is how much the metric drops when the component is removed and
# the rest of the model runs on: everything it does, directly and through later layers. Remove it
# by mean ablation: replace its output, at every position, by its average output on reference
# prompts (the same sentence with other names), a value the later layers are used to. Zero is
# not such a value.

# %%
def mean_activation(model, reference_ids, key, layer):
    """The component's output averaged over every position of every reference prompt.

    reference_ids: a list of token-id arrays (lengths may differ).  -> [d_model]
    """
    raise NotImplementedError("Part 5a: write mean_activation")


def total_effect(model, ids, key, layer, target_id, contrast_id, mean_value):
    """How much logit_diff drops when (key, layer) is replaced by mean_value at every position.

    -> logit_diff(clean run) - logit_diff(ablated run), a float
    """
    raise NotImplementedError("Part 5b: write total_effect")


# %% [markdown]
# ## Try it
# Once the parts pass, run this file (`python tutorials/assignment_patching.py`) to see your grid
# and your effects on the grader's model. Read the grid by columns: where is the changed name at
# each depth? Then compare each component's direct and total effect. They need not be equal: when
# a component is removed, later layers can make up part of what it wrote (self-repair, McGrath et
# al. 2023), or amplify it. Which of your components does each?

# %%
if __name__ == "__main__":
    import minilens as ml
    from minilens.course.patching_grader import TASKS, default_models

    name = default_models()[0]                 # SmolLM2 if fetched, else the shipped Llama
    task, model = TASKS[name], ml.load(name)
    ids_clean, ids_corrupted = model.to_tokens(task["clean"]), model.to_tokens(task["corrupted"])
    t, k = model.to_single_token(task["target"]), model.to_single_token(task["contrast"])
    L = model.cfg.n_layers
    layers = sorted({0, L // 3, 2 * L // 3, L - 1})
    grid = patching_grid(model, ids_clean, ids_corrupted, t, k, layers)
    print(f"{name}: {task['corrupted']!r}, with the clean stream patched in")
    print("      " + " ".join(f"{s[:6]:>6}" for s in model.to_str_tokens(ids_corrupted)))
    for l, row in zip(layers, grid):
        print(f"L{l:<4} " + " ".join(f"{v:6.2f}" for v in row))
    trace = model.run(ids_clean)
    refs = [model.to_tokens(r) for r in task["references"]]
    for key in ("attn_out", "mlp_out"):
        mean = mean_activation(model, refs, key, L - 1)
        print(f"{key} of layer {L - 1}: direct {direct_effect(trace, key, L - 1, t, k):+.3f}, "
              f"total {total_effect(model, ids_clean, key, L - 1, t, k, mean):+.3f}")
