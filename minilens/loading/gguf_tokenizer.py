"""A ``tokenizers.Tokenizer`` rebuilt from a GGUF file's ``tokenizer.ggml.*`` metadata.

A GGUF file carries no tokenizer.json. It stores the vocabulary, the merges, the scores and the
token types as metadata, and names a tokenizer model and a pre-tokenizer. llama.cpp's own
tokenizer (src/llama-vocab.cpp) is the reference for what those names mean, so this module
follows it, and the tests compare against it string by string:

- ``tokenizer.ggml.model == "gpt2"``: byte-level BPE. Text is first cut into words by the
  regexes that ``tokenizer.ggml.pre`` names (llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_*`` lists), each
  word is spelled in GPT-2's byte alphabet, then the merges are applied in rank order.
- ``tokenizer.ggml.model == "llama"``: SentencePiece (Llama 2, TinyLlama, Gemma, Phi-3). There
  are no merges in the file. llama.cpp merges any two neighbours whose concatenation is a token,
  the highest-scoring one first; that is BPE whose merge ranks are the tokens' scores, which is
  how it is built here. Spaces become "▁", a "▁" is prepended to each stretch of text, and a
  character with no token falls back to its UTF-8 bytes (the "<0xNN>" tokens).

Control, unknown and user-defined tokens become added tokens, matched whole in the raw text
before anything else, as llama.cpp's ``tokenizer_st_partition`` does. Control and unknown tokens
are added as special (``encode_special_tokens = True`` stops matching them, like llama.cpp's
``parse_special=False``); user-defined ones are matched always, in both.

No BOS is added here: minilens prepends it itself (see ``gguf_add_bos``).
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..errors import CheckpointError
from .schema import GGUF_TOKENIZER, check

# ---------------------------------------------------------------------------------------------
# Pre-tokenizer regexes, copied from llama.cpp's llm_tokenizer_bpe (src/llama-vocab.cpp). Each
# list is applied in order; every regex cuts each piece into its matches and the gaps between
# them ("isolated"). llama.cpp runs the GPT-2, Llama 3 and Qwen2 ones with hand-written
# matchers (src/unicode.cpp) that implement these same regexes.

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
                r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")   # digits one at a time

# name -> (regexes, ignore_merges). ignore_merges: a word that is already a token is taken whole.
_DEFAULT = ((r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"), False)
_GPT2 = ((GPT2_SPLIT,), False)
_DIGITS_THEN_GPT2 = ((r"\p{N}", GPT2_SPLIT), False)     # SmolLM, StarCoder: each digit alone
_LLAMA3 = ((LLAMA3_SPLIT,), True)
_QWEN2 = ((QWEN2_SPLIT,), False)

PRE_TOKENIZERS = {
    "default": _DEFAULT,
    # llama.cpp knows no "gpt2" (it refuses the file); GPT-2's own GGUFs say "gpt-2".
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion",
                     "granite-docling", "exaone4", "gigachat", "a.x-4.0", "mellum"), _GPT2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"), _LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), ((LLAMA3_SPLIT,), False)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b", "mellum2"), _DIGITS_THEN_GPT2),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2",
                     "hunyuan", "solar-open"), _QWEN2),
}

COVERED_MODELS = ("gpt2", "llama")

# llama.cpp's token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.ggml.pre values for which llama.cpp adds BOS when the file does not say
# (src/llama-vocab.cpp, impl::load: add_bos = true in their branches).
_PRE_ADDS_BOS = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                 "lfm2", "jina-v5-nano", "tekken", "chameleon"}
_PRE_FORCES_BOS = {"gemma4", "granite-embed-multi-311m"}   # llama.cpp forces it on (PR 21500)


def tokenizer_from_gguf(metadata: dict, source: str) -> Tokenizer:
    """The tokenizer that ``tokenizer.ggml.*`` in ``metadata`` describes, as llama.cpp reads it.

    ``metadata`` maps GGUF keys to Python values (string arrays as list[str], numeric arrays as
    1-D numpy arrays). ``source`` names the file in error messages. Raises CheckpointError for
    a tokenizer model or pre-tokenizer not covered here; the model can still run on token ids.
    """
    check_tokenizer_metadata(metadata, source)
    model = metadata.get("tokenizer.ggml.model")
    if model not in COVERED_MODELS:
        raise CheckpointError(
            f"{source}: tokenizer.ggml.model is {model!r}, which minilens cannot rebuild; it "
            f"covers {', '.join(map(repr, COVERED_MODELS))} (byte-level BPE and SentencePiece). "
            f"The model still runs on token ids.")
    tokens = _tokens(metadata, source)
    types = _array(metadata, "tokenizer.ggml.token_type", len(tokens), NORMAL, source)
    if model == "gpt2":
        tok = _byte_level_bpe(metadata, tokens, source)
    else:
        scores = _array(metadata, "tokenizer.ggml.scores", len(tokens), 0.0, source)
        tok = _sentencepiece(metadata, tokens, scores, types)
    tok.add_tokens(_added_tokens(metadata, tokens, types))
    return tok


def gguf_add_bos(metadata: dict, source: str = "the GGUF file") -> bool:
    """Does llama.cpp start this file's prompts with BOS?

    ``tokenizer.ggml.add_bos_token`` if the file has it, else llama.cpp's default for the
    tokenizer: yes for SentencePiece ("llama") and WordPiece ("bert") and for the Llama 3 family
    of byte-level pre-tokenizers, no otherwise. Gemma 4's pre-tokenizer forces it on.
    """
    check_tokenizer_metadata(metadata, source)
    model = metadata.get("tokenizer.ggml.model")
    pre = "gemma4" if model == "gemma4" else metadata.get("tokenizer.ggml.pre")
    if pre in _PRE_FORCES_BOS:
        return True
    if "tokenizer.ggml.add_bos_token" in metadata:
        return metadata["tokenizer.ggml.add_bos_token"]
    if model in ("llama", "bert"):
        return True
    return model == "gpt2" and pre in _PRE_ADDS_BOS


def gguf_bos_token_id(metadata: dict, source: str = "the GGUF file") -> int | None:
    """The BOS id llama.cpp uses: ``tokenizer.ggml.bos_token_id`` if present and in range, else
    its default for the tokenizer model (1 for SentencePiece, 11 for byte-level BPE; llama.cpp's
    own numbers), or None. A value that is not a token id at all is a CheckpointError."""
    check_tokenizer_metadata(metadata, source)
    n_tokens = len(metadata.get("tokenizer.ggml.tokens", ()))
    default = {"llama": 1, "gpt2": 11, "bert": 101}.get(metadata.get("tokenizer.ggml.model"))
    if metadata.get("tokenizer.ggml.pre") in ("chatglm-bpe", "glm4", "glm5"):
        default = None
    bos = metadata.get("tokenizer.ggml.bos_token_id", default)
    return int(bos) if bos is not None and 0 <= int(bos) < n_tokens else None


def check_tokenizer_metadata(metadata: dict, source: str) -> None:
    """Every ``tokenizer.ggml.*`` key minilens reads has the type schema.GGUF_TOKENIZER gives it,
    so that a damaged file is a CheckpointError naming the key, not a TypeError."""
    for key, field in GGUF_TOKENIZER.items():
        if metadata.get(key) is not None:       # (a GGUF file holds no nulls; a dict may)
            check(field, metadata[key], source, f"metadata {key!r}",
                  "The file was written by a broken converter, or is damaged.")


# ---------------------------------------------------------------------------------------------
# The two tokenizer models

def _byte_level_bpe(metadata: dict, tokens: list[str], source: str) -> Tokenizer:
    """GPT-2-style BPE: split by the pre-tokenizer's regexes, spell in the byte alphabet, merge."""
    pre = metadata.get("tokenizer.ggml.pre") or "default"   # llama.cpp: missing -> "default"
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"{source}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer minilens does not know. "
            f"Covered: {', '.join(sorted(PRE_TOKENIZERS))}. The model still runs on token ids.")
    splits, ignore_merges = PRE_TOKENIZERS[pre]
    if "tokenizer.ggml.merges" not in metadata:
        raise CheckpointError(f"{source}: a byte-level BPE tokenizer needs tokenizer.ggml.merges, "
                              f"and this file has none.")
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = []
    for merge in metadata["tokenizer.ggml.merges"]:
        cut = merge.find(" ", 1)   # as llama.cpp: the first space after the first character
        left, right = merge[:cut], merge[cut + 1:]
        # tokenizers refuses merges whose parts are not tokens; llama.cpp could never emit them
        if cut > 0 and left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(metadata: dict, tokens: list[str], scores, types) -> Tokenizer:
    """llama.cpp's SPM tokenizer as BPE: every pair of tokens that concatenates to a token is a
    merge, ranked by that token's score (higher first), so the best-scoring pair merges first."""
    vocab = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for i, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-float(scores[i]), i, cut, left, right))
    ranked.sort()   # ties in score: the lower id first (llama.cpp breaks them by position)
    merges = [(left, right) for *_, left, right in ranked]
    byte_fallback = all(f"<0x{b:02X}>" in vocab for b in range(256))
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id", 0)
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=byte_fallback))
    # llama.cpp: a space before each stretch of text (add_space_prefix, default on), then every
    # space becomes "▁". No pre-tokenizer: the whole stretch is one word.
    add_space_prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
    steps = [normalizers.Prepend("▁")] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return tok


