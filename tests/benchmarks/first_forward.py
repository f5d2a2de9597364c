"""Load + the first three forwards of SmolLM2 in fresh processes, with and without each of the
ways minilens makes a GGUF model's first forward cheap (issue 13's "load + first <= 2x the
second").

    python tests/benchmarks/first_forward.py --rounds 3 --seq 128

Each round runs one fresh process per variant, in turn:
  as-is            the model as minilens loads it
  between-products each layer widened when the forward pass comes to it, between two products
                   (LazyLayers.widen_all skipped), as before 2026-12-07
  one-worker       every tensor dequantized in this thread (a block's pieces not shared among
                   the workers)
and prints each process's load, first, second and third forward (model(ids), random ids), the
seconds spent widening layers (LazyLayers.widen_seconds), and a fourth forward's CPU time over
its wall time and the workers (1.00: no core idles, so nothing could be overlapped with it).

    python tests/benchmarks/first_forward.py --rounds 8 --against HEAD~3

runs this tree's as-is and an earlier commit's in turn instead (the commit's minilens/ extracted
by versus_commit.import_commit into a temporary folder), the order swapped every round, and ends
with each version's median (load + first) / second.

What runs before each fresh process (--before) matters on this machine, a virtual machine whose
host takes back its free memory (virtio-balloon free page reporting): memory touched for the
first time after the machine has idled for a few seconds costs host faults, and more so in huge
pages. "primer" (the default) first runs a process that touches and frees 800 MB; "idle" sleeps
IDLE_SECONDS; "nothing" starts each process right after the last (a slow and a fast one then
alternate).

    python tests/benchmarks/first_forward.py --widening-parts

instead splits the widening's cost: in one process, three times, SmolLM2's 30 layers are widened
as the fast pass widens them (LazyLayers.widen_all) into fresh memory, and then, after a second
load, into memory already faulted in (the pages the kernel must fault in and zero, left out).
Run by hand on a quiet machine; numpy's BLAS at its default threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("as-is", "between-products", "one-worker")
BEFORE = "primer"   # what runs before each fresh process: see --before


def child(variant: str, n_seq: int, package: str = "minilens") -> None:
    import importlib

    import numpy as np
    ml = importlib.import_module(package)
    workers = importlib.import_module(f"{package}.fast.workers")
    checkpoint = importlib.import_module(f"{package}.loading.checkpoint")
    if variant == "between-products":
        checkpoint.LazyLayers.widen_all = lambda self: None
    if variant == "one-worker":                        # every piece in the first worker's run
        workers.in_runs = lambda costs, n: [list(range(len(costs)))] + [[] for _ in range(n - 1)]
    ids = np.random.default_rng(0).integers(0, 49152, n_seq)
    t0 = time.perf_counter()
    model = ml.load("smollm2")
    times = [time.perf_counter() - t0]
    for _ in range(3):
        t0 = time.perf_counter()
        model(ids)
        times.append(time.perf_counter() - t0)
    wall, cpu = time.perf_counter(), time.process_time()
    model(ids)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load, first, second, third = times
    label = variant if package == "minilens" else package.removeprefix("minilens_at_")
    print(f"{label:16s} load {load:.3f} s  first {first:.3f} s  second {second:.3f} s  "
          f"third {third:.3f} s  widening {model.layers.widen_seconds:.3f} s  "
          f"(load + first) / second {(load + first) / second:.2f}  "
          f"CPU / (wall x workers) {cpu / (wall * workers.n_workers()):.2f}", flush=True)


def widening_parts() -> None:
    """The 30 layers widened (LazyLayers.widen_all, GGUFCheckpoint.widen's own path) into fresh
    memory, then, in a second load, into memory already faulted in: every anonymous map the first
    load asked for is made again and touched page by page beforehand, and handed out in turn."""
    import gc
    import mmap

    import numpy as np

    import minilens as ml
    from minilens.fast import workers
    from minilens.loading import gguf_checkpoint
    real_map = gguf_checkpoint.anonymous_map
    for _ in range(3):
        sizes: list[int] = []
        gguf_checkpoint.anonymous_map = lambda n: sizes.append(n) or real_map(n)
        model = ml.load("smollm2")
        n_global = len(sizes)
        t0 = time.perf_counter()
        model.layers.widen_all()
        fresh = time.perf_counter() - t0
        n_weights = sum(sizes[n_global:]) // 4
        del model
        gc.collect()
        ready = [real_map(n) for n in sizes]
        for m in ready:
            np.frombuffer(m, dtype=np.uint8)[::mmap.PAGESIZE] = 1      # fault every page in
        gguf_checkpoint.anonymous_map = lambda n: ready.pop(0)
        model = ml.load("smollm2")
        t0 = time.perf_counter()
        model.layers.widen_all()
        faulted = time.perf_counter() - t0
        del model
        gc.collect()
        gguf_checkpoint.anonymous_map = real_map
        print(f"{n_weights / 1e6:.0f}M weights, "
              f"{workers.n_workers()} workers: widen_all into fresh memory {fresh:.3f} s, "
              f"into memory already faulted in {faulted:.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--widening-parts", action="store_true")
    ap.add_argument("--against", metavar="COMMIT")
    ap.add_argument("--before", choices=("primer", "idle", "nothing"), default="primer")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--package", default="minilens", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.widening_parts:
        return widening_parts()
    if args.child:
        if args.package != "minilens":
            sys.path.insert(0, os.environ["FIRST_FORWARD_PACKAGES"])
        return child(args.child, args.seq, args.package)
    global BEFORE
    BEFORE = args.before
    if args.against:
        return against(args.against, args.rounds, args.seq)
    for _ in range(args.rounds):
        for variant in VARIANTS:
            run_child(variant, args.seq)


PRIMER = "import numpy as np; np.ones(200 << 20, dtype=np.float32)"
IDLE_SECONDS = 6


def run_child(variant: str, n_seq: int, package: str = "minilens", env=None) -> str:
    if BEFORE == "primer":
        subprocess.run([sys.executable, "-c", PRIMER], check=True)
    elif BEFORE == "idle":
        time.sleep(IDLE_SECONDS)
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--seq", str(n_seq),
                          "--package", package], check=True, capture_output=True, text=True,
                         env=env).stdout
    print(out, end="", flush=True)
    return out


def against(commit: str, rounds: int, n_seq: int) -> None:
    """This tree's as-is and ``commit``'s, one fresh process each per round, order swapped."""
    from versus_commit import import_commit
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sha, _ = import_commit(commit, Path(tmp))
        env = {**os.environ, "FIRST_FORWARD_PACKAGES": tmp}
        versions = [("this tree", "minilens"), (sha, f"minilens_at_{sha}")]
        for r in range(rounds):
            for label, package in versions[::1 if r % 2 == 0 else -1]:
                out = run_child("as-is", n_seq, package, env)
                ratio = float(out.split("(load + first) / second")[1].split()[0])
                ratios.setdefault(label, []).append(ratio)
    for label, values in ratios.items():
        print(f"{label:10s} (load + first) / second: median {statistics.median(values):.2f}, "
              f"{sorted(values)}")


if __name__ == "__main__":
    main()
