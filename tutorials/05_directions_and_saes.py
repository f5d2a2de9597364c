# %% [markdown]
# # 05: reading directions: neurons, head outputs and SAE features
#
# The unembedding can read *any* vector in the residual stream's space, not only a whole layer's
# stream. Give it a direction v (d_model numbers) and the scores v' W_U say which tokens writing
# v would promote and which it would suppress (v' is v as the final norm passes it: times gamma).
# The norm's divisor only rescales the scores, so it does not change the order.
#
# This is the trick behind "Understanding SAE features with the logit lens" (LessWrong, 2024): a
# sparse autoencoder's feature writes its decoder row to the stream, so reading that row through
# W_U tells you what the feature does to the next-token prediction. Here we read three kinds of
# direction: an MLP neuron's output weights, an attention head's OV output, and SAE decoder rows,
# and we *measure* whether a reading means anything, against random directions.
#
# It runs on SmolLM2-135M where it is fetched (`minilens fetch smollm2`, see tutorial 06): a real
# model, whose late neurons and heads have output directions that can be read. The shipped
# Shakespeare Llama is the fallback; it is too small for this, and the measurements below say so.

# %%
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import minilens as ml
from minilens.analysis import direction
from minilens.loading.fetch import fetched_path

if fetched_path("smollm2") is not None:
    model = ml.load("smollm2")
    neuron_text = "One, two, three, four,"                                    # section 1
    head_text = "When Mary and John went to the store, John gave a drink to"   # section 2
else:
    print("SmolLM2 is not fetched (run `minilens fetch smollm2`); "
          "using the shipped Shakespeare Llama.")
    model = ml.load("shakespeare-llama")
    neuron_text = "To be, or not to be, that is the"
    head_text = "My lord, the king is come; the king is"
print(model)
cfg = model.cfg


def standout(scores):
    """How far the most extreme token stands from the rest of the vocabulary, in standard
    deviations of the scores (the larger of the top and the bottom end). [..., d_vocab] -> [...]"""
    mean, std = scores.mean(-1), scores.std(-1)
    return np.maximum(scores.max(-1) - mean, mean - scores.min(-1)) / std

# %% [markdown]
# ## 1. Neurons
# Neuron i of layer l writes mlp_post[i] * W_out[i] into the stream. Its output weights W_out[i]
# are a fixed direction; the activation only scales it, and flips it when negative: a neuron with
# a negative activation pushes up the tokens its direction *suppresses*. Take the four neurons,
# in any layer, with the largest direct share of the prediction (tutorial 03's by="neuron"), and
# read their directions. Next to each, its *standout*: how many standard deviations its most
# extreme token lies from the vocabulary's mean score (section 3 measures what a random direction
# gets).

# %%
trace = model.run(neuron_text)
target = int(trace.logits[-1].argmax())
t_str = model.to_str_tokens([target])[0]
print(f"the model predicts {t_str!r} after {neuron_text!r}")
shares = []                                               # (|share|, share, layer, neuron)
for l in range(cfg.n_layers):
    split = ml.layer_attribution(trace, target, by="neuron", layer=l)
    for label, share in split.top(5):
        if label.startswith("L"):                         # skip "rest"
            shares.append((abs(share), share, l, int(label.split("N")[1])))
top_neurons = [(l, i) for _, _, l, i in sorted(shares, reverse=True)[:4]]
for _, share, l, i in sorted(shares, reverse=True)[:4]:
    act = float(trace["mlp_post", l][-1, i])
    d = ml.direction_lens(model, model.layers[l].W_out[i], k=6)
    scores = direction.direction_scores(model, model.layers[l].W_out[i][None])[0]   # [d_vocab]
    way = "promotes" if act > 0 else "suppresses (its activation is negative)"
    print(f"\nL{l}N{i}: activation {act:+.2f}, direct share of {t_str!r} {share:+.2f}, "
          f"standout {standout(scores):.1f}; it pushes up the tokens its direction {way}")
    print(d)

