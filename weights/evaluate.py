"""Measure a shipped model on the held-out plays, with torch + transformers only (dev-only).

    python weights/evaluate.py weights/shakespeare-llama [--update-card]
    python weights/evaluate.py all --update-card

Reports, on the validation plays listed in weights/train.py (VAL_PLAYS):
- validation cross-entropy (nats/token) and next-token top-1 accuracy;
- the unigram entropy of the validation tokens: the entropy (nats) of their empirical distribution,
  i.e. the loss of the best model that ignores context, the baseline to beat;
- the final train loss (read from training_info.json, written by train.py);
- the logit lens, computed independently of minilens: row "{l}_pre" reads hidden_states[l]
  (the residual stream entering block l; hidden_states[0] is the embedding) through the final norm
  and the unembedding, lm_head(final_norm(h_l)); row "final_post" is the model's own logits.
  Per row: the mean log-probability of the true next token;
- greedy samples (model.generate, do_sample=False).

The validation stream is cut into non-overlapping windows of n_ctx tokens (Llama: BOS + n_ctx - 1
tokens, as minilens' to_tokens prepends BOS). Every token after the first of a window is scored.
With --update-card the markdown goes into weights/<name>/README.md between the
`<!-- measured:start -->` and `<!-- measured:end -->` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402  (the corpus, the split and the special tokens live there, once)

PROMPTS = ["ROMEO.\nO, she doth teach", "To be, or not to be,", "KING.\nNow, my lords,"]
N_NEW = 40
START, END = "<!-- measured:start -->", "<!-- measured:end -->"


def load(path):
    import torch
    import transformers as tr
    from tokenizers import Tokenizer

    model = tr.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return model, tok


def final_norm_and_unembed(model):
    """(final norm, lm_head) modules of a GPT2LMHeadModel or LlamaForCausalLM."""
    if model.config.model_type == "gpt2":
        return model.transformer.ln_f, model.lm_head
    return model.model.norm, model.lm_head


def evaluate(path: str, max_windows: int | None = None, threads: int = 2) -> dict:
    import torch

    torch.set_num_threads(threads)
    model, tok = load(path)
    family = "gpt2" if model.config.model_type == "gpt2" else "llama"
    info = json.load(open(os.path.join(path, "training_info.json")))
    n_ctx = info["hyper"]["n_ctx"]
    bos_id = tok.token_to_id(T.SPECIALS[family]["bos"])
    _, val_texts = T.split_plays(T.fetch_texts())
    stream = T.encode_stream(tok, family, val_texts)

    n_body = n_ctx - 1 if family == "llama" else n_ctx
    wins = [stream[i: i + n_body] for i in range(0, len(stream) - 1, n_body)]
    wins = [w for w in wins if len(w) >= 2]
    if max_windows:
        wins = wins[:max_windows]
    norm, unembed = final_norm_and_unembed(model)
    L = model.config.num_hidden_layers
    rows = [f"{l}_pre" for l in range(L)] + ["final_post"]
    lp_sum = np.zeros(len(rows))
    n_tok, n_correct, nll_sum = 0, 0, 0.0
    targets_all = []
    t0 = time.time()
    with torch.no_grad():
        for w in wins:
            ids = ([bos_id] if family == "llama" else []) + w
            x = torch.tensor([ids])
            out = model(input_ids=x, output_hidden_states=True)
            # Scored positions: predict ids[p + 1] from position p; Llama skips predicting w[0] from
            # BOS alone so that both families score the same tokens (w[1:]).
            first = 1 if family == "llama" else 0
            tgt = x[0, first + 1:]  # [n_scored]
            logits = out.logits[0, first:-1]  # [n_scored, d_vocab]
            logp = torch.log_softmax(logits.float(), dim=-1)
            tl = logp.gather(1, tgt[:, None])[:, 0]
            nll_sum += -tl.sum().item()
            n_correct += (logits.argmax(-1) == tgt).sum().item()
            n_tok += len(tgt)
            targets_all.extend(tgt.tolist())
            for r in range(L):
                h = out.hidden_states[r][0, first:-1]  # resid_pre of block r
                lens_logp = torch.log_softmax(unembed(norm(h)).float(), dim=-1)
                lp_sum[r] += lens_logp.gather(1, tgt[:, None]).sum().item()
            lp_sum[L] += tl.sum().item()
    counts = np.bincount(np.array(targets_all),
                         minlength=model.config.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    res = {
        "name": os.path.basename(os.path.normpath(path)), "family": family, "path": path,
        "n_params": sum(p_.numel() for p_ in model.parameters()),
        "val_plays": info["val_plays"], "val_tokens_scored": n_tok,
        "val_ce": nll_sum / n_tok, "unigram_entropy": float(-(p * np.log(p)).sum()),
        "top1_acc": n_correct / n_tok, "final_train_loss": info["final_train_loss"],
        "lens_rows": rows, "lens_mean_logprob": (lp_sum / n_tok).tolist(),
        "steps": info["steps"], "train_seconds": info["train_seconds"],
        "tokens_seen": info["tokens_seen"],
        "eval_seconds": round(time.time() - t0, 1), "info": info,
    }
    res["samples"] = greedy_samples(model, tok, family)
    return res


def greedy_samples(model, tok, family):
    import torch

    out = []
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids  # Llama: BOS prepended by the tokenizer's post-processor
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=N_NEW, pad_token_id=model.config.eos_token_id)
        out.append((prompt, tok.decode(y[0, len(ids):].tolist())))
    return out


def targets(res: dict) -> list[tuple[str, bool, str]]:
    lp = res["lens_mean_logprob"]
    L = len(lp) - 1
    half = lp[L // 2:]
    return [
        ("val CE at least 1.5 nats below the unigram entropy",
         res["unigram_entropy"] - res["val_ce"] >= 1.5,
         f"gap {res['unigram_entropy'] - res['val_ce']:.2f} nats"),
        ("top-1 accuracy >= 30%", res["top1_acc"] >= 0.30, f"{100 * res['top1_acc']:.1f}%"),
        ("lens: final_post at least 1 nat above 0_pre", lp[-1] - lp[0] >= 1.0,
         f"gain {lp[-1] - lp[0]:.2f} nats"),
        ("lens: the mean rises over the last half of the layers",
         all(b > a for a, b in zip(half, half[1:])),
         "rows " + " < ".join(res["lens_rows"][L // 2:])),
    ]


def markdown(res: dict) -> str:
    i = res["info"]
    h = i["hyper"]
    lines = [
        (f"Measured with `python weights/evaluate.py weights/{res['name']}` "
         f"(torch + transformers; validation plays: {', '.join(res['val_plays'])}; "
         f"{res['val_tokens_scored']:,} scored tokens)."),
        "",
        "| quantity | value |",
        "|---|---|",
        f"| parameters | {res['n_params']:,} |",
        (f"| training | {res['steps']} steps x {h['batch_size']} x {h['n_ctx']} tokens "
         f"= {res['tokens_seen']:,} tokens, "
         f"{res['train_seconds'] / 60:.1f} min with {i.get('threads', 2)} CPU thread(s) "
         f"on a shared 2-core machine |"),
        (f"| final train loss (mean of the last 50 steps) | {res['final_train_loss']:.3f} "
         f"nats/token |"),
        f"| validation cross-entropy | {res['val_ce']:.3f} nats/token |",
        f"| unigram entropy of the validation tokens | {res['unigram_entropy']:.3f} nats |",
        f"| next-token top-1 accuracy | {100 * res['top1_acc']:.1f}% |",
        "",
        ("Logit lens (row l reads the residual stream entering block l through the final norm and "
         "the unembedding; `final_post` is the model's logits): "
         "mean log-probability of the true next token."),
        "",
        "| row | " + " | ".join(res["lens_rows"]) + " |",
        "|---|" + "---|" * len(res["lens_rows"]),
        "| mean log p | " + " | ".join(f"{v:.3f}" for v in res["lens_mean_logprob"]) + " |",
        "",
        "Targets:",
        "",
    ]
    for name, ok, detail in targets(res):
        lines.append(f"- [{'x' if ok else ' '}] {name}: {detail}{'' if ok else ' (MISSED)'}")
    lines += ["", f"Greedy samples ({N_NEW} new tokens after the prompt, `do_sample=False`):", ""]
    for prompt, cont in res["samples"]:
        lines += [f"Prompt {json.dumps(prompt)}:", "", "```text", prompt + cont, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def update_card(path: str, md: str) -> None:
    card = os.path.join(path, "README.md")
    text = open(card).read()
    a, b = text.index(START) + len(START), text.index(END)
    with open(card, "w") as f:
        f.write(text[:a] + "\n" + md + text[b:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", help="a model folder, or 'all'")
    ap.add_argument("--update-card", action="store_true")
    ap.add_argument("--max-windows", type=int, default=None, help="for a quick smoke run only")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch CPU threads (1 if another job holds a core)")
    args = ap.parse_args()
    paths = list(T.OUT_DIR.values()) if args.path == "all" else [args.path]
    for path in paths:
        res = evaluate(path, args.max_windows, args.threads)
        md = markdown(res)
        print(f"### {res['name']}\n\n{md}")
        if args.update_card:
            update_card(path, md)
        if args.json:
            with open(args.json if len(paths) == 1 else f"{args.json}.{res['name']}", "w") as f:
                json.dump({k: v for k, v in res.items() if k != "info"}, f, indent=2)


if __name__ == "__main__":
    main()
