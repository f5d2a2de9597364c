# %% [markdown]
# # 02: the logit lens: what each layer would say
#
# The model only decodes once, after the last block: logits = N(x_L) W_U. But every layer writes
# into the same residual stream, in the same basis. So we can decode the stream *early*, at any
# layer l: N(x_l) W_U. That is the logit lens (nostalgebraist, 2020). It shows where in depth the
# prediction forms, and how sure each layer is.
#
# One detail matters: N is recomputed on x_l. The stream grows in size with depth, so borrowing the
# final layer's divisor would give early layers the wrong temperature (TransformerLens issue #1076).
#
# We use the real SmolLM2-135M (30 layers) where it is fetched (`minilens fetch smollm2`, 98 MB,
# see tutorial 06), and otherwise the shipped 8-layer Shakespeare Llama, which needs no download.

# %%
import tempfile
from pathlib import Path

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
trace = model.run(text)
lens = ml.logit_lens(trace, top_k=5)
print(f"{len(lens.labels)} lens rows (one per layer, plus final_post) "
      f"x {len(lens.positions)} positions")

# %% [markdown]
# ## The table
# Rows are points in the stream (`{l}_pre` is the stream entering block l), columns are input
# tokens, each cell is the top-1 token the lens reads there and its probability. The `final_post`
# row is the model's real output: the lens at the end *is* the model.

# %%
print(render.lens_table(lens, width=200))      # wide enough for every position of this prompt
assert np.allclose(lens.logits("final_post"), trace.logits, atol=1e-4), (
    "final_post is the model's own logits")

# %% [markdown]
# Notice the `0_pre` row: before any block has run, the stream holds only the token's own
# embedding, and with tied embeddings (W_U = W_E^T) the lens mostly reads back *the input token
# itself*. The prediction of the *next* token has to be built by the blocks.

# %%
top0 = lens.top_ids[0, :, 0]
same = np.mean(top0 == trace.ids)
print(f"At 0_pre, the top-1 token equals the input token at {same:.0%} of positions.")

# %% [markdown]
# ## Where does the prediction form?
# Follow the model's final answer at the last position back through depth: its rank (0 = top-1)
# and probability at each row. The layer where its rank first drops to 0 and stays there is where
# the model has "made up its mind".

# %%
final_id = int(trace.logits[-1].argmax())
focus = ml.logit_lens(trace, target=final_id, positions=[-1])
print(f"the model's final prediction after {model.to_str_tokens(trace.ids)[-1]!r}: "
      f"{model.to_str_tokens([final_id])[0]!r}")
for r, label in enumerate(focus.labels):
    p, rank = float(focus.target_prob[r, 0]), int(focus.target_rank[r, 0])
    print(f"  {label:10s} rank {rank:5d}  p={p:.3f}  {'#' * int(round(40 * p))}")
ranks = focus.target_rank[:, 0]
settled = next(r for r in range(len(ranks)) if (ranks[r:] == 0).all())
print(f"Notice: the final answer is top-1 from row {focus.labels[settled]} on.")

# %% [markdown]
# ## Entropy and KL across depth
# Two summaries per row, averaged over positions:
# - the entropy of the lens distribution (nats): how spread out the guess is
#   (log d_vocab = uniform);
# - KL(p_final || p_layer) (nats): how much the layer's guess still differs from the final one.
# KL must reach exactly 0 at final_post. Read the two together: a layer can be confident (low
# entropy) and still wrong (high KL), as `0_pre` is when it reads back the input token.
#
# The bars are drawn to scale, 40 characters for the largest KL after `0_pre`. `0_pre`'s KL is
# far larger (a confident guess of the wrong token costs many nats), so its bar is cut
# at 40 and marked `>`: drawn to scale it would squash every other bar.

# %%
H, KL = lens.entropy.mean(1), lens.kl_to_final.mean(1)
scale = KL[1:].max()
print(f"uniform would be {np.log(model.cfg.d_vocab):.2f} nats")
print(f"{'row':10s} {'entropy':>8s} {'KL':>8s}")
for label, h, kl in zip(lens.labels, H, KL):
    bar = "=" * min(40, int(round(40 * kl / scale))) + (">" if kl > scale else "")
    print(f"{label:10s} {h:8.3f} {kl:8.3f}  {bar}")
assert abs(KL[-1]) < 1e-4
drop = int(np.argmin(np.diff(KL[1:]))) + 2             # the row the largest later drop leads into
print(f"Notice: KL is {KL[0]:.2f} nats at {lens.labels[0]} and {KL[1]:.2f} at {lens.labels[1]}; "
      f"after that the biggest single drop is into row {lens.labels[drop]} "
      f"({KL[drop - 1]:.2f} -> {KL[drop]:.2f}), and it reaches 0 at final_post.")

# %% [markdown]
# ## Why recompute the norm
# Compare the lens with the norm recomputed (minilens) against the old frozen-divisor lens, which
# divides every layer's stream by the *final* layer's divisor. The stream's size grows with depth,
# so early layers come out too cold (too small logits, too flat) under the frozen divisor.

# %%
g = model.params
x0 = trace["resid_pre", 1]
frozen = (x0 / trace["scale_final"] * g.lnf_w) @ g.W_U
recomputed = lens.logits("1_pre")
print(f"stream size (RMS) entering block 1: {np.sqrt((x0 ** 2).mean()):.3f}; at the end: "
      f"{np.sqrt((trace['resid_final'] ** 2).mean()):.3f}")
print(f"logit spread (std) at 1_pre: recomputed {recomputed.std():.3f} "
      f"vs frozen {frozen.std():.3f}")

# %% [markdown]
# ## The picture
# `lens` renders itself as a heatmap in Jupyter (`LensResult._repr_html_`). As a script, write a
# self-contained HTML report and open it in a browser; hover a cell for the top-5.

# %%
out = Path(tempfile.mkdtemp(prefix="minilens-tutorial-")) / "lens.html"
out.write_text(render.report(lens=lens, text=text, metric="kl",
                             title="02: the logit lens (coloured by KL)"))
print(f"wrote {out} (the same as `minilens lens \"{text}\" --html lens.html --metric kl`)")
lens