# %% [markdown]
# Read each list with its activation's sign. On SmolLM2, three of the four directions are plainly
# about numbers. L26N1519 promotes number words and is on: a positive share of " five". L26N390
# promotes number words too (" five" among them) but is driven negative, so it pushes them all
# down: a negative share. L28N211 is on and suppresses " sixth", "six", "fifth": a negative share
# again. The fourth, L24N890, has a share as large, and its lists are unrelated word pieces
# (" alike", "negie", "III"): the direction lens says what a direction does to the output, and it
# does not promise that every important neuron's direction is readable.
#
# On the shipped Shakespeare Llama (the fallback) three of the top four neurons are in layer 0,
# driven strongly negative, with directions that promote byte tokens such as `<0xE4>` and pieces
# of names: read with the sign, they push rare bytes down and ordinary words such as " duke" and
# " world" up, nothing about " man" in particular. The fourth, in the last layer, reads as a theme
# (" father", " brother", " friend", " son"); section 3 has a surprise about it.
#
# ## 2. A head's OV output
# What a head writes from a source position k is v_h[k] W_O[h]: the value vector mapped into the
# stream (the "OV circuit"). On the indirect-object sentence of tutorial 08 the answer, " Mary",
# stands earlier in the prompt, so some head must bring it to the last position (the fallback
# model gets a line where " king" comes back instead). For the four
# heads with the largest direct share, find the source each attends to most from the last
# position, and read what it writes from there.

# %%
trace = model.run(head_text)
toks = model.to_str_tokens(trace.ids)
target = int(trace.logits[-1].argmax())
t_str = model.to_str_tokens([target])[0]
print(f"the model predicts {t_str!r} after {head_text!r}")
heads = ml.layer_attribution(trace, target, by="head")
group = cfg.n_heads // cfg.n_kv_heads
for head, share in [(k, v) for k, v in heads.top(len(heads.values)) if k.startswith("L")][:4]:
    hl, hh = int(head[1:].split("H")[0]), int(head.split("H")[1])
    pattern = trace["pattern", hl][hh, -1]                                       # [n_seq]
    k_src = int(pattern.argmax())
    v = trace["v", hl][k_src, hh // group]                                       # [d_head]
    ov = v @ model.layers[hl].W_O.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)[hh]  # [d_model]
    scores = direction.direction_scores(model, ov[None])[0]                      # [d_vocab]
    rank = int((scores > scores[target]).sum())
    print(f"\n{head}: direct share {share:+.2f}; attends {pattern[k_src]:.2f} to position "
          f"{k_src} ({toks[k_src]!r}); {t_str!r} ranks {rank} of {cfg.d_vocab} in what it "
          f"writes from there")
    print(ml.direction_lens(model, ov, k=6))

# %% [markdown]
# On SmolLM2 this is the clearest reading in the tutorial. L23H0 attends to " Mary" (position 1)
# and writes a direction whose top tokens are " M", "M", "m", " Mary": it copies the name (a
# "name mover" of Wang et al. 2022). L24H4 attends to " Mary" even more, and writes *minus*
# " Mary" (rank 49149 of 49152): a copy-suppression head, with a negative share. The strongest
# head, L29H1, attends mostly to the last token " to" and still writes " Mary" as its top token,
# while its neighbour L29H0, attending there too, writes minus " Mary". By layer 29 the name has
# already been moved to the last position (tutorial 08 patches exactly that move): *where* a head
# attends and *what* it reads from there are two different questions.
#
# On the shipped Llama nothing here is that clear: what its top heads write ranks the prediction
# " gone" at 13 to 1083 (0 is the top), and their lists are capitals, punctuation and word pieces.
#
# ## 3. Is a reading meaningful? Measure it against random directions
# Every direction gets *some* top tokens, so a list alone proves nothing. Two ways to compare a
# neuron's direction with a random unit vector of the same space:
# - the raw top score. It does not work: a direction's scores share an offset (its dot product
#   with the mean of W_U's columns) and a scale, which say nothing about any one token;
# - the standout of section 1 (the extreme score in standard deviations of all the scores): an
#   offset and a scale cancel in it.
#
# Below: 1000 random unit directions against every neuron (unit length too) of a few layers.

# %%
rng = np.random.default_rng(0)
random_dirs = rng.standard_normal((1000, cfg.d_model))
random_dirs /= np.linalg.norm(random_dirs, axis=1, keepdims=True)
random_scores = direction.direction_scores(model, random_dirs)                   # [1000, d_vocab]
random_standout = standout(random_scores)
bar = float(np.percentile(random_standout, 99))
print(f"random directions: raw top score median {np.median(random_scores.max(1)):.3f}, "
      f"standout median {np.median(random_standout):.1f}, 99th percentile {bar:.1f}")
