"""A thin wrapper over ``tokenizers.Tokenizer`` that honours each family's BOS convention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from .errors import CheckpointError, InputError


class Tokenizer:
    """Text <-> token ids for one checkpoint.

    Llama-style families start every sequence with BOS; GPT-2 does not. We encode without the
    tokenizer's own special-token template and prepend BOS ourselves, so the rule is the
    same whatever post-processor the tokenizer.json carries.
    """

    def __init__(self, path: Path, bos_token_id: int | None, prepend_bos: bool):
        try:
            self.hf = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise CheckpointError(f"{path}: cannot be read as a tokenizers tokenizer.json ({e}). Re-download it, "
                                  f"or move it away and pass token ids instead of text.") from None
        self.bos_token_id = bos_token_id
        self.prepend_bos = prepend_bos and bos_token_id is not None
        config = path.parent / "tokenizer_config.json"
        if config.is_file():  # an explicit add_bos_token in the checkpoint overrides the family default
            try:
                add_bos = json.loads(config.read_text(encoding="utf-8")).get("add_bos_token")
            except (OSError, ValueError):
                add_bos = None
            if add_bos is not None:
                self.prepend_bos = bool(add_bos) and bos_token_id is not None

    def encode(self, text: str, prepend_bos: bool | None = None) -> np.ndarray:
        """text -> ids, shape [n_seq], int64."""
        if not isinstance(text, str):
            raise InputError(f"expected text (str), got {type(text).__name__}.")
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if self.prepend_bos if prepend_bos is None else prepend_bos:
            if self.bos_token_id is None:
                raise InputError("prepend_bos=True, but this model's config.json has no bos_token_id.")
            ids = [self.bos_token_id] + ids
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def str_tokens(self, ids) -> list[str]:
        """Each id decoded on its own, so that spaces and partial words stay visible."""
        return [self.hf.decode([int(i)], skip_special_tokens=False) for i in np.asarray(ids).reshape(-1)]

    def single_token(self, token: str) -> int:
        """The id of a string that must be exactly one token (no BOS)."""
        ids = self.hf.encode(token, add_special_tokens=False).ids
        if len(ids) != 1:
            pieces = [self.hf.decode([i]) for i in ids]
            hint = f"Pick one of them, e.g. target={pieces[0]!r}, or pass a token id." if ids else "Pass a token id."
            raise InputError(f"target {token!r} is {len(ids)} tokens, not one: {pieces}. {hint}")
        return ids[0]