def _added_tokens(metadata: dict, tokens: list[str], types) -> list[AddedToken]:
    """Control, unknown and user-defined tokens, matched whole on the raw text (normalized=False).

    llama.cpp's Phi-3 rule (llama-vocab.cpp, by general.name): those tokens eat the whitespace
    after them (rstrip), except <unk>, <s> and <|endoftext|>.
    """
    name = str(metadata.get("general.name", "")).lower()
    phi3 = "phi-3" in name or "phi3" in name
    added = []
    for token, kind in zip(tokens, types):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            rstrip = phi3 and token not in ("<unk>", "<s>", "<|endoftext|>")
            added.append(AddedToken(token, special=bool(kind != USER_DEFINED), normalized=False,
                                    rstrip=rstrip))
    return added


# ---------------------------------------------------------------------------------------------
# Reading the metadata

def _tokens(metadata: dict, source: str) -> list[str]:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise CheckpointError(f"{source}: tokenizer.ggml.tokens is missing or empty.")
    # llama.cpp renames an empty token, and requires every token to be distinct
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    if len(set(tokens)) != len(tokens):
        seen = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise CheckpointError(f"{source}: tokenizer.ggml.tokens lists {dup!r} more than once.")
    return tokens


def _array(metadata: dict, key: str, n: int, default, source: str):
    values = metadata.get(key)
    if values is None:
        return [default] * n
    if len(values) < n:
        raise CheckpointError(f"{source}: {key} has {len(values)} entries for {n} tokens.")
    return values
