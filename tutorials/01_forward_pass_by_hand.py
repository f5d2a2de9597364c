# %% [markdown]
# # 01: one transformer block, by hand
#
# minilens runs the whole model for you and records every intermediate array in a `Trace`.
# Before trusting any picture built on those arrays, rebuild one block yourself from the raw
# weight arrays with plain numpy, and check that you get the same numbers. After this, nothing
# in minilens is a black box: the lens and attribution in the next tutorials only *read* these
# arrays.
#
# The shipped model is a small Llama trained on Shakespeare. A Llama block is
#
#     resid_mid  = resid_pre + attention(RMSNorm(resid_pre))
#     resid_post = resid_mid + mlp(RMSNorm(resid_mid))
#
# Run this file as a script (`python tutorials/01_forward_pass_by_hand.py`), or open its notebook
# twin `01_forward_pass_by_hand.ipynb` in Jupyter.

# %%
import numpy as np

import minilens as ml

model = ml.load("shakespeare-llama")
cfg = model.cfg
print(model)
text = "To be, or not to be, that is the"
trace = model.run(text)
print("tokens:", model.to_str_tokens(trace.ids))

# %% [markdown]
# Pick a block in the middle. `model.layers[l]` holds its weights under math names
# (`W_Q`, `W_K`, ..., stored `[d_in, d_out]`, so every linear layer is `x @ W`).
# The block's input is the recorded `resid_pre`: we start from the model's own stream, so any
# difference at the end is an error in *this* block, not an accumulated one.

# %%
l = cfg.n_layers // 2
w = model.layers[l]
x = trace["resid_pre", l].astype(np.float64)            # [n_seq, d_model]
n_seq = len(x)
print(f"layer {l}: d_model={cfg.d_model}, heads={cfg.n_heads} query / {cfg.n_kv_heads} key-value, "
      f"d_head={cfg.d_head}, d_mlp={cfg.d_mlp}")
for name in ("ln1_w", "W_Q", "W_K", "W_V", "W_O", "ln2_w", "W_gate", "W_in", "W_out"):
    print(f"  {name:7s} {list(getattr(w, name).shape)}")

# %% [markdown]
# ## RMSNorm
# RMSNorm divides each position by the root of its mean square (eps *inside* the sqrt), then
# scales each dimension by gamma. The divisor is one number per position: minilens records it as
# `scale_ln1`, and layer attribution (tutorial 03) will freeze exactly this kind of number.

# %%
def rms_norm(x, gamma, eps):
    s = np.sqrt((x * x).mean(-1, keepdims=True) + eps)   # [n_seq, 1]
    return x / s * gamma, s

h, s1 = rms_norm(x, w.ln1_w, cfg.norm_eps)
print("our divisor vs the trace's scale_ln1, max difference:",
      np.abs(s1 - trace["scale_ln1", l]).max())

# %% [markdown]
# ## Attention: queries, keys, values, rotary positions
# Llama tells positions apart only through RoPE: each pair of dimensions (i, i + d_head/2) of a
# query or key is rotated by the angle position * theta^(-2i/d_head) (the "rotate_half" layout of
# Hugging Face checkpoints). Only q and k rotate; v does not.

# %%
q = (h @ w.W_Q).reshape(n_seq, cfg.n_heads, cfg.d_head)        # [n_seq, n_heads, d_head]
k = (h @ w.W_K).reshape(n_seq, cfg.n_kv_heads, cfg.d_head)     # [n_seq, n_kv_heads, d_head]
v = (h @ w.W_V).reshape(n_seq, cfg.n_kv_heads, cfg.d_head)     # [n_seq, n_kv_heads, d_head]

half = cfg.d_head // 2
inv_freq = cfg.rope.theta ** (-np.arange(half) * 2.0 / cfg.d_head)   # [d_head/2]
angles = np.arange(n_seq)[:, None] * inv_freq[None, :]                # [n_seq, d_head/2]
cos = np.concatenate([np.cos(angles)] * 2, -1)[:, None, :]            # [n_seq, 1, d_head]
sin = np.concatenate([np.sin(angles)] * 2, -1)[:, None, :]

def rotate_half(t):
    return np.concatenate([-t[..., half:], t[..., :half]], -1)

