# %% [markdown]
# # Assignment: build the logit lens and layer attribution yourself
#
# You will write five small numpy functions. Together they are the whole of the logit lens
# (nostalgebraist, 2020) and direct logit attribution: nothing else is hidden in minilens.
#
# Grade your work at any time (unfinished parts are reported as TODO, never as a crash):
#
#     python -m minilens.course.check tutorials/assignment_logit_lens.py
#
# The checker runs your functions on the shipped Shakespeare Llama (RMSNorm) and on a small random
# GPT-2 (LayerNorm, with biases), compares them with minilens, and tells you what to look at when a
# part fails. Use numpy only: the point is to see every step.
#
# Shapes use minilens's vocabulary: n_seq (positions), d_model (stream width), d_vocab (vocabulary).

# %%
import numpy as np  # noqa: F401  (the numpy your functions will use)

# %% [markdown]
# ## Part 1: the final norm
# The unembedding never reads the raw residual stream: it reads N(x), the final norm.
# - RMSNorm:   N(x) = gamma * x / sqrt(mean(x**2) + eps)
# - LayerNorm: N(x) = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta
# The mean and variance are over d_model (the last axis), per position. var(x) is the biased
# variance, mean((x - mean(x))**2): divided by d_model, not d_model - 1.

# %%
def final_norm(x, gamma, beta, eps, kind):
    """The final norm.  x [n_seq, d_model] -> [n_seq, d_model]

    gamma: [d_model]; beta: [d_model] or None (RMSNorm has none); eps: float;
    kind: "rmsnorm" or "layernorm".
    """
    raise NotImplementedError("Part 1: write final_norm")


# %% [markdown]
# ## Part 2: one row of the lens
# What would the model predict if decoding stopped at this point of the stream? Read the
# stream through the final norm (recomputed on *this* stream, not the last layer's) and the
# unembedding: logits = N(x) W_U + b_U.

# %%
def lens_row(resid, gamma, beta, eps, kind, W_U, b_U):
    """The lens logits of one point in the stream.  resid [n_seq, d_model] -> [n_seq, d_vocab]

    W_U: [d_model, d_vocab]; b_U: [d_vocab] or None. Use your final_norm.
    """
    raise NotImplementedError("Part 2: write lens_row")


# %% [markdown]
# ## Part 3: how sure, and how far from the final answer
# Turn logits into probabilities with a softmax (subtract the row max first, so exp cannot
# overflow). Entropy H(p) = -sum p log p, in nats (natural log). KL(p_final || p) =
# sum p_final (log p_final - log p): how many nats the layer's guess loses against the final one.

# %%
def entropy(logits):
    """Entropy of softmax(logits) per position, in nats.  [n_seq, d_vocab] -> [n_seq]"""
    raise NotImplementedError("Part 3a: write entropy")


def kl_to_final(final_logits, logits):
    """KL(p_final || p) per position, in nats.  [n_seq, d_vocab], [n_seq, d_vocab] -> [n_seq]"""
    raise NotImplementedError("Part 3b: write kl_to_final")


# %% [markdown]
# ## Part 4: layer attribution
# The final residual at one position is a sum of everything written into the stream:
# x_final = components.sum(0) (the embedding, then each layer's attention and MLP output).
# The norm is not linear, but its divisor s is a single number per position: Part 1's divisor,
# taken on x_final,
#     RMSNorm:   s = sqrt(mean(x_final**2) + eps)
#     LayerNorm: s = sqrt(mean((x_final - mean(x_final))**2) + eps)   (centred first)
# Freeze s at that value, and N becomes linear: each component's share of logit[target] is
#     RMSNorm:   (c / s * gamma) . W_U[:, target]
#     LayerNorm: ((c - mean(c)) / s * gamma) . W_U[:, target]
# The constant (beta . W_U[:, target] + b_U[target]) belongs to no component: leave it out.

# %%
def layer_attribution(components, x_final, gamma, beta, eps, kind, W_U, b_U, target):
    """Each component's share of logit[target] at one position.

    components [n_parts, d_model] -> [n_parts]
    x_final: [d_model], the final residual (components.sum(0)); target: a token id.
    s, the divisor frozen on x_final: sqrt(mean(x_final**2) + eps) for RMSNorm, and
    sqrt(mean((x_final - mean(x_final))**2) + eps) for LayerNorm.
    The shares plus the constant add up to the model's logit exactly.
    """
    raise NotImplementedError("Part 4: write layer_attribution")
