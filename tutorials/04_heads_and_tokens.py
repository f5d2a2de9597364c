# %% [markdown]
# # 04: heads and tokens: where did the information come from?
#
# Tutorial 03 split the logit into layers and heads. Attention is the only place where positions
# talk to each other, so we can go one step further and ask: *which source token* fed the
# prediction, *through which head*? For the query position q, head h writes
#
#     z_h[q] W_O[h] = sum over source positions k of pattern[h, q, k] * (v_h[k] W_O[h])
#
# (plus the value bias, which passes through unchanged because each pattern row sums to 1; neither
# model here has one). Dot each term with the frozen readout w_read from tutorial 03 and the
# head's share splits over source tokens, exactly.
#
# SmolLM2-135M, where it is fetched, gets the indirect-object sentence of tutorial 08: the answer is
# a name that appears earlier in the prompt, so it has to be fetched from there by attention. The
# shipped Shakespeare Llama, otherwise, gets a line where "king" comes back.

# %%
import numpy as np

import minilens as ml
from minilens.loading.fetch import fetched_path
from minilens.show import render

if fetched_path("smollm2") is not None:
    model = ml.load("smollm2")
    text = "When Mary and John went to the store, John gave a drink to"
else:
    print("SmolLM2 is not fetched (run `minilens fetch smollm2`); "
          "using the shipped Shakespeare Llama.")
    model = ml.load("shakespeare-llama")
    text = "My lord, the king is come; the king is"
print(model)
cfg = model.cfg
trace = model.run(text)
toks = model.to_str_tokens(trace.ids)
target = int(trace.logits[-1].argmax())
print("tokens:", toks)
print(f"the model predicts {model.to_str_tokens([target])[0]!r} after {toks[-1]!r}")

# %% [markdown]
# ## Source tokens, layer by layer
# `by="token"` splits one layer's attention output over the source positions. One row per layer:
# read across to see which earlier tokens each layer's attention pulled information from, as far as
# that information ends up pushing the target's logit directly.

# %%
rows = []
for l in range(cfg.n_layers):
    a = ml.layer_attribution(trace, target, by="token", layer=l)
    rows.append(a.values[:len(toks)])
    assert abs(a.values.sum() - a.logit) < 1e-3 * max(1, abs(a.logit))   # still exact
M = np.array(rows)                                                       # [n_layers, n_seq]
short = [render.show_token(t, 6) for t in toks]
print("layer " + " ".join(f"{t:>7s}" for t in short))
for l, row in enumerate(M):
    print(f"{l:5d} " + " ".join(f"{v:+7.2f}" for v in row))
l_best, k_best = np.unravel_index(np.abs(M).argmax(), M.shape)
print(f"Notice: the largest single (layer, source) share is layer {l_best}, from position {k_best} "
      f"({toks[k_best]!r}): {M[l_best, k_best]:+.3f}.")

# %% [markdown]
# ## Inside that layer: which head, attending where?
# Now rebuild the per-head, per-source terms by hand from the trace: the value vectors `v`, the
# attention `pattern` and `W_O`. Query head h reads key/value head h // (n_heads / n_kv_heads).

# %%
g, w = model.params, model.layers[int(l_best)]
q = trace.n_seq - 1
s = float(trace["scale_final"][q, 0])
w_read = g.lnf_w * g.W_U[:, target] / s                                   # [d_model]
W_O_read = w.W_O.reshape(cfg.n_heads, cfg.d_head, cfg.d_model) @ w_read   # [n_heads, d_head]
group = cfg.n_heads // cfg.n_kv_heads
v = np.repeat(trace["v", int(l_best)], group, axis=1)                     # [n_seq, n_heads, d_head]
pattern = trace["pattern", int(l_best)][:, q, :]                          # [n_heads, n_seq]
per_head_token = pattern * np.einsum("khd,hd->hk", v, W_O_read)           # [n_heads, n_seq]
print("the same layer, by hand: sum over heads vs minilens's token split, max difference",
      np.abs(per_head_token.sum(0) - M[l_best]).max())
print("head  " + " ".join(f"{t:>7s}" for t in short))
for h in range(cfg.n_heads):
    print(f"L{l_best}H{h} " + " ".join(f"{x:+7.2f}" for x in per_head_token[h]))
h_best = int(np.abs(per_head_token[:, k_best]).argmax())
print(f"Notice: head L{l_best}H{h_best} carries most of position {k_best}'s share.")

# %% [markdown]
# ## The attention pattern of that head
# A share is attention times value. Look at the pattern itself: every query row of the head just
# found (darker = more attention; rows sum to 1; the upper triangle is the causal mask).
# Check whether the big share came from a big attention weight or from a large value vector.
# Query rows with nothing to fetch often park their weight on the first token, an "attention
# sink": look at the first column.

# %%
P = trace["pattern", int(l_best)][h_best]                                     # [n_seq(q), n_seq(k)]
shades = " .:-=+*#%@"
print(f"the attention pattern of head L{l_best}H{h_best}:")
print("query \\ key  " + "".join(f"{t[:3]:>4s}" for t in short))
for i in range(trace.n_seq):
    print(f"{short[i]:>11s}  "
          + "".join(f"{shades[min(9, int(P[i, j] * 10))]:>4s}" if j <= i else "    "
                    for j in range(trace.n_seq)))
print(f"attention from the last position to {toks[k_best]!r}: {P[-1, k_best]:.2f}; "
      f"that value vector's "
      f"readout: {per_head_token[h_best, k_best] / max(P[-1, k_best], 1e-9):+.2f}")

# %% [markdown]
# ## The head's share, all sources together
# Summed over source tokens, the per-head terms equal minilens's `by="head"` split of that layer.

# %%
heads = ml.layer_attribution(trace, target, by="head", layer=int(l_best))
print("per head, by hand:", np.round(per_head_token.sum(1), 3))
print("per head, minilens:", np.round(heads.values[:cfg.n_heads], 3))
heads
