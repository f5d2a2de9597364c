# %% [markdown]
# # 07: quantization by hand: what 4-bit weights are
#
# A GGUF file (llama.cpp's format) rarely stores a weight as a float. It cuts every row of a
# matrix into *blocks* of 32 or 256 weights. Per block it stores one or two float16 numbers, a
# step d and sometimes an offset m. Per weight it stores a small integer q of 4 or 8 bits. The
# weight is w = d * q + m: the integers give the block's shape, the floats give its size and place.
#
# We open the real file of SmolLM2-135M-Instruct, read the 20 bytes of one 4-bit block by hand,
# then build a Q4_K super-block (a "K-quant", as in the common Q4_K_M files) and read it back.
# Last, we measure what each format loses, on weights that were never quantized.
#
# The file comes from `minilens fetch smollm2` (98 MB). Without it the tutorial still runs: it
# reads a random block made up here instead, and skips what needs the real file.

# %%
import math
from dataclasses import replace

import numpy as np

import minilens as ml
from minilens.loading import quants
from minilens.loading.fetch import fetched_path
from minilens.loading.gguf_file import GGUFFile

path = fetched_path("smollm2")
if path is None:
    print("SmolLM2 is not fetched (`minilens fetch smollm2`): section 2 reads a random block "
          "made up here, and sections 1 and 4 skip what needs the real file.")
else:
    gguf = GGUFFile(path)
    smol = ml.load(path)
    print(f"opened {path.name}: {len(gguf.tensors)} tensors, {gguf.size:,} bytes")

# %% [markdown]
# ## 1. What the file holds
# Each ggml type has a block size (weights per block) and a type size (bytes per block), so
# bytes per weight = type_size / block_size. Q4_1 spends 4 bits on each weight plus 2 float16
# numbers per 32 weights: 4 + 32/32 = 5 bits. Q8_0 spends 8 bits plus one float16: 8.5 bits.

# %%
TYPES = {t.name: t for t in quants.GGML_TYPES.values()}             # "Q4_1" -> its block layout
IDS = {t.name: i for i, t in quants.GGML_TYPES.items()}              # "Q4_1" -> ggml's type id 3
if path is not None:
    by_type: dict[str, list] = {}
    for t in gguf.tensors.values():
        by_type.setdefault(t.qtype.name, []).append(t)
    print(f"{'type':5s} {'tensors':>7s} {'weights':>12s} {'block':>5s} {'bytes/block':>11s} "
          f"{'bytes/weight':>12s} {'bits/weight':>11s}  for example")
    for name, ts in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
        q = ts[0].qtype
        n = sum(math.prod(t.shape) for t in ts)
        print(f"{name:5s} {len(ts):7d} {n:12,d} {q.block_size:5d} {q.type_size:11d} "
              f"{q.type_size / q.block_size:12.4f} {8 * q.type_size / q.block_size:11.1f}  "
              f"{ts[0].name}")
    n_weights = sum(math.prod(t.shape) for t in gguf.tensors.values())
    header = min(t.offset for t in gguf.tensors.values())
    vocab = sum(len(s.encode()) + 8 for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
                for s in gguf.metadata.get(k, []))      # + 8: each string's length field
    print(f"file: {gguf.size / 1e6:.1f} MB, of which {header / 1e6:.1f} MB is the header "
          f"({vocab / 1e6:.1f} MB of it the tokenizer's tokens and merges). As float32 the "
          f"{n_weights:,} weights would take {4 * n_weights / 1e6:.1f} MB, "
          f"{4 * n_weights / gguf.size:.1f}x more.")
    quantized = [t for t in gguf.tensors.values() if t.qtype.block_size > 1]
    whole = [t for t in quantized if t.shape[-1] % 256 == 0]
    print(f"Notice: the embedding {gguf.tensors['token_embd.weight'].shape} is Q8_0, not Q4_1: "
          f"SmolLM2 ties W_U = W_E^T, so this one matrix also writes every logit.")
    d_model = gguf.metadata["llama.embedding_length"]
    print(f"Notice: only {len(whole)} of the {len(quantized)} quantized tensors have rows "
          f"that are whole multiples of 256 (the K-quants' block); the rest have rows of "
          f"d_model = {d_model} = {d_model / 256} x 256. A K-quant could not tile them; "
          f"Q4_1's blocks of 32 fit every row.")
