"""The command line's arguments, checked before any work and refused in the words of the command.

The library checks its own arguments too, but names them as Python does (``layer=``,
``top_k``); a user of the command line typed ``--layer`` and ``--top-k``, so every check whose
message would name an argument is made here first, in flags. Paths are checked before a model
is loaded: an output file that cannot be written is refused before minutes of computing, not
after.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import checks
from ..errors import InputError


def shown(value: str, width: int = 60) -> str:
    """A user's argument as a message echoes it: repr, cut to ``width`` characters."""
    text = repr(value)
    return text if len(text) <= width else f"{text[:width - 1]}…({len(value)} characters)"


def check_argv(argv: list[str]) -> None:
    """Every argument must be text that can be encoded as UTF-8. On Linux, Python turns bytes of
    the command line that are not UTF-8 into lone surrogates (surrogateescape), which no
    tokenizer, file name or message can take."""
    for i, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"argument {i} ({shown(arg)}) is not valid UTF-8 text; "
                             f"minilens reads its command line as UTF-8.") from None


def path_arg(flag: str, value: str, what: str = "a file name") -> Path:
    """A path the file system can be asked about: not empty, not too long, and no error (other
    than its absence) when asked."""
    if not value.strip():
        raise InputError(f"{flag} is empty: give {what}.")
    checks.path(value, flag)
    path = Path(value).expanduser()
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as e:     # too long for this file system, a folder we may not search, ...
        raise InputError(f"{flag} {shown(value)}: {e.strerror or e}.") from None
    return path


def existing_file(flag: str, value: str | None) -> Path | None:
    """An input file that must exist (--translators, --text, --wheel)."""
    if value is None:
        return None
    path = path_arg(flag, value)
    if not path.is_file():
        raise InputError(f"{flag} {shown(value)}: no such file.")
    return path


def output_file(flag: str, value: str | None) -> Path | None:
    """An output file (--html, --json, --out), checked before any work: a file can be made or
    replaced there."""
    if value is None:
        return None
    path = path_arg(flag, value)
    if path.is_dir():
        raise InputError(f"{flag} {shown(value)} is a folder; give a file name in it, "
                         f"e.g. {flag} {path / ('out' + ('.html' if flag == '--html' else ''))}.")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {shown(value)}: cannot write there: the folder {folder} "
                         f"does not exist.")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise InputError(f"{flag} {shown(value)}: cannot write there: permission denied.")
    return path


def looks_like_path(value: str) -> bool:
    """Is --model's value meant as a path rather than a model name? A Hugging Face Hub name is
    ``name`` or ``owner/name``, and starts with neither ``.``, ``~`` nor ``/``."""
    return (os.path.isabs(value) or value.startswith((".", "~")) or value.count("/") > 1
            or os.sep != "/" and os.sep in value
            or value.lower().endswith((".gguf", ".json", ".safetensors")))


def model_arg(value: str) -> Path | str:
    """--model: a path that must exist, or a name (shipped, fetched, or in the HF cache) that
    minilens.load resolves and explains."""
    path = path_arg("--model", value, "a model folder, a .gguf file or a model name")
    if looks_like_path(value) and not path.exists():
        raise InputError(f"--model {shown(value)}: no such folder or file. Give a Hugging Face "
                         f"folder (config.json and .safetensors files), a .gguf file, or a "
                         f"model name: shakespeare-llama, shakespeare-gpt2, a fetched model "
                         f"(minilens fetch --list), or one in the Hugging Face cache.")
    return path if path.exists() else value


def token_arg(model, flag: str, text: str | None, id_flag: str, token_id: int | None) -> int | None:
    """The token given as ``--target TOK`` or ``--target-id N`` (argparse allows one of the two),
    as a checked id; None when neither was given."""
    if token_id is not None:
        if not 0 <= token_id < model.cfg.d_vocab:
            raise InputError(f"{id_flag} {token_id} is out of range: this model's vocabulary "
                             f"is 0..{model.cfg.d_vocab - 1}.")
        return token_id
    if text is None:
        return None
    ids = model.to_tokens(text, prepend_bos=False)
    if len(ids) == 1:
        return model.to_single_token(int(ids[0]))
    if len(ids) == 0:
        raise InputError(f"{flag} '' is empty: give one token (a word usually carries its "
                         f"leading space, as in ' the'), or its id with {id_flag} N.")
    pieces = ", ".join(repr(s) for s in model.token_strings(ids))
    example = one_token_prefix(model, text)
    hint = f"e.g. {flag} {example!r}" if example else "one of them"
    raise InputError(f"{flag} {shown(text)} is {len(ids)} tokens, not one: {pieces}. Give one "
                     f"token, {hint}, or its id with {id_flag} N.")


def one_token_prefix(model, text: str, longest: int = 40) -> str | None:
    """The longest start of ``text`` that is a single token and not only whitespace: a real
    token to suggest (the first piece alone is often a bare space)."""
    for end in range(min(len(text), longest), 0, -1):
        prefix = text[:end]
        if prefix.strip() and len(model.to_tokens(prefix, prepend_bos=False)) == 1:
            return prefix
    return None


def terminal_columns() -> int | None:
    """$COLUMNS as a number of columns, None when unset or empty (or 0)."""
    value = os.environ.get("COLUMNS", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise InputError(f"COLUMNS={shown(value)} is not a number of columns; set it to a "
                         f"positive integer, or unset it.")
    return int(value) or None
