# %% [markdown]
# # 03: layer attribution: who wrote the logit?
#
# The final residual is a sum: x_L = embed + sum over layers of (attn_out + mlp_out)
# (tutorial 01 checked this). The logit of a token t is N(x_L) . W_U[:, t]. If N were linear, the
# logit would split into one share per component. It is not: RMSNorm divides by
# sqrt(mean(x^2) + eps), which depends on the whole sum. But that divisor s is *one number per
# position*. Freeze it at its actual value on x_L, and N becomes the linear map x -> x / s * gamma.
# Then
#
#     logit_t = sum over components c of (c / s * gamma) . W_U[:, t]   (+ b_U[t], zero here)
#
# exactly, not approximately: the frozen s is the very number the model used. Each share is
# "what this component pushed into the direction the final readout looks along". This is direct
# logit attribution; it ignores what a component did *indirectly* through later layers.
#
# As in tutorial 02: SmolLM2-135M where it is fetched, the shipped Shakespeare Llama otherwise.

# %%
import numpy as np

import minilens as ml
from minilens.loading.fetch import fetched_path
from minilens.show import render

if fetched_path("smollm2") is not None:
    model = ml.load("smollm2")
    text = "The Eiffel Tower is in the city of"
else:
    print("SmolLM2 is not fetched (run `minilens fetch smollm2`); "
          "using the shipped Shakespeare Llama.")
    model = ml.load("shakespeare-llama")
    text = "To be, or not to be, that is the"
print(model)
g = model.params
trace = model.run(text)
target = int(trace.logits[-1].argmax())          # the model's own prediction; any token works
t_str = model.to_str_tokens([target])[0]
print(f"splitting the logit of {t_str!r} at the last position "
      f"({model.to_str_tokens(trace.ids)[-1]!r})")

# %% [markdown]
# ## First, see that the norm is not linear
# Normalising two halves of the stream separately and adding does not give the normalised sum.

# %%
def rms(x):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + model.cfg.norm_eps) * g.lnf_w

x_L = trace["resid_final"][-1].astype(np.float64)
a = trace["embed"][-1].astype(np.float64)
b = x_L - a
print(f"|N(a + b) - (N(a) + N(b))| = {np.abs(rms(a + b) - rms(a) - rms(b)).max():.3f}   "
      f"(not linear)")
s = float(trace["scale_final"][-1, 0])

def frozen(x):
    return x / s * g.lnf_w

print(f"|N(a + b) - (F(a) + F(b))| = {np.abs(rms(a + b) - frozen(a) - frozen(b)).max():.2e}   "
      f"(F: divisor frozen)")

# %% [markdown]
# ## Split by layer
# `ml.layer_attribution` does exactly this, for every component. It also carries the model's own
# logit, so the sum can be checked by anyone: the two agree to float32 rounding.

# %%
attr = ml.layer_attribution(trace, target, by="layer")
print(render.attribution_bars(attr, top=16))          # the rest are summed in one line
assert abs(attr.values.sum() - attr.logit) < 1e-3 * max(1, abs(attr.logit))
big = attr.top(3)
print(f"Notice: the three largest shares are {', '.join(f'{k} ({v:+.2f})' for k, v in big)}.")

# %% [markdown]
# By hand, to see there is nothing more to it: each share is the component dotted with
# w_read = gamma * W_U[:, t] / s.

# %%
w_read = g.lnf_w * g.W_U[:, target] / s
ours = [trace["embed"][-1] @ w_read] + [trace[k, l][-1] @ w_read for l in range(model.cfg.n_layers)
                                         for k in ("attn_out", "mlp_out")]
print("by hand vs minilens, max difference:", np.abs(np.array(ours) - attr.values[:-1]).max())

# %% [markdown]
# ## Split a layer's attention into heads
# attn_out is a sum over heads: head h writes z_h W_O[h]. The same readout splits it further.
# The parts still sum to the logit ("rest" holds everything that is not a head: embeddings, MLPs).

# %%
heads = ml.layer_attribution(trace, target, by="head")
print(render.attribution_bars(heads, top=8))
head_only = {k: v for k, v in zip(heads.labels, heads.values) if k.startswith("L")}
best = max(head_only, key=lambda k: abs(head_only[k]))
print(f"Notice: the head with the largest direct effect is {best} ({head_only[best]:+.3f}).")

# %% [markdown]
# ## Split an MLP into neurons
# The MLP writes sum_i mlp_post[i] * W_out[i]: one term per neuron. Take the layer whose MLP
# contributed most and list its neurons, then measure how concentrated the layer's share is: the
# part of it (in absolute value) that its top 10 neurons hold. The largest neurons are candidates
# for the direction lens in tutorial 05, which shows that not all of them read as anything.

# %%
mlp_layers = [(k, v) for k, v in zip(attr.labels, attr.values) if k.endswith("_mlp")]
top_mlp = int(max(mlp_layers, key=lambda kv: abs(kv[1]))[0].split("_")[0])
neurons = ml.layer_attribution(trace, target, by="neuron", layer=top_mlp)
print(render.attribution_bars(neurons, top=8))
vals = np.array([v for k, v in zip(neurons.labels, neurons.values) if k.startswith("L")])
share = np.sort(np.abs(vals))[-10:].sum() / np.abs(vals).sum()
print(f"Notice: in layer {top_mlp}, the top 10 of {len(vals)} neurons hold {share:.0%} "
      f"of the total |share|.")

# %% [markdown]
# ## A contrast
# "Why this token and not that one?" Split logit[t] - logit[t'] instead: the readout direction
# becomes W_U[:, t] - W_U[:, t'], and everything else is unchanged.

# %%
runner_up = int(np.argsort(trace.logits[-1])[-2])
diff = ml.layer_attribution(trace, target, contrast=runner_up, by="layer")
print(f"{t_str!r} vs the runner-up {model.to_str_tokens([runner_up])[0]!r}:")
print(render.attribution_bars(diff, top=5))
diff