else:
    for name in ("Q4_1", "Q8_0", "F32"):
        q = TYPES[name]
        print(f"{name}: blocks of {q.block_size}, {q.type_size} bytes each: "
              f"{q.type_size / q.block_size:.4f} bytes = {8 * q.type_size / q.block_size} bits "
              f"per weight")

# %% [markdown]
# ## 2. One Q4_1 block, byte by byte
# A Q4_1 block is 20 bytes for 32 weights (quants.py draws the same picture):
#
#     bytes 0-1    d    float16   the step between two levels
#     bytes 2-3    m    float16   the lowest level
#     bytes 4-19   qs   16 bytes  two 4-bit q's per byte: weight i in the low nibble of qs[i],
#                                 weight i+16 in the high nibble
#     w_i = d * q_i + m,  q_i = 0..15
#
# We take layer 0's `ffn_down` (the MLP's output matrix, W_out). GGUF stores it as
# [d_model, d_mlp], one row per output, and quantizes along the row. So block b of row r is
# weights 32b .. 32b+31 of that row, and it sits (r * blocks_per_row + b) * 20 bytes into the
# tensor's data. minilens stores W_out as [d_in, d_out] = [d_mlp, d_model], so the same 32
# numbers are W_out[32b : 32b+32, r]. (ffn_down needs no other reordering; W_Q and W_K do,
# because llama.cpp permutes their rows for its RoPE.)

# %%
Q4_1 = TYPES["Q4_1"]
if path is not None:
    name, r, b = "blk.0.ffn_down.weight", 1, 2
    t = gguf.tensors[name]
    blocks_per_row = t.shape[1] // Q4_1.block_size
    start = (r * blocks_per_row + b) * Q4_1.type_size
    block = gguf.raw(name)[start:start + Q4_1.type_size]              # [20] uint8
    print(f"{name} is {t.shape} {t.qtype.name}; row {r}, block {b} is bytes "
          f"{start}..{start + Q4_1.type_size - 1} of its data")
else:
    rng = np.random.default_rng(0)
    d_and_m = np.array([0.004, -0.03], dtype="<f2").view(np.uint8)      # d, m as float16 bytes
    block = np.concatenate([d_and_m, rng.integers(0, 256, 16, dtype=np.uint8)])
    print("a random Q4_1 block (SmolLM2 is not fetched): d = 0.004, m = -0.03, random nibbles")
print("the 20 bytes:", " ".join(f"{x:02x}" for x in block))

d = block[0:2].view("<f2")[0].astype(np.float32)   # two bytes read as a little-endian float16,
m = block[2:4].view("<f2")[0].astype(np.float32)   # widened exactly to float32
print(f"d: bytes {block[0]:02x} {block[1]:02x} -> {d:.6g};  m: bytes {block[2]:02x} "
      f"{block[3]:02x} -> {m:.6g}")

qs = block[4:20]
low, high = qs & 0x0F, qs >> 4                     # [16] each: weights 0..15 and 16..31
q = np.concatenate([low, high])                    # [32] uint8, 0..15
print(" i  byte      bits   low = q_i  high = q_(i+16)")
for i in range(16):
    print(f"{i:2d}    {qs[i]:02x}  {qs[i]:08b}  {low[i]:9d}  {high[i]:15d}")

w = d * q + m                                      # [32] float32
print("the 32 weights:")
for row in w.reshape(4, 8):
    print("  " + " ".join(f"{x:+.5f}" for x in row))

