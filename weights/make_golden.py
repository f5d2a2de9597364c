"""Write the golden values for tests/test_shipped_golden.py, computed with transformers (dev-only).

    python weights/make_golden.py  # writes tests/golden/shipped_<name>.json for both models
    python weights/make_golden.py shakespeare-llama  # or for one

The values are computed with torch + transformers, independently of minilens, so that the golden
test (which runs without torch) compares minilens against the reference, not against itself:
- the prompt's token ids (Llama: the tokenizer's post-processor prepends <s>);
- the top-5 next-token ids and logits at the last position (the model's logits);
- the logit lens top-1 id per row at the last position: row "{l}_pre" is
  lm_head(final_norm(hidden_states[l])) for l < L (hidden_states[0] is the embedding), and row
  "final_post" is the model's logits.
The script refuses a prompt whose ranking is too close to call in float32 (gap < MIN_GAP).
Rerun it whenever the shipped weights are retrained.
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from evaluate import final_norm_and_unembed, load  # noqa: E402

PROMPT = ("ROMEO.\nBut soft, what light through yonder window breaks?\n"
          "It is the east, and Juliet is the")
MIN_GAP = 1e-3  # logit gap that float32 noise (about 1e-5 here) cannot bridge
NAMES = ("shakespeare-llama", "shakespeare-gpt2")


def golden(name: str) -> dict:
    import torch

    torch.set_num_threads(1)  # one forward pass: threads would only add noise
    path = os.path.join(HERE, name)
    model, tok = load(path)
    ids = tok.encode(PROMPT).ids
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    norm, unembed = final_norm_and_unembed(model)
    L = model.config.num_hidden_layers
    last = out.logits[0, -1].double()  # [d_vocab]
    top = torch.topk(last, 6)
    gaps = (top.values[:-1] - top.values[1:]).tolist()
    assert min(gaps) > MIN_GAP, f"{name}: top-6 logits too close ({gaps}); choose another PROMPT"
    labels, lens_top1 = [], []
    with torch.no_grad():
        for l in range(L + 1):
            row = unembed(norm(out.hidden_states[l][0, -1])) if l < L else out.logits[0, -1]
            t2 = torch.topk(row.double(), 2)
            assert t2.values[0] - t2.values[1] > MIN_GAP, (
                f"{name}: lens row {l} top-1 too close; choose another PROMPT")
            labels.append(f"{l}_pre" if l < L else "final_post")
            lens_top1.append(int(t2.indices[0]))
    return {
        "how_made": (f"python weights/make_golden.py: "
                     f"transformers {__import__('transformers').__version__} / "
                     f"torch {torch.__version__}, float32, from weights/{name}; lens row l = "
                     "lm_head(final_norm(hidden_states[l])) at the last position, "
                     "final_post = the logits. "
                     "Regenerate whenever the weights are retrained."),
        "model": f"weights/{name}",
        "prompt": PROMPT,
        "ids": ids,
        "top5_ids": top.indices[:5].tolist(),
        "top5_logits": [round(v, 5) for v in top.values[:5].tolist()],
        "top5_tokens": [tok.decode([i]) for i in top.indices[:5].tolist()],
        "min_gap": round(min(gaps), 5),
        "lens_labels": labels,
        "lens_top1_ids": lens_top1,
        "lens_top1_tokens": [tok.decode([i]) for i in lens_top1],
    }


def main() -> None:
    out_dir = os.path.join(ROOT, "tests", "golden")
    os.makedirs(out_dir, exist_ok=True)
    for name in sys.argv[1:] or NAMES:
        g = golden(name)
        dest = os.path.join(out_dir, f"shipped_{name}.json")
        with open(dest, "w") as f:
            json.dump(g, f, indent=2)
            f.write("\n")
        print(f"{dest}: top5 {g['top5_tokens']}, lens top-1 {g['lens_top1_tokens']}")


if __name__ == "__main__":
    main()
