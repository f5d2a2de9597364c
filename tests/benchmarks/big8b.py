"""Llama-3-8B shapes on a 2-core 24 GiB machine: checkpoints, time split, floors, parity (issue 19).

    python tests/benchmarks/big8b.py make          # the checkpoints, once, into the bench cache
    python tests/benchmarks/big8b.py gemm          # this machine's float32 GEMM rate
    python tests/benchmarks/big8b.py split gguf    # in one process: load, forward, lens, timed
    python tests/benchmarks/big8b.py split bf16
    python tests/benchmarks/big8b.py parity gguf   # the 2-layer slice against transformers
    python tests/benchmarks/big8b.py parity bf16
    python tests/benchmarks/big8b.py paths         # the folders, the prompt file, disk use

The measurement a user would make is the command line itself, under ``/usr/bin/time -v``:

    minilens lens "$(cat ~/.cache/minilens-bench/llama3-8b-prompt.txt)" \\
        --model ~/.cache/minilens-bench/llama3-8b-q4km/llama3-8b-q4km.gguf

Checkpoints, all random weights, written straight from random bits (a float32 torch model of 8B
parameters would need 32 GB): Llama-3-8B's shapes (d_model 4096, 32 layers, 32 query heads over 8
KV heads, d_mlp 14336, vocab 128256, llama3 rope) as one bf16 safetensors file, and as a GGUF file
laid out like llama.cpp's Q4_K_M: Q4_K for the linear weights and the embedding, Q6_K for attn_v,
ffn_down and the output, norms in F32, llama3 rope as the ``rope_freqs`` tensor. The K-quant blocks
are random bytes with finite f16 scales chosen so that every block has mean about zero and the
wanted standard deviation. Every matrix has standard deviation about 0.76 / sqrt(d_in) (the output
1.5 / sqrt(d_model), the embedding 0.76), so the stream, the norms and the logits stay of order one.
The 2-layer slices have the same widths and vocabulary; the GGUF slice also gets a "twin", its
tensors dequantized by gguf-py (not by minilens) into a float32 safetensors folder that transformers
reads. Both formats carry the same byte-level BPE tokenizer of 128256 tokens (gguf_factories'
tiny_bpe_vocab): a tokenizer.json beside the safetensors, tokenizer.ggml.* in the GGUF file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))                 # tests/: gguf_factories
sys.path.insert(0, str(HERE.parent.parent))

from checkpoints import CACHE  # noqa: E402

N_SEQ = 128
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                 max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
                 bos_token_id=128000, eos_token_id=128001,
                 rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                      low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192))
PROMPT = CACHE / "llama3-8b-prompt.txt"


def folders(n_layers: int) -> dict[str, Path]:
    tag = "llama3-8b" if n_layers == 32 else f"llama3-8b-{n_layers}l"
    return {"bf16": CACHE / f"{tag}-bf16", "gguf": CACHE / f"{tag}-q4km" / f"{tag}-q4km.gguf",
            "twin": CACHE / f"{tag}-q4km-twin"}


def hf_config(n_layers: int, dtype: str):
    import transformers
    cfg = transformers.LlamaConfig(**dict(LLAMA3_8B, num_hidden_layers=n_layers))
    cfg.dtype = dtype
    return cfg


# ---------------------------------------------------------------------------------------------
# Random weights: bf16 bits, Q4_K and Q6_K blocks
# ---------------------------------------------------------------------------------------------

def matrix_exponent(name: str) -> int:
    """bf16 magnitudes lie in [2^e, 2^(e+1)) with a random sign: standard deviation 1.53 * 2^e."""
    if name.endswith("embed_tokens.weight"):
        return -1                                   # 0.76
    if name == "lm_head.weight":
        return -6                                   # 0.024 = 1.53 / sqrt(4096)
    if name.endswith("down_proj.weight"):
        return -8                                   # 0.0060 = 0.72 / sqrt(14336)
    return -7                                       # 0.012 = 0.76 / sqrt(4096)


def sigma(name: str) -> float:
    """The standard deviation every format gives tensor ``name`` (an HF name)."""
    return 1.53 * 2.0 ** matrix_exponent(name)


def random_bf16(n: int, exponent: int, rng: np.random.Generator) -> np.ndarray:
    """n bf16 bit patterns: random sign and 7-bit mantissa, exponent fixed.  -> [n] uint16"""
    bits = np.frombuffer(rng.bytes(2 * n), dtype="<u2").copy()
    bits &= 0x807F
    bits |= np.uint16((127 + exponent) << 7)
    return bits


def q4_k_blocks(n_blocks: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random Q4_K blocks with mean ~0 and standard deviation ~std.  -> [n_blocks, 144] uint8

    w = d * scale * q - dmin * min, q uniform on 0..15. Every sub-block's min equals its scale and
    dmin = 7.5 d, so w = d * scale * (q - 7.5): zero mean. Scales are random in 32..63.
    """
    raw = np.frombuffer(rng.bytes(n_blocks * 144), dtype=np.uint8).reshape(n_blocks, 144).copy()
    scale = rng.integers(32, 64, size=(n_blocks, 8), dtype=np.uint8)
    rms_scale = np.sqrt(np.mean(np.arange(32, 64) ** 2))
    d = np.float16(std / (rms_scale * np.sqrt((16 ** 2 - 1) / 12)))
    raw[:, 0:2] = np.array([d], dtype="<f2").view(np.uint8)
    raw[:, 2:4] = np.array([np.float16(7.5 * float(d))], dtype="<f2").view(np.uint8)
    lo, hi = scale[:, :4], scale[:, 4:]
    packed = lo | ((hi >> 4) << 6)                  # quants.py's _scales_and_mins_k4, inverted
    raw[:, 4:8] = packed                            # scales 0..3 (+ top bits of 4..7)
    raw[:, 8:12] = packed                           # mins, equal to the scales
    raw[:, 12:16] = (hi & 0x0F) | ((hi & 0x0F) << 4)
    return raw