assert np.array_equal(w, quants.dequantize(block, IDS["Q4_1"], 32)), "Q4_1: low nibble first?"
print("identical to minilens.loading.quants.dequantize of the same 20 bytes")
if path is not None:
    in_model = smol.layers[0].W_out[32 * b:32 * b + 32, r]
    assert np.array_equal(w, in_model), "GGUF row r is column r of minilens's W_out"
    print(f"identical to smol.layers[0].W_out[{32 * b}:{32 * b + 32}, {r}], the numbers the "
          f"forward pass multiplies by")

# %% [markdown]
# ## The 16 levels, and what was lost
# Every weight of this block is one of 16 numbers, m + d * k for k = 0..15. The original
# weights are gone: the file cannot tell us what they were. What it does tell us is the
# grid: a quantizer that rounds to the nearest level moves each weight by at most d/2.

# %%
levels = m + d * np.arange(16, dtype=np.float32)
print("the 16 levels:", " ".join(f"{x:+.4f}" for x in levels))
used = np.unique(q)
spread = float(w.max() - w.min())
print(f"this block uses {len(used)} of them (q from {used.min()} to {used.max()})")
print(f"Notice: the step d = {d:.5f} is {d / spread:.1%} of the block's spread "
      f"({spread:.4f}) and {d / w.std():.2f} of its standard deviation; rounding to the "
      f"nearest level moved each weight by at most d/2 = {d / 2:.5f}.")
if path is not None:
    raw = gguf.raw(name).reshape(-1, Q4_1.type_size)                  # [n_blocks, 20]
    all_q = np.concatenate([raw[:, 4:] & 0x0F, raw[:, 4:] >> 4], axis=1)
    both_ends = np.mean((all_q.min(1) == 0) & (all_q.max(1) == 15))
    print(f"Notice: {both_ends:.0%} of the {len(raw):,} blocks of {name} use both q = 0 and "
          f"q = 15: m is the block's minimum and m + 15 d its maximum, the plain min/max rule.")

# %% [markdown]
# ## 3. A Q4_K super-block, built and read by hand
# Q4_1 spends 32 of its 160 bits per block on d and m. The K-quants spend fewer: a super-block
# of 256 weights has one float16 d and one float16 dmin, and each of its 8 sub-blocks of 32
# gets a 6-bit integer scale and a 6-bit integer min. A sub-block's step is d * scale and its
# lowest level is -dmin * min. That is 2 + 2 + 12 + 128 = 144 bytes, 4.5 bits per weight:
#
#     bytes 0-1     d       float16
#     bytes 2-3     dmin    float16
#     bytes 4-15    scales  8 6-bit scales and 8 6-bit mins, packed into 12 bytes
#     bytes 16-143  qs      4 chunks of 32 bytes; chunk c holds sub-block 2c in its low
#                           nibbles and sub-block 2c+1 in its high nibbles
#     w = (d * scale_j) * q - dmin * min_j   for a weight in sub-block j,  q = 0..15
#
# SmolLM2 has no Q4_K tensor, so we make one. Not from SmolLM2's weights, though: they are
# already on a Q4_1 grid (at most 16 values per block of 32), so any 4-bit format would look
# better than it is on them. We take 256 weights of the shipped Shakespeare Llama, which was
# saved in bf16 and never quantized: the first 256 weights into output 0 of layer 0's W_out.
# Our quantizer is the simplest valid one: each sub-block's min and max set its scale and
# min. llama.cpp searches for a better scale and min, so its error is usually smaller.

# %%
shipped = ml.load("shakespeare-llama")
x = shipped.layers[0].W_out[:256, 0].astype(np.float32)             # [256], bf16 values
print(f"256 weights from the shipped Llama: mean {x.mean():+.4f}, std {x.std():.4f}, "
      f"min {x.min():+.4f}, max {x.max():+.4f}")


def f16_bytes(v):                        # [n_blocks] -> [n_blocks, 2] uint8, little-endian f16
    return np.asarray(v, dtype="<f2").reshape(-1, 1).view(np.uint8)


def as_f32(v):                           # round to float16, as the file will hold it
    return np.asarray(v, dtype="<f2").astype(np.float32)


