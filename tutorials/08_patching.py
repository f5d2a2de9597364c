# %% [markdown]
# # 08: activation patching: where the name travels
#
# The lens and attribution (tutorials 02-04) say what each part of the model *writes*. Patching
# asks what the prediction *depends on*: run the model on two prompts that differ in one word,
# copy one activation from one run into the other, and measure what changes.
#
# The task is indirect-object identification (Wang et al. 2022, "Interpretability in the Wild"):
#
#     clean:      When Mary and John went to the store, John gave a drink to   -> " Mary"
#     corrupted:  When Mary and John went to the store, Mary gave a drink to   -> " John"
#
# The model must find the name that is *not* repeated. The metric is the logit difference
# logit(" Mary") - logit(" John") at the last position. We run SmolLM2-135M
# (`minilens fetch smollm2`, as in tutorial 06). Without it this tutorial falls back to the shipped
# Shakespeare Llama with a pair it can tell apart (a pronoun it repeats), and says so.

# %%
import tempfile
import time
from pathlib import Path

import numpy as np

import minilens as ml
from minilens.loading.fetch import fetched_path
from minilens.show import render

start = time.perf_counter()
if fetched_path("smollm2") is not None:
    model = ml.load("smollm2")
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    target, contrast = " Mary", " John"
    # Same sentence, other names: what a head "usually" outputs here, without Mary or John.
    references = ["When Anna and Paul went to the store, Paul gave a drink to",
                  "When Lisa and Mark went to the store, Lisa gave a drink to",
                  "When Emma and Peter went to the store, Peter gave a drink to"]
else:
    print("SmolLM2 is not fetched (run `minilens fetch smollm2`); using the shipped Shakespeare "
          "Llama, with a pronoun pair instead of names: which pronoun does it repeat?")
    model = ml.load("shakespeare-llama")
    clean, corrupted = "For thou, sweet lord, that", "For you, sweet lord, that"
    target, contrast = " thou", " you"
    references = ["For I, sweet lord, that", "For we, sweet lord, that", "For he, sweet lord, that"]
print(model)

# %% [markdown]
# ## 1. The prompts must align
# Patching copies activations position by position, so both prompts need the same number of
# tokens, and the same tokens everywhere except where they are meant to differ. Check it with
# `model.to_str_tokens`: a name that splits into two tokens in one prompt would shift every
# position after it.

# %%
ids_clean, ids_corrupted = model.to_tokens(clean), model.to_tokens(corrupted)
assert len(ids_clean) == len(ids_corrupted), "the prompts must have the same number of tokens"
n_seq = len(ids_clean)
strs_clean, strs_corrupted = model.to_str_tokens(ids_clean), model.to_str_tokens(ids_corrupted)
differ = [p for p in range(n_seq) if ids_clean[p] != ids_corrupted[p]]
for p in range(n_seq):
    mark = "   <- differs" if p in differ else ""
    print(f"{p:3d}  {strs_clean[p]!r:12} {strs_corrupted[p]!r:12}{mark}")
# The positions that hold either name (in either prompt): where the answer could be copied from.
names = [p for p in range(n_seq) if {strs_clean[p], strs_corrupted[p]} & {target, contrast}]
last = n_seq - 1
print(f"{n_seq} tokens each; they differ at position(s) {differ}; {target!r} or {contrast!r} "
      f"sits at positions {names}")

# %% [markdown]
# ## 2. The two runs disagree
# The clean run should prefer the target, the corrupted run the contrast. The normalised metric
# below maps the corrupted run's logit difference to 0 and the clean run's to 1.

# %%
t_id, c_id = model.to_single_token(target), model.to_single_token(contrast)
trace_clean, trace_corrupted = model.run(ids_clean), model.run(ids_corrupted)


def logit_diff(logits: np.ndarray) -> float:
    return float(logits[-1, t_id] - logits[-1, c_id])


ld_clean, ld_corrupted = logit_diff(trace_clean.logits), logit_diff(trace_corrupted.logits)
for name, tr in (("clean", trace_clean), ("corrupted", trace_corrupted)):
    print(f"{name:>9}: top 3 {model.to_str_tokens(tr.logits[-1].argsort()[::-1][:3])}, "
          f"logit[{target!r}] - logit[{contrast!r}] = {logit_diff(tr.logits):+.3f}")