def q6_k_blocks(n_blocks: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random Q6_K blocks, mean ~0, standard deviation ~std.  -> [n_blocks, 210] uint8

    w = d * scale * (q - 32), q uniform on 0..63; scales random in +-(16..63).
    """
    raw = np.frombuffer(rng.bytes(n_blocks * 210), dtype=np.uint8).reshape(n_blocks, 210).copy()
    magnitude = rng.integers(16, 64, size=(n_blocks, 16))
    sign = rng.integers(0, 2, size=(n_blocks, 16)) * 2 - 1
    raw[:, 192:208] = (magnitude * sign).astype(np.int8).view(np.uint8)
    rms_scale = np.sqrt(np.mean(np.arange(16, 64) ** 2))
    rms_q = np.sqrt(np.mean((np.arange(64) - 32.0) ** 2))
    d = np.float16(std / (rms_scale * rms_q))
    raw[:, 208:210] = np.array([d], dtype="<f2").view(np.uint8)
    return raw


def hf_shapes(n_layers: int) -> dict[str, tuple]:
    """Every tensor of the HF checkpoint, in file order.  -> {name: shape}"""
    c = LLAMA3_8B
    d, m, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    shapes = {"model.embed_tokens.weight": (V, d)}
    for l in range(n_layers):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (d, d),
                       p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d),
                       p + "self_attn.o_proj.weight": (d, d),
                       p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (m, d), p + "mlp.up_proj.weight": (m, d),
                       p + "mlp.down_proj.weight": (d, m)})
    shapes.update({"model.norm.weight": (d,), "lm_head.weight": (V, d)})
    return shapes


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------

def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple]], fill) -> None:
    """A safetensors file written tensor by tensor: ``tensors`` {name: (dtype, shape)}, and
    ``fill(name, fh)`` writes each one's bytes in order. Written as .partial, then renamed."""
    itemsize = {"BF16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n_bytes = int(np.prod(shape)) * itemsize[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name in tensors:
            start = fh.tell()
            fill(name, fh)
            assert fh.tell() - start == (header[name]["data_offsets"][1]
                                         - header[name]["data_offsets"][0]), name
    tmp.rename(path)


def tokenizer_metadata() -> dict:
    """The byte-level BPE both formats carry, as GGUF tokenizer.ggml.* values."""
    from gguf_factories import tiny_bpe_vocab
    tokens, merges = tiny_bpe_vocab(LLAMA3_8B["vocab_size"])
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.bos_token_id": LLAMA3_8B["bos_token_id"],
            "tokenizer.ggml.eos_token_id": LLAMA3_8B["eos_token_id"],
            "tokenizer.ggml.add_bos_token": True}


def make_bf16(n_layers: int, seed: int = 0) -> Path:
    folder = folders(n_layers)["bf16"]
    if (folder / "model.safetensors").is_file():
        return folder
    from minilens.loading.gguf_tokenizer import tokenizer_from_gguf
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunk = 1 << 26

    def fill(name: str, fh) -> None:
        n = int(np.prod(shapes[name]))
        if name.endswith("norm.weight"):
            np.full(n, 0x3F80, dtype="<u2").tofile(fh)          # bf16 1.0
            return
        for start in range(0, n, chunk):
            random_bf16(min(chunk, n - start), matrix_exponent(name), rng).tofile(fh)

    shapes = hf_shapes(n_layers)
    write_safetensors(folder / "model.safetensors",
                      {name: ("BF16", shape) for name, shape in shapes.items()}, fill)
    hf_config(n_layers, "bfloat16").save_pretrained(folder)
    tokenizer_from_gguf(tokenizer_metadata(), "big8b").save(str(folder / "tokenizer.json"))
    return folder


def make_gguf(n_layers: int, seed: int = 1) -> Path:
    """The Q4_K_M-like file: Q4_K linear weights and embedding, Q6_K attn_v, ffn_down, output."""
    path = folders(n_layers)["gguf"]
    if path.is_file():
        return path
    import gguf
    from gguf import GGMLQuantizationType as QType

    from gguf_factories import _write_hparams, gguf_tensor_name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    hf = hf_config(n_layers, "float32").to_dict()
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(path.stem)
    extra = _write_hparams(writer, "llama", "llama", hf, gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    meta = tokenizer_metadata()
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types([gguf.TokenType.NORMAL] * len(meta["tokenizer.ggml.tokens"]))
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    writer.add_add_bos_token(True)

    q6 = ("attn_v", "ffn_down", "output")
    plan = []                                   # (gguf name, numpy shape, HF name or None)
    plan += [(name, values.shape, None) for name, values in extra.items()]
    plan += [(gguf_tensor_name("llama", n), s, n) for n, s in hf_shapes(n_layers).items()]
    for name, shape, hf_name in plan:
        if len(shape) == 1:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * shape[0])
        else:
            qtype = "Q6_K" if name.split(".")[-2] in q6 else "Q4_K"
            n_bytes = shape[0] * shape[1] // 256 * (210 if qtype == "Q6_K" else 144)
            writer.add_tensor_info(name, (shape[0], n_bytes // shape[0]), np.dtype(np.uint8),
                                   n_bytes, raw_dtype=QType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape, hf_name in plan:
        if hf_name is None:
            data = extra[name].astype(np.float32)
        elif len(shape) == 1:
            data = np.ones(shape, dtype=np.float32)
        else:
            n_blocks = shape[0] * shape[1] // 256
            blocks = (q6_k_blocks if name.split(".")[-2] in q6 else q4_k_blocks)
            data = blocks(n_blocks, sigma(hf_name), rng).reshape(shape[0], -1)
        writer.write_tensor_data(data)
    writer.close()
    tmp.rename(path)
    return path


def make_twin(n_layers: int) -> Path:
    """The GGUF file's tensors dequantized by gguf-py into float32 safetensors, under HF names,
    with the rotary rows back in HF's order: what transformers compares against."""
    import gguf

    from gguf_factories import _GLOBAL_NAMES, _LAYER_NAMES, rotary_deinterleave
    src, folder = folders(n_layers)["gguf"], folders(n_layers)["twin"]
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(src))
    glob = {v: k for k, v in _GLOBAL_NAMES.items()}
    leaf = {v: k for k, v in _LAYER_NAMES["llama"].items()}
    by_hf = {}
    for t in reader.tensors:
        stem, _, suffix = t.name.rpartition(".")
        if stem == "rope_freqs":
            continue
        if stem.startswith("blk."):
            _, l, part = stem.split(".", 2)
            by_hf[f"model.layers.{l}.{leaf[part]}.{suffix}"] = t
        else:
            by_hf[f"{glob[stem]}.{suffix}"] = t
    heads = {"attn_q": LLAMA3_8B["num_attention_heads"], "attn_k": LLAMA3_8B["num_key_value_heads"]}

    def fill(name: str, fh) -> None:
        t = by_hf[name]
        part = t.name.split(".")[-2]
        shape = [int(n) for n in reversed(t.shape)]
        if part in heads or len(shape) == 1:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            if part in heads:
                w = rotary_deinterleave(w, heads[part])
            np.ascontiguousarray(w).tofile(fh)
            return
        for start in range(0, shape[0], 8192):       # rows at a time: the embedding is 2 GB
            rows = gguf.quants.dequantize(t.data[start:start + 8192], t.tensor_type)
            np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, shape[1]).tofile(fh)

    write_safetensors(folder / "model.safetensors",
                      {n: ("F32", tuple(int(x) for x in reversed(t.shape)))
                       for n, t in by_hf.items()}, fill)
    hf_config(n_layers, "float32").save_pretrained(folder)
    return folder


def prompt_text() -> str:
    """A text of exactly N_SEQ tokens with the BOS (the same in both formats), kept in PROMPT."""
    if PROMPT.is_file():
        return PROMPT.read_text()
    from minilens.loading.gguf_tokenizer import tokenizer_from_gguf
    from minilens.loading.tokenizer import Tokenizer
    meta = tokenizer_metadata()
    tok = Tokenizer.from_hf_tokenizer(tokenizer_from_gguf(meta, "big8b"),
                                      meta["tokenizer.ggml.bos_token_id"], True, "big8b")
    words = ("the logit lens reads every layer of the residual stream through the final norm and "
             "the unembedding so that one can see what each layer would predict").split()
    text, i = words[0], 1
    while len(tok.encode(text + " " + words[i % len(words)])) <= N_SEQ:
        text, i = text + " " + words[i % len(words)], i + 1
    while len(tok.encode(text + ".")) <= N_SEQ:
        text += "."
    assert len(tok.encode(text)) == N_SEQ, len(tok.encode(text))
    PROMPT.write_text(text)
    return text


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def cmd_make(args) -> None:
    for n_layers in (32, 2):
        t0 = time.perf_counter()
        make_bf16(n_layers)
        t1 = time.perf_counter()
        make_gguf(n_layers)
        t2 = time.perf_counter()
        print(f"{n_layers} layers: bf16 {t1 - t0:.0f} s, gguf {t2 - t1:.0f} s", flush=True)
    t0 = time.perf_counter()
    make_twin(2)
    print(f"2-layer GGUF twin {time.perf_counter() - t0:.0f} s", flush=True)
    prompt_text()
    cmd_paths(args)


def cmd_paths(args) -> None:
    total = 0
    for n_layers in (32, 2):
        for kind, path in folders(n_layers).items():
            if path.exists():
                size = du(path.parent if kind == "gguf" else path)
                total += size
                print(f"{size / 1e9:7.2f} GB  {path}")
    print(f"{total / 1e9:7.2f} GB  in all (prompt: {PROMPT})")


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def gemm_rate(repeats: int = 5, clock=time.perf_counter) -> float:
    """float32 multiply-adds per second of one large GEMM, [1024, 4096] @ [4096, 8192] (best of
    ``repeats``): this machine's rate for the floors. ``clock=time.process_time`` counts this
    process's CPU time, which with one BLAS thread does not see other jobs on the machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 4096), dtype=np.float32)
    b = rng.standard_normal((4096, 8192), dtype=np.float32)
    out = np.empty((1024, 8192), np.float32)
    np.matmul(a, b, out=out)
    best = min(clocked(lambda: np.matmul(a, b, out=out), clock)[1] for _ in range(repeats))
    return a.shape[0] * a.shape[1] * b.shape[1] / best


def clocked(fn, clock=time.perf_counter):
    """(fn(), seconds) on ``clock``."""
    t0 = clock()
    result = fn()
    return result, clock() - t0


def forward_macs(cfg, n_seq: int) -> int:
    """Multiply-adds of one forward pass's matrix products: every weight matrix once per token,
    q k^T and pattern v with the full n_seq x n_seq scores, and the unembedding."""
    d, m, kv = cfg.d_model, cfg.d_mlp, cfg.n_kv_heads * cfg.d_head
    per_layer = n_seq * (d * (cfg.n_heads * cfg.d_head) * 2 + 2 * d * kv + 3 * d * m)
    attention = 2 * cfg.n_heads * n_seq * n_seq * cfg.d_head
    return cfg.n_layers * (per_layer + attention) + n_seq * d * cfg.d_vocab


def cmd_gemm(args) -> None:
    print(json.dumps({"gemm_macs_per_s_wall": gemm_rate(),
                      "gemm_macs_per_s_cpu": gemm_rate(clock=time.process_time),
                      "load_avg": os.getloadavg()}))


def cmd_split(args) -> None:
    """One process doing what the command line does: load, the 'stream' trace, the lens; each
    timed on the wall clock and in this process's CPU time (the machine is shared: with one BLAS
    thread the CPU time is what the work costs). Then every layer widened once more, alone: the
    dequantization's share. The GEMM floors are at the rate gemm_rate measures, on each clock."""
    import minilens as ml
    from minilens.analysis import lens as lens_module
    from minilens.analysis.lens import logit_lens
    path = folders(32)["gguf" if args.format == "gguf" else "bf16"]
    text = prompt_text()
    wall, cpu = time.perf_counter, time.process_time
    t = {}

    def timed(name, fn):
        w0, c0 = wall(), cpu()
        result = fn()
        t[f"{name}_wall_s"], t[f"{name}_cpu_s"] = wall() - w0, cpu() - c0
        return result

    model = timed("load", lambda: ml.load(path))
    ids = model.to_tokens(text)
    model.layers.progress = None
    w0 = model.layers.widen_seconds
    trace = timed("forward", lambda: model.run(ids, record="stream"))
    t["forward_widen_wall_s"] = model.layers.widen_seconds - w0
    tracemalloc.start()
    lens = timed("lens", lambda: logit_lens(trace))
    lens_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    cfg = model.cfg

    def widen_all_layers():
        for l in range(cfg.n_layers):
            model.layers[l]                      # widened, then dropped (never all at once)

    timed("widen_all_layers", widen_all_layers)
    # What keeping W_U stored would cost: widening (or dequantizing) it once per position chunk.
    timed("widen_unembedding", lambda: model.checkpoint.getter(np.float32)(
        "lm_head.weight", (cfg.d_vocab, cfg.d_model)))
    rows = len(lens.labels)
    chunk = max(1, lens_module.CHUNK_ELEMENTS // (rows * cfg.d_vocab))
    rates = {"wall": gemm_rate(), "cpu": gemm_rate(clock=time.process_time)}
    lens_macs = rows * len(ids) * cfg.d_model * cfg.d_vocab
    out = {"format": args.format, "n_seq": len(ids), "rows": rows, **t,
           "gemm_macs_per_s": rates, "forward_macs": forward_macs(cfg, len(ids)),
           "lens_macs": lens_macs,
           **{f"forward_floor_{k}_s": forward_macs(cfg, len(ids)) / r for k, r in rates.items()},
           **{f"lens_floor_{k}_s": lens_macs / r for k, r in rates.items()},
           "lens_tracemalloc_peak_bytes": lens_peak,
           "lens_chunk_bound_bytes": 2 * lens_module.CHUNK_ELEMENTS * 4,
           "lens_position_chunks": -(-len(ids) // chunk),
           "logits_finite": bool(np.isfinite(trace.logits).all()),
           "logit_std": float(trace.logits.std()),
           "final_top1_prob_mean": float(lens.top_probs[-1, :, 0].mean()),
           "load_avg": os.getloadavg()}
    print(json.dumps(out, indent=1))


def cmd_parity(args) -> None:
    """minilens on the 2-layer slice against transformers in float32: the bf16 folder read by
    both, or the GGUF file (minilens) against its gguf-py twin (transformers)."""
    import minilens as ml
    f = folders(2)
    ours_path, ref_path = (f["bf16"], f["bf16"]) if args.format == "bf16" else (f["gguf"],
                                                                                  f["twin"])
    model = ml.load(ours_path)
    ids = model.to_tokens(prompt_text())
    ours = model(ids).copy()
    del model
    gc.collect()
    import torch
    import transformers
    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", "2")))
    hf = transformers.AutoModelForCausalLM.from_pretrained(ref_path, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)[None]).logits[0].numpy()
    err = float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))
    print(json.dumps({"format": args.format, "ours": str(ours_path), "reference": str(ref_path),
                      "n_seq": len(ids), "max_abs_logit": float(np.max(np.abs(ref))),
                      "max_err_over_max(1,|ref|)": err, "within_1e-4": err <= 1e-4,
                      "greedy_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make").set_defaults(func=cmd_make)
    sub.add_parser("paths").set_defaults(func=cmd_paths)
    sub.add_parser("gemm").set_defaults(func=cmd_gemm)
    for name, func in (("split", cmd_split), ("parity", cmd_parity)):
        p = sub.add_parser(name)
        p.add_argument("format", choices=("gguf", "bf16"))
        p.set_defaults(func=func)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