def quantize_q4_k(x):                    # [n_blocks, 256] float32 -> [n_blocks, 144] uint8
    sub = x.reshape(-1, 8, 32)                               # [n_blocks, 8 sub-blocks, 32]
    lo = np.minimum(sub.min(2), 0)       # [n_blocks, 8]; the min is subtracted, so it is <= 0
    want = (sub.max(2) - lo) / 15        # [n_blocks, 8]: the step each sub-block would like
    d, dmin = as_f32(want.max(1) / 63), as_f32(-lo.min(1) / 63)      # 63: the largest 6 bits
    assert (d > 0).all() and (dmin > 0).all(), "constant or all-positive rows: not handled here"
    scale = np.clip(np.round(want / d[:, None]), 1, 63).astype(np.uint8)      # [n_blocks, 8]
    min_ = np.clip(np.round(-lo / dmin[:, None]), 0, 63).astype(np.uint8)     # [n_blocks, 8]
    step, low = d[:, None] * scale, dmin[:, None] * min_     # the levels the file will hold
    q = np.clip(np.round((sub + low[..., None]) / step[..., None]), 0, 15).astype(np.uint8)
    packed = np.empty((len(x), 12), dtype=np.uint8)          # the inverse of the unpacking below
    packed[:, 0:4] = scale[:, :4] | (scale[:, 4:] >> 4) << 6
    packed[:, 4:8] = min_[:, :4] | (min_[:, 4:] >> 4) << 6
    packed[:, 8:12] = (scale[:, 4:] & 0x0F) | (min_[:, 4:] & 0x0F) << 4
    qs = q[:, 0::2] | q[:, 1::2] << 4    # [n_blocks, 4, 32]: sub-block 2c low, 2c+1 high
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), packed, qs.reshape(-1, 128)], axis=1)


block_k = quantize_q4_k(x[None])[0]                                  # [144] uint8
print(f"our Q4_K block: {block_k.size} bytes, {8 * block_k.size / 256} bits per weight")

# %% [markdown]
# Now read it back, as if we had found these 144 bytes in a file. The 12 scale bytes are the
# fiddly part. Sub-blocks 0-3 are easy: scale_j is the low 6 bits of byte j, min_j the low 6
# bits of byte 4+j. Sub-blocks 4-7 are split up: the low 4 bits of scale_j and min_j share
# byte 8+(j-4) (scale in the low nibble, min in the high one), and their top 2 bits are the
# top 2 bits of bytes j-4 and j, the bits sub-blocks 0-3 left over.

# %%
d = block_k[0:2].view("<f2")[0].astype(np.float32)
dmin = block_k[2:4].view("<f2")[0].astype(np.float32)
sb = block_k[4:16]
print(f"d = {d:.6g}, dmin = {dmin:.6g}")
print("the 12 scale bytes, in binary:")
print("  bytes 0-3  (scales 0-3, top bits of scales 4-7):", " ".join(f"{v:08b}" for v in sb[0:4]))
print("  bytes 4-7  (mins 0-3, top bits of mins 4-7):    ", " ".join(f"{v:08b}" for v in sb[4:8]))
print("  bytes 8-11 (low bits of scales | mins 4-7):     ", " ".join(f"{v:08b}" for v in sb[8:]))
scale = np.zeros(8, dtype=np.uint8)
min_ = np.zeros(8, dtype=np.uint8)
for j in range(4):
    scale[j] = sb[j] & 0b111111
    min_[j] = sb[4 + j] & 0b111111
for j in range(4, 8):
    scale[j] = (sb[8 + j - 4] & 0b1111) | (sb[j - 4] >> 6) << 4
    min_[j] = (sb[8 + j - 4] >> 4) | (sb[j] >> 6) << 4
print(" j  scale    min   step = d*scale   lowest level = -dmin*min")
for j in range(8):
    print(f"{j:2d}  {scale[j]:5d}  {min_[j]:5d}  {d * scale[j]:15.6f}  {-dmin * min_[j]:+.6f}")

