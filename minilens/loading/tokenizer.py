"""Text <-> token ids: a thin wrapper over ``tokenizers.Tokenizer`` that owns the BOS rule.

Whether a sequence starts with BOS is the tokenizer's business, not the model family's: SmolLM2
is a Llama whose config.json names a BOS id, yet its tokenizer adds none, while Llama 2/3 and
Gemma tokenizers do. We always encode with ``add_special_tokens=False`` and prepend BOS
ourselves, so the rule is visible in one place (``bos_rule``):

(a) ``add_bos_token`` in tokenizer_config.json, if present (it must be true or false);
(b) else the post-processor of tokenizer.json, if it has one: BOS when it puts a special token
    before the text ($A), and then that token's id (TemplateProcessing, alone or in a
    Sequence, RobertaProcessing, BertProcessing); a ByteLevel post-processor adds none;
(c) else the family's default (``ModelConfig.prepend_bos``).

A GGUF file has no tokenizer.json; its rule is llama.cpp's (``gguf_tokenizer.gguf_add_bos``) and
comes in through ``Tokenizer.from_hf_tokenizer``.

This is the order llama.cpp's converter uses (gguf-py's SpecialVocab: the post-processor, then
add_bos_token over it; with neither, llama.cpp's default for the tokenizer type). transformers
5.24, the tests' reference, agrees except in two corners, pinned in tests/test_bos.py: beside a
tokenizer.json it ignores add_bos_token, and with no post-processor it adds nothing, whatever
the family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from ..errors import CheckpointError, InputError
from .schema import TOKENIZER_CONFIG, ConfigReader, read_json


class Tokenizer:
    """Text <-> token ids for one checkpoint.

    ``prepend_bos``: does ``encode`` start with ``bos_token_id`` by default; ``bos_reason`` says
    which rule decided it.
    """

    def __init__(self, path: Path, bos_token_id: int | None, prepend_bos: bool):
        """``path``: a tokenizer.json; ``bos_token_id``: config.json's; ``prepend_bos``: the
        family's default, used only when the tokenizer files do not decide (rule (c))."""
        path = Path(path)
        try:
            hf = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise CheckpointError(
                f"{path}: cannot be read as a tokenizers tokenizer.json ({e}). Re-download it, "
                f"or move it away and pass token ids instead of text.") from None
        add_bos, bos_id, reason = bos_rule(path, hf, bos_token_id, prepend_bos)
        self._setup(hf, bos_id, add_bos, reason, str(path))

    @classmethod
    def from_hf_tokenizer(cls, hf_tokenizer: _HFTokenizer, bos_token_id: int | None,
                          add_bos: bool, source: str) -> Tokenizer:
        """A tokenizer built elsewhere (e.g. from GGUF metadata), whose BOS rule is known:
        ``add_bos`` (for GGUF: ``gguf_tokenizer.gguf_add_bos(metadata)``)."""
        self = cls.__new__(cls)
        reason = f"add_bos={str(bool(add_bos)).lower()}, as given for {source}"
        self._setup(hf_tokenizer, bos_token_id, add_bos, reason, source)
        return self

    def _setup(self, hf: _HFTokenizer, bos_token_id: int | None, add_bos: bool, reason: str,
               source: str) -> None:
        self.hf = hf
        self.source = source
        self.bos_token_id = bos_token_id
        self.prepend_bos = bool(add_bos) and bos_token_id is not None
        self.bos_reason = reason

    def encode(self, text: str, prepend_bos: bool | None = None) -> np.ndarray:
        """text -> ids, shape [n_seq], int64."""
        if not isinstance(text, str):
            raise InputError(f"expected text (str), got {type(text).__name__}.")
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if self.prepend_bos if prepend_bos is None else prepend_bos:
            if self.bos_token_id is None:
                raise InputError("prepend_bos=True, but this model names no BOS token "
                                 "(no bos_token_id in config.json or the GGUF metadata).")
            ids = [self.bos_token_id] + ids
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self.hf.decode(ids, skip_special_tokens=False)

    def str_tokens(self, ids) -> list[str]:
        """Each id decoded on its own, so that spaces and partial words stay visible."""
        return [self.hf.decode([int(i)], skip_special_tokens=False)
                for i in np.asarray(ids).reshape(-1)]

    def single_token(self, token: str) -> int:
        """The id of a string that must be exactly one token (no BOS)."""
        ids = self.hf.encode(token, add_special_tokens=False).ids
        if len(ids) != 1:
            pieces = [self.hf.decode([i]) for i in ids]
            hint = (f"Pick one of them, e.g. target={pieces[0]!r}, or pass a token id." if ids
                    else "Pass a token id.")
            raise InputError(f"target {token!r} is {len(ids)} tokens, not one: {pieces}. {hint}")
        return ids[0]


