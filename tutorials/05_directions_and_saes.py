# %% [markdown]
# # 05: reading directions: neurons, head outputs and SAE features
#
# The unembedding can read *any* vector in the residual stream's space, not only a whole layer's
# stream. Give it a direction v (d_model numbers) and the scores v' W_U say which tokens writing
# v would promote and which it would suppress (v' is v as the final norm passes it: times gamma).
# The norm's divisor only rescales the scores, so it does not change the order.
#
# This is the trick behind "Understanding SAE features with the logit lens" (the seed's second
# resource): a sparse autoencoder's feature writes its decoder row to the stream, so reading that
# row through W_U tells you what the feature does to the next-token prediction. Here we read three
# kinds of direction: an MLP neuron's output weights, an attention head's OV output, and SAE
# decoder rows.

# %%
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import minilens as ml
from minilens.analysis import direction

model = ml.load("shakespeare-llama")
cfg, g = model.cfg, model.params
text = "To be, or not to be, that is the"
trace = model.run(text)
target = int(trace.logits[-1].argmax())
print(f"the model predicts {model.to_str_tokens([target])[0]!r} after {text!r}")

# %% [markdown]
# ## 1. A neuron
# Neuron i of layer l writes mlp_post[i] * W_out[i] into the stream. Its output weights W_out[i]
# are a fixed direction; the activation only scales it (and can flip its sign). Take the neuron
# with the largest direct share of the prediction (tutorial 03's by="neuron") in the last layer.

# %%
l = cfg.n_layers - 1
neurons = ml.layer_attribution(trace, target, by="neuron", layer=l)
label, share = next((k, v) for k, v in neurons.top(len(neurons.values))
                    if k.startswith("L"))  # skip "rest"
i = int(label.split("N")[1])
act = float(trace["mlp_post", l][-1, i])
print(f"neuron {label}: activation {act:+.3f}, direct share of the logit {share:+.3f}")
d = ml.direction_lens(model, model.layers[l].W_out[i], k=8)
print(d)
if act > 0:
    print(f"Notice: the activation is positive ({act:+.2f}), so the neuron writes this direction: "
          f"it pushes up the tokens under 'promotes'.")
else:
    print(f"Notice: the activation is negative ({act:+.2f}), "
          f"so the neuron writes *minus* this direction: "
          f"it pushes up the tokens under 'suppresses' and down those under 'promotes'.")
scores = direction.direction_scores(model, model.layers[l].W_out[i][None])[0]        # [d_vocab]
rank = int((scores > scores[target]).sum()) if act > 0 else int((scores < scores[target]).sum())
print(f"The prediction {model.to_str_tokens([target])[0]!r} ranks {rank} of {cfg.d_vocab} "
      f"in the direction this neuron pushes.")

# %% [markdown]
# ## 2. A head's OV output
# What a head writes from a source position k is v_h[k] W_O[h]: the value vector mapped into the
# stream (the "OV circuit"). Read the output of the head with the largest direct share, for the
# source it attends to most from the last position.

# %%
heads = ml.layer_attribution(trace, target, by="head")
head = next(k for k, _ in heads.top(len(heads.values)) if k.startswith("L"))
hl, hh = int(head[1:].split("H")[0]), int(head.split("H")[1])
w = model.layers[hl]
pattern = trace["pattern", hl][hh, -1]                                         # [n_seq]
k_src = int(pattern.argmax())
group = cfg.n_heads // cfg.n_kv_heads
v = trace["v", hl][k_src, hh // group]                                         # [d_head]
ov = v @ w.W_O.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)[hh]               # [d_model]
toks = model.to_str_tokens(trace.ids)
print(f"head {head} attends {pattern[k_src]:.2f} to position {k_src} ({toks[k_src]!r}); "
      f"what it copies from there:")
print(ml.direction_lens(model, ov, k=8))
print("Notice: a head that copies a token's identity would promote that token or its relatives; "
      "one that only moves position or syntax information shows no clear token list.")

# %% [markdown]
# ## 3. SAE decoder rows
# A real sparse autoencoder is trained on millions of residual-stream vectors; none is shipped for
# this small model, and we do not train one here. So, honestly: **this SAE is synthetic.** We build
# a `W_dec` [d_sae, d_model] whose first rows are the output directions of the top neurons above
# (so we know what they should read as) and whose other rows are random unit vectors, and save it in
# the SAELens file layout (`sae_weights.safetensors` with a `W_dec` tensor). `ml.sae_lens` reads any
# such file, memory-mapped, so the same two lines work on a real SAE trained for a real model.

# %%
top_neurons = [int(k.split("N")[1]) for k, _ in neurons.top(len(neurons.values))
               if k.startswith("L")][:4]
rng = np.random.default_rng(0)
rows = ([model.layers[l].W_out[n] for n in top_neurons]
        + list(rng.standard_normal((4, cfg.d_model))))
# [d_sae, d_model], unit rows
W_dec = np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)
folder = Path(tempfile.mkdtemp(prefix="minilens-sae-"))
save_file({"W_dec": W_dec}, str(folder / "sae_weights.safetensors"))
print(f"wrote a synthetic SAE with {len(W_dec)} features to {folder}")

features = ml.sae_lens(model, folder, k=5)
for f in features:
    kind = f"= neuron L{l}N{top_neurons[f.feature]}" if f.feature < len(top_neurons) else "= random"
    print(f"feature {f.feature} ({kind}): promotes {f.promoted}")

# %% [markdown]
# The features built from neuron directions must read exactly like those neurons (a direction's
# length does not change the order of its scores); the random ones promote an arbitrary mix of
# tokens, with smaller scores. That contrast is the point of the direction lens: a meaningful
# feature reads as a coherent set of tokens.

# %%
for f in features[:len(top_neurons)]:
    assert f.promoted_ids.tolist() == ml.direction_lens(
        model, model.layers[l].W_out[top_neurons[f.feature]], k=5).promoted_ids.tolist()
top_score = [float(f.promoted_scores[0]) for f in features]
print(f"largest score, neuron-made features: {np.round(top_score[:len(top_neurons)], 3)}")
print(f"largest score, random features:      {np.round(top_score[len(top_neurons):], 3)}")