assert ld_clean > ld_corrupted, "the clean run must prefer the target more than the corrupted run"
print(f"Notice: changing one token moves the logit difference by {ld_clean - ld_corrupted:.2f} "
      f"(from {ld_clean:+.2f} to {ld_corrupted:+.2f}).")

# %% [markdown]
# ## 3. Patch the residual stream, layer by layer and position by position
# Denoising: run the *corrupted* prompt, and at one layer and one position put back the *clean*
# stream (`resid_pre`, the stream entering block l). If the normalised metric jumps to 1, that
# one vector carries everything the model needs to answer as in the clean run.

# %%
resid = ml.activation_patching(model, clean, corrupted, metric="logit_diff_normalized",
                               key="resid_pre", by="position", direction="denoising",
                               target=target, contrast=contrast)
print(render.patching_table(resid))
same = [p for p in range(n_seq) if p not in differ]
assert np.allclose(resid.values[0, same], 0, atol=1e-6), \
    "at layer 0 an unchanged position holds the same embedding in both runs: patching it is a no-op"
if len(differ) == 1:
    assert abs(resid.values[0, differ[0]] - 1) < 1e-4, \
        "at layer 0, patching the one changed token turns the corrupted prompt into the clean one"
before = resid.values[:, :differ[0]]
assert np.allclose(before, 0, atol=1e-6), \
    "positions before the first change see only identical tokens (causal attention): no effect"
gap = float(np.abs(before).max())
print(f"Notice: the cells left of position {differ[0]} are "
      + ("all exactly 0" if gap == 0 else f"within {gap:.0e} of 0 (float32 rounding)")
      + f", and at layer 0 the changed position alone restores {resid.values[0, differ[0]]:.3f}.")

# %% [markdown]
# Read the grid by columns. Before the change, nothing can differ: attention is causal, so those
# positions hold the same numbers in both runs. At layer 0 the changed position holds everything
# (it is the only difference). Further down, the effect leaves that column and appears in the
# last column, which is where the logits are read. Only attention moves information between
# positions, so heads in the layers where the two columns trade places must have read the
# changed token and written what they read into the last position.

# %%
moved = resid.values[:, last] - resid.values[:, differ[0]]
handover = int(np.argmax(moved > 0)) if (moved > 0).any() else None
assert handover is not None, "by the last layer, the last position must carry more than the name"
rows = range(max(0, handover - 4), min(len(resid.layers), handover + 2))
for i in rows:
    print(f"layer {resid.layers[i]:2d}: changed position {resid.values[i, differ[0]]:+.2f}, "
          f"last position {resid.values[i, last]:+.2f}")
first_last = int(np.argmax(resid.values[:, last] > 0.1))
print(f"Notice: the last position first carries more than 0.1 at layer {resid.layers[first_last]} "
      f"and overtakes the changed position at layer {resid.layers[handover]} "
      f"({resid.values[handover, last]:+.2f} against {resid.values[handover, differ[0]]:+.2f}).")

# %% [markdown]
# ## 4. Which heads move it
# The same experiment with each head's output `z` (its attention-weighted values, before W_O),
# one head at a time, at every position at once (`key="z", by="head"`). A large value: putting
# back this one head's clean output restores much of the clean answer. A negative value: its
# clean output pushes the other way. Single-head values need not add up to a layer's total:
# heads interact through the layers after them.
#
# Each patched run restarts at the patched layer, so early layers cost the most. To keep this
# tutorial quick on a 30-layer model we patch the heads of the second half only
# (`layers=range(15, 30)`); `layers=None` patches every layer (the first line printed says what
# that would cost). A small model gets every layer.

