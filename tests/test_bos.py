"""Does minilens start a sequence with BOS exactly when the checkpoint's tokenizer does?

The rule (minilens/loading/tokenizer.py): (a) add_bos_token in tokenizer_config.json, else (b) the
post-processor of tokenizer.json (a special token before $A, and its id), else (c) the family's
default. For GGUF files, llama.cpp's rule (gguf_tokenizer.gguf_add_bos).

The reference is ``transformers.AutoTokenizer.from_pretrained(folder)(text).input_ids`` on
folders built here: SentencePiece-style (Llama 2) and byte-level (GPT-2, Llama 3, SmolLM2)
tokenizers, with and without post-processors and add_bos_token. transformers 5.24 ignores
add_bos_token when tokenizer.json exists, and adds nothing without a post-processor; those
set-ups are pinned separately (KNOWN_DIFFERENCES) so that a change on either side shows.
For GGUF the reference is llama.cpp (the golden file) and transformers' GGUF tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors

from minilens.errors import CheckpointError
from minilens.loading.gguf_tokenizer import gguf_add_bos, gguf_bos_token_id, tokenizer_from_gguf
from minilens.loading.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
_MAKER = ROOT / "tests" / "golden" / "make_gguf_tokenizer_golden.py"
_spec = importlib.util.spec_from_file_location("make_gguf_tokenizer_golden", _MAKER)
G = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(G)

TEXTS = ["To be, or not to be: that is the question.", "Hello world", "x = 42\nprint(x)"]
FAMILY_DEFAULT = {"llama": True, "gpt2": False}   # ModelConfig.prepend_bos in config.py


# ---------------------------------------------------------------------------------------------
# tokenizer.json builders

def spm_tokenizer() -> HFTokenizer:
    """A Llama 2-style tokenizer.json: BPE with byte fallback over "▁"-spelled pieces, the
    Prepend/Replace normalizer, <unk> <s> </s> at ids 0, 1, 2 (the GGUF test's vocabulary)."""
    return tokenizer_from_gguf(G.spm_metadata(), "spm")


def byte_level_tokenizer(specials: list[str], digits: bool = False) -> HFTokenizer:
    """A GPT-2-style byte-level BPE: the shipped Shakespeare vocabulary and merges, renumbered
    after ``specials`` (SmolLM2: <|endoftext|> <|im_start|> <|im_end|> at 0, 1, 2)."""
    shipped = json.loads((ROOT / "weights/shakespeare-gpt2/tokenizer.json").read_text())["model"]
    pieces = [t for t, _ in sorted(shipped["vocab"].items(), key=lambda kv: kv[1])
              if t not in ("<|endoftext|>",)]
    vocab = {t: i for i, t in enumerate(specials + pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in shipped["merges"]]
    tok = HFTokenizer(models.BPE(vocab, merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level]) if digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def template(bos: str | None, bos_id: int | None, eos: str | None = None,
             eos_id: int | None = None) -> processors.TemplateProcessing:
    """ "<bos> $A <eos>", either end optional."""
    single = " ".join(p for p in (bos, "$A", eos) if p)
    tokens = [(t, i) for t, i in ((bos, bos_id), (eos, eos_id)) if t]
    return processors.TemplateProcessing(single=single, pair=f"{single} $B:1",
                                         special_tokens=tokens)


BYTELEVEL = processors.ByteLevel(trim_offsets=False)


def checkpoint(folder: Path, tok: HFTokenizer, post, tok_config: dict, config: dict) -> Path:
    """Write tokenizer.json (with ``post`` as its post-processor), tokenizer_config.json and
    config.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = HFTokenizer.from_str(tok.to_str())
    if post is not None:
        tok.post_processor = post
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LLAMA_TOK_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                    "unk_token": "<unk>"}
LLAMA_CONFIG = {"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2}
GPT2_TOK_CONFIG = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>"}
GPT2_CONFIG = {"model_type": "gpt2", "bos_token_id": 0, "eos_token_id": 0}
SMOLLM2_TOK_CONFIG = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>",
                      "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
SMOLLM2_CONFIG = {"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2}
SMOLLM2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>"]

# name -> (tokenizer, post-processor, tokenizer_config.json, config.json, family, BOS id or None)
SETUPS = {
    "llama2 template": (spm_tokenizer, template("<s>", 1), LLAMA_TOK_CONFIG, LLAMA_CONFIG,
                        "llama", 1),
    "llama2 template, add_bos_token true": (
        spm_tokenizer, template("<s>", 1), {**LLAMA_TOK_CONFIG, "add_bos_token": True},
        LLAMA_CONFIG, "llama", 1),
    "llama2 no post-processor, add_bos_token false": (
        spm_tokenizer, None, {**LLAMA_TOK_CONFIG, "add_bos_token": False}, LLAMA_CONFIG,
        "llama", None),
    "llama2 template, PreTrainedTokenizerFast": (
        spm_tokenizer, template("<s>", 1), {**LLAMA_TOK_CONFIG,
                                            "tokenizer_class": "PreTrainedTokenizerFast"},
        LLAMA_CONFIG, "llama", 1),
    "gpt2 ByteLevel post-processor": (
        lambda: byte_level_tokenizer(["<|endoftext|>"]), BYTELEVEL, GPT2_TOK_CONFIG, GPT2_CONFIG,
        "gpt2", None),
    "gpt2 no post-processor": (lambda: byte_level_tokenizer(["<|endoftext|>"]), None,
                               GPT2_TOK_CONFIG, GPT2_CONFIG, "gpt2", None),
    "gpt2 no post-processor, add_bos_token false": (
        lambda: byte_level_tokenizer(["<|endoftext|>"]), None,
        {**GPT2_TOK_CONFIG, "add_bos_token": False}, GPT2_CONFIG, "gpt2", None),
    # config.json names bos_token_id 1 (<|im_start|>), the family is llama, yet no BOS
    "smollm2-like": (lambda: byte_level_tokenizer(SMOLLM2_SPECIALS, digits=True), BYTELEVEL,
                     SMOLLM2_TOK_CONFIG, SMOLLM2_CONFIG, "llama", None),
    # the template's token decides the id, not config.json's bos_token_id (2 here, on purpose)
    "llama3-like template": (
        lambda: byte_level_tokenizer(LLAMA3_SPECIALS),
        processors.Sequence([BYTELEVEL, template("<|begin_of_text|>", 1)]),
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
         "eos_token": "<|end_of_text|>"}, {"model_type": "llama", "bos_token_id": 2}, "llama", 1),
    "roberta-style": (lambda: byte_level_tokenizer(["<s>", "<pad>", "</s>"]),
                      processors.RobertaProcessing(("</s>", 2), ("<s>", 0)),
                      {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>"},
                      {"model_type": "gpt2", "bos_token_id": 0}, "gpt2", 0),
    "eos-only template": (lambda: byte_level_tokenizer(["<s>", "<pad>", "</s>"]),
                          template(None, None, "</s>", 2),
                          {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"},
                          {"model_type": "llama", "bos_token_id": 0}, "llama", None),
}

# Set-ups where the rule and transformers 5.24 part: name -> (minilens BOS id, transformers').
KNOWN_DIFFERENCES = {
    # (c): the family's default (llama.cpp too adds BOS to a SentencePiece vocabulary that says
    # nothing); transformers 5.24 adds none without a post-processor
    "llama2 no post-processor": ((spm_tokenizer, None, LLAMA_TOK_CONFIG, LLAMA_CONFIG, "llama"),
                                 1, None),
    # (a): llama.cpp's converter lets add_bos_token overrule the template; transformers 5.24
    # drops add_bos_token from tokenizer_config.json when tokenizer.json exists
    "llama2 template, add_bos_token false": (
        (spm_tokenizer, template("<s>", 1), {**LLAMA_TOK_CONFIG, "add_bos_token": False},
         LLAMA_CONFIG, "llama"), None, 1),
    "gpt2 ByteLevel, add_bos_token true": (
        (lambda: byte_level_tokenizer(["<|endoftext|>"]), BYTELEVEL,
         {**GPT2_TOK_CONFIG, "add_bos_token": True}, GPT2_CONFIG, "gpt2"), 0, None),
}


def build(tmp_path: Path, name: str, setup) -> tuple[Path, Tokenizer]:
    make, post, tok_config, config, family = setup[:5]
    folder = checkpoint(tmp_path / name.replace(" ", "_").replace(",", ""), make(), post,
                        tok_config, config)
    ours = Tokenizer(folder / "tokenizer.json", config.get("bos_token_id"), FAMILY_DEFAULT[family])
    return folder, ours


def transformers_ids(folder: Path, text: str) -> list[int]:
    from _torch import import_torch
    _, transformers = import_torch()
    return transformers.AutoTokenizer.from_pretrained(str(folder))(text).input_ids


APPENDS_EOS = {"roberta-style", "eos-only template"}   # minilens adds nothing at the end


# ---------------------------------------------------------------------------------------------
# tokenizer.json checkpoints against transformers

@pytest.mark.parametrize("name", SETUPS)
def test_bos_matches_transformers(name, tmp_path):
    setup = SETUPS[name]
    folder, ours = build(tmp_path, name, setup)
    expected_bos = setup[5]
    for text in TEXTS:
        mine = ours.encode(text).tolist()
        theirs = transformers_ids(folder, text)
        if name in APPENDS_EOS:
            assert theirs[-1] == 2, f"{name}: transformers should end with </s>"
            theirs = theirs[:-1]
        assert mine == theirs, (
            f"{name}: minilens {mine[:6]}... vs transformers {theirs[:6]}... for {text!r}. "
            f"minilens decided by: {ours.bos_reason}. Is BOS taken from the right place "
            f"(add_bos_token, then the post-processor's template, then the family)?")
        assert (mine[0] if ours.prepend_bos else None) == expected_bos, ours.bos_reason


@pytest.mark.parametrize("name", KNOWN_DIFFERENCES)
def test_known_differences_from_transformers_5_24(name, tmp_path):
    """Pinned on both sides: minilens follows its rule, transformers 5.24 does otherwise."""
    setup, ours_bos, theirs_bos = KNOWN_DIFFERENCES[name]
    folder, ours = build(tmp_path, name, setup)
    text = TEXTS[0]
    body = ours.encode(text, prepend_bos=False).tolist()
    assert ours.encode(text).tolist() == ([ours_bos] if ours_bos is not None else []) + body
    theirs = transformers_ids(folder, text)
    assert theirs == ([theirs_bos] if theirs_bos is not None else []) + body, (
        f"{name}: transformers now gives {theirs[:4]}...; if it agrees with minilens, move this "
        f"set-up to SETUPS")


def test_shipped_models_keep_their_bos():
    """weights/shakespeare-llama starts with <s> (id 0), weights/shakespeare-gpt2 with nothing."""
    llama = Tokenizer(ROOT / "weights/shakespeare-llama/tokenizer.json", 0, True)
    gpt2 = Tokenizer(ROOT / "weights/shakespeare-gpt2/tokenizer.json", 0, False)
    assert (llama.prepend_bos, llama.bos_token_id) == (True, 0)
    assert gpt2.prepend_bos is False
    assert llama.encode("To be")[0] == 0 and gpt2.encode("To be")[0] != 0


# ---------------------------------------------------------------------------------------------
# malformed fields

@pytest.mark.parametrize("value", ["false", "true", 1, 0, [True]])
def test_add_bos_token_must_be_a_bool(value, tmp_path):
    folder = checkpoint(tmp_path / "ckpt", spm_tokenizer(), template("<s>", 1),
                        {**LLAMA_TOK_CONFIG, "add_bos_token": value}, LLAMA_CONFIG)
    with pytest.raises(CheckpointError,
                       match="add_bos_token = .* is not allowed: it must be true or false") as e:
        Tokenizer(folder / "tokenizer.json", 1, True)
    assert str(folder / "tokenizer_config.json") in str(e.value) and repr(value) in str(e.value)


def test_add_bos_token_null_is_absent(tmp_path):
    folder = checkpoint(tmp_path / "ckpt", spm_tokenizer(), BYTELEVEL,
                        {**LLAMA_TOK_CONFIG, "add_bos_token": None}, LLAMA_CONFIG)
    assert Tokenizer(folder / "tokenizer.json", 1, True).prepend_bos is False   # (b) decides


def test_unreadable_tokenizer_config_names_the_file(tmp_path):
    folder = checkpoint(tmp_path / "ckpt", spm_tokenizer(), None, {}, LLAMA_CONFIG)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: cannot be read as JSON"):
        Tokenizer(folder / "tokenizer.json", 1, True)


def test_two_tokens_before_the_text_are_refused(tmp_path):
    post = processors.TemplateProcessing(single="<s> </s> $A", special_tokens=[("<s>", 1),
                                                                                ("</s>", 2)])
    folder = checkpoint(tmp_path / "ckpt", spm_tokenizer(), post, {}, LLAMA_CONFIG)
    with pytest.raises(CheckpointError, match=r"2 tokens \(\[1, 2\]\) before the text"):
        Tokenizer(folder / "tokenizer.json", 1, True)


def test_add_bos_token_true_takes_the_named_bos_token(tmp_path):
    """With (a) and no template, the id is tokenizer_config.json's bos_token, not config.json's."""
    folder = checkpoint(tmp_path / "ckpt", byte_level_tokenizer(SMOLLM2_SPECIALS), BYTELEVEL,
                        {**SMOLLM2_TOK_CONFIG, "add_bos_token": True}, {"bos_token_id": 0})
    ours = Tokenizer(folder / "tokenizer.json", 0, False)
    assert ours.prepend_bos and ours.bos_token_id == 1   # <|im_start|>


# ---------------------------------------------------------------------------------------------
# GGUF files: llama.cpp's rule

GOLDEN_BOS = G.load_golden()["notes"]["bos"]


@pytest.mark.parametrize("config", G.CONFIGS)
def test_gguf_bos_matches_llama_cpp(config, request):
    """gguf_add_bos and gguf_bos_token_id give what llama.cpp's tokenize(add_bos=True) adds."""
    smollm = request.getfixturevalue("smollm_md") if config in G.BPE_PRES else None
    md = smollm if config == "smollm" else G.config_metadata(config, smollm)
    ours = Tokenizer.from_hf_tokenizer(tokenizer_from_gguf(md, config), gguf_bos_token_id(md),
                                       gguf_add_bos(md), config)
    ids = ours.encode("x").tolist()
    body = ours.encode("x", prepend_bos=False).tolist()
    assert ids == ([GOLDEN_BOS[config]] if GOLDEN_BOS[config] is not None else []) + body, (
        f"{config}: llama.cpp prepends {GOLDEN_BOS[config]}; minilens: {ours.bos_reason}")


@pytest.fixture(scope="module")
def smollm_md():
    from _real_model import smollm2_path
    from minilens.loading.gguf_file import GGUFFile
    return GGUFFile(smollm2_path()).metadata


def test_smollm2_gguf_loads_without_bos_like_transformers():
    """The loader wires gguf_add_bos: SmolLM2's file says add_bos_token false."""
    import minilens as ml
    from _real_model import smollm2_path
    from _torch import import_torch
    _, transformers = import_torch()
    pytest.importorskip("gguf")
    path = smollm2_path()
    model = ml.load(path)
    text = "The capital of France is"
    theirs = transformers.AutoTokenizer.from_pretrained(str(path.parent),
                                                        gguf_file=path.name)(text).input_ids
    assert model.to_tokens(text).tolist() == theirs == [504, 3575, 282, 4649, 314]
    assert model.tokenizer.prepend_bos is False and model.tokenizer.bos_token_id == 1


def test_spm_gguf_adds_bos_like_transformers(tmp_path):
    """A SentencePiece GGUF that says nothing: llama.cpp and transformers both add BOS (id 1)."""
    from _torch import import_torch
    _, transformers = import_torch()
    pytest.importorskip("gguf")
    md = G.spm_metadata()
    path = G.write_tokenizer_gguf(tmp_path / "spm.gguf", md)
    ours = Tokenizer.from_hf_tokenizer(tokenizer_from_gguf(md, "spm"), gguf_bos_token_id(md),
                                       gguf_add_bos(md), str(path))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        assert ours.encode(text).tolist() == theirs(text).input_ids
        assert ours.encode(text)[0] == 1