for l in sorted({0, cfg.n_layers // 3, 2 * cfg.n_layers // 3, cfg.n_layers - 1}):
    W_out = model.layers[l].W_out                                                # [d_mlp, d_model]
    s = direction.direction_scores(model, W_out / np.linalg.norm(W_out, axis=1, keepdims=True))
    so = standout(s)
    print(f"layer {l:2d} neurons:     raw top score median {np.median(s.max(1)):.3f}, "
          f"standout median {np.median(so):.1f}, largest {so.max():.1f}, above the random 99th "
          f"percentile: {np.mean(so > bar):.0%} of {len(so)}")

# %% [markdown]
# Read the raw scores first. On SmolLM2 the typical neuron's top score is what a random direction
# gets (0.83 to 0.88 against 0.84). On the shipped Llama the neurons' raw top scores are higher
# than the random ones (0.45 to 0.53 against 0.37) while their standouts are not: the difference
# lies in the offset and the scale, which say nothing about any one token. Either way, comparing
# top scores (an earlier version of this tutorial did, and found a random direction at 0.42 next
# to its best neuron's 0.426) says nothing.
#
# The standout separates better, and what it says is sobering. On SmolLM2 the median neuron of
# every layer stands out about as much as a random direction (5.1 to 5.6 against 5.1). Only a
# share of the neurons clears the random bar: 3-4% in layers 0 and 10, 13% in layer 20, 40% in the
# last layer, where the largest stand out 33 standard deviations, five times the bar. On the
# shipped Llama 2% to 12% of a layer's neurons clear its bar. Most neurons' output directions, then,
# do not read as anything on their own, and a token list that looks like a theme is not evidence
# by itself.
#
# The standout is no proof either way, because it looks at one extreme token, not at a theme. On
# the shipped Llama the neuron that reads " father", " brother", " friend", " son" (section 1)
# stands out *less* than the median random direction: its theme is spread over many tokens of
# similar score, none of them extreme. What settles whether a direction matters is an
# intervention (tutorial 08), not its reading.
#
# ## 4. SAE decoder rows
# A real sparse autoencoder is trained on millions of residual-stream vectors; none is shipped
# here, and we do not train one. So, honestly: **this SAE is synthetic.** Its `W_dec`
# [d_sae, d_model] holds, as its first rows, the output directions of section 1's four neurons
# (so we know what they should read as), and then four random unit vectors. It is saved in the
# SAELens file layout (`sae_weights.safetensors` with a `W_dec` tensor); `ml.sae_lens` reads any
# such file, memory-mapped, so the same two lines work on a real SAE trained for a real model.

# %%
rows = ([model.layers[l].W_out[i] for l, i in top_neurons]
        + list(rng.standard_normal((4, cfg.d_model))))
W_dec = np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)  # [d_sae, d_model]
folder = Path(tempfile.mkdtemp(prefix="minilens-sae-"))
save_file({"W_dec": W_dec}, str(folder / "sae_weights.safetensors"))
print(f"wrote a synthetic SAE with {len(W_dec)} features to {folder}")

features = ml.sae_lens(model, folder, k=5)
feature_standout = standout(direction.direction_scores(model, W_dec))
for f in features:
    kind = (f"neuron L{top_neurons[f.feature][0]}N{top_neurons[f.feature][1]}"
            if f.feature < len(top_neurons) else "random")
    clear = "above" if feature_standout[f.feature] > bar else "below"
    print(f"feature {f.feature} ({kind}): standout {feature_standout[f.feature]:.1f} ({clear} "
          f"the random bar {bar:.1f}); promotes {f.promoted}")
for f in features[:len(top_neurons)]:           # a direction's length does not change its order
    l, i = top_neurons[f.feature]
    assert f.promoted_ids.tolist() == ml.direction_lens(
        model, model.layers[l].W_out[i], k=5).promoted_ids.tolist()
n_clear = int((feature_standout[:len(top_neurons)] > bar).sum())
print(f"Notice: {n_clear} of the {len(top_neurons)} neuron-made features stand out above the "
      f"random bar, and {int((feature_standout[len(top_neurons):] > bar).sum())} of the "
      f"4 random ones do.")

# %% [markdown]
# The features made from neurons read exactly like those neurons: `sae_lens` is the direction lens
# applied to each decoder row. On SmolLM2 the three number neurons clear the random bar and the
# word-piece neuron L24N890 does not, nor does any random feature: here the standout agrees with
# the eye. On the shipped Llama no feature clears it, the " father" neuron included.
#
# With a real SAE, apply the same check (random directions of the same model give the bar), and
# read a feature below it with suspicion. An SAE's features are trained to be sparse in the
# *input*, which does not promise a readable *output* direction, any more than a neuron's large
# share does.