qs = block_k[16:144].reshape(4, 32)                  # [chunk c, 32]
q = np.empty((8, 32), dtype=np.uint8)                # [sub-block j, 32]
q[0::2], q[1::2] = qs & 0x0F, qs >> 4
w_k = ((d * scale)[:, None] * q - (dmin * min_)[:, None]).reshape(256)     # [256] float32

assert np.array_equal(w_k, quants.dequantize(block_k, IDS["Q4_K"], 256)), \
    "Q4_K: are the top 2 bits of scales and mins 4-7 taken from bytes j-4 and j?"
print("identical to minilens.loading.quants.dequantize of the same 144 bytes")

# %% [markdown]
# ## What each format loses, on the same 256 weights
# Quantize the same 256 weights into four formats with the same simple rules, read each back
# with minilens.loading.quants, and compare with the originals (RMS error over RMS weight):
# - Q8_0: d = max|x| / 127, q = round(x / d), 8 bits;
# - Q4_0: d = the weight of largest size / -8, q = round(x / d) + 8, 4 bits, no m;
# - Q4_1: d = (max - min) / 15, m = min, q = round((x - m) / d);
# - Q4_K: the function above.
#
# And one that is not a ggml type: 4 bits with a single step and min for all 256 weights, to
# show what the blocks' scales buy.

# %%
def quantize_q8_0(x):                    # [n_blocks, 32] -> [n_blocks, 34] uint8
    d = as_f32(np.abs(x).max(1) / 127)
    q = np.clip(np.round(x / d[:, None]), -127, 127).astype(np.int8)
    return np.concatenate([f16_bytes(d), q.view(np.uint8)], axis=1)


def quantize_q4_0(x):                    # [n_blocks, 32] -> [n_blocks, 18] uint8
    biggest = np.take_along_axis(x, np.abs(x).argmax(1)[:, None], 1)[:, 0]
    d = as_f32(biggest / -8)             # the largest weight lands on q = 0, i.e. -8 steps
    q = np.clip(np.round(x / d[:, None]) + 8, 0, 15).astype(np.uint8)
    return np.concatenate([f16_bytes(d), q[:, :16] | q[:, 16:] << 4], axis=1)


def quantize_q4_1(x):                    # [n_blocks, 32] -> [n_blocks, 20] uint8
    d, m = as_f32((x.max(1) - x.min(1)) / 15), as_f32(x.min(1))
    q = np.clip(np.round((x - m[:, None]) / d[:, None]), 0, 15).astype(np.uint8)
    return np.concatenate([f16_bytes(d), f16_bytes(m), q[:, :16] | q[:, 16:] << 4], axis=1)


QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1,
              "Q4_K": quantize_q4_k}


def roundtrip(x, kind):                  # [n] float32 -> [n] float32, through the bytes
    raw = QUANTIZERS[kind](x.reshape(-1, TYPES[kind].block_size))
    return quants.dequantize(raw.reshape(-1), IDS[kind], x.size)


def rms_rel(err, ref):
    return float(np.sqrt(np.mean(err ** 2) / np.mean(ref ** 2)))


lo, step = as_f32(x.min()), as_f32((x.max() - x.min()) / 15)
one_step = np.round((x - lo) / step) * step + lo       # [256]: 16 levels for the whole row
errors = {"one step": rms_rel(one_step - x, x)}
bits = {"one step": 4 + 32 / 256}
for kind in QUANTIZERS:
    errors[kind] = rms_rel(roundtrip(x, kind) - x, x)
    bits[kind] = 8 * TYPES[kind].type_size / TYPES[kind].block_size
print(f"{'format':9s} {'bits/weight':>11s} {'RMS error / RMS weight':>23s}")
for kind in sorted(errors, key=bits.get):
    print(f"{kind:9s} {bits[kind]:11.3f} {errors[kind]:23.2%}")