# %%
n_layers = model.cfg.n_layers
head_layers = range(n_layers // 2, n_layers) if n_layers > 12 else range(n_layers)
heads = ml.activation_patching(model, clean, corrupted, metric="logit_diff_normalized",
                               key="z", by="head", target=target, contrast=contrast,
                               layers=head_layers)
passes = sum(n_layers - l for l in head_layers)         # blocks run per head: from l to the end
print(f"heads patched in layers {head_layers[0]}-{head_layers[-1]}: {passes} block runs per head, "
      f"against {sum(n_layers - l for l in range(n_layers))} for every layer")
print(render.patching_table(heads))


def head_of(label: str) -> tuple[int, int]:
    """heads.top()'s cell label "L23 H3" -> (layer 23, head 3)."""
    layer, head = label.split()
    return int(layer[1:]), int(head[1:])


top_heads = [head_of(label) for label, _ in heads.top(4)]
print("largest |effect|: " + ", ".join(f"{label} {v:+.2f}" for label, v in heads.top(4)))
best_label, best_value = heads.top(1)[0]
print(f"Notice: the strongest single head is {best_label.replace(' ', '')}, restoring "
      f"{best_value:+.2f} of the clean logit difference on its own; the layer where the stream "
      f"changes hands is {resid.layers[handover]}.")

# %% [markdown]
# ## 5. Cut the last position off from the names
# Attention knockout (Geva et al. 2023) blocks chosen edges of attention: here, in a few layers,
# the last position may not read the positions that hold a name. Run the *clean* prompt with
# the edges cut in one block of layers at a time. If the logit difference falls only for one
# block, that block is where the last position reads the names. As a control, cut the same
# number of edges to the tokens right after the names.

# %%
blocks = [list(b) for b in np.array_split(np.arange(n_layers), 5)]
control = [next(q for q in range(p + 1, last) if q not in names) for p in names]
assert len(set(control)) == len(names), "the control cuts as many edges as the knockout"
drop = {}
for block in blocks:
    span = f"layers {block[0]}-{block[-1]}" if len(block) > 1 else f"layer {block[0]}"
    run = model.run(ids_clean, names=(), interventions=ml.knockout(model, block, last, names))
    drop[span] = logit_diff(run.logits)
    print(f"{span:>12}: logit difference {drop[span]:+.3f} (clean {ld_clean:+.3f})")
worst = min(drop, key=drop.get)
block = blocks[list(drop).index(worst)]
run = model.run(ids_clean, names=(), interventions=ml.knockout(model, block, last, control))
ld_control = logit_diff(run.logits)
print(f"control, {worst}, the last position cut from {control} instead: {ld_control:+.3f}")
others = max(abs(v - ld_clean) for k, v in drop.items() if k != worst)
print(f"Notice: cutting the last position off from the names in {worst} moves the logit "
      f"difference from {ld_clean:+.2f} to {drop[worst]:+.2f}; in any other block it moves by at "
      f"most {others:.2f}, and cutting as many edges to other tokens in {worst} gives "
      f"{ld_control:+.2f}.")

# %% [markdown]
# ## 6. Direct against total effect: self-repair
# A head's *direct* effect is what it writes into the logit difference (attribution, tutorial
# 03). Its *total* effect is how much the logit difference drops when the head is removed: here
# mean-ablated: its output replaced by its average over all positions of three reference
# prompts with other names (other pronouns on the fallback model).
# If the two were equal, the head would act only through what it writes. If the total is nearer
# zero, later components made up for the missing head: self-repair (McGrath et al. 2023, the
# "Hydra effect"). `ml.direct_and_total_effects` measures this for every layer's attention and
# MLP (and every head with `heads=True`); on a 30-layer model that is one ablated run per
# component, too slow here, so we measure the same two numbers for the four heads of step 4.

# %%
labels, direct, total = [], [], []
for l, h in top_heads:
    by_head = ml.layer_attribution(trace_clean, target=target, contrast=contrast, by="head",
                                   layer=l)
    ablated = model.run(ids_clean, names=(), interventions=ml.ablation(
        model, "head", l, h, kind="mean", reference=references))
    labels.append(f"L{l}H{h}")
    direct.append(by_head[f"L{l}H{h}"])
    total.append(ld_clean - logit_diff(ablated.logits))
effects = ml.EffectsResult(labels, np.array(direct), np.array(total), "logit_diff", "mean",
                           ld_clean)
print(render.effects_table(effects, sort=True))
for k, label in enumerate(labels):
    d, t = float(effects.direct[k]), float(effects.total[k])
    if np.sign(d) == np.sign(t) and abs(t) < abs(d):
        how = f"the rest of the model makes up {1 - t / d:.0%} of it (self-repair)"
    elif np.sign(d) == np.sign(t):
        how = f"its effect through later parts adds {t - d:+.2f} to what it writes"
    else:
        how = f"opposite signs: through later parts it moves the metric by {t - d:+.2f}"
    print(f"{label}: direct {d:+.2f}, total {t:+.2f}; {how}")
k = int(np.argmax(np.abs(effects.total - effects.direct)))
repaired = [lbl for lbl, d, t in zip(labels, effects.direct, effects.total)
            if np.sign(d) == np.sign(t) and abs(t) < abs(d)]
print(f"Notice: the largest gap is {labels[k]} (direct {effects.direct[k]:+.2f}, total "
      f"{effects.total[k]:+.2f}); heads whose total effect is nearer zero than their direct one: "
      + (", ".join(repaired) if repaired else "none") + f" (of {len(labels)}).")

# %% [markdown]
# ## 7. Path patching: through which later heads?
# Patching a head's `z` changes everything downstream of it. Path patching (Wang et al. 2022)
# keeps only one route: take the strongest head's clean output, freeze every other head at its
# corrupted output, record what the chosen later heads' *queries* would be, and rerun the
# corrupted prompt with only those queries replaced. The result says how much of the head's
# effect travels through what those heads look for; below 0, that route alone pushes toward the
# corrupted answer. We try the three strongest later heads of step 4, then every later head.

# %%
ranked = [head_of(label) for label, _ in heads.top(len(heads.layers) * len(heads.columns))]
sender = next((l, h) for l, h in ranked if l < n_layers - 1)       # it needs later heads
receivers = [(l, h) for l, h in ranked if l > sender[0]][:3]
sender_alone = float(heads.values[heads.layers.index(sender[0]), sender[1]])
through_q = ml.path_patching(model, clean, corrupted, sender=sender, receivers=receivers,
                             receiver_input="q", metric="logit_diff", target=target,
                             contrast=contrast)
through_q = (through_q - ld_corrupted) / (ld_clean - ld_corrupted)
later = [(l, h) for l in range(sender[0] + 1, n_layers) for h in range(model.cfg.n_heads)]
through_all = ml.path_patching(model, clean, corrupted, sender=sender, receivers=later,
                               receiver_input="q", metric="logit_diff", target=target,
                               contrast=contrast)
through_all = (through_all - ld_corrupted) / (ld_clean - ld_corrupted)
name = f"L{sender[0]}H{sender[1]}"
rows = [(f"{name}'s z patched (every path)", sender_alone),
        ("only through the queries of " + ", ".join(f"L{l}H{h}" for l, h in receivers), through_q),
        (f"only through the queries of all {len(later)} later heads", through_all)]
for label, value in rows:
    print(f"{label:<{max(len(r[0]) for r in rows)}}  {value:+.3f}")
print(f"Notice: through the queries of the {len(receivers)} strongest later heads {name} moves the "
      f"normalised metric by {through_q:+.2f}, through all later queries by {through_all:+.2f}, "
      f"and through every path by {sender_alone:+.2f}.")

# %% [markdown]
# ## The pictures
# A `PatchingResult` draws itself as a heatmap in Jupyter (`_repr_html_`; `repr` is the table
# above), white at the corrupted run's metric, blue where a patch moves toward the clean run.
# An `EffectsResult` draws direct and total effect as paired bars. As a script, write them into
# one self-contained HTML file and open it in a browser; hover a cell for its exact value.

# %%
out = Path(tempfile.mkdtemp(prefix="minilens-tutorial-")) / "patching.html"
out.write_text(render.report(patching=[resid, heads], effects=effects, text=f"{clean}\n{corrupted}",
                             title="08: activation patching"), encoding="utf-8")
print(f"wrote {out}")
print(f"(this tutorial took {time.perf_counter() - start:.0f} s)")
resid