q = q * cos + rotate_half(q) * sin
k = k * cos + rotate_half(k) * sin
print("queries after RoPE vs trace['q'], max difference:", np.abs(q - trace["q", l]).max())

# %% [markdown]
# Grouped-query attention: there are fewer key/value heads than query heads, and query head h
# reads key/value head h // (n_heads / n_kv_heads). Then the textbook equation,
# softmax(q k^T / sqrt(d_head) + causal mask) v. The mask is -inf above the diagonal, so a
# position never sees the future (exp(-inf) is exactly 0).

# %%
group = cfg.n_heads // cfg.n_kv_heads
k_h, v_h = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)   # [n_seq, n_heads, d_head]
scores = np.einsum("qhd,khd->hqk", q, k_h) / np.sqrt(cfg.d_head)      # [n_heads, n_seq, n_seq]
scores[:, np.triu(np.ones((n_seq, n_seq), bool), 1)] = -np.inf
pattern = np.exp(scores - scores.max(-1, keepdims=True))
pattern /= pattern.sum(-1, keepdims=True)
z = np.einsum("hqk,khd->qhd", pattern, v_h)                           # [n_seq, n_heads, d_head]
attn_out = z.reshape(n_seq, -1) @ w.W_O                               # [n_seq, d_model]
print("pattern vs trace['pattern'], max difference:", np.abs(pattern - trace["pattern", l]).max())
print("attn_out vs trace['attn_out'], max difference:",
      np.abs(attn_out - trace["attn_out", l]).max())

# %% [markdown]
# ## The MLP: SwiGLU
# Llama's MLP is gated: silu(x W_gate) * (x W_in), then W_out. silu(a) = a * sigmoid(a).

# %%
resid_mid = x + attn_out
h2, _ = rms_norm(resid_mid, w.ln2_w, cfg.norm_eps)
gate = h2 @ w.W_gate
mlp_post = gate / (1 + np.exp(-gate)) * (h2 @ w.W_in)                        # [n_seq, d_mlp]
mlp_out = mlp_post @ w.W_out                                                 # [n_seq, d_model]
resid_post = resid_mid + mlp_out

# %% [markdown]
# ## The check
# minilens computes in float32; we computed in float64 from the same inputs. So the
# difference should be float32 rounding: about 1e-6 relative to the size of the stream, not
# exactly 0. A wrong RoPE layout or a modulo instead of h // group would show up as O(1) errors.

# %%
ref = trace["resid_post", l]
rel = np.abs(resid_post - ref).max() / np.abs(ref).max()
print(f"resid_post, ours vs minilens: max relative difference {rel:.2e}")
assert rel < 1e-4, "the hand-built block should match the trace to float32 rounding"
print("Notice: every array of the block matches, so the Trace is exactly the textbook computation.")

# %% [markdown]
# ## The library's own block
# minilens's forward pass is [`minilens/forward.py`](../minilens/forward.py): the same steps,
# one function each (`block`, `attention`, `mlp`, `norm`), about 120 lines for every family.
# Run its `block` on the same float64 input, with the same rotary tables, and compare with ours:
# there is nothing in between, so the two agree to float64 rounding.

# %%
from minilens import forward, ops

rope = ops.rope_tables(cfg.rope, len(x), np.float64)
w64 = type(w)(**{k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                  for k, v in vars(w).items()})
theirs = forward.block(x, w64, cfg, rope, forward.record_nothing, l)          # [n_seq, d_model]
rel = np.abs(resid_post - theirs).max() / np.abs(theirs).max()
print(f"resid_post, ours vs minilens.forward.block (both float64): "
      f"max relative difference {rel:.2e}")
assert rel < 1e-12, "our block and forward.block compute the same equations"
print("Notice: read minilens/forward.py next: it is this notebook's block, "
      "plus the other families' switches.")

# %% [markdown]
# One more identity: the final residual is the sum of everything ever written to the stream.
# That is what makes attribution possible (tutorial 03).

# %%
total = trace["embed"] + sum(trace["attn_out", i] + trace["mlp_out", i]
                             for i in range(cfg.n_layers))
print("embed + all attn_out + all mlp_out == resid_final, max difference:",
      np.abs(total - trace["resid_final"]).max())