assert np.array_equal(roundtrip(x, "Q4_K"), w_k)
assert errors["Q8_0"] < errors["Q4_1"] <= errors["Q4_K"] < errors["Q4_0"] < errors["one step"]
print(f"Notice: Q4_K's 8 sub-block scales and mins cost {bits['Q4_K'] - bits['one step']} bits "
      f"per weight and cut the error from {errors['one step']:.1%} to {errors['Q4_K']:.1%}, "
      f"within {errors['Q4_K'] / errors['Q4_1'] - 1:.1%} of Q4_1, which spends "
      f"{bits['Q4_1'] - bits['Q4_K']} bits more on float16 ones. Q4_0, at the same 4.5 bits "
      f"as Q4_K, loses {errors['Q4_0'] / errors['Q4_K'] - 1:.0%} more: with no min, its levels "
      f"sit around 0 and a lopsided block wastes some of them.")
if path is not None:
    x_smol = smol.layers[0].W_out[:256, 0]
    again = rms_rel(roundtrip(x_smol, "Q4_1") - x_smol, x_smol)
    print(f"(SmolLM2's own weights through the same Q4_1 rule: error {again:.2%}. They are "
          f"already on that grid, which is why we did not measure on them.)")

# %% [markdown]
# ## 4. What the error does to the output
# SmolLM2's forward pass runs on the dequantized weights, so everything it says comes from
# matrices of 5 bits per weight (4-bit q's plus each block's d and m). We have no float SmolLM2
# to compare with, but we do have a float Llama: round every block matrix of the shipped Llama
# through a format (the embedding stays as it is), run both, and compare the next-token
# distributions. Its rows are 192 or 512 long, so Q4_K (256) does not fit them all: the same
# problem as SmolLM2's 576.

# %%
if path is not None:
    logits = smol("The capital of France is")[-1]
    top = np.argsort(logits)[::-1][:3]
    p = np.exp(logits[top] - logits.max()) / np.exp(logits - logits.max()).sum()
    print("SmolLM2 (Q4_1) after 'The capital of France is': "
          + ", ".join(f"{smol.to_str_tokens([i])[0]!r} {pi:.2f}" for i, pi in zip(top, p)))

MATRICES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")


def quantized_model(model, kind):
    """A copy of model whose block matrices went through `kind` along d_in, as GGUF stores them."""
    def round_matrix(W):                                 # [d_in, d_out] -> the same
        return np.ascontiguousarray(roundtrip(W.T.reshape(-1), kind).reshape(W.T.shape).T)
    layers = [replace(L, **{k: round_matrix(getattr(L, k)) for k in MATRICES})
              for L in model.layers]
    return ml.Model(model.cfg, model.params, layers, tokenizer=model.tokenizer)


def log_softmax(z):                                      # [n_seq, d_vocab]
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
ref = log_softmax(shipped(text))
top2 = np.sort(ref, -1)[:, -2:]
margin = top2[:, 1] - top2[:, 0]                         # [n_seq]: how far ahead the top-1 is
kl, flips = {}, {}
for kind in ("Q8_0", "Q4_1", "Q4_0"):
    out = log_softmax(quantized_model(shipped, kind)(text))
    kl[kind] = float((np.exp(ref) * (ref - out)).sum(-1).mean())   # KL(float || quantized)
    flips[kind] = np.flatnonzero(out.argmax(-1) != ref.argmax(-1))
    print(f"shipped Llama, matrices in {kind}: mean KL {kl[kind]:.2g} nats, top-1 changed at "
          f"{len(flips[kind])} of {len(ref)} positions")
print(f"Notice: 4-bit matrices move the distribution {kl['Q4_1'] / kl['Q8_0']:.0f}x more than "
      f"8-bit ones.")
flipped = np.unique(np.concatenate([flips["Q4_1"], flips["Q4_0"]]))
if flipped.size:
    assert np.median(margin[flipped]) < np.median(margin)
    print(f"Notice: where a 4-bit top-1 changed, the float model's top two were "
          f"{np.median(margin[flipped]):.2f} nats apart (median over all positions: "
          f"{np.median(margin):.2f}): the error tips close calls, not confident ones.")
