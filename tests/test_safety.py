"""Reading files from strangers: minilens never writes to them, never runs code from them, and
never lets a header decide how much memory to allocate.

The checkpoints are random and tiny, written with numpy (tests/random_checkpoints.py).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import stat
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens import CheckpointError, MinilensError
from minilens.loading.safetensors import open_tensor, read_header
from random_checkpoints import gpt2_config, llama_config, write_checkpoint

MINILENS_DIR = Path(ml.__file__).parent


def snapshot(folder: Path) -> dict:
    """Every entry under folder: its kind, size, mtime (ns), permission bits and content hash."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                                              stat.S_IMODE(st.st_mode), digest)
    return out


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def read_only_checkpoint(tmp_path):
    folder = write_checkpoint(tmp_path / "ro", llama_config(n_layers=2, n_kv_heads=2), n_shards=2)
    make_read_only(folder)
    yield folder
    for path in [folder, *folder.rglob("*")]:     # let pytest clean up tmp_path
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_loading_and_running_never_write_to_the_weights_folder(read_only_checkpoint, monkeypatch):
    # Tests run as root here, and root ignores chmod: so the real check is the before/after snapshot
    # of names, sizes, mtimes and hashes, plus a spy on every open() that asks for a write mode.
    folder = read_only_checkpoint
    before = snapshot(folder)
    opened = []
    real_open = builtins.open

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(folder) in os.fspath(file):
            opened.append((os.fspath(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    for dtype in (np.float32, np.float64):
        model = ml.load(folder, dtype=dtype, check_finite=True)
        trace = model.run(np.arange(1, 20) % model.cfg.d_vocab)
        model.run_batch(np.stack([trace.ids, trace.ids[::-1]]))
        del model, trace
    monkeypatch.undo()

    assert opened, "the spy saw no open(): the test is not watching the loader"
    writes = [(f, m) for f, m in opened if any(c in m for c in "wax+")]
    assert not writes, f"minilens opened checkpoint files for writing: {writes}"
    assert snapshot(folder) == before, "the weights folder changed during load + run"


def test_tensors_are_read_only_views(read_only_checkpoint):
    # Even a caller who reaches into the memory map cannot write through it.
    memmaps = {}
    shard = sorted(read_only_checkpoint.glob("*.safetensors"))[0]
    info = next(iter(read_header(shard).values()))
    tensor = open_tensor(info, memmaps)
    assert not tensor.flags.writeable
    with pytest.raises(ValueError):
        tensor[...] = 0


# ------------------------------------------------------------------------------------------
# No code from a checkpoint: safetensors only, never pickle
# ------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code: it creates the sentinel file. A stand-in for a malicious .bin."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (Path(self.sentinel),))


def write_malicious_bin(folder: Path) -> Path:
    sentinel = folder.parent / f"{folder.name}-pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(sentinel))))
    return sentinel


def test_a_pickle_checkpoint_is_refused_with_a_conversion_recipe(tmp_path):
    folder = write_checkpoint(tmp_path / "m", gpt2_config())
    (folder / "model.safetensors").unlink()
    sentinel = write_malicious_bin(folder)
    pickle.loads((folder / "pytorch_model.bin").read_bytes())      # the payload does work ...
    assert sentinel.exists()
    sentinel.unlink()
    with pytest.raises(CheckpointError) as info:  # ... but minilens never unpickles it
        ml.load(folder)
    message = str(info.value)
    for fragment in ("pickled PyTorch weights", "arbitrary code", "save_pretrained",
                     "safe_serialization=True"):
        assert fragment in message, message
    assert not sentinel.exists()


def test_a_pickle_beside_safetensors_is_ignored(tmp_path):
    folder = write_checkpoint(tmp_path / "m", gpt2_config())
    sentinel = write_malicious_bin(folder)
    ml.load(folder, check_finite=True).run([1, 2, 3])
    assert not sentinel.exists()


def test_minilens_source_has_no_unpickling():
    # A static guard for the rule above: none of these calls appears anywhere in the library.
    forbidden = ("import pickle", "pickle.load", "torch.load", "allow_pickle=True", "import torch",
                 "joblib")
    for path in MINILENS_DIR.glob("*.py"):
        source = path.read_text()
        for word in forbidden:
            assert word not in source, f"{path.name} contains {word!r}"


def test_a_shard_index_cannot_point_outside_the_folder(tmp_path):
    folder = write_checkpoint(tmp_path / "m", llama_config(), n_shards=2)
    outside = tmp_path / "outside.safetensors"
    (folder / "model-00001-of-00002.safetensors").rename(outside)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: ("../outside.safetensors" if v.startswith("model-00001") else v)
                           for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        ml.load(folder)


# ------------------------------------------------------------------------------------------
# Malicious headers: sizes are validated before anything is allocated
# ------------------------------------------------------------------------------------------

# 1 MiB: generous for parsing a tiny header, absurdly small for any claimed size
PEAK_LIMIT = 1 << 20


def peak_bytes_while_failing(fn) -> tuple[int, Exception]:
    """Run fn, which must raise a MinilensError; return tracemalloc's peak and the error."""
    tracemalloc.start()
    try:
        fn()
    except MinilensError as e:
        error = e
    else:
        raise AssertionError("expected a MinilensError")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


def malicious_folder(tmp_path, blob: bytes) -> Path:
    folder = write_checkpoint(tmp_path / "evil", gpt2_config())
    (folder / "model.safetensors").write_bytes(blob)
    return folder


def test_a_huge_header_length_fails_fast(tmp_path):
    folder = malicious_folder(tmp_path, struct.pack("<Q", 1 << 60) + b"{}")
    peak, error = peak_bytes_while_failing(lambda: ml.load(folder))
    assert "header claims 1152921504606846976 bytes" in str(error)
    assert peak < PEAK_LIMIT, f"peak {peak} bytes while refusing a 2^60-byte header"


def test_a_header_claiming_an_exabyte_tensor_fails_fast(tmp_path):
    header = json.dumps({"transformer.wte.weight": {"dtype": "F32", "shape": [1 << 31, 1 << 30],
                                                    "data_offsets": [0, 1 << 63]}}).encode()
    folder = malicious_folder(tmp_path, struct.pack("<Q", len(header)) + header + b"\0" * 64)
    peak, error = peak_bytes_while_failing(lambda: ml.load(folder))
    assert "'transformer.wte.weight' claims bytes" in str(error)
    assert peak < PEAK_LIMIT, f"peak {peak} bytes while refusing an 8-exabyte tensor"


def test_a_shape_that_disagrees_with_tiny_offsets_fails_fast(tmp_path):
    # Offsets inside the file, but a shape whose product is astronomically larger.
    header = json.dumps({"x": {"dtype": "F64", "shape": [1 << 40, 1 << 40],
                               "data_offsets": [0, 8]}}).encode()
    folder = malicious_folder(tmp_path, struct.pack("<Q", len(header)) + header + b"\0" * 8)
    peak, error = peak_bytes_while_failing(lambda: read_header(folder / "model.safetensors"))
    assert "'x' claims bytes [0, 8)" in str(error)
    assert peak < PEAK_LIMIT


def test_a_deeply_nested_header_fails_cleanly(tmp_path):
    raw = b"[" * 100_000 + b"]" * 100_000   # json's recursion limit, not a crash
    folder = malicious_folder(tmp_path, struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ml.load(folder)