# ---------------------------------------------------------------------------------------------
# The BOS rule for a tokenizer.json checkpoint

def bos_rule(path: Path, hf: _HFTokenizer, config_bos_id: int | None,
             family_default: bool) -> tuple[bool, int | None, str]:
    """-> (prepend BOS?, the BOS id, which rule decided), by rules (a), (b), (c) above."""
    tok_config = read_tokenizer_config(path.parent / "tokenizer_config.json")
    processor = _post_processor(hf)
    template_id = template_bos_id(processor, path) if processor is not None else None
    flag = tok_config.get("add_bos_token")
    if flag is not None:                                                        # (a)
        named = _named_token_id(tok_config.get("bos_token"), hf)
        bos = next((i for i in (template_id, named, config_bos_id) if i is not None), None)
        return flag, bos, f"add_bos_token={str(flag).lower()} in tokenizer_config.json"
    if processor is not None:                                                   # (b)
        if template_id is not None:
            return True, template_id, f"tokenizer.json's {processor['type']} starts with it"
        return False, config_bos_id, f"tokenizer.json's {processor['type']} adds no BOS"
    return family_default, config_bos_id, "the family's default (no tokenizer rule)"  # (c)


def template_bos_id(processor: dict, path: Path) -> int | None:
    """The id of the special token a post-processor puts before the text, or None."""
    kind = processor.get("type")
    if kind == "Sequence":
        ids = [template_bos_id(p, path) for p in processor.get("processors", [])]
        return next((i for i in ids if i is not None), None)
    if kind in ("RobertaProcessing", "BertProcessing"):   # <cls> $A <sep>
        return int(processor["cls"][1])
    if kind != "TemplateProcessing":
        return None
    before = []
    for piece in processor.get("single", []):
        if "Sequence" in piece:
            break
        before += processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
    if len(before) > 1:
        raise CheckpointError(
            f"{path}: the post-processor puts {len(before)} tokens ({before}) before the text; "
            f"minilens prepends at most one (BOS). Pass token ids instead of text.")
    return int(before[0]) if before else None


def _post_processor(hf: _HFTokenizer) -> dict | None:
    processor = hf.post_processor
    return None if processor is None else json.loads(processor.__getstate__())


def read_tokenizer_config(path: Path) -> dict:
    """The fields of tokenizer_config.json that minilens reads (schema.TOKENIZER_CONFIG), checked;
    absent ones (and a missing file) are None."""
    if not path.is_file():
        return {}
    fix = ("Fix the file, or delete the field to let tokenizer.json's post-processor decide "
           "(a tokenizer_config.json of another model does not belong here).")
    config = read_json(path, fix)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}. "
                              f"Re-download tokenizer_config.json, or delete it.")
    reader = ConfigReader(config, str(path), fix, table=TOKENIZER_CONFIG)
    return {name: reader.get(name) for name in TOKENIZER_CONFIG}


def _named_token_id(token, hf: _HFTokenizer) -> int | None:
    """tokenizer_config.json's "bos_token" ("<s>" or {"content": "<s>", ...}) as an id."""
    if isinstance(token, dict):
        token = token.get("content")
    return hf.token_to_id(token) if isinstance(token, str) else None
